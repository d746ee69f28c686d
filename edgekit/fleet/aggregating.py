"""Per-group aggregates kept incrementally, and the quantile helpers the queries share.

Every device contributes one small ``Contribution`` to its group: its status, model digest, the
latency bucket of its latest p95, its latest window's counts, the second in which it last reported
and whether that report was healthy. When a device's state changes, the fleet state removes the
old contribution and adds the new one: O(1) work per message, so aggregates never need a pass over
the fleet on the thread that receives messages. Reading a group's figures costs O(buckets), not
O(devices).

A group's latency percentiles (``p50_ms``/``p95_ms``/``p99_ms``) are the percentiles of every
latency of the devices' latest windows: the sum of their latency histograms (``edgekit.fleet.latency``,
1% relative error), kept incrementally like the other figures. When a device with inferences sent
no histogram (an agent before issue 14) they fall back to the percentiles of the devices' own
figures (p50 of the p50s, p95 of the p95s, p99 of the p99s, in 4% wide buckets, ±2%) and
``latency_exact`` says so. ``p50_of_p95_ms``/``p95_of_p95_ms`` stay for readers that use them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, NamedTuple

from edgekit.fleet.latency import DenseHistogram, Packed, fold_le

__all__ = [
    "OFFLINE",
    "ONLINE",
    "UNKNOWN",
    "Contribution",
    "GroupAggregate",
    "GroupStats",
    "latency_bucket",
    "latency_value",
    "percentile",
]

UNKNOWN: Final = 0
ONLINE: Final = 1
OFFLINE: Final = 2
STATUS_NAMES: Final = ("unknown", "online", "offline")

_LAT_MIN: Final = 0.01          # ms; everything at or below lands in bucket 0
_LAT_GROWTH: Final = 1.04
_LAT_INV_LOG: Final = 1.0 / math.log(_LAT_GROWTH)
LAT_BUCKETS: Final = 512        # covers up to ~0.01 * 1.04**511 ms ≈ 5e6 ms
_LAT_TOP: Final = _LAT_MIN * _LAT_GROWTH ** (LAT_BUCKETS - 2)
NEVER: Final = -1               # "last reported" bucket of a device that never did (or long ago)
_MAX_CELLS: Final = 512


def latency_bucket(ms: float) -> int:
    if ms <= _LAT_MIN:
        return 0
    if ms >= _LAT_TOP:
        return LAT_BUCKETS - 1
    return min(int(math.log(ms / _LAT_MIN) * _LAT_INV_LOG) + 1, LAT_BUCKETS - 1)


def latency_value(bucket: int) -> float:
    """A representative value of a latency bucket (its geometric middle)."""
    if bucket <= 0:
        return _LAT_MIN
    return _LAT_MIN * math.pow(_LAT_GROWTH, bucket - 0.5)  # float ** float is typed as Any


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0-100) with linear interpolation between ranks; None when empty."""
    n = len(values)
    if n == 0:
        return None
    ordered = sorted(values)
    if n == 1:
        return float(ordered[0])
    pos = (n - 1) * q / 100.0
    lo = int(pos)
    hi = min(lo + 1, n - 1)
    return float(ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo))


class Contribution(NamedTuple):
    """What one device adds to its group's aggregate."""

    status: int
    digest: str | None
    lat_bucket: int            # bucket of the latest report's p95, -1 when it had no inferences
    inferences: int            # latest report's window
    errors: int
    inf_rate: float            # latest report's inferences per second
    seen: int                  # whole second (receive time) of the latest report, NEVER if none
    healthy: bool              # latest report healthy and the device not offline
    lat_bucket50: int = -1     # buckets of the latest report's p50 and p99 (-1 without inferences)
    lat_bucket99: int = -1
    hist: Packed | None = None  # the latest report's latency histogram (with inferences only)


EMPTY: Final = Contribution(UNKNOWN, None, -1, 0, 0, 0.0, NEVER, False)


@dataclass(frozen=True)
class GroupStats:
    """A group's figures at one moment (``edgekit fleet status``, the exporter)."""

    group: str
    devices: int
    online: int
    offline: int
    unknown: int
    reporting: int             # reported health within the last ``silent_after`` intervals
    silent: int                # devices - reporting
    healthy: int               # reporting, not offline, latest report healthy
    healthy_share: float | None
    inferences: int            # sums over each device's latest window
    errors: int
    error_rate: float | None
    inference_rate: float      # inferences per second, over each device's latest window
    p50_of_p95_ms: float | None
    p95_of_p95_ms: float | None
    digests: dict[str, int]    # model digest (or "none") -> devices
    reports_total: int = 0     # health reports received (latest or late, not duplicates), ever
    inferences_total: int = 0  # their inferences and errors, summed: counters for rate()
    errors_total: int = 0
    unverified: int = 0        # devices whose birth status says they run unsigned images
    # latencies of the devices' latest windows: exact (from histograms) when latency_exact
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    latency_exact: bool = False
    no_hist: int = 0           # devices whose latest window had inferences but no histogram
    # every histogram latency reported, ever, per LE_BOUNDS_MS slot (+Inf last), and their sum (ms)
    latency_le_total: tuple[int, ...] = ()
    latency_sum_ms_total: float = 0.0

    def to_dict(self) -> dict[str, object]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


