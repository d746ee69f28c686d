"""Payload types and builders. Every payload is JSON with ``v``, ``device``, ``group``,
``session``, ``seq`` (monotonic within a session), ``ts`` (time of measurement, Unix seconds) and
``model``. The JSON Schemas in ``schemas/`` are the normative form; these types mirror them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final, Literal, NotRequired, TypedDict

SCHEMA_VERSION: Final = 1

EVENT_KINDS: Final = (
    "model_loaded",
    "model_rejected",
    "probe_failed",
    "probe_recovered",
    "error_burst",
    "spool_overflow",
    "broker_rejected",
    "agent_stopping",
    "shadow_loaded",
    "shadow_rejected",
)


class ModelRef(TypedDict):
    name: str
    version: str
    digest: str


class LatencyMs(TypedDict):
    p50: float
    p95: float
    p99: float
    max: float


class LatencyHist(TypedDict):
    """A mergeable log-bucket histogram (see ``histograms``)."""

    rel_err: float
    offset: int
    counts: list[int]


class ProbeState(TypedDict):
    ok: bool | None
    ts: float | None


class _Common(TypedDict):
    v: int
    device: str
    group: str
    session: str
    seq: int
    ts: float
    model: ModelRef | None


class Status(_Common):
    state: Literal["online", "offline"]
    agent_version: str
    ready: NotRequired[bool]
    signature: NotRequired[Literal["verified", "unverified"]]
    platform: NotRequired[str]
    bench: NotRequired[str]


class Health(_Common):
    window_s: float
    inferences: int
    errors: int
    latency_ms: LatencyMs
    probe: ProbeState
    rss_mb: float
    cpu_pct: float
    replayed: bool
    latency_hist: NotRequired[LatencyHist]


class Event(_Common):
    kind: str
    detail: str
    data: NotRequired[dict[str, Any]]
    replayed: bool


def _common(device: str, group: str, session: str, seq: int, ts: float, model: ModelRef | None) -> dict[str, Any]:
    return {
        "v": SCHEMA_VERSION,
        "device": device,
        "group": group,
        "session": session,
        "seq": seq,
        "ts": ts,
        "model": model,
    }


def status_payload(
    *,
    device: str,
    group: str,
    session: str,
    seq: int,
    ts: float,
    model: ModelRef | None,
    state: Literal["online", "offline"],
    agent_version: str,
    ready: bool | None = None,
    signature: Literal["verified", "unverified"] | None = None,
    platform: str | None = None,
    bench: str | None = None,
) -> Status:
    payload: dict[str, Any] = _common(device, group, session, seq, ts, model)
    payload.update(state=state, agent_version=agent_version)
    if ready is not None:
        payload["ready"] = ready
    if signature is not None:
        payload["signature"] = signature
    if platform is not None:
        payload["platform"] = platform
    if bench is not None:
        payload["bench"] = bench
    return payload  # type: ignore[return-value]


def health_payload(
    *,
    device: str,
    group: str,
    session: str,
    seq: int,
    ts: float,
    model: ModelRef | None,
    window_s: float,
    inferences: int,
    errors: int,
    latency_ms: LatencyMs,
    probe: ProbeState,
    rss_mb: float,
    cpu_pct: float,
    replayed: bool = False,
    latency_hist: LatencyHist | None = None,
    shadow: dict[str, Any] | None = None,
) -> Health:
    payload: dict[str, Any] = _common(device, group, session, seq, ts, model)
    payload.update(
        window_s=window_s,
        inferences=inferences,
        errors=errors,
        latency_ms=latency_ms,
        probe=probe,
        rss_mb=rss_mb,
        cpu_pct=cpu_pct,
        replayed=replayed,
    )
    if latency_hist is not None:
        payload["latency_hist"] = latency_hist
    if shadow is not None:
        payload["shadow"] = shadow
    return payload  # type: ignore[return-value]


def event_payload(
    *,
    device: str,
    group: str,
    session: str,
    seq: int,
    ts: float,
    model: ModelRef | None,
    kind: str,
    detail: str,
    data: dict[str, Any] | None = None,
    replayed: bool = False,
) -> Event:
    if kind not in EVENT_KINDS:
        raise ValueError(f"unknown event kind {kind!r}")
    payload: dict[str, Any] = _common(device, group, session, seq, ts, model)
    payload.update(kind=kind, detail=detail, replayed=replayed)
    if data is not None:
        payload["data"] = data
    return payload  # type: ignore[return-value]


def bench_result_payload(*, device: str, group: str, app: str, session: str, ts: float, model: ModelRef | None,
                         platform: str, result: Mapping[str, Any]) -> dict[str, Any]:
    """A device bench answer (``bench_result.schema.json``): the common fields, the app and the
    device class, then what ``DeviceBench`` reported (``id``, ``state``, figures)."""
    payload: dict[str, Any] = {"v": SCHEMA_VERSION, "device": device, "group": group, "app": app,
                               "session": session, "ts": ts, "model": model, "platform": platform}
    payload.update(result)
    return payload
