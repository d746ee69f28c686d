"""An in-memory cluster behind the engine's ``ClusterPort``: nodes with labels, DaemonSets whose
pods are Ready on the nodes labelled for them, EdgeRollouts stored as the same JSON the API server
would hold, Leases with resourceVersions. Fast engine tests run on it; the end-to-end tests run the
same engine on a real control plane (``edgekit.rollout.kubecluster``).

It counts calls per kind (``calls``) and can be told to fail: ``crash_when(predicate)`` raises
``SimulatedCrash`` (a BaseException, so nothing in the engine catches it) on the call that
matches, which is how tests stop an engine at an exact step.
"""

from __future__ import annotations

import copy
import threading
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import Any

from edgekit.errors import (
    ConfigError,
    EmptyGroupError,
    GroupNotFoundError,
    KubeConflictError,
    RolloutInProgressError,
    RolloutNotFoundError,
)
from edgekit.rollout import resource as r
from edgekit.rollout.gating import TelemetryFigures
from edgekit.rollout.leasing import LeaseRecord
from edgekit.rollout.resource import EdgeRollout, ImageRef, RolloutSpec
from edgekit.rollout.shadowing import ShadowFigures, pool_reports


class SimulatedCrash(BaseException):
    """Raised by the in-memory cluster to stop an engine dead, like SIGKILL would."""


class _Watch:
    def __init__(self, cluster: MemoryCluster, namespace: str, name: str) -> None:
        self.cluster, self.namespace, self.name = cluster, namespace, name
        self._seen = cluster.version

    def latest(self) -> EdgeRollout | None:
        self._seen = self.cluster.version
        return self.cluster.peek(self.namespace, self.name)

    def wait(self, timeout: float) -> bool:
        with self.cluster.changed:
            if self.cluster.version == self._seen:
                self.cluster.changed.wait(timeout)
            return self.cluster.version != self._seen

    def close(self) -> None:
        pass


class _Tracker:
    def __init__(self, cluster: MemoryCluster, namespace: str, app: str, revision: str) -> None:
        self.cluster, self.namespace, self.app, self.revision = cluster, namespace, app, revision

    def ready_nodes(self) -> set[str]:
        return self.cluster.ready_nodes(self.namespace, self.app, self.revision)

    def wait(self, timeout: float) -> bool:
        with self.cluster.changed:
            self.cluster.changed.wait(timeout)
        return True

    def close(self) -> None:
        pass


