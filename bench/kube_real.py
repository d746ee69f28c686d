"""Real-node figures (issue 13) for ``bench/kube.py --real``: the edgekit-agent image as a real
container on a real kubelet (own containerd 2.x, runc, CNI bridge) of a local control plane.

Set-up (not timed): a registry and a broker on the host's address (a pod reaches the host through
its bridge gateway), the agent image from the builder's cache pushed there, the digits model signed,
a control plane and one real node, the hostPath spool prepared. Then, ``rounds`` times each:

(f) relabel to Ready, the model image already on the node: the node's rollout label is set and the
    time until the pod is Ready (readiness = model verified and golden probe passed) is taken from
    this script's own polling of the API; between rounds the label is removed and the pod is gone.
    Image volume and init container each; the first relabel of each (it pulls) is shown apart.
(g) cold pull of a 10 MB model: each round a model never seen by the node (10 MB of random weights,
    so gzip cannot shrink it), relabel to Ready; image volume (containerd pulls) and init container
    (``edgekit-agent fetch`` pulls) each.
(h) agent container start to Ready: from the first poll that sees the agent container running to
    the first 200 of the agent's own /v2/health/ready (polled by this script on the pod's IP), and
    to the pod's Ready condition as the API shows it (the kubelet's readiness probe runs every 5 s).
(i) memory: the agent container's main process, VmRSS from ``/proc/<pid>/status`` (the process found
    through its cgroup, which names the pod's UID) and its memory cgroup's ``rss`` (memory.stat),
    beside a bare process on this host that imports onnxruntime, loads the same model and runs it once.
(j) agent image size per platform, from the cached OCI index's blobs.

Medians with min-max over the rounds; load average before and after.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
for _path in (ROOT, ROOT / "agent"):
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

from edgekit.kube import label_nodes, names, rollout_label  # noqa: E402
from edgekit.kube.client import KubeClient  # noqa: E402
from edgekit.kube.deploying import deploy_revision, install  # noqa: E402
from edgekit.kube.groups import parse_group  # noqa: E402
from edgekit.kube.rendering import RenderSettings  # noqa: E402
from edgekit.rehearsal import demoreal  # noqa: E402
from edgekit.rehearsal.cluster import Cluster  # noqa: E402
from edgekit.rehearsal.mosquitto import MosquittoBroker  # noqa: E402
from edgekit.rehearsal.realnodes import RealNodes  # noqa: E402
from edgekit.rehearsal.registry import DockerRegistry  # noqa: E402
from edgekit.rollout.resource import revision_for  # noqa: E402

POOL = "bench"
PASSWORD = b"bench"
CREATED = "2026-01-01T00:00:00Z"
COLD_MB = 10
Say = Callable[[str], None]


@dataclass
class Observed:
    """One relabel, as this script saw it (monotonic seconds from the relabel)."""

    ready: float                    # pod condition Ready=True
    running: float | None = None    # agent container running
    agent_ready: float | None = None  # the agent's /v2/health/ready answered 200
    pod: dict[str, Any] = field(default_factory=dict)


@dataclass
class Env:
    address: str
    registry: DockerRegistry
    broker: MosquittoBroker
    client: KubeClient
    node: str
    agent_image: str
    key: Any
    public_pem: str
    work: Path
    apps: list[str] = field(default_factory=list)

    def settings(self, app: str, image: str, source: str) -> RenderSettings:
        return RenderSettings(app=app, image=image, group=parse_group(POOL), agent_image=self.agent_image,
                              model_source=source,  # type: ignore[arg-type]
                              broker_url=f"mqtt://{self.address}:{self.broker.port}", mqtt_auth="none",
                              registry_insecure=True, public_key_pem=self.public_pem, telemetry_interval=1.0)

    def pods(self, app: str) -> list[dict[str, Any]]:
        return [p for p in self.client.list(f"/api/v1/namespaces/{names.DEFAULT_NAMESPACE}/pods",
                                            label_selector=f"{names.APP_LABEL}={app}")
                if p["spec"].get("nodeName") == self.node]

    def deploy(self, app: str, image: str, source: str) -> str:
        if app not in self.apps:
            self.apps.append(app)
            demoreal.prepare_spool(app)
        deploy_revision(self.client, self.settings(app, image, source))
        return revision_for(image.rsplit("@", 1)[1])

    def relabel(self, app: str, revision: str, timeout: float = 300) -> Observed:
        t0 = time.monotonic()
        label_nodes(self.client, [self.node], {rollout_label(app): revision})
        running = agent_ready = None
        while True:
            now = time.monotonic() - t0
            live = [p for p in self.pods(app) if not p["metadata"].get("deletionTimestamp")
                    and p["metadata"].get("labels", {}).get(names.REVISION_LABEL) == revision]
            for pod in live:
                status = pod.get("status") or {}
                agent = next((c for c in status.get("containerStatuses") or [] if c["name"] == "agent"), None)
                if running is None and agent and "running" in (agent.get("state") or {}):
                    running = now
                if running is not None and agent_ready is None and status.get("podIP"):
                    url = f"http://{status['podIP']}:8080/v2/health/ready"
                    with suppress(OSError), urllib.request.urlopen(url, timeout=1) as answer:
                        if answer.status == 200:
                            agent_ready = time.monotonic() - t0
                if any(c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions") or []):
                    return Observed(now, running, agent_ready, pod)
            if now > timeout:
                raise SystemExit(f"{app} {revision} not Ready on {self.node} after {timeout:.0f}s: "
                                 + json.dumps([p.get("status") for p in live])[:3000])
            time.sleep(0.1)

    def unlabel(self, app: str, timeout: float = 120) -> None:
        label_nodes(self.client, [self.node], {rollout_label(app): None})
        deadline = time.monotonic() + timeout
        while self.pods(app):
            if time.monotonic() > deadline:
                raise SystemExit(f"{app} pod still on {self.node} {timeout:.0f}s after its label was removed")
            time.sleep(0.2)

    def model_image(self, model: Path, version: str) -> str:
        """Package, push and sign ``model``; returns its reference by digest."""
        from edgekit_agent.oci.reference import parse_reference
        from edgekit_agent.oci.registry import RegistryOptions

        from edgekit.image.building import PackageSettings, package
        from edgekit.image.pushing import push_layout
        from edgekit.image.signing import sign_image

        layout = self.work / "layouts" / version
        package(model, PackageSettings(name="bench", version=version, created=CREATED), layout, force=True)
        options = RegistryOptions(insecure=True)
        result = push_layout(layout, parse_reference(f"{self.registry.host}/models/bench:{version}"), options=options)
        image = f"{self.registry.host}/models/bench@{result.digest}"
        sign_image(parse_reference(image), self.key, options=options)
        return image


def random_model(path: Path, megabytes: int, seed: int) -> Path:
    """A MatMul with ``megabytes`` of random float32 weights: incompressible, so the pull moves it all."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    side = int((megabytes * 2**20 / 4) ** 0.5)
    weights = np.random.default_rng(seed).standard_normal((side, side), dtype=np.float32) / side
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, side])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, side])],
        initializer=[numpy_helper.from_array(weights, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="edgekit-bench")
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


# --- memory --------------------------------------------------------------------------------------------
def _agent_pid(pod_uid: str) -> int:
    """The agent container's main process: the edgekit-agent process whose cgroup names the pod."""
    marks = (pod_uid, pod_uid.replace("-", "_"))
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with suppress(OSError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            if "edgekit-agent" in cmdline and " serve" in cmdline and \
                    any(m in (entry / "cgroup").read_text() for m in marks):
                return int(entry.name)
    raise SystemExit(f"no edgekit-agent process in the cgroups of pod {pod_uid}")


def _status_mb(pid: int, field_name: str) -> float:
    """A ``/proc/<pid>/status`` figure in MB: VmRSS (all resident pages, the shared libraries' too)
    or RssAnon (the process's own heap and stacks)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field_name}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {field_name} for pid {pid}")


def _onnxruntime_in(pid: int) -> str:
    """The onnxruntime version installed in the container the process runs in (its root, seen from here)."""
    venv = Path(f"/proc/{pid}/root/opt/edgekit-agent/lib")   # the image's venv (Dockerfile.arm64)
    found = sorted(venv.glob("python3*/site-packages/onnxruntime-*.dist-info"))
    return found[0].name.removesuffix(".dist-info").split("-")[1] if found else "?"


def _cgroup_rss_mb(pid: int) -> float | None:
    """The ``rss`` (cgroup v1) or ``anon`` (v2) of the process's memory cgroup."""
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        if controllers == "" or "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup") / ("memory" if controllers else "") / path.lstrip("/")
            with suppress(OSError):
                stat = dict(ln.split() for ln in (base / "memory.stat").read_text().splitlines())
                value = stat.get("rss") or stat.get("anon")
                if value is not None:
                    return int(value) / 2**20
    return None


BARE = """
import sys, numpy as np, onnxruntime as ort
s = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
shape = [d if isinstance(d, int) else 1 for d in i.shape]
s.run(None, {i.name: np.zeros(shape, dtype=np.float32)})
print("loaded", flush=True)
sys.stdin.read()
"""


def bare_rss_mb(model: Path) -> tuple[float, float]:
    """(VmRSS, RssAnon) of a bare onnxruntime process that loaded ``model`` and ran it once, read
    from outside."""
    proc = subprocess.Popen([sys.executable, "-c", BARE, str(model)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "loaded":
            raise SystemExit("the bare onnxruntime process did not load the model")
        return _status_mb(proc.pid, "VmRSS"), _status_mb(proc.pid, "RssAnon")
    finally:
        proc.communicate(timeout=30)


# --- the run ----------------------------------------------------------------------------------------
def _stats(values: Sequence[float], unit: str = "s") -> tuple[str, str]:
    if not values:
        return "-", "-"
    fmt = (lambda v: f"{v:.1f}") if unit == "s" else (lambda v: f"{v:.0f}")
    return fmt(statistics.median(values)), f"{fmt(min(values))}-{fmt(max(values))}"


def _loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


@contextmanager
def real_env(work: Path, say: Say) -> Iterator[Env]:
    from edgekit.image.signing import load_private_key, write_keypair
    from edgekit.rehearsal.agentbuilding import build, build_plan, inspect_built, push

    address = demoreal.host_address()
    if why := demoreal.blocker(1):
        raise SystemExit(f"real nodes cannot run here: {why}")
    assert address is not None
    with ExitStack() as stack:
        registry = type("HostRegistry", (DockerRegistry,), {"host_ip": address})(work / "registry").start()
        stack.callback(registry.stop)
        broker = type("HostBroker", (MosquittoBroker,), {"host": address})(work / "broker").start()
        stack.callback(broker.stop)
        built = inspect_built(build_plan()) or build(say=say)
        agent_image = push(built, registry.host, say=say)
        private, public = write_keypair(work / "release", PASSWORD)
        key = load_private_key(private, PASSWORD)
        cluster = Cluster(work / "cluster").start()
        stack.callback(cluster.stop)
        client = cluster.client()
        stack.callback(client.close)
        install(client, agent_repositories=[agent_image.split("@", 1)[0]], public_key_pem=public.read_text())
        real = RealNodes(work / "real-nodes")
        stack.callback(real.stop)
        (node,) = real.start(cluster, 1, pool=POOL, registries=[registry.host], say=say)
        env = Env(address, registry, broker, client, node, agent_image, key, public.read_text(), work)
        made_root = not demoreal.SPOOL_ROOT.exists()
        try:
            yield env
        finally:
            for app in env.apps:   # the pods go first, then their spool (the nodes stop with the stack)
                with suppress(Exception):
                    env.unlabel(app)
            for app in env.apps:
                demoreal.remove_spool(app, made_root)


def run(rounds: int, console: Console) -> None:
    say: Say = lambda m: None  # noqa: E731
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-real-") as tmp, real_env(Path(tmp), say) as env:
        digits = ROOT / "models" / "digits" / "digits.onnx"
        image = env.model_image(digits, "digits-1.0")
        warm: dict[str, list[float]] = {}
        first: dict[str, float] = {}
        starts: list[Observed] = []
        agent_rss: list[float] = []
        agent_anon: list[float] = []
        cgroup_rss: list[float] = []
        agent_ort = "?"
        for source, app in (("image-volume", "benchvol"), ("init-container", "benchfetch")):
            revision = env.deploy(app, image, source)
            first[source] = env.relabel(app, revision).ready
            env.unlabel(app)
            for _ in range(rounds):
                seen = env.relabel(app, revision)
                warm.setdefault(source, []).append(seen.ready)
                starts.append(seen)
                pid = _agent_pid(seen.pod["metadata"]["uid"])
                agent_rss.append(_status_mb(pid, "VmRSS"))
                agent_anon.append(_status_mb(pid, "RssAnon"))
                agent_ort = _onnxruntime_in(pid)
                if (cg := _cgroup_rss_mb(pid)) is not None:
                    cgroup_rss.append(cg)
                env.unlabel(app)
        bare_runs = [bare_rss_mb(digits) for _ in range(rounds)]

        cold: dict[str, list[float]] = {}
        nonce = int(time.time())
        for source, app in (("image-volume", "benchcoldvol"), ("init-container", "benchcoldfetch")):
            for i in range(rounds):
                model = random_model(env.work / f"cold-{app}-{i}.onnx", COLD_MB, seed=nonce * 100 + i)
                cold_image = env.model_image(model, f"{app}-{nonce}-{i}")
                revision = env.deploy(app, cold_image, source)
                cold.setdefault(source, []).append(env.relabel(app, revision).ready)
                env.unlabel(app)
        size_rows = image_sizes()
    load_after = _loadavg()

    t = Table(title=f"(f) relabel to pod Ready, model already pulled, {rounds} rounds (<= 10 s)", title_justify="left")
    for col in ("model source", "median s", "min-max s", "first relabel s (pulls images)", "vs 10 s"):
        t.add_column(col, justify="left" if col == "model source" else "right")
    for source, values in warm.items():
        med, spread = _stats(values)
        t.add_row(source, med, spread, f"{first[source]:.1f}", f"{statistics.median(values) / 10:.2f}x")
    console.print(t)

    t = Table(title=f"(g) cold pull of a {COLD_MB} MB model, relabel to Ready, {rounds} new models (<= 30 s)",
              title_justify="left")
    for col in ("model source", "median s", "min-max s", "vs 30 s"):
        t.add_column(col, justify="left" if col == "model source" else "right")
    for source, values in cold.items():
        med, spread = _stats(values)
        t.add_row(source, med, spread, f"{statistics.median(values) / 30:.2f}x")
    console.print(t)

    t = Table(title=f"(h) agent container start to Ready ({len(starts)} starts, both model sources)",
              title_justify="left")
    for col in ("from agent container running to", "median s", "min-max s"):
        t.add_column(col, justify="left" if col.startswith("from") else "right")
    own = [s.agent_ready - s.running for s in starts if s.agent_ready is not None and s.running is not None]
    kube = [s.ready - s.running for s in starts if s.running is not None]
    t.add_row("the agent's /v2/health/ready answers 200", *_stats(own))
    t.add_row("pod Ready (kubelet readiness probe, every 5 s)", *_stats(kube))
    console.print(t)

    import onnxruntime

    t = Table(title=f"(i) memory, digits FP32 loaded: {rounds * 2} agent pods (onnxruntime {agent_ort}) vs "
                    f"{rounds} bare processes (onnxruntime {onnxruntime.__version__}); target <= bare + 30 MB",
              title_justify="left")
    for col in ("process", "median MB", "min-max MB", "vs bare"):
        t.add_column(col, justify="left" if col == "process" else "right")
    bare, bare_anon = [b[0] for b in bare_runs], [b[1] for b in bare_runs]
    bare_med, anon_med = statistics.median(bare), statistics.median(bare_anon)
    t.add_row("bare python + onnxruntime, VmRSS", *_stats(bare, "MB"), "-")
    t.add_row("agent container main process, VmRSS", *_stats(agent_rss, "MB"),
              f"{statistics.median(agent_rss) - bare_med:+.0f} MB")
    t.add_row("bare python + onnxruntime, RssAnon", *_stats(bare_anon, "MB"), "-")
    t.add_row("agent container main process, RssAnon", *_stats(agent_anon, "MB"),
              f"{statistics.median(agent_anon) - anon_med:+.0f} MB")
    if cgroup_rss:
        t.add_row("agent container memory cgroup, rss (anon)", *_stats(cgroup_rss, "MB"),
                  f"{statistics.median(cgroup_rss) - anon_med:+.0f} MB")
    console.print(t)

    t = Table(title="(j) agent image per platform, cached OCI index (<= 250 MB compressed)", title_justify="left")
    for col in ("platform", "compressed MB", "unpacked MB", "layers"):
        t.add_column(col, justify="left" if col == "platform" else "right")
    for row in size_rows:
        t.add_row(*row)
    console.print(t)
    console.print(f"load average (1/5/15 min): {load_before} before, {load_after} after; {os.cpu_count()} cores")


def image_sizes() -> list[tuple[str, str, str, str]]:
    from bench.agent_image import sizes
    from edgekit.rehearsal.agentbuilding import build_plan, inspect_built

    built = inspect_built(build_plan())
    if built is None:
        return []
    rows = []
    for platform in built.plan.platforms:
        compressed, unpacked, layers = sizes(built, platform)
        rows.append((f"linux/{platform.arch}", f"{compressed / 1e6:.1f}", f"{unpacked / 1e6:.1f}", str(layers)))
    return rows


if __name__ == "__main__":  # for a quick look: python bench/kube_real.py [ROUNDS]
    run(int(sys.argv[1]) if len(sys.argv) > 1 else 3, Console(width=160))
