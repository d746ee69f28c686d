"""Typed telemetry reports, as the decoder hands them to the fleet state.

These mirror the payloads of contract 3.2 (``edgekit_agent.protocol``), flattened: the latency
and probe objects become plain fields, and ``model`` becomes an interned ``Model`` tuple shared
by every device running it (a fleet runs few models, so this saves memory per device).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final, Literal, NamedTuple

from edgekit_agent.protocol.histograms import LatencyHistogram

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


@dataclass(slots=True, repr=False, eq=False)
class _Envelope:
    """What every payload carries (contract 3.2), first in every report's fields."""

    group: str
    device: str
    session: str
    seq: int
    ts: float
    model: Model | None


@dataclass(slots=True, repr=False, eq=False)
class StatusReport(_Envelope):
    """Birth (``online``) or death (``offline``, often the broker-sent last will)."""

    kind: ClassVar[Literal["status"]] = "status"
    online: bool
    agent_version: str
    ready: bool | None
    signature: str | None = None  # "verified" | "unverified"; None from agents before issue 12

    def __repr__(self) -> str:
        return (f"StatusReport({self.group}/{self.device} {'online' if self.online else 'offline'} "
                f"session={self.session} seq={self.seq} ts={self.ts})")


@dataclass(slots=True, repr=False, eq=False)
class HealthReport(_Envelope):
    """One window of inference statistics."""

    kind: ClassVar[Literal["health"]] = "health"
    window_s: float
    inferences: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    probe_ok: bool | None
    probe_ts: float | None
    rss_mb: float
    cpu_pct: float
    replayed: bool
    latency_hist: LatencyHistogram | None = None  # None: an agent before issue 14, or a bad histogram
    hist_error: str | None = None                 # why a histogram that was sent was ignored
    shadow: dict[str, Any] | None = None  # the agent's shadow evaluation (cumulative), when one runs

    def __repr__(self) -> str:
        return (f"HealthReport({self.group}/{self.device} session={self.session} seq={self.seq} "
                f"ts={self.ts} inferences={self.inferences} errors={self.errors} p95={self.p95_ms})")


@dataclass(slots=True, repr=False, eq=False)
class EventReport(_Envelope):
    """Model loaded/rejected, probe failed/recovered, error burst, spool overflow, ..."""

    kind: ClassVar[Literal["event"]] = "event"
    event: str
    detail: str
    replayed: bool

    def __repr__(self) -> str:
        return f"EventReport({self.group}/{self.device} {self.event} seq={self.seq} ts={self.ts})"


Report = StatusReport | HealthReport | EventReport
