"""Typed telemetry reports, as the decoder hands them to the fleet state.

These mirror the payloads of contract 3.2 (``edgekit_agent.protocol``), flattened: the latency
and probe objects become plain fields, and ``model`` becomes an interned ``Model`` tuple shared
by every device running it (a fleet runs few models, so this saves memory per device).
"""

from __future__ import annotations

from typing import Final, NamedTuple

__all__ = [
    "REJECT_REASONS",
    "EventReport",
    "HealthReport",
    "Model",
    "Reject",
    "Report",
    "StatusReport",
]

# Why a message was refused. Every reason is counted; a rejected message never touches state.
REJECT_REASONS: Final = (
    "malformed_json",   # not JSON, not a JSON object, or not UTF-8
    "wrong_type",       # a field has the wrong JSON type
    "missing_field",    # a required field is absent
    "invalid_value",    # right type, value out of range (negative seq, bad digest, unknown state)
    "unknown_version",  # ``v`` is not a schema version we understand
    "oversize",         # payload larger than the configured limit (not decoded at all)
    "device_mismatch",  # payload's device/group differ from the topic's
    "unknown_topic",    # topic is not {root}/{group}/{device}/{status|health|event}
    "flood",            # one device sent more live (not replayed) messages than its budget in a window
    "capacity",         # the tracker is full (max devices, max distinct digests)
)


class Model(NamedTuple):
    name: str
    version: str
    digest: str


class Reject(NamedTuple):
    reason: str
    detail: str
    device: str | None = None


class StatusReport:
    """Birth (``online``) or death (``offline``, often the broker-sent last will)."""

    __slots__ = ("agent_version", "device", "group", "model", "online", "ready", "seq", "session", "ts")
    kind: Final = "status"

    def __init__(self, group: str, device: str, session: str, seq: int, ts: float, model: Model | None,
                 online: bool, agent_version: str, ready: bool | None) -> None:
        self.group = group
        self.device = device
        self.session = session
        self.seq = seq
        self.ts = ts
        self.model = model
        self.online = online
        self.agent_version = agent_version
        self.ready = ready

    def __repr__(self) -> str:
        return (f"StatusReport({self.group}/{self.device} {'online' if self.online else 'offline'} "
                f"session={self.session} seq={self.seq} ts={self.ts})")


class HealthReport:
    """One window of inference statistics."""

    __slots__ = ("cpu_pct", "device", "errors", "group", "inferences", "max_ms", "model", "p50_ms",
                 "p95_ms", "p99_ms", "probe_ok", "probe_ts", "replayed", "rss_mb", "seq", "session",
                 "ts", "window_s")
    kind: Final = "health"

    def __init__(self, group: str, device: str, session: str, seq: int, ts: float, model: Model | None,
                 window_s: float, inferences: int, errors: int, p50_ms: float, p95_ms: float,
                 p99_ms: float, max_ms: float, probe_ok: bool | None, probe_ts: float | None,
                 rss_mb: float, cpu_pct: float, replayed: bool) -> None:
        self.group = group
        self.device = device
        self.session = session
        self.seq = seq
        self.ts = ts
        self.model = model
        self.window_s = window_s
        self.inferences = inferences
        self.errors = errors
        self.p50_ms = p50_ms
        self.p95_ms = p95_ms
        self.p99_ms = p99_ms
        self.max_ms = max_ms
        self.probe_ok = probe_ok
        self.probe_ts = probe_ts
        self.rss_mb = rss_mb
        self.cpu_pct = cpu_pct
        self.replayed = replayed

    def __repr__(self) -> str:
        return (f"HealthReport({self.group}/{self.device} session={self.session} seq={self.seq} "
                f"ts={self.ts} inferences={self.inferences} errors={self.errors} p95={self.p95_ms})")


class EventReport:
    """Model loaded/rejected, probe failed/recovered, error burst, spool overflow, ..."""

    __slots__ = ("detail", "device", "event", "group", "model", "replayed", "seq", "session", "ts")
    kind: Final = "event"

    def __init__(self, group: str, device: str, session: str, seq: int, ts: float, model: Model | None,
                 event: str, detail: str, replayed: bool) -> None:
        self.group = group
        self.device = device
        self.session = session
        self.seq = seq
        self.ts = ts
        self.model = model
        self.event = event
        self.detail = detail
        self.replayed = replayed

    def __repr__(self) -> str:
        return f"EventReport({self.group}/{self.device} {self.event} seq={self.seq} ts={self.ts})"


Report = StatusReport | HealthReport | EventReport
