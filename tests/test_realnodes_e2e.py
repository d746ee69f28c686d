"""End to end on real kubelets: the edgekit-agent image (built here, pulled from the test registry by
each node's containerd) runs as a real container beside KWOK nodes in one group.

One module-wide set-up (minutes, so shared): a registry and a broker on the host's own address (a
pod reaches it through its bridge gateway; 127.0.0.1 inside a pod is the pod), the agent image
pushed there, the digits model signed in versions 1.0, 2.0 and 3.0 (3.0's golden probe expects
wrong outputs), and ``edgekit dev cluster up`` with 20 KWOK nodes and 2 real nodes in group ``grp``.
The fleet simulator plays the KWOK devices and leaves the real nodes to their real agents. A second
broker (``outage_broker``) carries only the telemetry of the apps whose tests stop it, so the fleet
broker of the other tests never goes down.

Node preparation: the spool is a hostPath ``/var/lib/edgekit/<app>/spool`` owned by the agent's
uid (docs/kubernetes.md "Node preparation"). Real nodes of the dev cluster share the host's
filesystem, so the set-up prepares it on the host, once per app, and removes it afterwards. Each
run names its apps with a suffix of its own, so that runs at the same time on one machine (same
node names, same revisions) never share a spool.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgekit_agent.protocol import DEFAULT_ROOT

from edgekit.kube import names
from edgekit.kube.client import KubeClient
from edgekit.rehearsal.mosquitto import MosquittoBroker
from edgekit.rehearsal.registry import DockerRegistry
from edgekit.rollout.resource import EdgeRollout
from tests.fixtures.mqtt import MqttRecorder
from tests.fixtures.realnodes import need_real_nodes
from tests.fixtures.rollout import FIXED_CREATED, RELEASE_PASSWORD, revision_of

pytestmark = [pytest.mark.real, pytest.mark.slow, pytest.mark.kube, pytest.mark.mqtt, pytest.mark.registry,
              pytest.mark.timeout(3600)]

ROOT = Path(__file__).resolve().parents[1]
GROUP = "grp"
REAL = ("grp-real-01", "grp-real-02")
AGENT_UID = 10001
SPOOL_ROOT = Path("/var/lib/edgekit")
BAD = "3.0"  # signed by the release key, with a golden probe no device passes
# The apps carry a suffix of their own per run: an app's spool is a host path
# (/var/lib/edgekit/<app>/spool/<node>/<revision>), and two runs of this module on one machine have
# the same node names and the same revisions, so their agents would share (and adopt) each
# other's spools.
RUN = uuid.uuid4().hex[:4]
APPS = {name: f"{name}-{RUN}" for name in ("serve", "byvolume", "byfetch", "outage", "crash")}


def host_address() -> str:
    """The host's first global IPv4 address: pods reach it through their bridge gateway."""
    out = subprocess.run(["ip", "-4", "-o", "addr", "show", "scope", "global"], capture_output=True, text=True,
                         check=True).stdout
    found = [a for a in re.findall(r"\binet (\d+\.\d+\.\d+\.\d+)/", out) if not a.startswith("10.244.")]
    if not found:
        pytest.fail("the host has no global IPv4 address that pods could reach the registry and broker on")
    return found[0]


def _edgekit(*args: str, env: dict[str, str] | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "agent")]), COLUMNS="200")
    full.update(env or {})
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=full,
                          timeout=timeout, check=False)


def _ok(result: subprocess.CompletedProcess[str], what: str) -> str:
    assert result.returncode == 0, f"{what} -> exit {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@dataclass
