"""Latency histograms on the fleet side: packed per report, summed per group, folded for Prometheus.

The agents send a ``LatencyHistogram`` (``edgekit_agent.protocol.histograms``: log buckets, 1%
relative error) with each health report. The tracker keeps one per history record, so a window
query can merge exactly the reports it counts; to keep that cheap at 100,000 devices a histogram
is stored as one small ``bytes``: a 3-byte header (first bucket, count width) and the counts of
its non-empty range as little-endian unsigned 8-, 16- or 32-bit integers (a 10 s window of one
device typically spans 30-100 buckets: 33-103 bytes). ``TrackerConfig.max_hist_bytes`` bounds it, so a hostile agent
cannot make the tracker keep more than ``history * max_hist_bytes`` per device.
"""

from __future__ import annotations

import math
import struct
import sys
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Any, Final

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
_BIG_ENDIAN: Final = sys.byteorder == "big"   # packed counts are little-endian, as numpy reads them
assert all(array(code).itemsize == size for size, code in _TYPECODES.items())
_SPAN: Final = MAX_INDEX - MIN_INDEX + 1

# The fixed bounds of the exporter's classic Prometheus histogram (ms), the ones a latency
# dashboard expects; each log bucket is folded into the first bound at or above its value.
LE_BOUNDS_MS: Final = (0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0,
                       5000.0, 10000.0, 30000.0)
_VALUE: Final = tuple(bucket_value(k) for k in range(MIN_INDEX, MAX_INDEX + 1))
_LE_OF_BUCKET: Final = tuple(bisect_left(LE_BOUNDS_MS, bucket_value(k)) for k in range(MIN_INDEX, MAX_INDEX + 1))
# the first bucket (from MIN_INDEX) of each slot, and the end
_SLOT_START: Final = [*(bisect_left(_LE_OF_BUCKET, j) for j in range(len(LE_BOUNDS_MS) + 1)), _SPAN]


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
    kept = counts[lo:hi] if lo or hi < len(counts) else counts
    top = max(kept)
    if top > _U32:
        kept = tuple(min(c, _U32) for c in kept)
    width = 1 if top < 0x100 else 2 if top < 0x1_0000 else 4
    packed = array(_TYPECODES[width], kept)
    if _BIG_ENDIAN:
        packed.byteswap()
    return _HEAD.pack(h.offset + lo, width) + packed.tobytes()


def unpack(p: Packed) -> LatencyHistogram:
    if not p:
        return LatencyHistogram()
    offset, width = _HEAD.unpack_from(p)
    counts = array(_TYPECODES[width])
    counts.frombytes(p[_HEAD.size:])
    if _BIG_ENDIAN:
        counts.byteswap()
    return LatencyHistogram(offset, tuple(counts))


def fold_le(slots: Any) -> tuple[list[int], float]:
    """Dense counts (``DenseHistogram.slots``) per ``LE_BOUNDS_MS`` slot (the last is +Inf), not
    cumulative, and the sum of the latencies (each taken as its bucket's value)."""
    np = _numpy()
    return ([int(v) for v in np.add.reduceat(slots, _SLOT_START[:-1])],
            float(np.dot(slots.astype(np.float64), np.asarray(_VALUE))))


def _numpy() -> Any:
    # numpy on first use: the CLI imports this module for every command, and most never sum histograms
    import numpy

    return numpy


_DTYPES: Final = {1: "<u1", 2: "<u2", 4: "<u4"}


class DenseHistogram:
    """A running sum of packed histograms over every bucket of the latency range (about 1,100
    int64 slots in a numpy array): one vector add to add or take away a histogram (this runs
    several times per health report), O(buckets) to read quantiles."""

    __slots__ = ("count", "slots")

    def __init__(self) -> None:
        self.slots = _numpy().zeros(_SPAN, dtype="int64")
        self.count = 0

    def add(self, p: Packed, sign: int = 1) -> None:
        """Add a packed histogram (``sign`` -1: take it away)."""
        if not p:
            return
        offset, width = _HEAD.unpack_from(p)
        counts = _numpy().frombuffer(p, dtype=_DTYPES[width], offset=_HEAD.size)
        base = offset - MIN_INDEX
        view = self.slots[base:base + len(counts)]
        if sign > 0:
            view += counts
        else:
            view -= counts
        self.count += sign * int(counts.sum(dtype="int64"))

    def add_all(self, packed: Iterable[Packed]) -> DenseHistogram:
        for p in packed:
            self.add(p)
        return self

    def histogram(self) -> LatencyHistogram:
        nz = _numpy().flatnonzero(self.slots)
        if not nz.size:
            return LatencyHistogram()
        lo, hi = int(nz[0]), int(nz[-1])
        return LatencyHistogram(lo + MIN_INDEX, tuple(int(c) for c in self.slots[lo:hi + 1]))

    def quantiles(self, qs: Sequence[float]) -> list[float | None]:
        """The ``qs`` (0..1) quantiles in ms, nearest rank, as ``LatencyHistogram.quantile``."""
        n = self.count
        if n <= 0:
            return [None] * len(qs)
        np = _numpy()
        cumulative = np.cumsum(self.slots)
        found = np.searchsorted(cumulative, [max(1, math.ceil(q * n)) for q in qs], side="left")
        return [bucket_value(int(i) + MIN_INDEX) for i in found]
