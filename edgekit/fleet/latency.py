"""Latency histograms on the fleet side: packed per report, summed per group, folded for Prometheus.

The agents send a ``LatencyHistogram`` (``edgekit_agent.protocol.histograms``: log buckets, 1%
relative error) with each health report. The tracker keeps one per history record, so a window
query can merge exactly the reports it counts; to keep that cheap at 100,000 devices a histogram
is stored as one small ``bytes``: a 3-byte header (first bucket, count width) and the counts of
its non-empty range as unsigned 8-, 16- or 32-bit integers (a typical 10 s window of one device
spans 20-60 buckets: 25-65 bytes). ``TrackerConfig.max_hist_bytes`` bounds it, so a hostile agent
cannot make the tracker keep more than ``history * max_hist_bytes`` per device.
"""

from __future__ import annotations

import math
import struct
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

from edgekit_agent.protocol.histograms import MAX_INDEX, MIN_INDEX, LatencyHistogram, bucket_value

__all__ = [
    "LE_BOUNDS_MS",
    "DenseHistogram",
    "Packed",
    "fold_le",
    "pack",
    "unpack",
]

Packed = bytes
_HEAD: Final = struct.Struct("<hB")
_TYPECODES: Final = {1: "B", 2: "H", 4: "I"}
_U32: Final = 0xFFFF_FFFF
_SPAN: Final = MAX_INDEX - MIN_INDEX + 1

# The fixed bounds of the exporter's classic Prometheus histogram (ms), the ones a latency
# dashboard expects; each log bucket is folded into the first bound at or above its value.
LE_BOUNDS_MS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                       5000.0, 10000.0, 30000.0)
_VALUE: Final = tuple(bucket_value(k) for k in range(MIN_INDEX, MAX_INDEX + 1))
_LE_OF_BUCKET: Final = tuple(bisect_left(LE_BOUNDS_MS, bucket_value(k)) for k in range(MIN_INDEX, MAX_INDEX + 1))


def pack(h: LatencyHistogram) -> Packed:
    """The compact form of a histogram (``b""`` when empty); leading and trailing zeros dropped."""
    counts = h.counts
    lo, hi = 0, len(counts)
    while lo < hi and not counts[lo]:
        lo += 1
    while hi > lo and not counts[hi - 1]:
        hi -= 1
    if lo == hi:
        return b""
    kept = [min(c, _U32) for c in counts[lo:hi]]
    top = max(kept)
    width = 1 if top < 0x100 else 2 if top < 0x1_0000 else 4
    return _HEAD.pack(h.offset + lo, width) + array(_TYPECODES[width], kept).tobytes()


def _counts(p: Packed) -> tuple[int, array[int]]:
    offset, width = _HEAD.unpack_from(p)
    counts = array(_TYPECODES[width])
    counts.frombytes(p[_HEAD.size:])
    return offset, counts


def unpack(p: Packed) -> LatencyHistogram:
    if not p:
        return LatencyHistogram()
    offset, counts = _counts(p)
    return LatencyHistogram(offset, tuple(counts))


def fold_le(p: Packed) -> tuple[list[int], float]:
    """Counts per ``LE_BOUNDS_MS`` slot (the last slot is +Inf), not cumulative, and the sum of
    the latencies (each taken as its bucket's value)."""
    out = [0] * (len(LE_BOUNDS_MS) + 1)
    total = 0.0
    if p:
        offset, counts = _counts(p)
        base = offset - MIN_INDEX
        for i, c in enumerate(counts):
            if c:
                out[_LE_OF_BUCKET[base + i]] += c
                total += c * _VALUE[base + i]
    return out, total


class DenseHistogram:
    """A running sum of packed histograms over every bucket of the latency range (about 1,100
    slots): O(width) to add or take away one, O(buckets) to read a quantile."""

    __slots__ = ("count", "slots")

    def __init__(self) -> None:
        self.slots = [0] * _SPAN
        self.count = 0

    def add(self, p: Packed, sign: int = 1) -> None:
        if not p:
            return
        offset, counts = _counts(p)
        slots = self.slots
        base = offset - MIN_INDEX
        for i, c in enumerate(counts):
            slots[base + i] += sign * c
        self.count += sign * sum(counts)

    def add_all(self, packed: Iterable[Packed]) -> DenseHistogram:
        for p in packed:
            self.add(p)
        return self

    def histogram(self) -> LatencyHistogram:
        nz = [i for i, c in enumerate(self.slots) if c]
        if not nz:
            return LatencyHistogram()
        return LatencyHistogram(nz[0] + MIN_INDEX, tuple(self.slots[nz[0]:nz[-1] + 1]))

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """The ``qs`` (0..1, increasing) quantiles in ms, nearest rank, as ``LatencyHistogram.quantile``."""
        n = self.count
        if n <= 0:
            return [None] * len(qs)
        ranks = [max(1, math.ceil(q * n)) for q in qs]
        out: list[float | None] = []
        seen = 0
        j = 0
        for i, c in enumerate(self.slots):
            if not c:
                continue
            seen += c
            while j < len(ranks) and seen >= ranks[j]:
                out.append(bucket_value(i + MIN_INDEX))
                j += 1
            if j == len(ranks):
                break
        return out