class RealEnv:
    address: str
    registry: DockerRegistry
    broker: MosquittoBroker
    agent_image: str
    images: dict[str, str]
    public_key: Path
    kubeconfig: Path
    client: KubeClient
    sim: Any
    workdir: Path
    outage_broker: MosquittoBroker

    @property
    def broker_url(self) -> str:
        return f"mqtt://{self.address}:{self.broker.port}"

    @property
    def outage_url(self) -> str:
        return f"mqtt://{self.address}:{self.outage_broker.port}"

    def env(self) -> dict[str, str]:
        return {"KUBECONFIG": str(self.kubeconfig), "EDGEKIT_ROLLOUT_PUBLIC_KEY": str(self.public_key),
                "EDGEKIT_REGISTRY_INSECURE": "1", "EDGEKIT_FLEET_BROKERS": self.broker_url}

    def real_pods(self, app: str) -> dict[str, dict[str, Any]]:
        pods = self.client.list(f"/api/v1/namespaces/{names.DEFAULT_NAMESPACE}/pods",
                                label_selector=f"{names.APP_LABEL}={app}")
        return {p["spec"]["nodeName"]: p for p in pods
                if p["spec"].get("nodeName") in REAL and not p["metadata"].get("deletionTimestamp")}

    def wait_ready(self, app: str, revision: str, timeout: float = 300,
                   nodes: tuple[str, ...] = REAL) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while True:
            pods = {n: p for n, p in self.real_pods(app).items()
                    if p["metadata"]["labels"].get(names.REVISION_LABEL) == revision and n in nodes}
            ready = {n: p for n, p in pods.items() if _ready(p)}
            if set(ready) == set(nodes):
                return ready
            if time.monotonic() > deadline:
                pytest.fail(f"{app} pods not Ready on {sorted(set(nodes) - set(ready))}: "
                            + json.dumps({n: p["status"] for n, p in pods.items()})[:4000]
                            + "\n" + self.pod_logs(app))
            time.sleep(0.5)

    def apply_revision(self, app: str, image: str, *extra: str, broker_url: str | None = None) -> str:
        """``edgekit render --apply`` of ``image`` as a revision of ``app``; its pods start on the
        nodes that ``label`` gives that revision."""
        _ok(_edgekit("render", image, "--group", GROUP, "--app", app, "--agent-image", self.agent_image,
                     "--broker-url", broker_url or self.broker_url, "--mqtt-auth", "none", "--registry-insecure",
                     "--public-key", str(self.public_key), "--apply", "--kubeconfig", str(self.kubeconfig), *extra,
                     env=self.env()), "render --apply")
        return revision_of(image)

    def label(self, nodes: tuple[str, ...], app: str, revision: str | None) -> None:
        """Move ``nodes`` to ``revision`` of ``app`` (None: off the app, its pods go)."""
        for node in nodes:
            self.client.request("PATCH", f"/api/v1/nodes/{node}",
                                body={"metadata": {"labels": {names.rollout_label(app): revision}}},
                                content_type="application/merge-patch+json")

    def wait_gone(self, pod: dict[str, Any], timeout: float = 120) -> None:
        """Until the pod object is deleted: its containers have exited and the kubelet has said so."""
        path = f"/api/v1/namespaces/{names.DEFAULT_NAMESPACE}/pods/{pod['metadata']['name']}"
        deadline = time.monotonic() + timeout
        while (left := self.client.get_or_none(path)) is not None and left["metadata"]["uid"] == pod["metadata"]["uid"]:
            if time.monotonic() > deadline:
                pytest.fail(f"pod {pod['metadata']['name']} still there after {timeout:g}s: {left['status']}")
            time.sleep(0.5)

    def follow_logs(self, pod: dict[str, Any]) -> tuple[subprocess.Popen[bytes], Path]:
        """``kubectl logs -f`` of the pod's agent into a file: its words outlive the pod."""
        from edgekit.rehearsal import gobuild

        path = self.workdir / f"{pod['metadata']['name']}.log"
        with path.open("wb") as out:
            follow = subprocess.Popen([str(gobuild.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", "-n",
                                       names.DEFAULT_NAMESPACE, "logs", "-f", pod["metadata"]["name"], "-c", "agent"],
                                      stdout=out, stderr=subprocess.STDOUT)
        return follow, path

    def pod_logs(self, app: str) -> str:
        """The agents' own words, for a failure message."""
        from edgekit.rehearsal import gobuild

        out = []
        for pod in self.real_pods(app).values():
            for container in ("fetch-model", "agent"):
                logs = subprocess.run([str(gobuild.binary("kubectl")), f"--kubeconfig={self.kubeconfig}", "-n",
                                       names.DEFAULT_NAMESPACE, "logs", pod["metadata"]["name"], "-c", container,
                                       "--tail", "20"], capture_output=True, text=True, timeout=60)
                out.append(f"--- {pod['metadata']['name']}/{container}: {logs.stdout[-2000:]}{logs.stderr[-500:]}")
        return "\n".join(out)


def _prepare_spool(app: str) -> None:
    """docs/kubernetes.md "Node preparation", on the host that holds the real nodes' filesystem."""
    subprocess.run(["install", "-d", "-o", str(AGENT_UID), "-g", str(AGENT_UID), "-m", "0700",
                    str(SPOOL_ROOT / app / "spool")], check=True)


def _off_by_one(run: Callable[..., list[Any]]) -> Callable[..., list[Any]]:
    return lambda *args, **kwargs: [out + 1.0 for out in run(*args, **kwargs)]


def _sign_models(registry: DockerRegistry, digits_model: Path, key_dir: Path, out_dir: Path) -> tuple[
        dict[str, str], Path]:
    from edgekit_agent.oci.reference import parse_reference
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.image import building
    from edgekit.image.building import PackageSettings, package
    from edgekit.image.pushing import push_layout
    from edgekit.image.signing import load_private_key, sign_image, write_keypair

    private, public = write_keypair(key_dir / "release", RELEASE_PASSWORD)
    key = load_private_key(private, RELEASE_PASSWORD)
    images = {}
    for version in ("1.0", "2.0", BAD):
        layout = out_dir / f"digits-{version}"
        with pytest.MonkeyPatch.context() as patch:
            if version == BAD:  # its golden outputs are off by one: no device reproduces them
                patch.setattr(building, "run", _off_by_one(building.run))
            package(digits_model, PackageSettings(name="digits", version=version, created=FIXED_CREATED), layout)
        result = push_layout(layout, parse_reference(f"{registry.host}/models/digits:{version}"),
                             options=RegistryOptions(insecure=True))
        images[version] = f"{registry.host}/models/digits@{result.digest}"
        sign_image(parse_reference(images[version]), key, options=RegistryOptions(insecure=True))
    return images, public


@pytest.fixture(scope="module")
def real_env(tmp_path_factory: pytest.TempPathFactory, digits_model: Path) -> Iterator[RealEnv]:
    need_real_nodes()
    from edgekit_agent.oci.registry import RegistryOptions

    from edgekit.rehearsal.sim import FaultBook, SimSettings, Simulator

    work = tmp_path_factory.mktemp("real-e2e")
    address = host_address()
    registry_cls = type("HostRegistry", (DockerRegistry,), {"host_ip": address})
    broker_cls = type("HostBroker", (MosquittoBroker,), {"host": address})
    registry: DockerRegistry = registry_cls(work / "registry").start()
    broker: MosquittoBroker = broker_cls(work / "broker").start()
    outage_broker: MosquittoBroker = broker_cls(work / "outage-broker").start()
    state_dir = work / "dev"
    made_spool_root = not SPOOL_ROOT.exists()
    client: KubeClient | None = None
    sim = None
    try:
        # The agent image from the builder's cache (scripts/setup builds it), into the test registry.
        pushed = json.loads(_ok(_edgekit("dev", "agent-image", "push", "--registry", registry.host,
                                         "--output", "json", timeout=3000), "dev agent-image push"))["pushed"]
        images, public = _sign_models(registry, digits_model, work, work)
        _ok(_edgekit("dev", "cluster", "up", "--nodes", "20", "--pools", f"{GROUP}=20", "--arch", "amd64=1",
                     "--real-nodes", str(len(REAL)), "--registry", registry.host, "--no-install",
                     "--state-dir", str(state_dir)), "dev cluster up")
        kubeconfig = state_dir / "kubeconfig"
        _ok(_edgekit("install", "--public-key", str(public), "--agent-repository", f"{registry.host}/edgekit-agent",
                     "--kubeconfig", str(kubeconfig)), "install")
        for app in APPS.values():
            _prepare_spool(app)
        client = KubeClient.from_kubeconfig(kubeconfig)
        sim = Simulator(client, SimSettings(broker_url=broker.url, cache_dir=work / "sim-models", interval=1.0,
                                            rate=2.0, namespace=names.DEFAULT_NAMESPACE, public_key=str(public),
                                            registry_options=RegistryOptions(insecure=True),
                                            skip_nodes=frozenset(REAL)), FaultBook()).start()
        yield RealEnv(address, registry, broker, pushed, images, public, kubeconfig, client, sim, work, outage_broker)
    finally:
        if sim is not None:
            sim.stop()
        if client is not None:
            client.close()
        if state_dir.exists():
            down = _edgekit("dev", "cluster", "down", "--state-dir", str(state_dir))
            print(down.stdout, down.stderr, file=sys.stderr)
        broker.stop()
        outage_broker.stop()
        registry.stop()
        for app in APPS.values():
            shutil.rmtree(SPOOL_ROOT / app, ignore_errors=True)
        if made_spool_root:  # only when empty: another run may have its apps there by now
            with contextlib.suppress(OSError):
                SPOOL_ROOT.rmdir()


def _ready(pod: dict[str, Any]) -> bool:
    return any(c["type"] == "Ready" and c["status"] == "True" for c in pod["status"].get("conditions") or [])


def _started(pod: dict[str, Any]) -> float:
    import datetime as dt

    return dt.datetime.fromisoformat(pod["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp()


def _infer(pod_ip: str, model: str, batch: np.ndarray, input_name: str) -> dict[str, Any]:
    body = json.dumps({"inputs": [{"name": input_name, "shape": list(batch.shape), "datatype": "FP32",
                                   "data": batch.ravel().tolist()}]}).encode()
    request = urllib.request.Request(f"http://{pod_ip}:8080/v2/models/{model}/infer", data=body,
                                     headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(request, timeout=30) as answer:
        result: dict[str, Any] = json.loads(answer.read())
    return result


@pytest.mark.parametrize("source", ["image-volume", "init-container"])
def test_each_model_source_reaches_ready_on_the_real_nodes(real_env: RealEnv, source: str) -> None:
    """Ready = the model verified against the release key and its golden probe passed."""
    env = real_env
    app = APPS[{"image-volume": "byvolume", "init-container": "byfetch"}[source]]
    image = env.images["2.0"]
    revision = revision_of(image)
    assert env.apply_revision(app, image, "--model-source", source) == revision
    ds = env.client.get(f"/apis/apps/v1/namespaces/{names.DEFAULT_NAMESPACE}/daemonsets/{app}-{revision}")
    spec = ds["spec"]["template"]["spec"]
    model = next(v for v in spec["volumes"] if v["name"] == "model")
    if source == "image-volume":
        assert model["image"]["reference"] == image and not spec.get("initContainers")
    else:
        assert "emptyDir" in model and spec["initContainers"][0]["name"] == "fetch-model"
    env.label(REAL, app, revision)
    try:
        pods = env.wait_ready(app, revision)
        for node, pod in pods.items():
            with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/v2/models/digits/ready",
                                        timeout=10) as answer:
                assert answer.status == 200, node
    finally:
        env.label(REAL, app, None)  # the real nodes' CPU and memory go to the tests after this one


def test_a_good_signed_model_rolls_out_and_real_pods_serve_oip_v2(real_env: RealEnv, digits_model: Path) -> None:
    import onnxruntime as ort

    from tests.fixtures.models import digits_inputs

    env = real_env
    app, image = APPS["serve"], env.images["1.0"]
    argv = ["push", f"{env.registry.host}/models/digits:1.0", "--group", GROUP, "--app", app,
            "--waves", "1,100%", "--bake", "3s", "--wave-timeout", "120s", "--max-error-rate", "10%",
            "--agent-image", env.agent_image, "--agent-broker", env.broker_url, "--mqtt-auth", "none",
            "--broker", env.broker_url, "--insecure-registry", "--health-interval", "1", "--output", "json"]
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "agent")]), **env.env())
    push = subprocess.Popen([sys.executable, "-m", "edgekit", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=full)
    # What the real pods went through, kept while the push runs: a rollback removes them.
    seen: dict[str, Any] = {}
    logged = ""
    while push.poll() is None:
        pods = env.real_pods(app)
        if pods:
            seen = {n: p["status"] for n, p in pods.items()}
            if not logged and all(time.time() - _started(p) > 40 for p in pods.values()):
                logged = env.pod_logs(app)
        time.sleep(2)
    stdout, stderr = push.communicate()
    assert push.returncode == 0, f"push -> exit {push.returncode}: {stderr[-3000:]}\n" + json.dumps(
        seen)[:6000] + "\n" + logged
    ro = EdgeRollout.from_json(json.loads(stdout))
    assert ro.status.phase == "Succeeded", ro.status
    assert ro.spec.target.image == image  # the tag resolved once and pinned
    pods = env.wait_ready(app, revision_of(image), timeout=60)

    session = ort.InferenceSession(str(digits_model), providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    batch = digits_inputs()[:4]
    want = session.run(None, {input_name: batch})[0]
    for node, pod in pods.items():
        answer = _infer(pod["status"]["podIP"], "digits", batch, input_name)
        got = np.asarray(answer["outputs"][0]["data"], dtype=np.float32).reshape(want.shape)
        assert np.allclose(got, want, rtol=1e-5, atol=1e-5), f"{node}: {got} != {want}"
        assert answer["model_name"] == "digits"


# --- telemetry through outages and crashes ---------------------------------------------------------
REQUESTS = 12  # inference requests a test makes while the broker is down


def _reports(rec: MqttRecorder, node: str, kind: str) -> dict[str, list[dict[str, Any]]]:
    """The ``kind`` messages the recorder got from ``node``, by agent session (one per process)."""
    out: dict[str, list[dict[str, Any]]] = {}
    for message in rec.snapshot(lambda t: t.endswith(f"/{GROUP}/{node}/{kind}")):
        if not message.retain:
            payload = message.json()
            out.setdefault(payload["session"], []).append(payload)
    return out


def _inferences(reports: list[dict[str, Any]]) -> int:
    """Inferences counted by the session's distinct health reports (QoS 1 may deliver one twice)."""
    return sum({r["seq"]: r["inferences"] for r in reports}.values())


def _gapless(reports: list[dict[str, Any]]) -> bool:
    seqs = {r["seq"] for r in reports}
    return seqs == set(range(max(seqs) + 1))


def _send_requests(pod: dict[str, Any], count: int) -> None:
    """``count`` OIP v2 inferences, each answered (the input named as the pod's model metadata says)."""
    from tests.fixtures.models import digits_inputs

    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/v2/models/digits", timeout=10) as answer:
        input_name = json.loads(answer.read())["inputs"][0]["name"]
    batch = digits_inputs()[:1]
    for _ in range(count):
        assert _infer(pod["status"]["podIP"], "digits", batch, input_name)["model_name"] == "digits"


def _agent_status(pod: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in pod["status"]["containerStatuses"] if c["name"] == "agent")


def _main_pid(container_id: str) -> int:
    """The host PID of the container's first process: in the container's cgroup, PID 1 of its namespace."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id not in (proc / "cgroup").read_text():
                continue
            found = re.search(r"^NSpid:\s+(.*)$", (proc / "status").read_text(), re.MULTILINE)
        except OSError:  # gone meanwhile
            continue
        if found and found.group(1).split()[-1] == "1":
            return int(proc.name)
    pytest.fail(f"no process of container {container_id} on this host")


def _spooled_health_after(app: str, node: str, since: float) -> bool:
    """Whether a health report stamped after ``since`` sits in the node's spool for ``app``: the
    node-local disk, read as it is (the real nodes share the host's filesystem)."""
    import sqlite3

    for path in (SPOOL_ROOT / app / "spool" / node).glob("*/spool.sqlite3"):
        try:
            with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5) as db:
                rows = db.execute("SELECT payload FROM outbox WHERE topic LIKE '%/health'").fetchall()
        except sqlite3.Error:  # being written: look again
            continue
        if any(json.loads(row[0])["ts"] > since for row in rows):
            return True
    return False


def _wait(condition: Callable[[], bool], timeout: float, what: str | Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what if isinstance(what, str) else what()}")
        time.sleep(0.5)


def _received(rec: MqttRecorder, node: str) -> str:
    """What the recorder got from ``node``, by session: health (seq, inferences, ts) and event kinds."""
    health = {s[:8]: [(r["seq"], r["inferences"], round(r["ts"], 1)) for r in rs]
              for s, rs in _reports(rec, node, "health").items()}
    events = {s[:8]: [(e["seq"], e["kind"]) for e in es] for s, es in _reports(rec, node, "event").items()}
    return f"what {node} sent: health {health}; events {events}"


def _serving_and_reporting(env: RealEnv, rec: MqttRecorder, app: str, node: str) -> tuple[dict[str, Any], str]:
    """Revision 1.0 of ``app`` on ``node``, reporting to the outage broker: its pod once Ready and
    the session of its first health report."""
    revision = env.apply_revision(app, env.images["1.0"], broker_url=env.outage_url)
    env.label((node,), app, revision)
    pod = env.wait_ready(app, revision, nodes=(node,))[node]
    _wait(lambda: bool(_reports(rec, node, "health")), 120, lambda: _received(rec, node))
    (session,) = _reports(rec, node, "health")
    return pod, session


def test_reports_made_while_the_broker_is_down_arrive_after_the_pod_was_replaced(real_env: RealEnv) -> None:
    """The old pod serves and reports into its hostPath spool while the broker is down; the next
    revision replaces it, adopts what it left and sends it once the broker is back."""
    env = real_env
    node, app = REAL[1], APPS["outage"]
    follow: subprocess.Popen[bytes] | None = None
    with MqttRecorder(env.outage_broker, "#", persistent=True) as rec:
        try:
            pod, session = _serving_and_reporting(env, rec, app, node)

            follow, log_path = env.follow_logs(pod)
            env.outage_broker.stop()
            down_at = time.time()
            _send_requests(pod, REQUESTS)
            new = env.apply_revision(app, env.images["2.0"], broker_url=env.outage_url)
            env.label((node,), app, new)
            env.wait_ready(app, new, nodes=(node,))
            env.wait_gone(pod)  # it made its last report and left its spool on the node
            up_at = time.time()
            env.outage_broker.start()

            def arrived() -> bool:
                health = _reports(rec, node, "health").get(session, [])
                stopping = [e for e in _reports(rec, node, "event").get(session, [])
                            if e["kind"] == "agent_stopping"]
                return _inferences(health) >= REQUESTS and bool(stopping)

            _wait(arrived, 180, lambda: f"the reports of {session[:8]} (down {down_at:.1f}, up {up_at:.1f}); "
                                        + _received(rec, node) + "\nthe old agent's log:\n"
                                        + log_path.read_text(errors="replace")[-3000:]
                                        + "\nthe new one's:\n" + env.pod_logs(app))
            health = _reports(rec, node, "health")[session]
            assert _inferences(health) == REQUESTS, health
            assert _gapless(health), sorted(r["seq"] for r in health)
            late = [r for r in health if down_at <= r["ts"] <= up_at]
            assert late and sum(r["inferences"] for r in late) == REQUESTS, health
            assert {r["model"]["version"] for r in health} == {"1.0"}, health
        finally:
            env.label((node,), app, None)
            if follow is not None:
                follow.kill()
                follow.wait()


def test_a_killed_agent_is_restarted_by_the_kubelet_and_no_report_is_lost(real_env: RealEnv) -> None:
    """``kill -9`` of the agent's process while the broker is down: the reports it had spooled are
    on the node's disk, and the process the kubelet starts again sends them with its own."""
    env = real_env
    node, app = REAL[0], APPS["crash"]
    with MqttRecorder(env.outage_broker, "#", persistent=True) as rec:
        try:
            pod, session = _serving_and_reporting(env, rec, app, node)
            agent = _agent_status(pod)

            env.outage_broker.stop()
            _send_requests(pod, REQUESTS)
            served = time.time()
            # kill only once the requests are in a report, or the kill takes them with the window
            _wait(lambda: _spooled_health_after(app, node, served), 60, "a report made after the requests")
            os.kill(_main_pid(agent["containerID"].split("://", 1)[1]), signal.SIGKILL)

            def restarted() -> bool:
                now = env.real_pods(app).get(node)
                return (now is not None and now["metadata"]["uid"] == pod["metadata"]["uid"]
                        and _agent_status(now)["restartCount"] > agent["restartCount"] and _ready(now))

            _wait(restarted, 180, f"the kubelet to restart the agent on {node}")
            env.outage_broker.start()

            def arrived() -> bool:
                sessions = _reports(rec, node, "health")
                return (_inferences(sessions.get(session, [])) >= REQUESTS and len(sessions) == 2
                        and all(_gapless(reports) for reports in sessions.values()))

            _wait(arrived, 180, lambda: f"the reports of {session[:8]} and its successor; " + _received(rec, node))
            sessions = _reports(rec, node, "health")
            killed = sessions.pop(session)
            (after,) = sessions.values()
            assert _inferences(killed) == REQUESTS, killed
            assert _gapless(killed), sorted(r["seq"] for r in killed)
            # a kill, not a stop: the killed process never said goodbye
            assert not [e for e in _reports(rec, node, "event").get(session, []) if e["kind"] == "agent_stopping"]
            assert _gapless(after), sorted(r["seq"] for r in after)
        finally:
            env.label((node,), app, None)


def test_a_model_whose_golden_probe_fails_is_stopped_at_a_real_canary_and_rolled_back(real_env: RealEnv) -> None:
    """Follows the good rollout above (the group runs 1.0). The real node is the canary; its pod
    for 3.0 verifies the signature, fails the golden probe and so never gets Ready; its probe report
    rolls the push back (gate ``probe``, well before the wave timeout) and the node serves 1.0 again
    from a Ready pod."""
    from edgekit.errors import RolledBackError

    env = real_env
    app, canary = APPS["serve"], REAL[0]
    old, bad = revision_of(env.images["1.0"]), revision_of(env.images[BAD])
    assert env.client.get(f"/api/v1/nodes/{canary}")["metadata"]["labels"].get(names.rollout_label(app)) == old
    argv = ["push", f"{env.registry.host}/models/digits:{BAD}", "--group", GROUP, "--app", app,
            "--waves", "1,100%", "--canary-selector", f"{names.HOSTNAME_LABEL}={canary}",
            "--bake", "3s", "--wave-timeout", "90s", "--max-error-rate", "10%", "--probe-must-pass",
            "--agent-image", env.agent_image, "--agent-broker", env.broker_url, "--mqtt-auth", "none",
            "--broker", env.broker_url, "--insecure-registry", "--health-interval", "1", "--output", "json"]
    full = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "agent")]), **env.env())
    with MqttRecorder(env.broker, f"{DEFAULT_ROOT}/{GROUP}/{canary}/event") as rec:
        push = subprocess.Popen([sys.executable, "-m", "edgekit", *argv], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=full)
        # the canary's pods of the bad revision, as the push goes: a rollback removes them
        seen: dict[str, dict[str, Any]] = {}
        while push.poll() is None:
            pod = env.real_pods(app).get(canary)
            if pod is not None and pod["metadata"]["labels"].get(names.REVISION_LABEL) == bad:
                was = seen.get(pod["metadata"]["uid"], {})
                seen[pod["metadata"]["uid"]] = {"status": pod["status"], "ever_ready": was.get("ever_ready")
                                                or _ready(pod)}
            time.sleep(0.3)
        stdout, stderr = push.communicate()
        failed = [e.json() for e in rec.snapshot() if e.json().get("kind") == "probe_failed"]
    assert push.returncode == RolledBackError.exit_code, f"push -> exit {push.returncode}: {stderr[-3000:]}"
    ro = EdgeRollout.from_json(json.loads(stdout))
    assert ro.status.phase == "RolledBack", ro.status
    assert ro.status.waves[0].nodes == [canary], ro.status.waves
    # stopped by the device's own probe report, not by waiting out the wave timeout
    verdict = ro.status.waves[0].verdict
    assert verdict is not None and verdict.gate == "probe", verdict
    assert seen and not any(p["ever_ready"] for p in seen.values()), seen
    assert [e["model"]["version"] for e in failed if e["model"]] and {e["model"]["version"] for e in failed} == {BAD}
    # back on 1.0: the canary and every other node of the group
    nodes = env.client.list("/api/v1/nodes", label_selector=f"{names.GROUP_LABEL}={GROUP}")
    assert {n["metadata"]["labels"].get(names.rollout_label(app)) for n in nodes} == {old}
    pod = env.wait_ready(app, old, nodes=(canary,), timeout=120)[canary]
    with urllib.request.urlopen(f"http://{pod['status']['podIP']}:8080/v2/models/digits", timeout=10) as answer:
        assert json.loads(answer.read())["versions"] == ["1.0"]


