"""The EdgeRollout resource (``edgekit.io/v1alpha1``) as plain typed data, with the CRD's JSON.

The engine keeps every piece of its state here, written before it acts, so any process can pick a
rollout up: the frozen wave plan (nodes per wave and the revision each node came from), each
wave's step, baseline, last verdict with its figures, the lease of the engine running it, and a
history of what happened. Times are kept as RFC 3339 strings in the JSON and as Unix seconds here.

Rollout phases::

    Pending -> Progressing <-> Paused
                    |  \\
                    |   RollingBack -> RolledBack
                    v
                Succeeded

Wave steps (written before the action they name)::

    Pending -> Moving (relabel) -> Waiting (pods Ready) -> Baking (bake + gate) -> Passed
                                                                        \\-> Failed (rolled back)
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from edgekit.rollout.gating import Baseline, TelemetryFigures, Verdict
from edgekit.rollout.strategy import Strategy

GROUP = "edgekit.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "EdgeRollout"
PLURAL = "edgerollouts"

LABEL_APP = "edgekit.io/app"
LABEL_GROUP = "edgekit.io/group"
LABEL_ACTIVE = "edgekit.io/active"

PENDING, PROGRESSING, PAUSED = "Pending", "Progressing", "Paused"
ROLLING_BACK, ROLLED_BACK, SUCCEEDED = "RollingBack", "RolledBack", "Succeeded"
ACTIVE_PHASES = (PENDING, PROGRESSING, PAUSED, ROLLING_BACK)
TERMINAL_PHASES = (ROLLED_BACK, SUCCEEDED)

W_PENDING, W_MOVING, W_WAITING, W_BAKING, W_PASSED, W_FAILED = (
    "Pending", "Moving", "Waiting", "Baking", "Passed", "Failed")


def node_label(app: str) -> str:
    """The node label that picks an app's revision: ``rollout.edgekit.io/<app>=<revision>``."""
    return f"rollout.edgekit.io/{app}"


def to_time(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_time(text: str | float | None) -> float | None:
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)):
        return float(text)
    value = text.replace("Z", "+00:00")
    return dt.datetime.fromisoformat(value).timestamp()


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    # Server-side apply reads an explicit null as "remove"; leave unset fields out instead.
    return {k: v for k, v in d.items() if v is not None}


@dataclass
class ImageRef:
    """An image pinned by digest, with the revision name derived from it."""

    image: str
    digest: str
    revision: str

    def to_json(self) -> dict[str, Any]:
        return {"image": self.image, "digest": self.digest, "revision": self.revision}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> ImageRef | None:
        if not d:
            return None
        return cls(d["image"], d.get("digest", ""), d["revision"])


@dataclass
class RolloutSpec:
    app: str
    group: str
    target: ImageRef
    strategy: Strategy
    namespace: str = "edgekit-system"
    previous: ImageRef | None = None   # the revision most of the group ran before (for undo)
    paused: bool = False
    abort: bool = False
    promote: int = 0                    # bumped by ``edgekit rollout promote``
    undo_of: str | None = None

    def to_json(self) -> dict[str, Any]:
        return _drop_none({
            "app": self.app, "group": self.group, "namespace": self.namespace,
            "image": self.target.image, "digest": self.target.digest, "revision": self.target.revision,
            "previous": self.previous.to_json() if self.previous else None,
            "strategy": self.strategy.to_json(), "paused": self.paused, "abort": self.abort,
            "promote": self.promote, "undoOf": self.undo_of,
        })

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RolloutSpec:
        return cls(
            app=d["app"], group=d["group"], namespace=d.get("namespace", "edgekit-system"),
            target=ImageRef(d["image"], d.get("digest", ""), d["revision"]),
            previous=ImageRef.from_json(d.get("previous")),
            strategy=Strategy.from_json(d.get("strategy") or {}),
            paused=bool(d.get("paused", False)), abort=bool(d.get("abort", False)),
            promote=int(d.get("promote", 0)), undo_of=d.get("undoOf"),
        )


