"""The fleet simulator: one virtual device per (KWOK) node that runs an edgekit pod.

It follows Kubernetes through one pod list + watch. When a node's edgekit pod is replaced by a pod
of another revision (the rollout engine relabelled the node), the device's agent stops as a real
one would (final health, offline status, clean disconnect) and a new one starts on the new model:
fetched once from the registry by the digest in the pod spec, loaded once into a shared
onnxruntime session, each device then with its own MQTT connection, last will and session id.
A device takes the layer of its node's platform (labels ``kubernetes.io/os`` and ``/arch``), so an
image with a layer per platform runs its arm64 build on arm64 nodes and its amd64 build on amd64.

Threads: the pod watch; a reconciler (placements -> devices, starts/stops in a small pool); one
scheduler that steps every device (inference at ``rate`` per second, ``tick`` for health). The
publishers' network loops are the agent's own (one per device).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import json
import logging
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgekit.errors import EdgekitError
from edgekit.kube import names
from edgekit.kube.client import KubeClient
from edgekit.rehearsal.sim.devices import Placement, VirtualDevice
from edgekit.rehearsal.sim.faults import Fault, FaultBook
from edgekit.rehearsal.sim.models import ModelStore
from edgekit.rollout.watching import ListWatch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SimSettings:
    broker_url: str | None
    cache_dir: Path
    topic_root: str = "edgekit/v1"
    interval: float = 1.0          # health report interval of every device
    rate: float = 1.0              # inferences per second per device (throttled on purpose)
    namespace: str | None = None   # only pods of this namespace (None: all)
    app: str | None = None         # only pods of this app
    public_key: str | None = None  # devices verify with it, as the agent does
    allow_unsigned: bool = False   # without a key: devices run unsigned images (refused otherwise)
    registry_options: Any = None
    restart_delay: float = 1.0     # crash loop: seconds dead before the agent comes back
    seed: int = 0
    workers: int = 32              # device starts and (graceful, slow) stops run in parallel
    inputs: Any = None             # live inputs: an array whose rows are requests (None: the probe's)
    # nodes whose pods a real agent container runs (real kubelets in a mixed group): simulating them
    # too would publish a second, made-up device under the same name
    skip_nodes: frozenset[str] = frozenset()


def placements_from_pods(pods: list[dict[str, Any]], app: str | None = None) -> dict[str, Placement]:
    """Pure: what runs where. One placement per node: its newest live edgekit pod."""
    best: dict[str, tuple[str, Placement]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        spec = pod.get("spec") or {}
        node = spec.get("nodeName")
        pod_app = labels.get(names.APP_LABEL)
        revision = labels.get(names.REVISION_LABEL)
        image = (meta.get("annotations") or {}).get(names.IMAGE_ANNOTATION)
        if not node or not pod_app or not revision or not image or meta.get("deletionTimestamp"):
            continue
        if app is not None and pod_app != app:
            continue
        if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
            continue
        group = "default"
        for container in spec.get("containers") or []:
            for env in container.get("env") or []:
                if env.get("name") == "EDGEKIT_AGENT_GROUP" and env.get("value"):
                    group = env["value"]
        created = meta.get("creationTimestamp") or ""
        annotations = meta.get("annotations") or {}
        shadow = annotations.get(names.SHADOW_ANNOTATION) or None
        try:
            knobs = json.loads(annotations.get(names.SHADOW_SETTINGS_ANNOTATION) or "{}")
        except ValueError:
            knobs = {}
        placement = Placement(node, pod_app, revision, image, group, meta.get("name", ""), shadow,
                              float(knobs.get("ratio", 0.1)), str(knobs.get("metric", "top1")))
        if node not in best or created >= best[node][0]:
            best[node] = (created, placement)
    return {node: p for node, (_, p) in best.items()}


@dataclass
class _Slot:
    """A node's device (or why it has none)."""

    placement: Placement | None = None
    device: VirtualDevice | None = None
    state: str = "idle"            # idle | starting | running | offline | crashed | failed | stopping
    since: float = field(default_factory=time.monotonic)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Simulator:
    def __init__(self, client: KubeClient, settings: SimSettings, faults: FaultBook | None = None) -> None:
        self.client = client
        self.settings = settings
        self.faults = faults or FaultBook()
        self.models = ModelStore(settings.cache_dir, registry_options=settings.registry_options,
                                 public_key=settings.public_key, allow_unsigned=settings.allow_unsigned)
        self.slots: dict[str, _Slot] = {}
        self._heap: list[tuple[float, int, str, VirtualDevice]] = []
        self._heap_lock = threading.Lock()
        self._seq = itertools.count()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=settings.workers, thread_name_prefix="sim-life")
        self._threads: list[threading.Thread] = []
        self._watch: ListWatch | None = None
        self._rng = random.Random(settings.seed)
        self._fault_version = -1
        self._platforms: dict[str, str | None] = {}  # node -> os/arch (None: not labelled)
        self.starts = 0
        self.stops = 0

    # --- lifecycle --------------------------------------------------------------------------
    def start(self) -> Simulator:
        selector = ",".join(f"{k}={v}" for k, v in names.MANAGED_BY_LABELS.items())
        if self.settings.app:
            selector += f",{names.APP_LABEL}={self.settings.app}"
        path = f"/api/v1/namespaces/{self.settings.namespace}/pods" if self.settings.namespace else "/api/v1/pods"
        self._watch = ListWatch(self.client, path, label_selector=selector, on_change=self._wake.set).start()
        for target, name in ((self._reconcile_loop, "sim-reconcile"), (self._run_loop, "sim-run")):
            thread = threading.Thread(target=target, name=name, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def stop(self, *, graceful: bool = False) -> None:
        """Stop every device: graceful (offline status, clean disconnect) or as a power cut would."""
        if not graceful:  # every agent would log its lost connection: expected here, so keep quiet
            logging.getLogger("edgekit_agent").setLevel(logging.ERROR)
        self._stop.set()
        self._wake.set()
        for thread in self._threads:
            thread.join(5)
        if self._watch is not None:
            self._watch.close()
        devices = [s.device for s in self.slots.values() if s.device is not None]
        list(self._pool.map(lambda d: d.stop(graceful=graceful), devices))
        self._pool.shutdown(wait=True)
        self.models.close()

    def __enter__(self) -> Simulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- reading ----------------------------------------------------------------------------
    def summary(self) -> dict[str, Any]:
        states: Counter[str] = Counter()
        revisions: Counter[str] = Counter()
        inferences = errors = 0
        for slot in list(self.slots.values()):
            states[slot.state] += 1
            if slot.state == "running" and slot.placement is not None:
                revisions[slot.placement.revision] += 1
            if slot.device is not None:
                inferences += slot.device.inferences
                errors += slot.device.errors
        return {"devices": len(self.slots), "states": dict(states), "running_by_revision": dict(revisions),
                "inferences": inferences, "errors": errors, "starts": self.starts, "stops": self.stops,
                "faults": self.faults.to_json()}

    def running(self, revision: str | None = None) -> list[str]:
        return sorted(n for n, s in self.slots.items() if s.state == "running" and s.placement is not None
                      and (revision is None or s.placement.revision == revision))

    def wait_for(self, predicate: Callable[[Simulator], bool], timeout: float = 60.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate(self):
                return True
            time.sleep(0.1)
        return predicate(self)

    # --- reconciling: placements -> devices ---------------------------------------------------
    def _reconcile_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.5)
            self._wake.clear()
            try:
                self._reconcile()
            except Exception:  # the simulator keeps going; a bad pod must not stop the fleet
                log.exception("sim: reconcile failed")

    def _reconcile(self) -> None:
        assert self._watch is not None
        wanted = self._with_platforms({node: p for node, p in placements_from_pods(
            self._watch.snapshot(), self.settings.app).items() if node not in self.settings.skip_nodes})
        now = time.monotonic()
        fault_changed = self.faults.version != self._fault_version
        self._fault_version = self.faults.version
        for node in set(wanted) | set(self.slots):
            slot = self.slots.setdefault(node, _Slot())
            want = wanted.get(node)
            if slot.state in ("starting", "stopping"):
                continue
            restart = (slot.state == "crashed" and now - slot.since >= self.settings.restart_delay) or (
                want is not None and (slot.state == "idle" or (slot.state == "failed" and now - slot.since >= 2.0)))
            if want != slot.placement or restart:
                self._transition(node, slot, want)
            elif fault_changed and slot.device is not None and slot.placement is not None:
                slot.device.fault = self._fault_for(slot.placement, slot.device.loaded.meta.version)
        for node in [n for n, s in self.slots.items() if s.placement is None and s.state == "idle"]:
            self.slots.pop(node, None)

    def _with_platforms(self, placements: dict[str, Placement]) -> dict[str, Placement]:
        """Each placement with its node's platform. Nodes never change architecture: they are read
        once, in one list call when some node is new."""
        unknown = [n for n in placements if n not in self._platforms]
        if unknown:
            try:
                found = self.client.list("/api/v1/nodes")
            except EdgekitError as exc:  # come back on the next pass
                log.warning("sim: cannot read the nodes' platforms: %s", exc.one_line())
                found, unknown = [], []
            for node in found:
                meta = node.get("metadata") or {}
                labels = meta.get("labels") or {}
                if meta.get("name") and (arch := labels.get(names.ARCH_LABEL)):
                    self._platforms[meta["name"]] = f"{labels.get(names.OS_LABEL) or 'linux'}/{arch}"
            for name in unknown:
                self._platforms.setdefault(name, None)
        return {n: replace(p, platform=self._platforms.get(n)) for n, p in placements.items()}

    def _fault_for(self, placement: Placement, version: str | None) -> Fault:
        return self.faults.for_model(revision=placement.revision, digest=placement.image.rsplit("@", 1)[-1],
                                     version=version)

    def _transition(self, node: str, slot: _Slot, want: Placement | None) -> None:
        if want is not None:
            loaded = self.models.ready(want.image, want.platform)
            if loaded is None:
                if self.models.error(want.image, want.platform) is not None:
                    slot.state, slot.since, slot.placement = "failed", time.monotonic(), want
                    self._stop_device(slot)
                return  # fetching: come back when it is there
            if want.shadow and self.models.ready(want.shadow, want.platform) is None and \
                    self.models.error(want.shadow, want.platform) is None:
                return  # the shadow candidate is fetching: come back too
        slot.state = "stopping" if slot.device is not None else "starting"
        old = slot.device
        self._pool.submit(self._switch, node, slot, old, want)

    def _stop_device(self, slot: _Slot) -> None:
        device, slot.device = slot.device, None
        if device is not None:  # the scheduler skips devices that are no longer in their slot
            self._pool.submit(device.stop)

    def _switch(self, node: str, slot: _Slot, old: VirtualDevice | None, want: Placement | None) -> None:
        try:
            if old is not None:
                with slot.lock:
                    slot.device = None
                old.stop(graceful=True)
                self.stops += 1
            slot.placement = want
            if want is None:
                slot.state, slot.since = "idle", time.monotonic()
                return
            loaded = self.models.ready(want.image, want.platform)
            if loaded is None:
                slot.state, slot.since = "failed", time.monotonic()
                return
            fault = self._fault_for(want, loaded.meta.version)
            if fault.offline_for(node, want.revision):
                slot.state, slot.since = "offline", time.monotonic()
                return
            if fault.probe_fail:
                loaded = self.models.with_failing_probe(loaded)
            # a candidate that failed to fetch or verify: the agent serves on without a shadow
            shadow = self.models.ready(want.shadow, want.platform) if want.shadow else None
            device = VirtualDevice(want, loaded, fault, broker_url=self.settings.broker_url,
                                   interval=self.settings.interval, topic_root=self.settings.topic_root,
                                   rate=self.settings.rate, rng=random.Random(f"{self.settings.seed}/{node}"),
                                   shadow=shadow, inputs=self.settings.inputs, extra_settings=self._agent_trust)
            device.start()
            self.starts += 1
            with slot.lock:
                slot.device = device
            slot.state, slot.since = "running", time.monotonic()
            with self._heap_lock:
                heapq.heappush(self._heap, (time.monotonic(), next(self._seq), node, device))
        except Exception as exc:  # one device failing must not stop the others
            log.warning("sim: %s: %s", node, exc)
            slot.state, slot.since = "failed", time.monotonic()
        finally:
            self._wake.set()

    @property
    def _agent_trust(self) -> dict[str, Any]:
        """What each device's agent verifies with, as the simulator does (the bench fetches with it)."""
        options = self.settings.registry_options
        return {"public_key": self.settings.public_key, "allow_unsigned": self.settings.allow_unsigned,
                "registry_insecure": bool(getattr(options, "insecure", False)),
                "registry_ca_file": getattr(options, "ca_file", None)}

    # --- running: step every device -----------------------------------------------------------
    def _run_loop(self) -> None:
        while not self._stop.is_set():
            with self._heap_lock:
                item = self._heap[0] if self._heap else None
            now = time.monotonic()
            if item is None or item[0] > now:
                self._stop.wait(min(0.05, item[0] - now) if item is not None else 0.05)
                continue
            with self._heap_lock:
                _, _, node, device = heapq.heappop(self._heap)
            slot = self.slots.get(node)
            if slot is None or slot.device is not device or not device.alive:
                continue  # replaced or stopped
            fault = device.fault
            if fault.crash_loop and now - device.started >= fault.crash_every:
                with slot.lock:
                    slot.device = None
                device.stop(graceful=False)
                slot.state, slot.since = "crashed", time.monotonic()
                self._wake.set()
                continue
            with slot.lock:
                if slot.device is not device:
                    continue
                try:
                    nxt = device.step(now)
                except Exception as exc:
                    log.debug("sim: %s step: %s", node, exc)
                    nxt = now + 1.0
            with self._heap_lock:
                heapq.heappush(self._heap, (nxt, next(self._seq), node, device))


@contextlib.contextmanager
def running_simulator(client: KubeClient, settings: SimSettings, faults: FaultBook | None = None) -> Any:
    sim = Simulator(client, settings, faults).start()
    try:
        yield sim
    finally:
        sim.stop()