def _controller_log(env: RealEnv, pod: str) -> str:
    from edgekit.rehearsal import gobuild

    logs = subprocess.run([str(gobuild.binary("kubectl")), f"--kubeconfig={env.kubeconfig}", "-n",
                           names.DEFAULT_NAMESPACE, "logs", pod, "-c", "controller", "--tail", "200"],
                          capture_output=True, text=True, timeout=60)
    return logs.stdout + logs.stderr


def test_the_controller_pod_runs_a_detached_rollout_to_the_end(real_env: RealEnv) -> None:
    """(f) ``edgekit controller`` from the image built here (``edgekit dev controller-image``), deployed
    from fleet-manifests/controller on a real node, runs a rollout that ``push --detach`` only created.

    It talks to the API server only as its ServiceAccount ``edgekit-engine`` (a bound token the
    kubelet mounts; the pod holds no other credential), so the RBAC of ``edgekit install`` and the
    admission policy are what allow or refuse each of its requests. The dev-cluster differences
    (host network, the API server's address, the plain test broker) are ``rehearsal.devcontroller``'s.
    """
    import yaml

    from edgekit.rehearsal import gobuild
    from edgekit.rehearsal.devcontroller import TOKEN_DIR, dev_controller

    env, app, node = real_env, f"ctl-{RUN}", REAL[0]
    namespace = names.DEFAULT_NAMESPACE
    deployments = f"/apis/apps/v1/namespaces/{namespace}/deployments"
    image = json.loads(_ok(_edgekit("dev", "controller-image", "push", "--registry", env.registry.host,
                                    "--output", "json", timeout=3000), "dev controller-image push"))["pushed"]
    rendered = _ok(subprocess.run([str(gobuild.binary("kubectl")), "kustomize", str(ROOT / "fleet-manifests" /
                                                                                 "controller")],
                                  capture_output=True, text=True, timeout=120, check=False), "kubectl kustomize")
    product = next(d for d in yaml.safe_load_all(rendered) if d and d["kind"] == "Deployment")
    server = yaml.safe_load(env.kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    api_host, _, api_port = server.removeprefix("https://").partition(":")
    deployment = dev_controller(product, image=image, api_host=api_host, api_port=int(api_port), node=node, env={
        "EDGEKIT_FLEET_BROKERS": env.broker_url, "EDGEKIT_FLEET_INTERVAL": "1",
        "EDGEKIT_ROLLOUT_AGENT_IMAGE": env.agent_image, "EDGEKIT_ROLLOUT_AGENT_BROKER": env.broker_url,
        "EDGEKIT_ROLLOUT_MQTT_AUTH": "none", "EDGEKIT_ROLLOUT_TELEMETRY_INTERVAL": "1",
        "EDGEKIT_ROLLOUT_REGISTRY_INSECURE": "1", "EDGEKIT_REGISTRY_INSECURE": "1"})
    pod_spec = deployment["spec"]["template"]["spec"]
    container = pod_spec["containers"][0]
    # No credential but the ServiceAccount's token: no kubeconfig, no token other than the projected one.
    assert pod_spec["serviceAccountName"] == "edgekit-engine"
    assert not any(e["name"] == "KUBECONFIG" for e in container["env"])
    assert [m["mountPath"] for m in container["volumeMounts"] if "serviceaccount" in m["mountPath"]] == [TOKEN_DIR]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True

    _prepare_spool(app)
    name = deployment["metadata"]["name"]
    try:
        env.client.request("POST", deployments, body=deployment)
        started = time.monotonic()
        argv = ["push", f"{env.registry.host}/models/digits:1.0", "--group", GROUP, "--app", app, "--detach",
                "--waves", "1,100%", "--bake", "3s", "--wave-timeout", "180s", "--max-error-rate", "10%",
                "--agent-image", env.agent_image, "--agent-broker", env.broker_url, "--mqtt-auth", "none",
                "--insecure-registry", "--output", "json"]
        created = EdgeRollout.from_json(json.loads(_ok(_edgekit(*argv, env=env.env()), "push --detach")))
        assert created.active, created.status  # created, left to the controller
        path = f"/apis/{names.API_VERSION}/namespaces/{namespace}/edgerollouts/{created.name}"
        deadline = time.monotonic() + 900
        ro = created
        while True:
            ro = EdgeRollout.from_json(env.client.get(path))
            if not ro.active or time.monotonic() > deadline:
                break
            time.sleep(2)
        pods = env.client.list(f"/api/v1/namespaces/{namespace}/pods",
                               label_selector=f"app.kubernetes.io/name={name}")
        logs = "\n".join(_controller_log(env, p["metadata"]["name"]) for p in pods)
        assert ro.status.phase == "Succeeded", (f"{ro.status}\n--- controller pods: "
                                                + json.dumps([p["status"] for p in pods])[:4000] + "\n" + logs)
        print(f"controller image {image}; detached rollout {created.name} Succeeded "
              f"{time.monotonic() - started:.0f}s after the Deployment was created", file=sys.stderr)
        # The controller ran it, on the real node, and the real agents it rendered serve the model.
        running = [p for p in pods if p["status"].get("phase") == "Running"]
        assert [p["spec"]["nodeName"] for p in running] == [node], [p["status"] for p in pods]
        assert running[0]["spec"]["containers"][0]["image"] == image
        assert created.name in logs, logs
        env.wait_ready(app, revision_of(env.images["1.0"]), timeout=120)
    finally:  # the later tests of the module run their own engines
        if env.client.get_or_none(f"{deployments}/{name}") is not None:
            env.client.request("DELETE", f"{deployments}/{name}")
        shutil.rmtree(SPOOL_ROOT / app, ignore_errors=True)
