"""The EdgeRollout resource (``edgekit.io/v1alpha1``) as plain typed data, with the CRD's JSON.

The engine keeps every piece of its state here, written before it acts, so any process can pick a
rollout up: the frozen wave plan (nodes per wave and the revision each node came from), each
wave's step, baseline, last verdict with its figures, and a history of what happened. Times are
RFC 3339 strings in the JSON and Unix seconds here. (Which engine holds a rollout is a
``coordination.k8s.io`` Lease beside it, see ``edgekit.rollout.leasing``.)

The JSON follows the CRD of ``edgekit.kube.install``: its typed fields as they are (``verdict`` of a
wave is the decision word), everything else where the schema keeps unknown fields (wave items,
history items, ``spec.gates``). Operator requests that are not spec — abort, promote a wave — and
the image to undo to are annotations, so a command never rewrites the spec it did not write.

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
from edgekit.rollout.shadowing import ShadowPolicy, ShadowStatus
from edgekit.rollout.strategy import Strategy

GROUP = "edgekit.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "EdgeRollout"
PLURAL = "edgerollouts"

LABEL_APP = "edgekit.io/app"
LABEL_GROUP = "edgekit.io/group"

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


ANN_ABORT = "edgekit.io/abort"              # value: why (set by ``edgekit rollout abort``)
ANN_PROMOTE = "edgekit.io/promote"          # value: the wave index to promote
ANN_PREVIOUS = "edgekit.io/previous-image"  # image@digest most of the group ran before
ANN_UNDO_OF = "edgekit.io/undo-of"          # the rollout an ``undo`` reverses
ANN_PLATFORMS = "edgekit.io/model-platforms"  # os/arch,... the model image's index lists (push reads it)


@dataclass
class RolloutSpec:
    app: str
    group: str
    target: ImageRef
    strategy: Strategy
    profile: str = "k3s"                 # spec.target: k3s | kubeedge | openyurt
    previous: ImageRef | None = None     # the revision most of the group ran before (for undo)
    paused: bool = False
    abort: str | None = None             # annotations, see above
    promote: int | None = None
    undo_of: str | None = None
    shadow: ShadowPolicy | None = None   # spec.shadow: a shadow wave first (push --shadow-first)
    model_platforms: tuple[str, ...] | None = None  # annotation: the pods' kubernetes.io/arch rule

    def to_json(self) -> dict[str, Any]:
        return _drop_none({
            "app": self.app, "group": self.group, "image": self.target.image,
            "revision": self.target.revision, "target": self.profile,
            **self.strategy.to_json(), "paused": self.paused,
            "shadow": self.shadow.to_json() if self.shadow else None,
        })

    def annotations(self) -> dict[str, str]:
        return _drop_none({
            ANN_ABORT: self.abort, ANN_PROMOTE: None if self.promote is None else str(self.promote),
            ANN_PREVIOUS: f"{self.previous.image}" if self.previous else None, ANN_UNDO_OF: self.undo_of,
            ANN_PLATFORMS: ",".join(self.model_platforms) if self.model_platforms else None,
        })

    @classmethod
    def from_json(cls, d: dict[str, Any], annotations: dict[str, str] | None = None) -> RolloutSpec:
        ann = annotations or {}
        image = d["image"]
        previous = ann.get(ANN_PREVIOUS)
        promote = ann.get(ANN_PROMOTE)
        return cls(
            app=d["app"], group=d["group"], profile=d.get("target", "k3s"),
            target=ImageRef(image, digest_of(image), d.get("revision") or revision_for(digest_of(image))),
            previous=ImageRef(previous, digest_of(previous), revision_for(digest_of(previous))) if previous else None,
            strategy=Strategy.from_json(d),
            paused=bool(d.get("paused", False)), abort=ann.get(ANN_ABORT) or None,
            promote=int(promote) if promote and promote.lstrip("-").isdigit() else None,
            undo_of=ann.get(ANN_UNDO_OF),
            shadow=ShadowPolicy.from_json(d["shadow"]) if d.get("shadow") else None,
            model_platforms=tuple(p for p in ann.get(ANN_PLATFORMS, "").split(",") if p) or None,
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
    control: TelemetryFigures | None = None  # the control group over the same window (baseline "control")
    verdict: Verdict | None = None
    verdict_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        # Group the from-revisions so 500 nodes cost one list, not 500 keys.
        by_rev: dict[str, list[str]] = {}
        for node in self.nodes:
            by_rev.setdefault(self.from_revisions.get(node) or "", []).append(node)
        finished = self.verdict_at if self.phase in (W_PASSED, W_FAILED) else None
        return _drop_none({
            "index": self.index, "target": self.target, "phase": self.phase, "nodes": list(self.nodes),
            "from": by_rev, "zones": self.zones or None, "startedAt": to_time(self.moved_at),
            "readyAt": to_time(self.ready_at), "ready": self.ready, "promoted": self.promoted or None,
            "baseline": self.baseline.to_json() if self.baseline else None,
            "telemetry": self.telemetry.to_json() if self.telemetry else None,
            "control": self.control.to_json() if self.control else None,
            "verdict": self.verdict.decision if self.verdict else None,
            "verdictDetail": self.verdict.to_json() if self.verdict else None,
            "verdictAt": to_time(self.verdict_at), "finishedAt": to_time(finished),
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
            moved_at=from_time(d.get("startedAt")), ready_at=from_time(d.get("readyAt")),
            ready=int(d.get("ready", 0)), promoted=bool(d.get("promoted", False)),
            baseline=Baseline.from_json(d.get("baseline")),
            telemetry=TelemetryFigures.from_json(d["telemetry"]) if d.get("telemetry") else None,
            control=TelemetryFigures.from_json(d["control"]) if d.get("control") else None,
            verdict=Verdict.from_json(d["verdictDetail"]) if d.get("verdictDetail") else None,
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


# History events the engine and the benchmark read back.
EV_PLANNED, EV_WAVE, EV_READY, EV_VERDICT, EV_PASSED = "planned", "wave-started", "pods-ready", "verdict", "wave-passed"
EV_PAUSED, EV_RESUMED, EV_PROMOTED, EV_ABORTED = "paused", "resumed", "promoted", "abort-requested"
EV_ROLLBACK, EV_RELABELLED, EV_CLEANED, EV_FINISHED = "rollback-started", "relabelled-back", "cleaned-up", "finished"
EV_ENGINE = "engine"
HISTORY_LIMIT = 200


@dataclass
class RolloutStatus:
    phase: str = PENDING
    current_wave: int = 0
    message: str = ""
    revision: str | None = None
    previous_revision: str | None = None
    waves: list[WaveStatus] = field(default_factory=list)
    started_at: float | None = None
    updated_at: float | None = None
    history: list[HistoryEntry] = field(default_factory=list)
    conditions: list[dict[str, Any]] = field(default_factory=list)
    shadow: ShadowStatus | None = None

    @property
    def moved_nodes(self) -> list[str]:
        return [n for w in self.waves if w.phase != W_PENDING for n in w.nodes]

    def event_time(self, event: str) -> float | None:
        """When ``event`` last happened (from the history)."""
        return next((h.at for h in reversed(self.history) if h.event == event), None)

    @property
    def finished_at(self) -> float | None:
        return self.event_time(EV_FINISHED) if self.phase in TERMINAL_PHASES else None

    def condition(self, kind: str) -> dict[str, Any] | None:
        return next((c for c in self.conditions if c.get("type") == kind), None)

    def set_condition(self, kind: str, status: bool, reason: str, message: str, at: float) -> None:
        self.conditions = [c for c in self.conditions if c.get("type") != kind]
        self.conditions.append({"type": kind, "status": "True" if status else "False",
                                "reason": reason, "message": message[:1000], "lastTransitionTime": to_time(at)})

    def to_json(self) -> dict[str, Any]:
        return _drop_none({
            "phase": self.phase, "currentWave": self.current_wave, "message": self.message,
            "revision": self.revision, "previousRevision": self.previous_revision,
            "waves": [w.to_json() for w in self.waves],
            "startedAt": to_time(self.started_at), "updatedAt": to_time(self.updated_at),
            "history": [h.to_json() for h in self.history[-HISTORY_LIMIT:]],
            "conditions": self.conditions or None,
            "shadow": self.shadow.to_json(to_time) if self.shadow else None,
        })

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> RolloutStatus:
        d = d or {}
        return cls(
            phase=d.get("phase", PENDING), current_wave=int(d.get("currentWave", 0)),
            message=d.get("message", ""), revision=d.get("revision"),
            previous_revision=d.get("previousRevision"),
            waves=[WaveStatus.from_json(w) for w in d.get("waves", ())],
            started_at=from_time(d.get("startedAt")), updated_at=from_time(d.get("updatedAt")),
            history=[HistoryEntry.from_json(h) for h in d.get("history", ())],
            conditions=list(d.get("conditions") or ()),
            shadow=ShadowStatus.from_json(d.get("shadow"), from_time),
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
        return {LABEL_APP: self.spec.app, LABEL_GROUP: label_safe(self.spec.group)}

    def to_json(self, *, with_status: bool = True) -> dict[str, Any]:
        meta: dict[str, Any] = {"name": self.name, "namespace": self.namespace, "labels": self.labels()}
        if annotations := self.spec.annotations():
            meta["annotations"] = annotations
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
            spec=RolloutSpec.from_json(obj.get("spec") or {}, meta.get("annotations")),
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


def digest_of(image: str) -> str:
    """``sha256:…`` of an ``image@sha256:…`` reference ('' when it is not pinned)."""
    return image.rsplit("@", 1)[1] if "@" in image else ""


def revision_for(digest: str) -> str:
    """The revision name of an image digest: its first 12 hex digits."""
    return digest.split(":", 1)[-1][:12]
