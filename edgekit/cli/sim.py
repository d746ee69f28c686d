"""``edgekit sim``: the fleet simulator, one virtual device per node that runs an edgekit pod."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import click

from edgekit.cli._output import console, emit_json, output_option
from edgekit.cli.kube import cluster_options
from edgekit.cli.rollout_session import connect, stop_on_sigterm


@click.command("sim")
@click.option("--namespace", "-n", default=None, help="Follow edgekit pods of this namespace [all].")
@click.option("--app", "-a", default=None, help="Only pods of this app.")
@click.option("--broker", default="mqtt://127.0.0.1:1883", show_default=True, metavar="URL",
              help="Broker the virtual devices publish to.")
@click.option("--topic-root", default="edgekit/v1", show_default=True, help="Telemetry topic root.")
@click.option("--interval", type=click.FloatRange(0.1, 3600), default=10.0, show_default=True, metavar="S",
              help="Seconds between each device's health reports.")
@click.option("--rate", type=click.FloatRange(0, 1000), default=1.0, show_default=True, metavar="N",
              help="Inferences per second per device (throttled on purpose).")
@click.option("--fault", "fault_specs", multiple=True, metavar="KEY:KNOBS",
              help="Fault per revision/digest/version/*: error_rate=0.2,noisy,latency_ms=30,latency_factor=1.5,"
                   "rate=30,probe_fail,crash_loop,silent,offline=0.1. Repeatable.")
@click.option("--faults-file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="File of fault lines, re-read when it changes (# starts a comment).")
@click.option("--cache-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where fetched models are kept [~/.cache/edgekit/sim-models].")
@click.option("--insecure-registry", is_flag=True, help="Allow plain HTTP / unverified TLS to the registry.")
@click.option("--public-key", type=click.Path(dir_okay=False), default=None,
              help="Devices refuse images without a valid signature by this key [EDGEKIT_ROLLOUT_PUBLIC_KEY].")
@click.option("--allow-unsigned", is_flag=True, help="Without --public-key, devices run unsigned images.")
@click.option("--duration", type=click.FloatRange(0), default=None, metavar="S", help="Stop after S seconds.")
@click.option("--inputs", "inputs_file", type=click.Path(dir_okay=False, exists=True, path_type=Path), default=None,
              metavar="NPZ", help="Live inputs: each request is one row of the first array of this .npz "
                                  "(shadow evaluation compares models on them) [the golden probe's inputs].")
@click.option("--skip-node", "skip_nodes", multiple=True, metavar="NODE",
              help="Leave this node's pods to the real agent that runs there (a real kubelet in a group of "
                   "KWOK nodes). Repeatable.")
@cluster_options
@output_option
def sim_cmd(namespace: str | None, app: str | None, broker: str, topic_root: str, interval: float, rate: float,
            fault_specs: tuple[str, ...], faults_file: Path | None, cache_dir: Path | None,
            insecure_registry: bool, public_key: str | None, allow_unsigned: bool, duration: float | None,
            inputs_file: Path | None, skip_nodes: tuple[str, ...], output: str, **kw: Any) -> None:
    """Run the fleet simulator: one virtual device per node that runs an edgekit pod, each the real
    agent core (real onnxruntime session on the model the pod names, fetched once per digest and
    platform: each device takes the layer of its node's kubernetes.io/arch; its own MQTT connection
    and last will). When Kubernetes replaces a node's pod with another revision, the
    device switches model. Faults per model make a rehearsal rollout fail the way a bad model would.

    \b
    Examples:
      edgekit sim --namespace edgekit --broker mqtt://127.0.0.1:1883 --interval 1
      edgekit sim -n edgekit --fault '3f2a9c1b7d0e:error_rate=0.2' --fault '*:latency_ms=5'
      edgekit sim -n edgekit --faults-file faults.txt --duration 300 --output json
      edgekit sim -n edgekit --skip-node cameras-real-01 --skip-node cameras-real-02
    """
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.rehearsal.sim import FaultBook, SimSettings, Simulator, parse_fault
    from edgekit.rehearsal.sim.faults import Fault
    from edgekit.settings import cache_dir as default_cache
    from edgekit.settings import require_public_key

    public_key = public_key or os.environ.get("EDGEKIT_ROLLOUT_PUBLIC_KEY") or None
    require_public_key(public_key, allow_unsigned, what="edgekit sim",
                       key_from="pass --public-key (or EDGEKIT_ROLLOUT_PUBLIC_KEY), the key devices verify with")

    def read(path: Path | None) -> list[str]:
        if path is None or not path.exists():
            return []
        return [ln.split("#", 1)[0].strip() for ln in path.read_text().splitlines() if ln.split("#", 1)[0].strip()]

    faults = FaultBook(dict(parse_fault(spec) for spec in fault_specs))
    fixed: dict[str, Fault] = dict(parse_fault(spec) for spec in fault_specs)
    client = connect(kw.pop("kubeconfig", None), kw.pop("context", None))
    settings = SimSettings(broker_url=broker, cache_dir=cache_dir or default_cache() / "sim-models",
                           topic_root=topic_root, interval=interval, rate=rate, namespace=namespace, app=app,
                           public_key=public_key, allow_unsigned=allow_unsigned,
                           registry_options=RegistryOptions(insecure=insecure_registry),
                           inputs=_read_inputs(inputs_file), skip_nodes=frozenset(skip_nodes))
    stop = threading.Event()
    con = console(stderr=output == "json")
    sim = Simulator(client, settings, faults).start()
    seen: list[str] | None = None
    started = time.monotonic()
    try:
        with stop_on_sigterm(stop):
            while not stop.wait(1.0):
                lines = read(faults_file)
                if lines != seen:
                    faults.clear()
                    for key, fault in fixed.items():
                        faults.set(key, fault)
                    for line in lines:
                        key, fault = parse_fault(line)
                        faults.set(key, fault)
                    seen = lines
                info = sim.summary()
                if output != "json":
                    con.print(f"{time.strftime('%H:%M:%S')} devices {info['devices']} {info['states']} "
                              f"by revision {info['running_by_revision']} inferences {info['inferences']} "
                              f"errors {info['errors']}", highlight=False)
                if duration is not None and time.monotonic() - started >= duration:
                    break
    except KeyboardInterrupt:
        pass
    finally:
        info = sim.summary()
        sim.stop(graceful=True)
        client.close()
    if output == "json":
        emit_json(info)


COMMANDS: list[click.Command] = [sim_cmd]


def _read_inputs(path: Path | None) -> Any:
    if path is None:
        return None
    import numpy as np

    try:
        with np.load(path) as data:
            return np.asarray(data[data.files[0]])
    except (OSError, ValueError, IndexError) as exc:
        raise click.BadParameter(f"cannot read {path}: {exc}", param_hint="--inputs") from exc
