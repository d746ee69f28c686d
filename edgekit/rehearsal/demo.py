"""The demo behind ``scripts/demo``: the whole journey of the bundled example model.

    python -m edgekit.rehearsal.demo                 # services, quantize, package + sign, three rollouts
    python -m edgekit.rehearsal.demo --nodes 20 --bake 3s
    python -m edgekit.rehearsal.demo --down          # stop everything the demo started (--purge: and its files)

It runs on the public command line (each step is an ``edgekit`` command, printed before it runs)
and, for mosquitto and the registry, on ``edgekit.rehearsal``:

1. services on 127.0.0.1: mosquitto, a docker-registry, the dev control plane with KWOK nodes
   (``edgekit dev cluster up``) and, where this machine allows (checked first, said in one line
   otherwise), 2 real kubelets in the same group that run the edgekit-agent image as real containers;
   the fleet simulator (``edgekit sim``: one virtual device per KWOK node, running the real agent
   core) in the background;
2. the model: inspect, quantize under an accuracy budget (the table of candidates);
3. a signing key; versions 1.0 (FP32), 2.0 (INT8) and 3.0 (INT8) packaged, pushed and signed;
4. rollout of 1.0 to the device group; 2.0 in waves with live gates (with real nodes: then an OIP v2
   inference answered by a real pod); 3.0 stopped at the canary wave and rolled back. On KWOK nodes
   alone the simulator makes 3.0 fail 25 % of its inferences (fault knob); with real nodes 3.0
   carries golden outputs its model does not reproduce and the canary is a real node, whose agent
   refuses it (:mod:`edgekit.rehearsal.demoreal`);
5. ``edgekit fleet status`` and what to try next.

Everything it makes lives in ``.edgekit/demo/`` (the dev cluster in ``~/.cache/edgekit/dev``,
``$EDGEKIT_DEV_DIR``; the real agents' spool in ``/var/lib/edgekit/digits``); the services keep
running after the demo so you can try commands, and a second run reuses them and what was built
(the quantized model, the key, the registry's blobs).
The outcome is written to ``.edgekit/demo/result.json`` (what the real nodes did: ``real.json``).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.rule import Rule
from rich.table import Table

ROOT = Path(__file__).resolve().parents[2]  # the checkout: models/ and .edgekit/ live there
DIGITS = ROOT / "models" / "digits"
GROUP = "cameras"
HOSTNAME_LABEL = "kubernetes.io/hostname"
APP = "digits"
NAMESPACE = "edgekit"
REPOSITORY = "models/digits"
KEY_PASSWORD = "edgekit-demo"
CREATED = "2026-01-01T00:00:00Z"   # fixed: the same model gives the same digest on every run
VERSIONS = ("1.0", "2.0", "3.0")
SIM_NEEDLE = "edgekit sim"   # how the simulator's command line is recognised (pid reuse)
EXPECTED = {"1.0": "Succeeded", "2.0": "Succeeded", "3.0": "RolledBack"}


class DemoError(Exception):
    """A step failed; the message says which and where to look."""


@dataclass(frozen=True)
class Options:
    workdir: Path
    nodes: int = 60
    bake: str = "10s"
    wave_timeout: str = "90s"
    interval: float = 1.0          # agents' health interval (seconds): short, so bakes can be short
    # inferences per second per simulated device: enough that a one-device canary gathers the
    # samples an evidence-based verdict needs well within the wave timeout
    rate: float = 20.0
    error_rate: float = 0.25       # the fault knob of version 3.0
    budget_time: str = "3m"        # cap on the quantization search
    real_nodes: int = 2            # real kubelets beside the KWOK nodes, where the machine allows


# --- small helpers -------------------------------------------------------------------------------

def console() -> Console:
    from edgekit.cli._output import console as cli_console

    return cli_console()


def _pid_alive(pid: int | None, needle: str) -> bool:
    """The process runs and its command line mentions ``needle`` (guards against pid reuse)."""
    if not pid:
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    return stat.rpartition(")")[2].split()[:1] != ["Z"] and needle in cmdline  # a zombie has exited


def _stop_pid(pid: int, needle: str, timeout: float = 15.0) -> None:
    """SIGTERM the process group a service leads (ManagedProcess starts each in its own), then
    SIGKILL what is left."""
    if not _pid_alive(pid, needle):
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _pid_alive(pid, needle):
        time.sleep(0.1)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


def _detach(proc: Any) -> int:
    """Let a ManagedProcess outlive this interpreter (as ``Cluster.detach`` does); returns its pid."""
    return int(proc.detach())


def _port_of(url_or_host: str) -> int:
    return int(url_or_host.rsplit(":", 1)[1])


# --- services ------------------------------------------------------------------------------------

class Services:
    """mosquitto, the registry and the simulator as detached processes, recorded in
    ``services.json`` so the next run reuses them and ``--down`` stops them; the dev cluster
    through ``edgekit dev cluster``."""

    def __init__(self, options: Options, run: Callable[..., subprocess.CompletedProcess[str]]) -> None:
        self.o = options
        self.work = options.workdir
        self.state_path = self.work / "services.json"
        self.state: dict[str, Any] = self._load()
        self.run = run
        # where mosquitto and the registry listen: the host's own address when real pods must reach them
        self.bind = "127.0.0.1"

    def _load(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self.state_path.read_text()))
        except (OSError, ValueError):
            return {}

    def _save(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.state_path.write_text(json.dumps(self.state, indent=2))

    def _reusable(self, name: str, needle: str) -> dict[str, Any] | None:
        from edgekit.rehearsal.processes import port_open

        entry = self.state.get(name)
        if not entry or not _pid_alive(entry.get("pid"), needle):
            return None
        if entry.get("bind", "127.0.0.1") != self.bind and entry.get("port"):   # moved: real nodes came or went
            _stop_pid(int(entry["pid"]), needle)
            return None
        if not entry.get("port") or port_open(entry["port"], entry.get("bind", "127.0.0.1")):
            return dict(entry)
        return None

    def _port_hint(self, name: str) -> int | None:
        """Last run's port when it is free again: image references and URLs stay the same."""
        from edgekit.rehearsal.processes import port_open

        port = (self.state.get(name) or {}).get("port")
        return int(port) if port and not port_open(int(port), self.bind) else None

    def mosquitto(self) -> str:
        from edgekit.rehearsal.mosquitto import MosquittoBroker

        found = self._reusable("mosquitto", "mosquitto")
        if found:
            return str(found["url"])
        if (self.state.get("mosquitto") or {}).get("bind", "127.0.0.1") != self.bind:
            # real nodes came or went: the retained reports of devices that no longer exist would
            # show up as offline devices in `fleet status`
            shutil.rmtree(self.work / "mosquitto" / "data", ignore_errors=True)
        broker_cls = type("BoundBroker", (MosquittoBroker,), {"host": self.bind})
        broker = broker_cls(self.work / "mosquitto", port=self._port_hint("mosquitto")).start()
        self.state["mosquitto"] = {"pid": _detach(broker._proc), "port": broker.port, "url": broker.url,
                                   "bind": self.bind}
        self._save()
        return broker.url

    def registry(self) -> str:
        from edgekit.rehearsal.registry import DockerRegistry

        found = self._reusable("registry", "registry")
        if found:
            return str(found["host"])
        registry_cls = type("BoundRegistry", (DockerRegistry,), {"host_ip": self.bind})
        reg = registry_cls(self.work / "registry", port=self._port_hint("registry")).start()
        self.state["registry"] = {"pid": _detach(reg._proc), "port": reg.port, "host": reg.host, "bind": self.bind}
        self._save()
        return reg.host

    def cluster(self, real_nodes: int = 0, registry: str = "") -> tuple[Path, list[str]]:
        """``edgekit dev cluster up`` (reusing a running one), then make sure the demo's group has
        its nodes and edgekit's CRD/RBAC are installed. ``real_nodes`` real kubelets join the group
        and pull from ``registry``; a running cluster with other real nodes (or trusting another
        registry) is started again. Returns the kubeconfig and the real nodes' names."""
        from edgekit.rehearsal import devcluster
        from edgekit.rehearsal.cluster import Cluster
        from edgekit.rehearsal.devcluster import dev_dir, dev_kubeconfig
        from edgekit.rehearsal.nodes import KWOK_LABEL, FleetSpec

        wanted = {"real_nodes": real_nodes, "registry": registry if real_nodes else ""}
        info = devcluster.status()
        if info is not None and info.get("ready"):
            running = {"real_nodes": len(info.get("real_nodes") or []),
                       "registry": (self.state.get("cluster") or {}).get("registry", "")}
            if running != wanted:
                self.run("dev", "cluster", "down")
        up = ["dev", "cluster", "up", "--nodes", str(self.o.nodes), "--pools", f"{GROUP}={self.o.nodes}"]
        if real_nodes:
            up += ["--real-nodes", str(real_nodes), "--registry", registry]
        self.run(*up)
        self.state["cluster"] = wanted
        self._save()
        kubeconfig = dev_kubeconfig()
        cluster = Cluster.attach(dev_dir())
        assert cluster is not None
        info = devcluster.status() or {}
        with cluster.client() as client:
            have = client.list("/api/v1/nodes", label_selector=f"edgekit.io/group={GROUP},{KWOK_LABEL}=kwok")
        if len(have) < self.o.nodes:  # a dev cluster that was already up, started for something else
            numbers = [int(n["metadata"]["name"].rsplit("-", 1)[1]) for n in have
                       if n["metadata"]["name"].rsplit("-", 1)[-1].isdigit()]
            cluster.add_nodes(FleetSpec(pools={GROUP: self.o.nodes - len(have)}), start=max(numbers, default=0) + 1)
        self.run("install", env={"KUBECONFIG": str(kubeconfig)}, quiet=True)
        return kubeconfig, sorted(info.get("real_nodes") or [])

    def simulator(self, args: list[str]) -> int:
        """``edgekit sim ARGS`` in the background, restarted when its arguments changed (another
        broker, registry or cluster)."""
        from edgekit.rehearsal.processes import ManagedProcess

        digest = hashlib.sha256(json.dumps(args).encode()).hexdigest()[:16]
        found = self._reusable("simulator", SIM_NEEDLE)
        if found and found.get("config") == digest:
            return int(found["pid"])
        if found:
            _stop_pid(int(found["pid"]), SIM_NEEDLE)
        log = self.work / "simulator.log"
        with contextlib.suppress(FileNotFoundError):
            log.unlink()
        proc = ManagedProcess("simulator", [sys.executable, "-m", "edgekit", "sim", *args], log).start()
        # It prints a line with its devices every second once it follows the cluster.
        proc.wait_ready(lambda: " devices " in log.read_text(errors="replace"), timeout=60)
        self.state["simulator"] = {"pid": _detach(proc), "config": digest}
        self._save()
        return proc.pid

    def down(self, say: Callable[[str], None]) -> None:
        for name, needle in (("simulator", SIM_NEEDLE), ("registry", "registry"), ("mosquitto", "mosquitto")):
            entry = self.state.pop(name, None)
            if entry and _pid_alive(entry.get("pid"), needle):
                _stop_pid(int(entry["pid"]), needle)
                say(f"stopped {name}")
        # the devices go with the cluster: their retained reports would greet the next run's fleet
        # as offline devices (the registry's blobs stay, a second run reuses them)
        shutil.rmtree(self.work / "mosquitto" / "data", ignore_errors=True)
        self.state.pop("cluster", None)
        self._save()
        self.run("dev", "cluster", "down")
        if spool := self.state.pop("spool", None):   # after the real nodes stopped: nothing writes it now
            from edgekit.rehearsal.demoreal import remove_spool

            remove_spool(str(spool["app"]), bool(spool.get("root_made")))
            self._save()
            say(f"removed the agents' spool of {spool['app']}")