class MemoryCluster:
    def __init__(self, groups: Mapping[str, Mapping[str, Mapping[str, str]]] | None = None) -> None:
        self.nodes: dict[str, dict[str, str]] = {}
        self.groups: dict[str, set[str]] = {}
        for group, members in (groups or {}).items():
            self.add_group(group, members)
        self.daemonsets: dict[tuple[str, str, str], ImageRef] = {}
        self.rollouts: dict[tuple[str, str], dict[str, Any]] = {}
        self.leases: dict[tuple[str, str], LeaseRecord] = {}
        self.keys: dict[tuple[str, str], str] = {}
        self.never_ready: set[str] = set()
        self.calls: Counter[str] = Counter()
        self.version = 0
        self.changed = threading.Condition()
        self.shadows: dict[tuple[str, str, str], ImageRef] = {}  # shadow DaemonSets: their candidate
        self._crash: Callable[[str, Any], bool] | None = None
        self._crash_error: BaseException | None = None
        self._lock = threading.RLock()

    # --- test controls ----------------------------------------------------------------------
    def add_group(self, group: str, members: Mapping[str, Mapping[str, str]]) -> None:
        self.groups[group] = set(members)
        for name, labels in members.items():
            self.nodes.setdefault(name, {}).update(labels)

    def crash_when(self, predicate: Callable[[str, Any], bool] | None, error: BaseException | None = None) -> None:
        """Fail the first call ``predicate(kind, detail)`` picks: with ``SimulatedCrash``, or with
        ``error`` (an API failure, e.g. a ``KubeUnavailableError``)."""
        self._crash = predicate
        self._crash_error = error

    def _call(self, kind: str, detail: Any = None) -> None:
        self.calls[kind] += 1
        if self._crash is not None and self._crash(kind, detail):
            self._crash = None
            raise self._crash_error or SimulatedCrash(kind)

    def _bump(self) -> None:
        with self.changed:
            self.version += 1
            self.changed.notify_all()

    def peek(self, namespace: str, name: str) -> EdgeRollout | None:
        with self._lock:
            obj = self.rollouts.get((namespace, name))
            return EdgeRollout.from_json(copy.deepcopy(obj)) if obj else None

    def revision_of(self, app: str, node: str) -> str | None:
        return self.nodes[node].get(r.node_label(app))

    def ready_nodes(self, namespace: str, app: str, revision: str) -> set[str]:
        if (namespace, app, revision) not in self.daemonsets:
            return set()
        label = r.node_label(app)
        return {n for n, labels in self.nodes.items() if labels.get(label) == revision} - self.never_ready

    # --- ClusterPort ------------------------------------------------------------------------
    def group_nodes(self, group: str, profile: str = "k3s") -> dict[str, dict[str, str]]:
        self._call("list-nodes")
        if group not in self.groups:
            raise GroupNotFoundError(f"device group {group!r} does not exist")
        if not self.groups[group]:
            raise EmptyGroupError(f"device group {group!r} has no nodes")
        return {n: dict(self.nodes[n]) for n in sorted(self.groups[group])}

    def nodes_on_revision(self, app: str, revision: str) -> list[str]:
        self._call("list-nodes")
        label = r.node_label(app)
        return sorted(n for n, labels in self.nodes.items() if labels.get(label) == revision)

    def relabel_nodes(self, app: str, moves: Mapping[str, str | None]) -> None:
        label = r.node_label(app)
        for node, revision in moves.items():
            self._call("patch-node", node)
            with self._lock:
                if revision is None:
                    self.nodes[node].pop(label, None)
                else:
                    self.nodes[node][label] = revision
        self._bump()

    def ensure_daemonset(self, namespace: str, spec: RolloutSpec, image: ImageRef) -> None:
        self._call("apply-daemonset", image.revision)
        self.daemonsets[(namespace, spec.app, image.revision)] = image
        self._bump()

    def ensure_shadow_daemonset(self, namespace: str, spec: RolloutSpec, serving: ImageRef, revision: str,
                                candidate: ImageRef) -> None:
        self._call("apply-daemonset", revision)
        self.daemonsets[(namespace, spec.app, revision)] = serving
        self.shadows[(namespace, spec.app, revision)] = candidate
        self._bump()

    def daemonset_scheduled(self, namespace: str, app: str, revision: str) -> int | None:
        self._call("get-daemonset")
        if (namespace, app, revision) not in self.daemonsets:
            return None
        return len(self.nodes_on_revision(app, revision))

    def ship_key(self, namespace: str, name: str, pem: str) -> None:
        with self._lock:
            held = self.keys.setdefault((namespace, name), pem)
        if held != pem:
            raise ConfigError(f"ConfigMap {namespace}/{name} holds another public key", field="public_key")

    def delete_daemonset(self, namespace: str, app: str, revision: str) -> None:
        self._call("delete-daemonset", revision)
        self.daemonsets.pop((namespace, app, revision), None)
        self._bump()

    def app_revisions(self, namespace: str, app: str) -> dict[str, ImageRef]:
        self._call("list-daemonsets")
        return {rev: img for (ns, a, rev), img in self.daemonsets.items() if ns == namespace and a == app}

    def track_pods(self, namespace: str, app: str, revision: str) -> _Tracker:
        self._call("watch-pods")
        return _Tracker(self, namespace, app, revision)

    def get_rollout(self, namespace: str, name: str) -> EdgeRollout:
        self._call("get-rollout")
        ro = self.peek(namespace, name)
        if ro is None:
            raise RolloutNotFoundError(f"no EdgeRollout {name} in namespace {namespace}")
        return ro

    def list_rollouts(self, namespace: str, app: str | None = None, group: str | None = None) -> list[EdgeRollout]:
        self._call("list-rollouts")
        with self._lock:
            found = [EdgeRollout.from_json(copy.deepcopy(o)) for (ns, _), o in self.rollouts.items()
                     if ns == namespace]
        return [ro for ro in found if (app is None or ro.spec.app == app) and (group is None or ro.spec.group == group)]

    def create_rollout(self, rollout: EdgeRollout) -> EdgeRollout:
        self._call("create-rollout")
        with self._lock:
            key = (rollout.namespace, rollout.name)
            if key in self.rollouts:
                raise RolloutInProgressError(f"EdgeRollout {rollout.name} already exists")
            self.version += 1
            obj = rollout.to_json()
            obj["metadata"]["resourceVersion"] = str(self.version)
            obj["metadata"]["creationTimestamp"] = r.to_time(float(self.version))
            self.rollouts[key] = obj
        self._bump()
        return self.get_rollout(rollout.namespace, rollout.name)

    def write_status(self, rollout: EdgeRollout) -> EdgeRollout:
        self._call("write-status", rollout.status.phase)
        with self._lock:
            key = (rollout.namespace, rollout.name)
            obj = self.rollouts[key]
            obj["status"] = copy.deepcopy(rollout.to_json()["status"])
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
        self._bump()
        return replace(rollout, resource_version=str(self.version))

    def patch_rollout(self, namespace: str, name: str, *, spec: Mapping[str, Any] | None = None,
                      annotations: Mapping[str, str | None] | None = None) -> EdgeRollout:
        self._call("patch-rollout")
        with self._lock:
            obj = self.rollouts.get((namespace, name))
            if obj is None:
                raise RolloutNotFoundError(f"no EdgeRollout {name} in namespace {namespace}")
            obj["spec"].update(spec or {})
            ann = obj["metadata"].setdefault("annotations", {})
            for k, v in (annotations or {}).items():
                if v is None:
                    ann.pop(k, None)
                else:
                    ann[k] = v
            self.version += 1
            obj["metadata"]["resourceVersion"] = str(self.version)
        self._bump()
        return self.get_rollout(namespace, name)

    def watch_rollout(self, namespace: str, name: str) -> _Watch:
        self._call("watch-rollout")
        return _Watch(self, namespace, name)

    def get_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        self._call("get-lease")
        return self.leases.get((namespace, name))

    def write_lease(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        self._call("write-lease")
        with self._lock:
            current = self.leases.get((namespace, name))
            if (current is None) != (record.resource_version is None) or (
                    current is not None and current.resource_version != record.resource_version):
                raise KubeConflictError(f"lease {name} changed meanwhile")
            self.version += 1
            stored = replace(record, resource_version=str(self.version))
            self.leases[(namespace, name)] = stored
            return stored


class MemoryTelemetry:
    """Fleet telemetry computed from the in-memory cluster: each device runs the image of the
    DaemonSet its node is labelled for and behaves as ``behaviour[digest]`` says
    (``error_rate``, ``p95_ms``, ``probe_ok``, ``inferences`` per window); devices in ``offline``
    are silent and offline. ``device_behaviour[node]`` overrides that for one device whatever it
    runs (a zone under load, a device of the control group). Every window asked for is kept in
    ``asked`` as ``(devices, since, digest)``, so tests see which devices were compared, over which
    window."""

    def __init__(self, cluster: MemoryCluster, app: str, namespace: str = "edgekit",
                 behaviour: Mapping[str, Mapping[str, Any]] | None = None, since: float = 0.0) -> None:
        self.cluster, self.app, self.namespace = cluster, app, namespace
        self.behaviour: dict[str, dict[str, Any]] = {k: dict(v) for k, v in (behaviour or {}).items()}
        self.device_behaviour: dict[str, dict[str, Any]] = {}
        self.offline: set[str] = set()
        self.silent: set[str] = set()
        self.started = since
        self.calls = 0
        self.asked: list[tuple[tuple[str, ...], float, str | None]] = []

    def observing_since(self) -> float:
        return self.started

    def digest_of(self, node: str) -> str | None:
        rev = self.cluster.revision_of(self.app, node)
        image = self.cluster.daemonsets.get((self.namespace, self.app, rev)) if rev else None
        return image.digest if image else None

    def shadow(self, devices: Sequence[str], digest: str, metric: str) -> ShadowFigures:
        """Devices on a shadow DaemonSet of candidate ``digest`` report ``shadow_samples`` (default
        500) samples each, of which ``shadow_agreement`` (behaviour of the candidate) agree."""
        reports: dict[str, dict[str, Any]] = {}
        for device in devices:
            rev = self.cluster.revision_of(self.app, device)
            candidate = self.cluster.shadows.get((self.namespace, self.app, rev)) if rev else None
            if candidate is None or device in self.offline or device in self.silent:
                continue
            b = self.behaviour.get(candidate.digest, {})
            n = int(b.get("shadow_samples", 500))
            agree = round(n * float(b.get("shadow_agreement", 1.0)))
            reports[device] = {"digest": candidate.digest, "metric": metric, "samples": n, "errors": 0,
                               "agreement": {"metric": metric, "value": agree / n if n else None, "agree": agree,
                                             "sum": float(agree), "sum_sq": float(agree)}}
        return pool_reports(devices, reports, digest, metric)

    def window(self, devices: Sequence[str], since: float, digest: str | None) -> TelemetryFigures:
        self.calls += 1
        self.asked.append((tuple(devices), since, digest))
        reported, silent, offline, on, off = [], [], [], [], []
        inferences = errors = probe_failures = 0
        p95s: list[float] = []
        for device in devices:
            current = self.digest_of(device)
            if device in self.offline or device in self.silent or current is None:
                silent.append(device)
                if device in self.offline:
                    offline.append(device)
                continue
            reported.append(device)
            if digest is not None and current != digest:
                off.append(device)
                continue
            on.append(device)
            b = self.device_behaviour.get(device) or self.behaviour.get(current, {})
            # enough inferences per window for the error-rate test to decide on one device
            n = int(b.get("inferences", 1000))
            inferences += n
            errors += round(n * float(b.get("error_rate", 0.0)))
            p95s.append(float(b.get("p95_ms", 5.0)))
            probe_failures += 0 if b.get("probe_ok", True) else 1
        p95 = max(p95s) if p95s else None
        return TelemetryFigures(
            expected=len(devices), reported=len(reported), on_digest=len(on), off_digest=len(off),
            inferences=inferences, errors=errors, error_rate=errors / inferences if inferences else None,
            p50_ms=p95, p95_ms=p95, p99_ms=p95, probe_failures=probe_failures,
            silent=tuple(sorted(silent)), offline=tuple(sorted(offline)))
