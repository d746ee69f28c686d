"""The mergeable latency histogram of health payloads: quantiles within the documented relative
error of numpy's, merging equal to bucketing everything at once, and bounded decoding."""

from __future__ import annotations

import numpy as np
import pytest
from edgekit_agent.protocol.histograms import (
    MAX_BUCKETS,
    MIN_INDEX,
    REL_ERR,
    HistogramError,
    LatencyHistogram,
    bucket_of,
    bucket_value,
)
from edgekit_agent.stats import InferenceStats


@pytest.mark.parametrize("sigma", [0.1, 1.0, 2.5])
def test_quantiles_within_relative_error(sigma: float) -> None:
    rng = np.random.default_rng(7)
    samples = rng.lognormal(1.5, sigma, 50_000)
    hist = LatencyHistogram.from_ms(samples)
    for q in (0.01, 0.5, 0.9, 0.95, 0.99, 0.999):
        truth = float(np.quantile(samples, q, method="inverted_cdf"))
        got = hist.quantile(q)
        assert got is not None
        assert abs(got - truth) <= REL_ERR * truth * 1.0001, (q, got, truth)


def test_every_value_lies_within_rel_err_of_its_bucket_value() -> None:
    for ms in np.geomspace(0.001, 3_600_000, 5000):
        v = bucket_value(bucket_of(float(ms)))
        assert abs(v - ms) <= REL_ERR * ms * 1.0001


def test_merging_equals_bucketing_all_samples() -> None:
    rng = np.random.default_rng(1)
    parts = [rng.exponential(s, 1000) for s in (1.0, 10.0, 100.0)]
    whole = LatencyHistogram.from_ms(np.concatenate(parts))
    hs = [LatencyHistogram.from_ms(p) for p in parts]
    assert hs[0].merge(hs[1]).merge(hs[2]) == whole
    assert LatencyHistogram.merge_all([None, *hs]) == whole
    assert whole.count == 3000
    # the fleet p95 is not the p95 of per-device p95s
    per_device = sorted(h.quantile(0.95) or 0 for h in hs)
    assert whole.quantile(0.95) != per_device[1]


def test_wire_round_trip_and_empty() -> None:
    h = LatencyHistogram.from_ms([0.5, 2.0, 2.0, 1e9, 0.0])
    assert LatencyHistogram.from_wire(h.to_wire()) == h
    assert LatencyHistogram.from_ms([]).quantile(0.5) is None
    assert LatencyHistogram.from_wire({"rel_err": REL_ERR, "offset": 0, "counts": [0, 0]}).count == 0


@pytest.mark.parametrize("bad", [
    None, [], {"rel_err": 0.02, "offset": 0, "counts": [1]},
    {"rel_err": REL_ERR, "offset": "0", "counts": [1]},
    {"rel_err": REL_ERR, "offset": 0, "counts": "1"},
    {"rel_err": REL_ERR, "offset": 0, "counts": [1] * (MAX_BUCKETS + 1)},
    {"rel_err": REL_ERR, "offset": MIN_INDEX - 1, "counts": [1]},
    {"rel_err": REL_ERR, "offset": 0, "counts": [-1]},
    {"rel_err": REL_ERR, "offset": 0, "counts": [1.5]},
    {"rel_err": REL_ERR, "offset": 0, "counts": [True]},
    {"rel_err": REL_ERR, "offset": 0, "counts": [2**60]},
])
def test_hostile_wire_histograms_are_refused(bad: object) -> None:
    with pytest.raises(HistogramError):
        LatencyHistogram.from_wire(bad)


def test_agent_window_carries_every_sample() -> None:
    stats = InferenceStats()
    rng = np.random.default_rng(3)
    seconds = rng.lognormal(-5, 0.7, 20_000)
    for s in seconds:
        stats.record(float(s))
    stats.fold()
    w = stats.take_window()
    assert w.hist.count == len(seconds)
    truth = float(np.quantile(seconds * 1000, 0.95, method="inverted_cdf"))
    assert abs((w.hist.quantile(0.95) or 0) - truth) <= REL_ERR * truth * 1.0001
    assert stats.take_window().hist.count == 0


# -- the fleet side: packed per report, summed per group, folded for Prometheus -------------------
@pytest.mark.parametrize("scale", [1, 300, 70_000, 2**33])
def test_packing_round_trips_at_every_count_width(scale: int) -> None:
    from edgekit.fleet.latency import pack, unpack

    rng = np.random.default_rng(scale % 1000)
    hist = LatencyHistogram.from_ms(rng.lognormal(2.0, 0.5, 5000))
    scaled = LatencyHistogram(hist.offset, tuple(c * scale for c in hist.counts))
    packed = pack(scaled)
    back = unpack(packed)
    if scale < 2**32:
        assert back == scaled
    else:  # kept as 32-bit counts: clamped, never wrapped
        assert all(c == min(s, 2**32 - 1) for c, s in zip(back.counts, scaled.counts, strict=True))
    assert pack(LatencyHistogram(5, (0, 0, 3, 0))) == pack(LatencyHistogram(7, (3,)))
    assert pack(LatencyHistogram()) == b"" and unpack(b"") == LatencyHistogram()


def test_dense_sum_equals_merging_and_taking_away_undoes_adding() -> None:
    from edgekit.fleet.latency import DenseHistogram, pack

    rng = np.random.default_rng(1)
    parts = [LatencyHistogram.from_ms(rng.lognormal(m, 0.4, 800)) for m in (0.5, 2.0, 4.0)]
    dense = DenseHistogram().add_all(pack(h) for h in parts)
    merged = LatencyHistogram.merge_all(parts)
    assert dense.histogram() == merged and dense.count == merged.count
    assert dense.quantiles((0.01, 0.5, 0.95, 0.99)) == [merged.quantile(q) for q in (0.01, 0.5, 0.95, 0.99)]
    assert DenseHistogram().quantiles((0.5,)) == [None]
    dense.add(pack(parts[1]), -1)
    assert dense.histogram() == parts[0].merge(parts[2])


def test_folding_to_le_bounds_counts_each_latency_once_within_rel_err_of_its_bound() -> None:
    from edgekit.fleet.latency import LE_BOUNDS_MS, DenseHistogram, fold_le, pack

    rng = np.random.default_rng(2)
    samples = rng.lognormal(3.0, 1.5, 20_000)
    slots, total = fold_le(DenseHistogram().add_all([pack(LatencyHistogram.from_ms(samples))]).slots)
    assert sum(slots) == len(samples)
    assert abs(total - samples.sum()) <= REL_ERR * samples.sum()
    cumulative = np.cumsum(slots)
    for le, below in zip(LE_BOUNDS_MS, cumulative, strict=False):
        assert (samples <= le * (1 - REL_ERR)).sum() <= below <= (samples <= le * (1 + REL_ERR)).sum()