# --- the demo ------------------------------------------------------------------------------------

@dataclass
class Outcome:
    version: str
    image: str
    rollout: str | None
    phase: str | None
    exit_code: int
    waves: list[str]
    verdict: str | None
    control: str | None = None     # the failed wave beside its control group, when it had one
    canary: list[str] | None = None  # the first wave's nodes

    @property
    def as_expected(self) -> bool:
        return self.phase == EXPECTED[self.version]


def control_comparison(wave: Any) -> str:
    """The wave's own figures beside its control group's (the devices still on the old version,
    same window), as counted: a reader can redo the arithmetic."""
    def counted(t: Any) -> str:
        rate = f"{t.error_rate:.2%}" if t.error_rate is not None else "-"
        p95 = f", p95 {t.p95_ms:.1f} ms" if t.p95_ms is not None else ""
        return f"{t.errors}/{t.inferences} inferences failed ({rate}){p95} on {t.on_digest} devices"

    if wave.telemetry is None:
        return "no figures recorded for the wave"
    if wave.control is None:
        return f"wave {wave.index + 1}: {counted(wave.telemetry)}; no control group (judged against the thresholds)"
    return (f"wave {wave.index + 1}: {counted(wave.telemetry)}; its control group over the same window: "
            f"{counted(wave.control)}")