@dataclass
class WaveStatus:
    index: int
    target: str
    nodes: list[str]
    from_revisions: dict[str, str | None]   # node -> revision label before the move (None: none)
    phase: str = W_PENDING
    zones: dict[str, int] = field(default_factory=dict)
    moved_at: float | None = None
    ready_at: float | None = None
    ready: int = 0
    promoted: bool = False
    baseline: Baseline | None = None
    telemetry: TelemetryFigures | None = None
    verdict: Verdict | None = None
    verdict_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        # Group the from-revisions so 500 nodes cost one list, not 500 keys.
        by_rev: dict[str, list[str]] = {}
        for node in self.nodes:
            by_rev.setdefault(self.from_revisions.get(node) or "", []).append(node)
        return _drop_none({
            "index": self.index, "target": self.target, "phase": self.phase, "nodes": list(self.nodes),
            "from": by_rev, "zones": self.zones or None, "movedAt": to_time(self.moved_at),
            "readyAt": to_time(self.ready_at), "ready": self.ready, "promoted": self.promoted or None,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "telemetry": self.telemetry.to_json() if self.telemetry else None,
            "verdict": self.verdict.to_json() if self.verdict else None,
            "verdictAt": to_time(self.verdict_at),
        })

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> WaveStatus:
        from_revisions: dict[str, str | None] = {}
        for rev, nodes in (d.get("from") or {}).items():
            for node in nodes:
                from_revisions[node] = rev or None
        return cls(
            index=int(d["index"]), target=str(d.get("target", "")), nodes=list(d.get("nodes", ())),
            from_revisions=from_revisions, phase=d.get("phase", W_PENDING), zones=dict(d.get("zones") or {}),
            moved_at=from_time(d.get("movedAt")), ready_at=from_time(d.get("readyAt")),
            ready=int(d.get("ready", 0)), promoted=bool(d.get("promoted", False)),
            baseline=Baseline.from_json(d.get("baseline")),
            telemetry=TelemetryFigures.from_json(d["telemetry"]) if d.get("telemetry") else None,
            verdict=Verdict.from_json(d["verdict"]) if d.get("verdict") else None,
            verdict_at=from_time(d.get("verdictAt")),
        )


@dataclass
class HistoryEntry:
    at: float
    event: str
    message: str
    wave: int | None = None

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"at": to_time(self.at), "event": self.event, "wave": self.wave,
                           "message": self.message})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> HistoryEntry:
        return cls(from_time(d["at"]) or 0.0, d["event"], d.get("message", ""), d.get("wave"))


@dataclass
class Owner:
    """The engine that holds the rollout: a lease renewed with every status write."""

    holder: str
    renewed_at: float
    lease_s: float

    def expired(self, now: float) -> bool:
        return now > self.renewed_at + self.lease_s

    def to_json(self) -> dict[str, Any]:
        return {"holder": self.holder, "renewedAt": to_time(self.renewed_at), "leaseSeconds": self.lease_s}

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Owner | None:
        if not d or not d.get("holder"):
            return None
        return cls(d["holder"], from_time(d.get("renewedAt")) or 0.0, float(d.get("leaseSeconds", 15)))


