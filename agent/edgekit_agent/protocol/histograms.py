"""A mergeable latency histogram: fixed log-scale buckets, so a fleet's percentiles are exact up to
a documented relative error, whatever devices and windows are merged (DDSketch-style).

Bucket ``k`` holds latencies in ``(GAMMA**(k-1), GAMMA**k]`` milliseconds, with
``GAMMA = (1 + REL_ERR) / (1 - REL_ERR)``. A quantile is reported as the bucket's representative
value ``2 * GAMMA**k / (GAMMA + 1)``, which lies within ``REL_ERR`` (1%) of every latency in that
bucket. Merging adds counts bucket by bucket, so the p95 of a merged histogram is the p95 of all
the samples (to 1%), not a p95 of per-device p95s.

Wire form (the ``latency_hist`` field of a health payload)::

    {"rel_err": 0.01, "offset": 321, "counts": [4, 0, 17, ...]}

``counts[i]`` is the number of samples in bucket ``offset + i``. Latencies at or below
``MIN_MS`` fall into the bucket of ``MIN_MS``; above ``MAX_MS`` into the bucket of ``MAX_MS``.
Decoding is bounded: at most ``MAX_BUCKETS`` counts, each an integer in ``[0, 2**53)``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final

REL_ERR: Final = 0.01
GAMMA: Final = (1 + REL_ERR) / (1 - REL_ERR)
LN_GAMMA: Final = math.log(GAMMA)
MIN_MS: Final = 0.001   # 1 µs
MAX_MS: Final = 3_600_000.0  # 1 h
MAX_BUCKETS: Final = 2048  # covers MIN_MS..MAX_MS (about 1,100 buckets) with room to spare
_MAX_COUNT: Final = 2**53


def bucket_of(ms: float) -> int:
    """The index of the bucket that holds a latency of ``ms`` milliseconds."""
    ms = min(max(ms, MIN_MS), MAX_MS)
    return math.ceil(math.log(ms) / LN_GAMMA - 1e-12)


MIN_INDEX: Final = bucket_of(MIN_MS)
MAX_INDEX: Final = bucket_of(MAX_MS)


def bucket_value(index: int) -> float:
    """The representative latency (ms) of bucket ``index``: within ``REL_ERR`` of all it holds."""
    return 2 * GAMMA**index / (GAMMA + 1)


class HistogramError(ValueError):
    """A wire histogram that is malformed or out of bounds."""


@dataclass(frozen=True)
class LatencyHistogram:
    offset: int = 0
    counts: tuple[int, ...] = ()

    @classmethod
    def from_ms(cls, values: Iterable[float]) -> LatencyHistogram:
        """Bucket latencies given in milliseconds (a list or a numpy array)."""
        import numpy as np  # lazy: fleet readers decode histograms without numpy

        arr = np.asarray(values if not isinstance(values, (list, tuple)) else list(values), dtype=np.float64)
        if arr.size == 0:
            return cls()
        arr = np.clip(arr, MIN_MS, MAX_MS)
        idx = np.ceil(np.log(arr) / LN_GAMMA - 1e-12).astype(np.int64)
        lo = int(idx.min())
        counts = np.bincount(idx - lo)
        return cls(lo, tuple(int(c) for c in counts))

    @classmethod
    def from_buckets(cls, buckets: Mapping[int, int]) -> LatencyHistogram:
        items = {k: v for k, v in buckets.items() if v}
        if not items:
            return cls()
        lo, hi = min(items), max(items)
        return cls(lo, tuple(items.get(k, 0) for k in range(lo, hi + 1)))

    @property
    def count(self) -> int:
        return sum(self.counts)

    def buckets(self) -> dict[int, int]:
        """Bucket index -> count, non-empty buckets only."""
        return {self.offset + i: c for i, c in enumerate(self.counts) if c}

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        if not other.counts:
            return self
        if not self.counts:
            return other
        lo = min(self.offset, other.offset)
        hi = max(self.offset + len(self.counts), other.offset + len(other.counts))
        merged = [0] * (hi - lo)
        for h in (self, other):
            base = h.offset - lo
            for i, c in enumerate(h.counts):
                merged[base + i] += c
        return LatencyHistogram(lo, tuple(merged))

    @classmethod
    def merge_all(cls, histograms: Iterable[LatencyHistogram | None]) -> LatencyHistogram:
        acc: dict[int, int] = {}
        for h in histograms:
            if h is None:
                continue
            for i, c in enumerate(h.counts):
                if c:
                    acc[h.offset + i] = acc.get(h.offset + i, 0) + c
        return cls.from_buckets(acc)

    def quantile(self, q: float) -> float | None:
        """The ``q``-quantile (0..1) in ms, within ``REL_ERR`` of the true sample quantile (the
        nearest-rank definition); None when empty."""
        n = self.count
        if n == 0:
            return None
        rank = max(1, math.ceil(q * n))
        seen = 0
        for i, c in enumerate(self.counts):
            seen += c
            if seen >= rank:
                return bucket_value(self.offset + i)
        return bucket_value(self.offset + len(self.counts) - 1)

    def values(self) -> list[tuple[float, int]]:
        """(representative ms, count) for each non-empty bucket, in increasing order."""
        return [(bucket_value(self.offset + i), c) for i, c in enumerate(self.counts) if c]

    def to_wire(self) -> dict[str, Any]:
        return {"rel_err": REL_ERR, "offset": self.offset, "counts": list(self.counts)}

    @classmethod
    def from_wire(cls, data: Any) -> LatencyHistogram:
        """Decode and bound-check a wire histogram; HistogramError when it is not one."""
        if not isinstance(data, Mapping):
            raise HistogramError("latency_hist is not an object")
        if data.get("rel_err") != REL_ERR:
            raise HistogramError(f"latency_hist rel_err {data.get('rel_err')!r} is not {REL_ERR}")
        offset, counts = data.get("offset"), data.get("counts")
        if not isinstance(offset, int) or isinstance(offset, bool):
            raise HistogramError("latency_hist offset is not an integer")
        if not isinstance(counts, Sequence) or isinstance(counts, (str, bytes)):
            raise HistogramError("latency_hist counts is not a list")
        if len(counts) > MAX_BUCKETS:
            raise HistogramError(f"latency_hist has {len(counts)} buckets (max {MAX_BUCKETS})")
        if counts and not (offset >= MIN_INDEX and offset + len(counts) - 1 <= MAX_INDEX):
            raise HistogramError("latency_hist buckets lie outside the latency range")
        for c in counts:
            if not isinstance(c, int) or isinstance(c, bool) or not 0 <= c < _MAX_COUNT:
                raise HistogramError("latency_hist counts must be non-negative integers")
        return cls(offset, tuple(counts)) if any(counts) else cls()