class Demo:
    def __init__(self, options: Options) -> None:
        self.o = options
        self.work = options.workdir
        self.con = console()
        self.env: dict[str, str] = {"EDGEKIT_KEY_PASSWORD": KEY_PASSWORD, "COLUMNS": os.environ.get("COLUMNS", "160")}
        self.services = Services(options, self.edgekit)
        self.outcomes: list[Outcome] = []
        self.images: dict[str, str] = {}
        self.registry = ""
        self.kubeconfig: Path | None = None
        self.real_nodes: list[str] = []     # the real kubelets of the group (empty: KWOK nodes alone)
        self.real: dict[str, Any] = {}      # what they did, written to real.json

    # -- running commands -------------------------------------------------------------------
    def edgekit(self, *args: str | Path, env: dict[str, str] | None = None, check: bool = True,
                quiet: bool = False, capture: bool = False) -> subprocess.CompletedProcess[str]:
        argv = [str(a) for a in args]
        if not quiet:
            self.con.print(f"[bold cyan]$ edgekit {escape(shlex.join(argv))}[/]")
        full_env = {**os.environ, **self.env, **(env or {})}
        result = subprocess.run([sys.executable, "-m", "edgekit", *argv], env=full_env, cwd=self.work, text=True,
                                stdout=subprocess.PIPE if capture or quiet else None,
                                stderr=subprocess.PIPE if quiet else None)
        if check and result.returncode != 0:
            detail = (result.stderr or "").strip().splitlines()[-1:] if quiet else []
            raise DemoError(f"`edgekit {shlex.join(argv)}` exited {result.returncode}"
                            + (f": {detail[0]}" if detail else ""))
        return result

    def step(self, title: str, detail: str | None = None) -> None:
        self.con.print()
        self.con.print(Rule(f"[bold]{escape(title)}", align="left"))
        if detail:
            self.con.print(escape(detail), style="dim")

    def say(self, text: str) -> None:
        self.con.print(text)

    # -- the journey --------------------------------------------------------------------------
    def run(self) -> list[Outcome]:
        self.work.mkdir(parents=True, exist_ok=True)
        started = time.monotonic()
        self.start_services()
        model, int8 = self.model()
        self.package(model, int8)
        self.start_simulator()
        self.reset_app()
        self.rollouts()
        self.finish(time.monotonic() - started)
        return self.outcomes

    def start_services(self) -> None:
        from edgekit.rehearsal import demoreal

        self.step("1. local services", "an MQTT broker, an OCI registry and Kubernetes with KWOK nodes (and real "
                  "kubelets where this machine allows), on this host")
        why_not = demoreal.blocker(self.o.real_nodes)
        if why_not is None:
            self.services.bind = demoreal.host_address() or "127.0.0.1"
            self.say(f"real nodes: {self.o.real_nodes} real kubelets join group {GROUP} beside its KWOK nodes; "
                     f"registry and broker listen on {self.services.bind}, where their pods reach the host")
        else:
            self.say(f"real nodes: none, KWOK nodes only: {escape(why_not)}")
        self.real = {"real_nodes": [], "why_not": why_not}
        broker = self.services.mosquitto()
        self.registry = self.services.registry()
        self.say(f"mosquitto {broker}   registry http://{self.registry}   (logs in {self.work})")
        self.kubeconfig, self.real_nodes = self.services.cluster(0 if why_not else self.o.real_nodes, self.registry)
        self.real["real_nodes"] = self.real_nodes
        self.write_real()
        self.env.update({
            "KUBECONFIG": str(self.kubeconfig),
            "EDGEKIT_ROLLOUT_NAMESPACE": NAMESPACE,
            "EDGEKIT_ROLLOUT_AGENT_BROKER": broker,
            "EDGEKIT_ROLLOUT_MQTT_AUTH": "none",
            "EDGEKIT_ROLLOUT_TELEMETRY_INTERVAL": f"{self.o.interval:g}",
            "EDGEKIT_ROLLOUT_REGISTRY_INSECURE": "1",
            "EDGEKIT_ROLLOUT_PUBLIC_KEY": str(self.work / "keys" / "demo.pub"),
            "EDGEKIT_FLEET_BROKERS": broker,
            "EDGEKIT_FLEET_INTERVAL": f"{self.o.interval:g}",
            "EDGEKIT_REGISTRY_INSECURE": "1",
        })
        self.write_env_file()
        self.edgekit("groups", "show", GROUP, "--no-nodes")

    def write_real(self) -> None:
        (self.work / "real.json").write_text(json.dumps(self.real, indent=2) + "\n")

    def write_env_file(self) -> None:
        lines = ["# source this file to point edgekit at the demo's services", *(
            f"export {k}={shlex.quote(v)}" for k, v in sorted(self.env.items()) if k != "COLUMNS"),
            f"export REGISTRY={self.registry}"]
        (self.work / "env.sh").write_text("\n".join(lines) + "\n")

    def model(self) -> tuple[Path, Path]:
        self.step("2. the model", "inspect it, then quantize it to INT8 inside a 1-point accuracy budget")
        model = self.work / "digits.onnx"
        source = DIGITS / "digits.onnx"
        if not model.exists() or model.read_bytes() != source.read_bytes():
            shutil.copyfile(source, model)
        self.edgekit("inspect", model)
        int8 = self.work / "digits.int8.onnx"
        report = Path(f"{int8}.report.json")
        args: list[str | Path] = [
            "quantize", model, "-o", int8, "--calibration", DIGITS / "calib.npz", "--eval", DIGITS / "eval.npz",
            "--labels", DIGITS / "eval_labels.txt", "--max-drop", "1%", "--budget-time", self.o.budget_time]
        stamp = self.work / "quantize.args"
        wanted = json.dumps([str(a) for a in args])
        if int8.exists() and report.exists() and stamp.exists() and stamp.read_text() == wanted:
            self.say(f"reusing {int8.name} from an earlier run (delete it to quantize again)")
            self.show_report(report)
        else:
            self.edgekit(*args)
            stamp.write_text(wanted)
        return model, int8

    def show_report(self, report: Path) -> None:
        data = json.loads(report.read_text())
        table = Table(title=f"candidates ({escape(str(data.get('budget')))})", title_justify="left")
        for col in ("candidate", "size", "latency vs FP32", str(data.get("metric")), "verdict"):
            table.add_column(col, justify="left" if col in ("candidate", "verdict") else "right")
        base = data.get("baseline") or {}
        table.add_row("FP32 baseline", f"{(base.get('size_bytes') or 0) / 1024:.1f} KB",
                      f"{base.get('latency_p50_ms', 0):.3f} ms", f"{base.get('score', 0):.4g}", "")
        for c in data.get("candidates") or []:
            fid = c.get("fidelity") or {}
            table.add_row(escape(c["name"]), f"{(c.get('size_bytes') or 0) / 1024:.1f} KB",
                          f"{c['latency_ratio']:.2f}x" if c.get("latency_ratio") else "-",
                          f"{fid['score']:.4g}" if fid.get("score") is not None else "-", c.get("verdict", ""))
        self.con.print(table)
        self.say(escape(f"chosen: {data.get('chosen')}: {data.get('reason')}"))

    def package(self, model: Path, int8: Path) -> None:
        self.step("3. sign and ship", "a key pair; versions 1.0 (FP32), 2.0 and 3.0 (INT8) as signed OCI images")
        keys = self.work / "keys"
        keys.mkdir(exist_ok=True)
        if not (keys / "demo.key").exists():
            self.edgekit("keygen", "--output-key-prefix", keys / "demo")
        else:
            self.say(f"reusing the key pair in {keys}")
        for version, path in zip(VERSIONS, (model, int8, int8), strict=True):
            if version == "3.0" and self.real_nodes:
                push, sig = self.package_wrong_probe(path, version, keys / "demo.key")
            else:
                result = self.edgekit("package", path, "--name", "digits", "--version", version, "--created",
                                      CREATED, "--push", f"{self.registry}/{REPOSITORY}", "--sign-key",
                                      keys / "demo.key", "--insecure", "--output", "json", capture=True)
                data = json.loads(result.stdout)
                push, sig = data["push"], "signed" if data.get("signature") else "not signed"
            digest = push["digest"]
            self.images[version] = f"{self.registry}/{REPOSITORY}@{digest}"
            self.say(f"  {version}: {self.registry}/{REPOSITORY}:{version} = {digest[:19]}…  "
                     f"({push.get('blobs_uploaded', 0)} blob(s) uploaded, {sig})")
        self.edgekit("show", f"{self.registry}/{REPOSITORY}:2.0", "--key", keys / "demo.pub", "--insecure")

    def package_wrong_probe(self, model: Path, version: str, key: Path) -> tuple[dict[str, Any], str]:
        """Version 3.0 for a real canary: the INT8 model with golden outputs it does not reproduce,
        pushed and signed like the others (a real device has no fault knob: its agent must find the
        fault itself, by running the probe before it reports Ready)."""
        from edgekit.image.building import PackageSettings, package
        from edgekit.rehearsal.demoreal import PROBE_SHIFT, wrong_probe

        layout = self.work / f"digits-{version}-wrong-probe"
        self.say(f"  {version} is a bad build: the INT8 model with its golden probe outputs shifted by {PROBE_SHIFT:g} "
                 f"(as a broken toolchain would leave them); packaged into {layout.name}/, then pushed and signed")
        with wrong_probe():
            package(model, PackageSettings(name="digits", version=version, created=CREATED), layout, force=True)
        ref = f"{self.registry}/{REPOSITORY}:{version}"
        push = json.loads(self.edgekit("push", layout, ref, "--insecure", "--output", "json", capture=True).stdout)
        self.edgekit("sign", f"{self.registry}/{REPOSITORY}@{push['digest']}", "--key", key, "--insecure",
                     capture=True)
        return push, "signed"

    def start_real_agents(self) -> None:
        """What real nodes need before a rollout reaches them: the agent image in the registry, the
        agent repository allowed and the release key installed, the spool prepared on the node."""
        from edgekit.rehearsal import demoreal

        self.say(f"real nodes {', '.join(self.real_nodes)}: each a kubelet with its own containerd and runc; "
                 f"their pods run the edgekit-agent image for real")
        result = self.edgekit("dev", "agent-image", "push", "--registry", self.registry, "--output", "json",
                              capture=True)
        agent_image = str(json.loads(result.stdout)["pushed"])
        self.env["EDGEKIT_ROLLOUT_AGENT_IMAGE"] = agent_image
        self.write_env_file()
        self.say(f"agent image {agent_image}")
        self.edgekit("install", "--public-key", self.work / "keys" / "demo.pub",
                     "--agent-repository", agent_image.split("@", 1)[0])
        made_root = demoreal.prepare_spool(APP)
        earlier = self.services.state.get("spool") or {}
        self.services.state["spool"] = {"app": APP, "root_made": made_root or bool(earlier.get("root_made"))}
        self.services._save()
        self.real["agent_image"] = agent_image
        self.write_real()
        self.say(f"node preparation: the agents' spool {demoreal.SPOOL_ROOT / APP / 'spool'} (a hostPath, owned by "
                 f"uid {demoreal.AGENT_UID}) on this host, which holds the real nodes' filesystems")

    def start_simulator(self) -> None:
        detail = f"{self.o.nodes} simulated devices, one per KWOK node of group {GROUP}"
        if self.real_nodes:
            detail += f", and {len(self.real_nodes)} real ones: the edgekit-agent container on real kubelets"
        self.step("4. the fleet", detail)
        assert self.kubeconfig is not None
        if self.real_nodes:
            self.start_real_agents()
        # Rewritten on every run: a fault left from trying things out must not change the story.
        faults = self.work / "faults.txt"
        faults.write_text("# fleet simulator faults, one per line: KEY:knob=value,...  (KEY: revision, digest,\n"
                          "# version or *; knobs: error_rate, latency_ms, probe_fail, crash_loop, silent, "
                          "offline). Re-read every second.\n")
        args = ["--namespace", NAMESPACE, "--app", APP, "--broker", self.env["EDGEKIT_FLEET_BROKERS"],
                "--interval", f"{self.o.interval:g}", "--rate", f"{self.o.rate:g}", "--faults-file", str(faults),
                "--cache-dir", str(self.work / "sim-models"), "--insecure-registry",
                "--public-key", str(self.work / "keys" / "demo.pub"), "--kubeconfig", str(self.kubeconfig),
                *(a for node in self.real_nodes for a in ("--skip-node", node))]
        self.con.print(f"[bold cyan]$ edgekit sim {escape(shlex.join(args))} &[/]")
        pid = self.services.simulator(args)
        self.set_fault(None)
        self.say(f"simulator running in the background (pid {pid}, log {self.work / 'simulator.log'}): each device "
                 f"follows its node's pod, fetches the model by digest, verifies its signature, runs the real agent "
                 f"core and reports every {self.o.interval:g}s over MQTT")

    def set_fault(self, version: str | None) -> None:
        """Keep the faults file's comments and other lines; replace the demo's own line."""
        path = self.work / "faults.txt"
        lines = [line for line in path.read_text().splitlines() if not line.endswith("# demo")]
        if version is not None:
            digest = self.images[version].rsplit("@", 1)[1]
            lines.append(f"{digest}:error_rate={self.o.error_rate:g}  # demo")
        path.write_text("\n".join(lines) + "\n")

    def reset_app(self) -> None:
        """Start every run from the same place: no DaemonSet, node label or rollout of the app."""
        from edgekit.kube.client import KubeClient
        from edgekit.rollout.kubecluster import KubeCluster
        from edgekit.rollout.leasing import lease_name

        with KubeClient.from_kubeconfig(self.kubeconfig) as client:
            cluster = KubeCluster(client)
            rollouts = cluster.list_rollouts(NAMESPACE, app=APP)
            ds_path = f"/apis/apps/v1/namespaces/{NAMESPACE}/daemonsets"
            dsets = client.list(ds_path, label_selector=f"edgekit.io/app={APP}")
            label = f"rollout.edgekit.io/{APP}"
            nodes = client.list("/api/v1/nodes", label_selector=label)
            if not (rollouts or dsets or nodes):
                return
            self.say(f"resetting {APP} from an earlier run: {len(rollouts)} rollout(s), {len(dsets)} DaemonSet(s), "
                     f"{len(nodes)} labelled node(s)")
            for ro in rollouts:
                for path in (f"/apis/edgekit.io/v1alpha1/namespaces/{NAMESPACE}/edgerollouts/{ro.name}",
                             f"/apis/coordination.k8s.io/v1/namespaces/{NAMESPACE}/leases/{lease_name(ro.name)}"):
                    with contextlib.suppress(Exception):
                        client.request("DELETE", path)
            for ds in dsets:
                with contextlib.suppress(Exception):
                    client.request("DELETE", f"{ds_path}/{ds['metadata']['name']}")
            cluster.relabel_nodes(APP, {n["metadata"]["name"]: None for n in nodes})
            cluster.close()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and client.list(f"/api/v1/namespaces/{NAMESPACE}/pods",
                                                              label_selector=f"edgekit.io/app={APP}"):
                time.sleep(0.5)

    def rollouts(self) -> None:
        fast = ["--bake", self.o.bake, "--wave-timeout", self.o.wave_timeout]
        self.step("5. rollout of 1.0", f"the FP32 model to group {GROUP}: a first install in two waves")
        self.push("1.0", ["--waves", "10%,100%", *fast])
        self.step("6. rollout of 2.0", "the INT8 model in four waves, canary first, spread over zones. Each wave: "
                  "relabel its nodes, wait for the pods, bake, then judge the devices' own telemetry (error rate, "
                  "p95 latency, golden probe, share reporting the new model)")
        self.push("2.0", ["--waves", "1,10%,50%,100%", "--spread-by", "topology.kubernetes.io/zone",
                          "--max-error-rate", "1%", "--max-p95-ms", "250", "--probe-must-pass", *fast])
        if self.real_nodes:
            self.serve_on_a_real_node()
            canary = self.real_nodes[0]
            self.step("7. rollout of 3.0", f"deliberately bad: its golden probe does not match what the model "
                      f"computes; the canary is the real node {canary} (--canary-selector), whose agent must catch it")
            self.push("3.0", ["--waves", "1,10%,50%,100%", "--canary-selector", f"{HOSTNAME_LABEL}={canary}",
                              "--max-error-rate", "1%", "--probe-must-pass", *fast], expect_failure=True)
            back = self.ready_real_pods("2.0")
            self.say(f"{canary} is back on 2.0 and Ready (pod {back[canary]['metadata']['name']})")
            self.real["canary_back_on"] = "2.0"
            self.write_real()
            return
        self.step("7. rollout of 3.0", f"deliberately bad: the simulator fails {self.o.error_rate:.0%} of its "
                  "inferences; the canary must catch it")
        self.set_fault("3.0")
        self.say(f"fault knob in {self.work / 'faults.txt'}: {self.images['3.0'].rsplit('@', 1)[1][:19]}…:"
                 f"error_rate={self.o.error_rate:g}")
        self.push("3.0", ["--waves", "1,10%,50%,100%", "--max-error-rate", "1%", *fast], expect_failure=True)

    @contextlib.contextmanager
    def watch_real_pods(self, version: str, active: bool) -> Iterator[dict[str, str]]:
        """While a push meant to fail runs: what the agents on real nodes answer at /v2/health/ready
        when a pod of ``version`` is not Ready (a rollback removes the pod, and its reason with it)."""
        from edgekit.kube import names
        from edgekit.rehearsal.demoreal import readiness
        from edgekit.rollout.resource import revision_for

        seen: dict[str, str] = {}
        if not (self.real_nodes and active):
            yield seen
            return
        revision = revision_for(self.images[version].rsplit("@", 1)[1])
        stop = threading.Event()

        def watch() -> None:
            # Often: the probe report rolls the wave back within seconds and the pod goes with it; a
            # terminating pod's agent still answers until it stops, so those are asked too.
            while not stop.wait(0.3):
                with contextlib.suppress(Exception):  # a best-effort look; the push's verdict is what counts
                    for pod in self.real_pod_list(terminating=True):
                        node = pod["spec"]["nodeName"]
                        ip = pod["status"].get("podIP")
                        if ip and pod["metadata"].get("labels", {}).get(names.REVISION_LABEL) == revision:
                            code, reason = readiness(ip)
                            # only the answer that names the golden probe tells the story: "no model
                            # loaded" is the pod still starting, and a later answer from the agent
                            # stopping for the rollback must not replace it
                            if code != 200 and "golden probe" in reason and node not in seen:
                                seen[node] = f"{code} {reason}"

        thread = threading.Thread(target=watch, name="real-pods", daemon=True)
        thread.start()
        try:
            yield seen
        finally:
            stop.set()
            thread.join(timeout=10)

    def real_pods(self) -> dict[str, dict[str, Any]]:
        """The app's live pods on real nodes, by node."""
        return {p["spec"]["nodeName"]: p for p in self.real_pod_list()}

    def real_pod_list(self, terminating: bool = False) -> list[dict[str, Any]]:
        """The app's pods on real nodes; with ``terminating``, those being deleted too."""
        from edgekit.kube.client import KubeClient

        with KubeClient.from_kubeconfig(self.kubeconfig) as client:
            pods = client.list(f"/api/v1/namespaces/{NAMESPACE}/pods", label_selector=f"edgekit.io/app={APP}")
        return [p for p in pods if p["spec"].get("nodeName") in self.real_nodes
                and (terminating or not p["metadata"].get("deletionTimestamp"))]

    def ready_real_pods(self, version: str, timeout: float = 180) -> dict[str, dict[str, Any]]:
        """Wait until every real node runs a Ready pod of ``version``; return them by node."""
        from edgekit.kube import names
        from edgekit.rollout.resource import revision_for

        revision = revision_for(self.images[version].rsplit("@", 1)[1])
        deadline = time.monotonic() + timeout
        while True:
            ready = {n: p for n, p in self.real_pods().items()
                     if p["metadata"].get("labels", {}).get(names.REVISION_LABEL) == revision and any(
                         c["type"] == "Ready" and c["status"] == "True" for c in p["status"].get("conditions") or [])}
            if set(ready) == set(self.real_nodes):
                return ready
            if time.monotonic() > deadline:
                raise DemoError(f"{APP} {version} is not Ready on the real nodes "
                                f"{', '.join(sorted(set(self.real_nodes) - set(ready)))} after {timeout:.0f}s; "
                                f"`edgekit groups show {GROUP}`")
            time.sleep(1)

    def serve_on_a_real_node(self) -> None:
        """An OIP v2 inference answered by the agent container of a real pod, checked against
        onnxruntime here on the same model."""
        import numpy as np
        import onnxruntime as ort

        from edgekit.rehearsal.demoreal import infer

        self.step("6b. a real pod serves 2.0", "an OIP v2 inference request to the agent container on a real node")
        ready = self.ready_real_pods("2.0")
        node, pod = sorted(ready.items())[0]
        ip, name = pod["status"]["podIP"], pod["metadata"]["name"]
        with np.load(DIGITS / "eval.npz") as data:
            batch = np.asarray(data[data.files[0]][:4], dtype=np.float32)
        labels = [int(x) for x in (DIGITS / "eval_labels.txt").read_text().split()[:4]]
        session = ort.InferenceSession(str(self.work / "digits.int8.onnx"), providers=["CPUExecutionProvider"])
        input_name = session.get_inputs()[0].name
        self.con.print(f"[bold cyan]$ curl -s http://{ip}:8080/v2/models/{APP}/infer -d "
                       f"'{{\"inputs\": [{{\"name\": \"{input_name}\", \"shape\": {list(batch.shape)}, "
                       f"\"datatype\": \"FP32\", \"data\": [...]}}]}}'[/]")
        try:
            answer = infer(ip, APP, batch, input_name)
        except OSError as exc:
            raise DemoError(f"the agent in pod {name} on {node} did not answer {ip}:8080: {exc}") from exc
        output = answer["outputs"][0]
        got = np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])
        want = session.run(None, {input_name: batch})[0]
        predicted = [int(i) for i in got.argmax(axis=1)]
        same = bool(np.allclose(got, want, rtol=1e-4, atol=1e-4))
        self.say(f"answered by pod {name} on real node {node} ({ip}): model {answer.get('model_name')} "
                 f"version {answer.get('model_version')}, predicted digits {predicted}, labels {labels}; "
                 f"{'the same outputs as' if same else 'outputs differ from'} onnxruntime here "
                 f"(max abs difference {float(np.max(np.abs(got - want))):.2g})")
        self.real["served"] = {"node": node, "pod": name, "predicted": predicted, "labels": labels,
                               "same_as_local": same, "model_version": answer.get("model_version")}
        self.write_real()

    def push(self, version: str, args: Sequence[str], expect_failure: bool = False) -> None:
        from edgekit.kube.client import KubeClient
        from edgekit.rollout.kubecluster import KubeCluster

        tag = f"{self.registry}/{REPOSITORY}:{version}"
        if self.real_nodes:  # again before every push: node preparation is the operator's, and may be undone
            from edgekit.rehearsal.demoreal import prepare_spool

            prepare_spool(APP)
        with self.watch_real_pods(version, expect_failure) as seen:
            result = self.edgekit("push", tag, "--group", GROUP, "--app", APP, *args, check=False)
        for node, answer in sorted(seen.items()):
            self.say(f"the agent on real node {node} answered its readiness probe for {version}: "
                     f"{escape(answer)}")
        if seen:
            self.real.setdefault("readiness", {})[version] = seen
            self.write_real()
        with KubeClient.from_kubeconfig(self.kubeconfig) as client:
            found = KubeCluster(client).list_rollouts(NAMESPACE, app=APP)
        ro = max(found, key=lambda r: int(r.name.rsplit("-", 1)[1])) if found else None
        if ro is not None and ro.spec.target.image != self.images[version]:
            ro = None
        waves = ro.status.waves if ro else []
        failed = next((w for w in waves if w.verdict and w.verdict.decision == "rollback"), None)
        # the verdict as the judge wrote it (its test and evidence), not figures formatted again here
        outcome = Outcome(version, self.images[version], ro.name if ro else None, ro.status.phase if ro else None,
                          result.returncode, [w.phase for w in ro.status.waves] if ro else [],
                          f"wave {failed.index + 1}: {failed.verdict.reason}" if failed and failed.verdict else None,
                          # a wave stopped before any device reported (a pod never Ready) has no figures
                          control_comparison(failed) if failed and failed.telemetry is not None else None,
                          list(waves[0].nodes) if waves else None)
        self.outcomes.append(outcome)
        (self.work / "result.json").write_text(json.dumps([asdict(o) for o in self.outcomes], indent=2))
        if outcome.as_expected:
            if expect_failure:
                canary = ", ".join(outcome.canary or [])
                where = f" on the real node {canary}" if canary and set(outcome.canary or []) <= set(self.real_nodes) \
                    else f" at the canary {canary}"
                self.say(f"[bold green]as intended:[/] {escape(outcome.rollout or '')} stopped{escape(where)} and "
                         f"rolled back automatically (exit {outcome.exit_code}); {escape(outcome.verdict or '')}")
                if outcome.control:
                    self.say(escape(outcome.control))
            return
        logs = f"simulator log {self.work / 'simulator.log'}; `edgekit rollout status {outcome.rollout}`"
        raise DemoError(f"rollout of {version} ended {outcome.phase} (exit {result.returncode}), expected "
                        f"{EXPECTED[version]}; see {logs}")

    def finish(self, seconds: float) -> None:
        self.step("8. the fleet now")
        self.edgekit("fleet", "status", "--group", GROUP, check=False)
        self.edgekit("rollout", "history", "--app", APP, check=False)
        table = Table(title="the three rollouts", title_justify="left")
        for col in ("version", "rollout", "outcome", "waves", "exit"):
            table.add_column(col)
        for o in self.outcomes:
            style = "green" if o.as_expected else "red"
            table.add_row(o.version, o.rollout or "-", f"[{style}]{o.phase}[/]", " ".join(o.waves), str(o.exit_code))
        self.con.print()
        self.con.print(table)
        self.say(f"done in {seconds:.0f}s; outcome in {self.work / 'result.json'}")
        rel = os.path.relpath(self.work, Path.cwd()) if self.work.is_relative_to(Path.cwd()) else str(self.work)
        self.step("what to try next", "the services keep running")
        self.say(f"""\
  . .venv/bin/activate && . {rel}/env.sh       # point edgekit at the demo's services
  edgekit fleet watch --group {GROUP} --devices         # live view of the simulated devices (Ctrl-C ends it)
  edgekit rollout status --app {APP}                    # the last rollout, wave by wave, with its figures
  edgekit groups show {GROUP}                           # which node runs which revision
  edgekit rollout undo --app {APP} --group {GROUP} --bake 5s    # back to 1.0, as a gated rollout
  echo '2.0:latency_ms=40' >> {rel}/faults.txt  # make 2.0 slow on the devices, then watch the latency gate:
  edgekit push $REGISTRY/{REPOSITORY}:2.0 -g {GROUP} -a {APP} --bake 5s --max-p95-regression 50%
  scripts/demo --down                                   # stop everything (--purge also deletes {rel})

Docs: README.md, docs/README.md; every command has --help with examples.""")


