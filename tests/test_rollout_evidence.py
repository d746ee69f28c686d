"""The statistics behind the gates: error rates under repeated looks, power, minimum samples, the
control comparison and the p95 confidence sequences on histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from edgekit_agent.protocol.histograms import LatencyHistogram

from edgekit.rollout.evidence import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    control_test,
    cs_width,
    detection_samples,
    min_samples,
    quantile_bounds,
    quantiles,
    rate_test,
    sprt_detection_samples,
)

ALPHA = BETA = 0.01
LIMIT = 0.01


def _ever_fails(rng: np.random.Generator, p: float, *, runs: int, looks: int, step: int) -> float:
    """Share of runs in which the SPRT fails at any of ``looks`` looks (every ``step`` inferences)."""
    failed = 0
    for _ in range(runs):
        errors = rng.binomial(step, p, looks).cumsum()
        for i, k in enumerate(errors):
            if rate_test(int(k), (i + 1) * step, LIMIT, alpha=ALPHA, beta=BETA).outcome == FAIL:
                failed += 1
                break
    return failed / runs


def test_type_one_error_holds_under_many_looks() -> None:
    # at the limit itself (the worst case of "healthy"), judged 300 times over 6,000 inferences
    rng = np.random.default_rng(14)
    share = _ever_fails(rng, LIMIT, runs=1500, looks=300, step=20)
    assert share <= ALPHA + 0.006
    # a naive fixed-level test at every look would not hold: show the simulation can tell
    naive = 0
    for _ in range(300):
        errors = rng.binomial(20, LIMIT, 300).cumsum()
        n = np.arange(1, 301) * 20
        z = (errors - n * LIMIT) / np.sqrt(n * LIMIT * (1 - LIMIT))
        naive += bool((z > 2.326).any())
    assert naive / 300 > 3 * ALPHA


def test_power_against_three_times_the_limit() -> None:
    rng = np.random.default_rng(7)
    need = sprt_detection_samples(LIMIT, alpha=ALPHA, power=1 - BETA)
    assert need == 1769
    looks = need // 10
    share = _ever_fails(rng, 3 * LIMIT, runs=600, looks=looks, step=10)
    assert share >= 0.97


def test_minimum_samples_follow_from_threshold_and_power() -> None:
    n = min_samples(LIMIT, alpha=ALPHA, beta=BETA)
    # log(beta) / log((1 - 3 p0) / (1 - p0))
    assert n == math.ceil(math.log(0.01) / math.log(0.97 / 0.99))
    assert rate_test(0, n - 1, LIMIT, alpha=ALPHA, beta=BETA).outcome == INCONCLUSIVE
    assert rate_test(0, n, LIMIT, alpha=ALPHA, beta=BETA).outcome == PASS
    # more power, a looser limit: the sample grows, shrinks
    assert min_samples(LIMIT, alpha=ALPHA, beta=0.001) > n > min_samples(0.05, alpha=ALPHA, beta=BETA)
    assert detection_samples(LIMIT, alpha=ALPHA, power=0.99) < sprt_detection_samples(LIMIT, alpha=ALPHA, power=0.99)


def test_zero_limit_fails_on_one_error() -> None:
    assert rate_test(1, 10_000, 0.0, alpha=ALPHA, beta=BETA).outcome == FAIL
    assert rate_test(0, 10, 0.0, alpha=ALPHA, beta=BETA).outcome == PASS


def test_control_comparison() -> None:
    worse = control_test(30, 1000, 5, 1000, alpha=ALPHA, beta=BETA)
    same = control_test(30, 1000, 30, 1000, alpha=ALPHA, beta=BETA)
    assert worse is not None and worse.outcome == FAIL
    assert same is not None and same.outcome == PASS
    assert control_test(3, 100, 0, 0, alpha=ALPHA, beta=BETA) is None


def _lognormal_hist(rng: np.random.Generator, n: int, median: float) -> LatencyHistogram:
    return LatencyHistogram.from_ms(rng.lognormal(math.log(median), 0.4, n))


def test_p95_confidence_sequence_covers_at_every_look() -> None:
    rng = np.random.default_rng(3)
    true_p95 = 20.0 * math.exp(0.4 * 1.6448536)
    alpha, misses = 0.05, 0
    for _ in range(200):
        samples = rng.lognormal(math.log(20.0), 0.4, 20_000)
        for n in (50, 200, 1000, 5000, 20_000):
            b = quantile_bounds(LatencyHistogram.from_ms(samples[:n]), 0.95, alpha)
            if (b.low is not None and b.low > true_p95) or (b.high is not None and b.high < true_p95):
                misses += 1
                break
    assert misses / 200 <= alpha
    # one pass gives the histogram's own quantiles
    hist = LatencyHistogram.from_ms(samples)
    assert quantiles(hist, (0.05, 0.5, 0.95, 1.0)) == [hist.quantile(q) for q in (0.05, 0.5, 0.95, 1.0)]
    assert quantiles(LatencyHistogram(), (0.5,)) == [None]
    # the width shrinks with the samples
    assert cs_width(100_000, alpha) < cs_width(1000, alpha) < cs_width(10, alpha)


def test_p95_bounds_tell_a_50_percent_slower_model_apart() -> None:
    rng = np.random.default_rng(5)
    base = quantile_bounds(_lognormal_hist(rng, 50_000, 20.0), 0.95, 0.005)
    slow = quantile_bounds(_lognormal_hist(rng, 50_000, 30.0), 0.95, 0.005)
    assert base.high is not None and slow.low is not None and slow.low > 1.2 * base.high
    few = quantile_bounds(_lognormal_hist(rng, 30, 30.0), 0.95, 0.005)
    assert few.high is None   # 30 latencies say nothing about an upper p95 bound


@pytest.mark.parametrize("errors", [0, 5, 40])
def test_rate_test_reports_its_numbers(errors: int) -> None:
    ev = rate_test(errors, 1000, LIMIT, alpha=ALPHA, beta=BETA)
    assert ev.fail_at == pytest.approx(math.log(100)) and ev.pass_at == pytest.approx(math.log(0.01))
    assert ev.samples == 1000 and ev.test == "SPRT"
    assert ev.llr == pytest.approx(errors * math.log(3) + (1000 - errors) * math.log(0.97 / 0.99))
