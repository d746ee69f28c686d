"""The fleet's state: the latest known state of each device, a short history of its health reports,
and the per-group aggregates, updated one report at a time.

Ordering rules (what "newer" means), because MQTT delivers late, twice, or out of order:

- **Health**: within one agent session ``seq`` orders reports; across sessions, ``ts``. A report
  that is not newer than the device's latest (a replay from the spool, a QoS 1 redelivery, a
  straggler) never replaces the latest state; it still enters the history if it is not a
  duplicate, because the rollout gates ask "what happened since T" and a late report is a real
  measurement.
- **Status** (retained, carries the last will): within one session, arrival order wins, because the
  broker sends a will composed at connect time (its ``seq`` and ``ts`` are old) after the birth;
  across sessions, ``ts`` orders, so an old session's will arriving late cannot kill a new session.
  An empty retained status (deleted by an operator) forgets the device.
- A live (not replayed) health report from a session newer than the status marks the device online.
- **Sequence gaps**: the agent numbers health reports and events separately within a session; per
  device and kind, the highest ``seq`` of the live session; a jump opens a gap, a late arrival (a
  replay after reconnecting) fills one. Status is left out (a will's number is reserved at connect
  time and it arrives whenever the connection dies).

Memory matters at 100,000 devices: a device is one slotted object, its latest health report is
packed into 56 bytes, its history is a ring of 30-byte records in one ``bytearray``, and models,
groups and sessions are shared objects. A record's latency histogram (agents since issue 14) is
one packed ``bytes`` (``edgekit.fleet.latency``) in a list beside the ring, made only for devices
that send histograms: 70-140 bytes per record for 30-100 buckets, at most ``max_hist_bytes``.
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from edgekit.fleet.aggregating import (
    EMPTY,
    OFFLINE,
    ONLINE,
    UNKNOWN,
    Contribution,
    GroupAggregate,
    latency_bucket,
)
from edgekit.fleet.latency import Packed, pack
from edgekit.fleet.reports import REJECT_REASONS, EventReport, HealthReport, Model, Report, StatusReport

__all__ = [
    "DeviceState",
    "FleetState",
    "HealthRecord",
    "IngestCounters",
    "LatestHealth",
    "TrackerConfig",
]

_U32: Final = 0xFFFF_FFFF
_F32: Final = 3.4e38   # packed as float32: larger values (valid JSON, absurd figures) are clamped
# One history record: ts, seq, digest id, probe (-1 none, 0 failed, 1 ok), flags, inferences,
# errors, and p50, p95, p99 as half floats (0.05 % precision; 65,504 ms and above are clamped).
_REC: Final = struct.Struct("<dIHbBIIeee")
_F16: Final = 65504.0
REC_SIZE: Final = _REC.size
# The latest health report: ts, window_s, inferences, errors, p50, p95, p99, max, probe, replayed,
# probe_ts (NaN for none), rss_mb, cpu_pct, digest id.
_LAST: Final = struct.Struct("<dfIIffffbBdffH")
_FLAG_REPLAYED: Final = 1
_NO_DIGEST: Final = 0


@dataclass(frozen=True)
class TrackerConfig:
    """How the fleet state judges and bounds what it keeps."""

    interval: float = 10.0          # the agents' health interval (seconds)
    silent_after: float = 3.0       # intervals without health after which a device counts as silent
    history: int = 32               # health reports kept per device for window queries
    max_error_rate: float = 0.05    # a latest report above this (or a failed probe) is unhealthy
    flood_limit: int = 600          # messages per device per flood window before it is refused
    flood_window_s: float = 60.0
    max_devices: int = 1_000_000
    # a packed latency histogram larger than this is ignored (counted in ``hist_rejected``); 1 KiB
    # holds 1,000 buckets of small counts (a latency spread of 10**8) or 500 of 16-bit ones
    max_hist_bytes: int = 1024

    def __post_init__(self) -> None:
        if self.interval <= 0 or self.silent_after <= 0 or self.flood_window_s <= 0:
            raise ValueError("interval, silent_after and flood_window_s must be > 0")
        if self.history < 1 or self.flood_limit < 1 or self.max_devices < 1:
            raise ValueError("history, flood_limit and max_devices must be >= 1")


@dataclass
class IngestCounters:
    """Everything the tracker counted (monotonic totals)."""

    received: int = 0
    accepted: int = 0
    rejected: dict[str, int] = field(default_factory=lambda: dict.fromkeys(REJECT_REASONS, 0))
    stale: int = 0            # older than the device's latest: kept in history only
    duplicates: int = 0       # seen before (QoS 1 redelivery, retained resend): dropped
    seq_gaps: int = 0         # messages missing from live sessions (sum of gap sizes)
    gap_events: int = 0       # times a gap opened
    gaps_filled: int = 0      # missing messages that arrived late
    out_of_order: int = 0
    cleared: int = 0          # devices forgotten after their retained status was deleted
    hist_rejected: int = 0    # latency histograms ignored (malformed, inconsistent, too wide); reports kept

    def reject(self, reason: str) -> None:
        self.rejected[reason] = self.rejected.get(reason, 0) + 1

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())

    def copy(self) -> IngestCounters:
        c = IngestCounters(**{k: getattr(self, k) for k in self.__dataclass_fields__ if k != "rejected"})
        c.rejected = dict(self.rejected)
        return c


class HealthRecord(NamedTuple):
    ts: float
    seq: int
    digest: int
    probe: int              # -1 none, 0 failed, 1 ok
    flags: int
    inferences: int
    errors: int
    p50: float
    p95: float
    p99: float


class LatestHealth(NamedTuple):
    ts: float
    window_s: float
    inferences: int
    errors: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    probe_ok: bool | None
    replayed: bool
    probe_ts: float | None
    rss_mb: float
    cpu_pct: float
    digest: str | None


class DeviceState:
    """Everything the tracker keeps about one device."""

    __slots__ = ("agent_version", "contrib", "device", "ev_seq_hi", "event", "flood_count", "flood_epoch", "gaps_open",
                 "group", "health_ok", "health_seq", "health_session", "health_ts", "hists", "last",
                 "model", "model_ts", "probe_fail_digest", "probe_fail_ts", "ready", "ring", "ring_pos", "seen",
                 "seq_hi", "seq_session", "signature", "status", "status_session", "status_ts")

    def __init__(self, device: str, group: str) -> None:
        self.device = device
        self.group = group
        self.status = UNKNOWN
        self.status_session: str | None = None
        self.status_ts = -1.0
        self.agent_version: str | None = None
        self.ready: bool | None = None
        self.signature: str | None = None
        self.model: Model | None = None
        self.model_ts = -1.0
        self.health_session: str | None = None
        self.health_seq = -1
        self.health_ts = -1.0
        self.health_ok = False
        self.last: bytes | None = None
        self.seen = -1.0              # receive time of the latest health report
        self.ring = bytearray()
        self.ring_pos = 0
        # packed latency histogram of each ring record (None: the report had none); made on the first
        self.hists: list[Packed | None] | None = None
        self.seq_session: str | None = None
        self.seq_hi = -1              # highest health seq of the live session
        self.ev_seq_hi = -1           # highest event seq of the live session
        self.gaps_open = 0
        self.flood_epoch = -1
        self.flood_count = 0
        self.event: tuple[str, float, str] | None = None
        self.probe_fail_ts = -1.0
        self.probe_fail_digest = _NO_DIGEST
        self.contrib: Contribution = EMPTY

    @property
    def status_name(self) -> str:
        return ("unknown", "online", "offline")[self.status]

    def records(self) -> Iterator[HealthRecord]:
        ring = self.ring
        for off in range(0, len(ring), REC_SIZE):
            yield HealthRecord(*_REC.unpack_from(ring, off))

    def records_with_hists(self) -> Iterator[tuple[HealthRecord, Packed | None]]:
        hists = self.hists
        for i, rec in enumerate(self.records()):
            yield rec, (hists[i] if hists is not None else None)

    def history_full(self, capacity: int) -> bool:
        return len(self.ring) >= capacity * REC_SIZE

    def __repr__(self) -> str:
        return f"DeviceState({self.group}/{self.device} {self.status_name})"


class FleetState:
    """The pure store: feed it reports with ``apply``; read it through ``edgekit.fleet.views``.

    Not thread-safe by itself: the MQTT adapter serialises writers and readers with one lock.
    """

    def __init__(self, config: TrackerConfig | None = None) -> None:
        self.config = config or TrackerConfig()
        self.devices: dict[str, DeviceState] = {}
        self.groups: dict[str, GroupAggregate] = {}
        self.counters = IngestCounters()
        self.shadows: dict[str, tuple[float, dict[str, Any]]] = {}  # device -> (ts, newest shadow object)
        self._digest_ids: dict[str, int] = {}
        self._digests: list[str | None] = [None]
        self._ring_bytes = self.config.history * REC_SIZE
        self._unhealthy_rate = self.config.max_error_rate

    # -- digests ----------------------------------------------------------------------------------
    def digest_id(self, digest: str | None) -> int:
        """The small integer of a digest (0 = no model; -1 = never seen, matches nothing)."""
        if digest is None:
            return _NO_DIGEST
        return self._digest_ids.get(digest, -1)

    def digest_name(self, ident: int) -> str | None:
        return self._digests[ident] if 0 <= ident < len(self._digests) else None

    def _intern_digest(self, model: Model | None) -> int:
        if model is None:
            return _NO_DIGEST
        ident = self._digest_ids.get(model.digest)
        if ident is None:
            if len(self._digests) > 0xFFFE:
                return _NO_DIGEST  # the decoder caps distinct models far below this
            ident = self._digest_ids[model.digest] = len(self._digests)
            self._digests.append(model.digest)
        return ident

    # -- admission ------------------------------------------------------------------------------
    def admit(self, device: str, now: float) -> bool:
        """Count one message from ``device`` against its flood budget; False = refuse it."""
        st = self.devices.get(device)
        if st is None:
            return True
        epoch = int(now / self.config.flood_window_s) & 0xFF   # small ints are shared objects
        if epoch != st.flood_epoch:
            st.flood_epoch = epoch
            st.flood_count = 1
            return True
        st.flood_count += 1
        return st.flood_count <= self.config.flood_limit

    # -- writes ---------------------------------------------------------------------------------
    def apply(self, report: Report, now: float, *, retained: bool = False) -> str:
        """Apply one decoded report received at wall time ``now``.

        Returns what happened: ``latest`` (it is now the device's newest state), ``history``
        (older than the latest: kept for window queries), ``duplicate`` (dropped), ``status``,
        ``event``, or ``capacity`` (no room for a new device).
        """
        st = self.devices.get(report.device)
        if st is None:
            if len(self.devices) >= self.config.max_devices:
                self.counters.reject("capacity")
                return "capacity"
            st = self.devices[report.device] = DeviceState(report.device, report.group)
            self._group(report.group).add(EMPTY)
        self.counters.accepted += 1
        if isinstance(report, HealthReport):
            if report.shadow is not None:
                self._keep_shadow(report)
            return self._health(st, report, now)
        if isinstance(report, StatusReport):
            return self._status(st, report, retained)
        return self._event(st, report)

    def _keep_shadow(self, report: HealthReport) -> None:
        # Shadow counts are cumulative per candidate load: the newest report is all the evidence.
        held = self.shadows.get(report.device)
        if held is None or report.ts >= held[0]:
            self.shadows[report.device] = (report.ts, report.shadow or {})

    def forget(self, device: str) -> bool:
        """Drop a device entirely (its retained status was deleted)."""
        st = self.devices.pop(device, None)
        if st is None:
            return False
        self.groups[st.group].remove(st.contrib)
        self.counters.cleared += 1
        return True

    # -- internals ------------------------------------------------------------------------------
    def _group(self, name: str) -> GroupAggregate:
        agg = self.groups.get(name)
        if agg is None:
            agg = self.groups[name] = GroupAggregate(name)
        return agg

    def _update(self, st: DeviceState, new: Contribution, group: str | None = None) -> None:
        """Replace the device's contribution; ``group``: the device now reports under this group
        (a node moved to another device group), which only the newest state may decide."""
        if group is not None and group != st.group:
            self.groups[st.group].remove(st.contrib)
            st.group = group
            st.contrib = new
            self._group(group).add(new)
            return
        old = st.contrib
        if new is not old:
            agg = self.groups[st.group]
            agg.remove(old)
            agg.add(new)
            st.contrib = new
            if new.seen != old.seen and len(agg.cells) > 512:
                agg.compact(new.seen - int(self.config.interval * self.config.silent_after) - 1)

    def _track_seq(self, st: DeviceState, session: str, seq: int, replayed: bool, event: bool = False) -> None:
        # The agent numbers health and events separately within a session (status too, but a
        # will's number is reserved at connect time, so status is not tracked).
        if session != st.seq_session:
            if replayed:
                return  # a replay from another session is not part of the live stream
            st.seq_session = session
            st.seq_hi = st.ev_seq_hi = -1
            st.gaps_open = 0
        hi = st.ev_seq_hi if event else st.seq_hi
        if seq > hi:
            gap = seq - hi - 1 if hi >= 0 else 0   # the first number seen in a session is the baseline
            if gap:
                st.gaps_open += gap
                self.counters.seq_gaps += gap
                self.counters.gap_events += 1
            if event:
                st.ev_seq_hi = seq
            else:
                st.seq_hi = seq
        elif seq < hi:
            self.counters.out_of_order += 1
            if st.gaps_open:
                st.gaps_open -= 1
                self.counters.gaps_filled += 1

    def _set_model(self, st: DeviceState, model: Model | None, ts: float) -> None:
        if model is not None and ts >= st.model_ts:
            st.model = model
            st.model_ts = ts

    def _count(self, st: DeviceState, r: HealthReport, packed: Packed | None) -> None:
        agg = self.groups[st.group]
        agg.reports_total += 1
        agg.inferences_total += r.inferences
        agg.errors_total += r.errors
        if packed:
            agg.latencies_total.add(packed)

    def _pack(self, r: HealthReport) -> Packed | None:
        if r.latency_hist is None:
            return None
        packed = pack(r.latency_hist)
        if len(packed) > self.config.max_hist_bytes:
            self.counters.hist_rejected += 1
            return None
        return packed

    def _health(self, st: DeviceState, r: HealthReport, now: float) -> str:
        counters = self.counters
        same = r.session == st.health_session
        if st.last is not None and not ((r.seq > st.health_seq) if same else (r.ts > st.health_ts)):
            if same and r.seq == st.health_seq:
                counters.duplicates += 1
                return "duplicate"
            if self._in_history(st, r.ts, r.seq):
                counters.duplicates += 1
                return "duplicate"
            self._track_seq(st, r.session, r.seq, r.replayed)
            packed = self._pack(r)
            self._record(st, r, self._intern_digest(r.model), packed, late=True)
            self._count(st, r, packed)
            counters.stale += 1
            return "history"
        session = st.health_session if same else (st.status_session if r.session == st.status_session
                                                  else r.session)
        self._track_seq(st, session, r.seq, r.replayed)  # type: ignore[arg-type]
        digest = self._intern_digest(r.model)
        packed = self._pack(r)
        self._record(st, r, digest, packed, late=False)
        self._count(st, r, packed)
        st.health_session = session
        st.health_seq = r.seq
        st.health_ts = r.ts
        st.seen = now
        probe = r.probe_ok
        st.last = _LAST.pack(r.ts, min(r.window_s, _F32), min(r.inferences, _U32), min(r.errors, _U32),
                             min(r.p50_ms, _F32), min(r.p95_ms, _F32), min(r.p99_ms, _F32), min(r.max_ms, _F32),
                             -1 if probe is None else int(probe), _FLAG_REPLAYED if r.replayed else 0,
                             math.nan if r.probe_ts is None else r.probe_ts, min(r.rss_mb, _F32),
                             min(r.cpu_pct, _F32), digest)
        self._set_model(st, r.model, r.ts)
        inferences, errors = r.inferences, r.errors
        st.health_ok = probe is not False and (
            errors <= self._unhealthy_rate * max(inferences, errors) if errors else True)
        if not r.replayed and session != st.status_session and r.ts > st.status_ts:
            st.status = ONLINE  # reporting from a session newer than the last status we saw
            st.status_session = session
            st.status_ts = r.ts
        self._update(st, Contribution(
            st.status, st.model.digest if st.model else None,
            latency_bucket(r.p95_ms) if inferences else -1, inferences, errors,
            min(inferences / r.window_s, 1e12), int(now), st.health_ok and st.status != OFFLINE,
            latency_bucket(r.p50_ms) if inferences else -1, latency_bucket(r.p99_ms) if inferences else -1,
            packed if inferences else None), r.group)
        return "latest"

    def _record(self, st: DeviceState, r: HealthReport, digest: int, packed: Packed | None, *,
                late: bool) -> None:
        probe = r.probe_ok
        rec = (r.ts, min(r.seq, _U32), digest, -1 if probe is None else int(probe),
               _FLAG_REPLAYED if r.replayed else 0, min(r.inferences, _U32), min(r.errors, _U32),
               min(r.p50_ms, _F16), min(r.p95_ms, _F16), min(r.p99_ms, _F16))
        ring = st.ring
        if packed is not None and st.hists is None:
            st.hists = [None] * (len(ring) // REC_SIZE)
        hists = st.hists
        if len(ring) < self._ring_bytes:
            ring += _REC.pack(*rec)
            if hists is not None:
                hists.append(packed)
            if len(ring) == self._ring_bytes:
                st.ring = bytearray(ring)   # full: drop the growth slack bytearray keeps
            return
        if not late:
            # In-order reports overwrite the ring's oldest slot, which is where it next writes.
            pos = st.ring_pos
            _REC.pack_into(ring, pos, *rec)
            if hists is not None:
                hists[pos // REC_SIZE] = packed
            pos += REC_SIZE
            st.ring_pos = 0 if pos >= len(ring) else pos
            return
        # A late report replaces the oldest record, unless it is older than all we keep.
        oldest_off, oldest_ts = 0, math.inf
        for off in range(0, len(ring), REC_SIZE):
            ts = _REC.unpack_from(ring, off)[0]
            if ts < oldest_ts:
                oldest_off, oldest_ts = off, ts
        if r.ts > oldest_ts:
            _REC.pack_into(ring, oldest_off, *rec)
            if hists is not None:
                hists[oldest_off // REC_SIZE] = packed

    def _in_history(self, st: DeviceState, ts: float, seq: int) -> bool:
        ring = st.ring
        for off in range(0, len(ring), REC_SIZE):
            rts, rseq = _REC.unpack_from(ring, off)[:2]
            if rts == ts and rseq == min(seq, _U32):
                return True
        return False

    def _status(self, st: DeviceState, r: StatusReport, retained: bool) -> str:
        if st.status_session is not None and r.session != st.status_session and r.ts < st.status_ts:
            self.counters.stale += 1
            return "history"  # an older session's status (a late will): not the device's state now
        st.status = ONLINE if r.online else OFFLINE
        st.status_session = st.health_session if r.session == st.health_session else r.session
        st.status_ts = r.ts
        st.agent_version = r.agent_version
        st.ready = r.ready
        st.signature = r.signature
        self._set_model(st, r.model, r.ts)
        c = st.contrib
        self._update(st, c._replace(status=st.status, digest=st.model.digest if st.model else None,
                                    healthy=st.health_ok and st.status != OFFLINE), r.group)
        return "status"

    def _event(self, st: DeviceState, r: EventReport) -> str:
        self._track_seq(st, r.session, r.seq, r.replayed, event=True)
        if st.event is None or r.ts >= st.event[1]:
            st.event = (r.event, r.ts, r.detail[:200])
        if r.event == "probe_failed" and r.ts > st.probe_fail_ts:
            st.probe_fail_ts = r.ts
            st.probe_fail_digest = self._intern_digest(r.model)
        if r.event == "model_loaded":
            self._set_model(st, r.model, r.ts)
            c = st.contrib
            digest = st.model.digest if st.model else None
            if digest != c.digest:
                self._update(st, c._replace(digest=digest))
        return "event"

    # -- reads used by views ----------------------------------------------------------------------
    def latest_health(self, st: DeviceState) -> LatestHealth | None:
        if st.last is None:
            return None
        (ts, window_s, inferences, errors, p50, p95, p99, mx, probe, flags, probe_ts, rss, cpu,
         digest) = _LAST.unpack(st.last)
        return LatestHealth(ts, round(window_s, 3), inferences, errors, round(p50, 3), round(p95, 3),
                            round(p99, 3), round(mx, 3), None if probe < 0 else bool(probe),
                            bool(flags & _FLAG_REPLAYED), None if math.isnan(probe_ts) else probe_ts,
                            round(rss, 2), round(cpu, 2), self.digest_name(digest))