@dataclass
class RolloutStatus:
    phase: str = PENDING
    current_wave: int = 0
    message: str = ""
    waves: list[WaveStatus] = field(default_factory=list)
    owner: Owner | None = None
    started_at: float | None = None
    finished_at: float | None = None
    promotes_seen: int = 0
    rollback_reason: str | None = None
    rollback_gate: str | None = None
    rollback_started_at: float | None = None
    relabelled_back_at: float | None = None
    history: list[HistoryEntry] = field(default_factory=list)

    @property
    def moved_nodes(self) -> list[str]:
        return [n for w in self.waves if w.phase != W_PENDING for n in w.nodes]

    def to_json(self) -> dict[str, Any]:
        return _drop_none({
            "phase": self.phase, "currentWave": self.current_wave, "message": self.message,
            "waves": [w.to_json() for w in self.waves], "owner": self.owner.to_json() if self.owner else None,
            "startedAt": to_time(self.started_at), "finishedAt": to_time(self.finished_at),
            "promotesSeen": self.promotes_seen, "rollbackReason": self.rollback_reason,
            "rollbackGate": self.rollback_gate, "rollbackStartedAt": to_time(self.rollback_started_at),
            "relabelledBackAt": to_time(self.relabelled_back_at),
            "history": [h.to_json() for h in self.history],
        })

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> RolloutStatus:
        d = d or {}
        return cls(
            phase=d.get("phase", PENDING), current_wave=int(d.get("currentWave", 0)),
            message=d.get("message", ""), waves=[WaveStatus.from_json(w) for w in d.get("waves", ())],
            owner=Owner.from_json(d.get("owner")), started_at=from_time(d.get("startedAt")),
            finished_at=from_time(d.get("finishedAt")), promotes_seen=int(d.get("promotesSeen", 0)),
            rollback_reason=d.get("rollbackReason"), rollback_gate=d.get("rollbackGate"),
            rollback_started_at=from_time(d.get("rollbackStartedAt")),
            relabelled_back_at=from_time(d.get("relabelledBackAt")),
            history=[HistoryEntry.from_json(h) for h in d.get("history", ())],
        )


@dataclass
class EdgeRollout:
    name: str
    namespace: str
    spec: RolloutSpec
    status: RolloutStatus = field(default_factory=RolloutStatus)
    resource_version: str | None = None
    created_at: float | None = None

    @property
    def active(self) -> bool:
        return self.status.phase in ACTIVE_PHASES

    def labels(self) -> dict[str, str]:
        return {LABEL_APP: self.spec.app, LABEL_GROUP: label_safe(self.spec.group),
                LABEL_ACTIVE: "true" if self.active else "false"}

    def to_json(self, *, with_status: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "labels": self.labels()}
        if self.resource_version:
            meta["resourceVersion"] = self.resource_version
        obj: dict[str, Any] = {"apiVersion": API_VERSION, "kind": KIND, "metadata": meta,
                               "spec": self.spec.to_json()}
        if with_status:
            obj["status"] = self.status.to_json()
        return obj

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> EdgeRollout:
        meta = obj.get("metadata") or {}
        return cls(
            name=meta["name"], namespace=meta.get("namespace", "default"),
            spec=RolloutSpec.from_json(obj.get("spec") or {}),
            status=RolloutStatus.from_json(obj.get("status")),
            resource_version=meta.get("resourceVersion"),
            created_at=from_time(meta.get("creationTimestamp")),
        )


_SAFE = re.compile(r"[^a-z0-9-]+")


def label_safe(text: str, limit: int = 63) -> str:
    """A label value / name fragment for ``text`` (a group may be a selector); a short hash keeps
    distinct inputs distinct when characters had to be replaced or cut."""
    cleaned = _SAFE.sub("-", text.lower()).strip("-")
    if cleaned == text and len(cleaned) <= limit:
        return cleaned
    digest = hashlib.sha256(text.encode()).hexdigest()[:8]
    return f"{cleaned[: limit - 9].strip('-')}-{digest}".strip("-")


def rollout_name(app: str, group: str, sequence: int) -> str:
    """``<app>-<group>-<n>``: the n-th rollout of an app on a group. Two pushes racing for the
    same n collide on the name, and the API server refuses the second."""
    return f"{label_safe(app, 40)}-{label_safe(group, 40)}-{sequence}"[:253]


def revision_for(digest: str) -> str:
    """The revision name of an image digest: its first 12 hex digits."""
    return digest.split(":", 1)[-1][:12]
