"""Read the fleet state: the query API of the rollout gates, group figures, device rows, snapshots.

``FleetView.window(devices, since, digest)`` is the contract the rollout gates build on; its
signature and the listed fields of ``WindowStats`` stay stable (new fields are only appended).

A view reads a ``FleetState`` under the lock its writer uses (``FleetWatcher`` passes its own), so
each answer is consistent: it reflects every report applied before the call and none after.
"""

from __future__ import annotations

import contextlib
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from typing import Any

from edgekit_agent.protocol.histograms import LatencyHistogram

from edgekit.fleet.aggregating import OFFLINE, GroupStats, percentile
from edgekit.fleet.completeness import Completeness
from edgekit.fleet.latency import DenseHistogram
from edgekit.fleet.state import DeviceState, FleetState, IngestCounters

__all__ = ["DeviceRow", "FleetSnapshot", "FleetView", "WindowStats"]


@dataclass(frozen=True)
class WindowStats:
    """What a set of devices reported since a time, optionally only on one model digest.

    Figures come from health reports with ``ts >= since`` (device time of measurement); when
    ``digest`` is given, ``reported``, ``inferences``, ``errors``, the latencies and
    ``probe_failures`` count only reports made on that digest.

    - ``expected``: distinct devices asked about.
    - ``reported``: devices with at least one counted report.
    - ``silent``: devices with no health report at all since ``since`` (any digest).
    - ``error_rate``: errors / inferences (None without inferences).
    - ``p50_ms``/``p95_ms``/``p99_ms``: the 50th/95th/99th percentile of every latency of the
      counted reports, read from their merged histograms (exact to 1%), when every counted report
      with inferences carried a histogram (``latency_exact``). Otherwise (agents before issue 14:
      ``no_hist`` names them) the percentile, across reporting devices, of each device's own
      p50/p95/p99 (a device's figure is the inference-weighted mean over its counted reports;
      devices without inferences do not count): an approximation.
    - ``probe_failures``: devices whose golden probe failed (a counted report with
      ``probe.ok == false`` or a ``probe_failed`` event at or after ``since``).
    - ``on_digest``: devices whose latest report since ``since`` is on ``digest`` (all reporting
      devices when no digest is given); ``off_digest``: reporting devices whose latest is not.
    - ``offline``: devices whose status is offline now.
    - ``truncated``: devices whose kept history may not reach back to ``since`` (their figures
      may miss older reports; raise ``TrackerConfig.history`` for long windows).
    - ``latency_hist``: the merged histogram of the counted reports' successful inferences, only
      when ``latency_exact`` (a partial one would weigh the devices unevenly); None otherwise.
    """

    expected: int
    reported: int
    silent: list[str]
    inferences: int
    errors: int
    error_rate: float | None
    p95_ms: float | None
    p50_ms: float | None
    p99_ms: float | None
    probe_failures: int
    on_digest: int
    off_digest: list[str]
    offline: list[str]
    since: float = 0.0
    digest: str | None = None
    truncated: list[str] = field(default_factory=list)
    as_of: float = 0.0
    latency_hist: LatencyHistogram | None = None
    latency_exact: bool = False
    no_hist: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["latency_hist"] = None if self.latency_hist is None else self.latency_hist.to_wire()
        return d


@dataclass(frozen=True)
class DeviceRow:
    """One device, as ``edgekit fleet status --devices`` shows it."""

    device: str
    group: str
    status: str
    ready: bool | None
    agent_version: str | None
    signature: str | None         # "verified" | "unverified" (the birth status); None: not said
    model: str | None
    version: str | None
    digest: str | None
    reporting: bool
    healthy: bool
    last_seen: float | None       # receive time of the latest health report
    age_s: float | None
    ts: float | None              # device time of the latest health report
    inferences: int | None
    errors: int | None
    error_rate: float | None
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None
    max_ms: float | None
    probe_ok: bool | None
    rss_mb: float | None
    cpu_pct: float | None
    gaps_open: int
    last_event: str | None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class FleetSnapshot:
    """A consistent picture of the fleet at ``taken_at``."""

    taken_at: float
    groups: list[GroupStats]
    devices: list[DeviceRow] | None
    counters: IngestCounters
    watcher: dict[str, Any] = field(default_factory=dict)
    completeness: Completeness | None = None    # None: no watcher behind the view (tests, replays)

    @property
    def complete(self) -> bool:
        return self.completeness is None or self.completeness.complete

    def to_dict(self) -> dict[str, Any]:
        c = self.counters
        return {
            "taken_at": self.taken_at,
            "complete": self.complete,
            "completeness": None if self.completeness is None else self.completeness.to_dict(),
            "groups": [g.to_dict() for g in self.groups],
            "devices": None if self.devices is None else [d.to_dict() for d in self.devices],
            "ingest": {
                "received": c.received, "accepted": c.accepted, "rejected": dict(c.rejected),
                "stale": c.stale, "duplicates": c.duplicates, "seq_gaps": c.seq_gaps,
                "gap_events": c.gap_events, "gaps_filled": c.gaps_filled, "out_of_order": c.out_of_order,
                "cleared": c.cleared, "hist_rejected": c.hist_rejected,
            },
            "watcher": self.watcher,
        }