class GroupAggregate:
    """Running sums of the contributions of one group's devices."""

    __slots__ = ("cells", "dense", "digests", "errors", "errors_total", "inf_rate", "inferences",
                 "inferences_total", "lat_count", "lat_hist", "lat_hist50", "lat_hist99", "latencies_total",
                 "name", "no_hist", "reports_total", "status")

    def __init__(self, name: str) -> None:
        self.name = name
        self.status = [0, 0, 0]
        self.digests: dict[str | None, int] = {}
        self.lat_hist = [0] * LAT_BUCKETS
        self.lat_hist50 = [0] * LAT_BUCKETS
        self.lat_hist99 = [0] * LAT_BUCKETS
        self.lat_count = 0
        self.dense = DenseHistogram()
        self.no_hist = 0
        self.latencies_total = DenseHistogram()   # every histogram latency ever reported
        self.inferences = 0
        self.errors = 0
        self.inf_rate = 0.0
        self.reports_total = 0
        self.inferences_total = 0
        self.errors_total = 0
        # (second last reported, healthy) -> devices. Old seconds are folded into NEVER.
        self.cells: dict[tuple[int, bool], int] = {}

    @property
    def devices(self) -> int:
        return sum(self.status)

    def add(self, c: Contribution) -> None:
        self.status[c.status] += 1
        self.digests[c.digest] = self.digests.get(c.digest, 0) + 1
        if c.lat_bucket >= 0:
            self.lat_hist[c.lat_bucket] += 1
            self.lat_hist50[c.lat_bucket50] += 1
            self.lat_hist99[c.lat_bucket99] += 1
            self.lat_count += 1
            if c.hist is None:
                self.no_hist += 1
            else:
                self.dense.add(c.hist)
        self.inferences += c.inferences
        self.errors += c.errors
        self.inf_rate += c.inf_rate
        key = (c.seen, c.healthy)
        self.cells[key] = self.cells.get(key, 0) + 1

    def remove(self, c: Contribution) -> None:
        self.status[c.status] -= 1
        left = self.digests[c.digest] - 1
        if left:
            self.digests[c.digest] = left
        else:
            del self.digests[c.digest]
        if c.lat_bucket >= 0:
            self.lat_hist[c.lat_bucket] -= 1
            self.lat_hist50[c.lat_bucket50] -= 1
            self.lat_hist99[c.lat_bucket99] -= 1
            self.lat_count -= 1
            if c.hist is None:
                self.no_hist -= 1
            else:
                self.dense.add(c.hist, -1)
        self.inferences -= c.inferences
        self.errors -= c.errors
        self.inf_rate -= c.inf_rate
        key = (c.seen, c.healthy)
        count = self.cells.get(key)
        if count is None:  # folded into NEVER by compact()
            key = (NEVER, c.healthy)
            count = self.cells[key]
        if count > 1:
            self.cells[key] = count - 1
        else:
            del self.cells[key]

    def compact(self, older_than: int) -> None:
        """Fold the cells of seconds before ``older_than`` into NEVER (they no longer count as recent)."""
        if len(self.cells) <= _MAX_CELLS:
            return
        for key in [k for k in self.cells if NEVER < k[0] < older_than]:
            count = self.cells.pop(key)
            never = (NEVER, key[1])
            self.cells[never] = self.cells.get(never, 0) + count

    def quantile_p95(self, q: float, hist: list[int] | None = None) -> float | None:
        """The ``q``-th percentile (0-100) of the devices' latest p95s (or of ``hist``'s figures)."""
        if self.lat_count == 0:
            return None
        rank = q / 100.0 * self.lat_count
        seen = 0
        for bucket, count in enumerate(self.lat_hist if hist is None else hist):
            if count:
                seen += count
                if seen >= rank:
                    return round(latency_value(bucket), 3)
        return round(latency_value(LAT_BUCKETS - 1), 3)  # pragma: no cover - rank <= lat_count

    def stats(self, recent_since: int) -> GroupStats:
        """Figures with 'reporting' meaning a report in or after second ``recent_since``."""
        reporting = healthy = 0
        for (seen, ok), count in self.cells.items():
            if seen >= recent_since:
                reporting += count
                if ok:
                    healthy += count
        devices = sum(self.status)
        exact = self.lat_count > 0 and self.no_hist == 0
        le_total, le_sum = fold_le(self.latencies_total.slots)
        if exact:
            p50, p95, p99 = (None if v is None else round(v, 3) for v in self.dense.quantiles((0.5, 0.95, 0.99)))
        else:
            p50, p95, p99 = (self.quantile_p95(50, self.lat_hist50), self.quantile_p95(95),
                             self.quantile_p95(99, self.lat_hist99))
        return GroupStats(
            group=self.name, devices=devices, online=self.status[ONLINE], offline=self.status[OFFLINE],
            unknown=self.status[UNKNOWN], reporting=reporting, silent=devices - reporting, healthy=healthy,
            healthy_share=round(healthy / devices, 4) if devices else None,
            inferences=self.inferences, errors=self.errors,
            error_rate=round(self.errors / max(self.inferences, self.errors), 6) if self.inferences or self.errors
            else None,
            inference_rate=round(max(self.inf_rate, 0.0), 3),
            p50_of_p95_ms=self.quantile_p95(50), p95_of_p95_ms=self.quantile_p95(95),
            digests={(d or "none"): n for d, n in sorted(self.digests.items(), key=lambda kv: -kv[1])},
            reports_total=self.reports_total, inferences_total=self.inferences_total,
            errors_total=self.errors_total, p50_ms=p50, p95_ms=p95, p99_ms=p99, latency_exact=exact,
            no_hist=self.no_hist, latency_le_total=tuple(le_total), latency_sum_ms_total=round(le_sum, 3),
        )