# --- entry point ---------------------------------------------------------------------------------

def setup_ready() -> bool:
    """Everything the demo needs is installed (``scripts/demo`` runs ``scripts/setup`` otherwise)."""
    try:
        import edgekit_agent  # noqa: F401

        from edgekit.rehearsal import gobuild
        from edgekit.rehearsal.mosquitto import mosquitto_available
        from edgekit.rehearsal.registry import registry_available
    except ImportError:
        return False
    built = all(gobuild.COMPONENTS[name].is_built() for name in ("etcd", "k8s", "kwok") if name in gobuild.COMPONENTS)
    return built and mosquitto_available() and registry_available()


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scripts/demo", description="Run the edgekit demo on the bundled digits "
                                     "model: services, quantization, signed images, three rollouts.")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".edgekit" / "demo",
                        help="where the demo keeps its files and service data [.edgekit/demo]")
    parser.add_argument("--nodes", type=int, default=Options.nodes, help="simulated devices (KWOK nodes) [%(default)s]")
    parser.add_argument("--bake", default=Options.bake, help="bake time of every wave [%(default)s]")
    parser.add_argument("--wave-timeout", default=Options.wave_timeout, help="hold a wave at most [%(default)s]")
    parser.add_argument("--interval", type=float, default=Options.interval,
                        help="devices' health interval, seconds [%(default)s]")
    parser.add_argument("--rate", type=float, default=Options.rate,
                        help="inferences per second per simulated device [%(default)s]")
    parser.add_argument("--error-rate", type=float, default=Options.error_rate,
                        help="share of failing inferences of version 3.0 [%(default)s]")
    parser.add_argument("--budget-time", default=Options.budget_time, help="cap on the quantization search")
    parser.add_argument("--real-nodes", type=int, default=Options.real_nodes,
                        help="real kubelets beside the KWOK nodes, where this machine allows (0: KWOK nodes "
                             "only) [%(default)s]")
    parser.add_argument("--down", action="store_true", help="stop every service the demo started")
    parser.add_argument("--purge", action="store_true", help="with --down: also delete the work directory")
    parser.add_argument("--check-setup", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.nodes < 1:
        parser.error("--nodes must be at least 1")
    if args.real_nodes < 0:
        parser.error("--real-nodes must be 0 or more")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.check_setup:
        return 0 if setup_ready() else 1
    options = Options(workdir=args.workdir.resolve(), nodes=args.nodes, bake=args.bake, wave_timeout=args.wave_timeout,
                      interval=args.interval, rate=args.rate, error_rate=args.error_rate, budget_time=args.budget_time,
                      real_nodes=args.real_nodes)
    demo = Demo(options)
    if args.down:
        demo.services.down(demo.say)
        if args.purge:
            shutil.rmtree(options.workdir, ignore_errors=True)
            demo.say(f"deleted {options.workdir}")
        return 0
    try:
        demo.run()
    except DemoError as exc:
        demo.con.print(f"[bold red]demo failed:[/] {escape(str(exc))}")
        demo.con.print("the services keep running; run scripts/demo again to retry, scripts/demo --down to stop them")
        return 1
    except KeyboardInterrupt:
        demo.con.print("\ninterrupted; the services keep running (scripts/demo --down stops them)")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