class FleetView:
    """Queries over a ``FleetState``; every method holds ``lock`` while it reads."""

    def __init__(self, state: FleetState, lock: contextlib.AbstractContextManager[Any] | None = None,
                 watcher_info: Any = None, completeness: Callable[[], Completeness] | None = None) -> None:
        self.state = state
        self._lock: contextlib.AbstractContextManager[Any] = lock if lock is not None else contextlib.nullcontext()
        self._watcher_info = watcher_info
        self._completeness = completeness

    def completeness(self) -> Completeness | None:
        """Whether the state holds every device (None: no watcher feeds this view)."""
        return self._completeness() if self._completeness is not None else None

    # -- the shadow wave's question -----------------------------------------------------------------
    def shadow_reports(self, devices: Iterable[str]) -> dict[str, dict[str, Any]]:
        """Each device's newest ``shadow`` object (health reports of agents running a shadow)."""
        with self._lock:
            held = self.state.shadows
            return {d: held[d][1] for d in devices if d in held}

    # -- the rollout gates' question --------------------------------------------------------------
    def window(self, devices: Iterable[str], since: float, digest: str | None = None) -> WindowStats:
        names = list(dict.fromkeys(devices))
        with self._lock:
            return self._window(names, since, digest)

    def _window(self, names: list[str], since: float, digest: str | None) -> WindowStats:
        state = self.state
        did = state.digest_id(digest) if digest is not None else None
        capacity = state.config.history
        silent: list[str] = []
        offline: list[str] = []
        off_digest: list[str] = []
        truncated: list[str] = []
        reported = inferences = errors = probe_failures = on_digest = 0
        p50s: list[float] = []
        p95s: list[float] = []
        p99s: list[float] = []
        merged = DenseHistogram()
        no_hist: list[str] = []
        for name in names:
            st = state.devices.get(name)
            if st is None:
                silent.append(name)
                continue
            if st.status == OFFLINE:
                offline.append(name)
            with_hists = list(st.records_with_hists())
            all_recs = [r for r, _ in with_hists]
            recs = [r for r in all_recs if r.ts >= since]
            if all_recs and st.history_full(capacity) and min(r.ts for r in all_recs) > since:
                truncated.append(name)
            failed = False
            if not recs:
                silent.append(name)
            else:
                latest = max(recs, key=lambda r: (r.ts, r.seq))
                if did is None or latest.digest == did:
                    on_digest += 1
                else:
                    off_digest.append(name)
                mine = recs if did is None else [r for r in recs if r.digest == did]
                if mine:
                    reported += 1
                    n = sum(r.inferences for r in mine)
                    inferences += n
                    errors += sum(r.errors for r in mine)
                    if n:
                        p50s.append(sum(r.p50 * r.inferences for r in mine) / n)
                        p95s.append(sum(r.p95 * r.inferences for r in mine) / n)
                        p99s.append(sum(r.p99 * r.inferences for r in mine) / n)
                        hists = [h for r, h in with_hists
                                 if r.ts >= since and r.inferences and (did is None or r.digest == did)]
                        if any(h is None for h in hists):
                            no_hist.append(name)
                        else:
                            merged.add_all(h for h in hists if h)
                    failed = any(r.probe == 0 for r in mine)
            if not failed and st.probe_fail_ts >= since and (did is None or st.probe_fail_digest == did):
                failed = True
            probe_failures += failed
        exact = bool(p95s) and not no_hist
        if exact:
            p50, p95, p99 = merged.quantiles((0.5, 0.95, 0.99))
        else:
            p50, p95, p99 = percentile(p50s, 50), percentile(p95s, 95), percentile(p99s, 99)
        return WindowStats(
            expected=len(names), reported=reported, silent=silent, inferences=inferences, errors=errors,
            error_rate=round(errors / max(inferences, errors), 6) if inferences or errors else None,
            p95_ms=_r(p95), p50_ms=_r(p50), p99_ms=_r(p99),
            probe_failures=probe_failures, on_digest=on_digest, off_digest=off_digest, offline=offline,
            since=since, digest=digest, truncated=truncated, as_of=time.time(),
            latency_hist=merged.histogram() if exact else None, latency_exact=exact, no_hist=no_hist,
        )

    # -- groups and devices -------------------------------------------------------------------
    def groups(self, *, now: float | None = None, group: str | None = None) -> list[GroupStats]:
        with self._lock:
            return self._groups(now if now is not None else time.time(), group)

    def _recent_since(self, now: float) -> int:
        cfg = self.state.config
        return int(now - cfg.interval * cfg.silent_after) + 1

    def _groups(self, now: float, group: str | None) -> list[GroupStats]:
        since = self._recent_since(now)
        unverified = Counter(st.group for st in self.state.devices.values() if st.signature == "unverified")
        return [replace(agg.stats(since), unverified=unverified[name])
                for name, agg in sorted(self.state.groups.items()) if (group is None or name == group) and agg.devices]

    def devices(self, *, group: str | None = None, now: float | None = None) -> list[DeviceRow]:
        with self._lock:
            return self._devices(now if now is not None else time.time(), group)

    def device(self, name: str, *, now: float | None = None) -> DeviceRow | None:
        with self._lock:
            st = self.state.devices.get(name)
            return None if st is None else self._row(st, now if now is not None else time.time())

    def unreported(self, since: float, group: str | None = None) -> int:
        """Devices that are not offline and have not reported health since wall time ``since``."""
        with self._lock:
            return sum(1 for st in self.state.devices.values()
                       if st.status != OFFLINE and st.seen < since and (group is None or st.group == group))

    def device_names(self, group: str | None = None) -> list[str]:
        with self._lock:
            return sorted(name for name, st in self.state.devices.items() if group is None or st.group == group)

    def _devices(self, now: float, group: str | None) -> list[DeviceRow]:
        return [self._row(st, now) for st in self.state.devices.values() if group is None or st.group == group]

    def _row(self, st: DeviceState, now: float) -> DeviceRow:
        cfg = self.state.config
        h = self.state.latest_health(st)
        reporting = st.seen >= now - cfg.interval * cfg.silent_after
        m = st.model
        rate = None
        if h is not None and (h.inferences or h.errors):
            rate = round(h.errors / max(h.inferences, h.errors), 6)
        return DeviceRow(
            device=st.device, group=st.group, status=st.status_name, ready=st.ready,
            agent_version=st.agent_version, signature=st.signature, model=m.name if m else None,
            version=m.version if m else None,
            digest=m.digest if m else None, reporting=reporting,
            healthy=reporting and st.contrib.healthy,
            last_seen=st.seen if st.seen >= 0 else None,
            age_s=round(now - st.seen, 3) if st.seen >= 0 else None,
            ts=h.ts if h else None, inferences=h.inferences if h else None, errors=h.errors if h else None,
            error_rate=rate, p50_ms=h.p50_ms if h else None, p95_ms=h.p95_ms if h else None,
            p99_ms=h.p99_ms if h else None, max_ms=h.max_ms if h else None,
            probe_ok=h.probe_ok if h else None, rss_mb=h.rss_mb if h else None,
            cpu_pct=h.cpu_pct if h else None, gaps_open=st.gaps_open,
            last_event=st.event[0] if st.event else None,
        )

    # -- snapshots ------------------------------------------------------------------------------
    def snapshot(self, *, group: str | None = None, with_devices: bool = False,
                 now: float | None = None) -> FleetSnapshot:
        with self._lock:
            t = now if now is not None else time.time()
            groups = self._groups(t, group)
            devices = self._devices(t, group) if with_devices else None
            counters = self.state.counters.copy()
        info = self._watcher_info() if callable(self._watcher_info) else {}
        return FleetSnapshot(taken_at=t, groups=groups, devices=devices, counters=counters, watcher=info,
                             completeness=self.completeness())


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 3)
