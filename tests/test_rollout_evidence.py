"""The statistics behind the gates: error rates under repeated looks, power, minimum samples, the
control comparison and the latency tests on histograms."""

from __future__ import annotations

import math

import numpy as np
import pytest
from edgekit_agent.protocol.histograms import LatencyHistogram

from edgekit.rollout.evidence import (
    FAIL,
    INCONCLUSIVE,
    PASS,
    above,
    control_test,
    detection_samples,
    min_samples,
    quantile_bounds,
    quantiles,
    rate_test,
    sprt_detection_samples,
    tail_test,
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


def test_p95_tail_test_holds_its_error_rates_under_many_looks() -> None:
    rng = np.random.default_rng(3)
    median = 20.0
    true_p95 = median * math.exp(0.4 * 1.6448536)
    # the p95 exactly at the limit (worst case of a pass), looked at 40 times over 20,000 latencies
    fails = 0
    for _ in range(300):
        samples = rng.lognormal(math.log(median), 0.4, 20_000)
        for n in range(500, 20_001, 500):
            if tail_test(LatencyHistogram.from_ms(samples[:n]), true_p95, alpha=0.01, beta=0.01).outcome == FAIL:
                fails += 1
                break
    assert fails / 300 <= 0.01 + 0.01
    # 50% slower (its p95 far above the limit): caught
    slow = LatencyHistogram.from_ms(rng.lognormal(math.log(median * 1.5), 0.4, 2000))
    assert tail_test(slow, true_p95, alpha=0.01, beta=0.01).outcome == FAIL
    assert tail_test(slow, true_p95 * 3, alpha=0.01, beta=0.01).outcome == PASS
    assert above(slow, 0.5) == slow.count and above(slow, 10_000.0) == 0


def test_quantile_bounds_and_one_pass_quantiles() -> None:
    rng = np.random.default_rng(4)
    true_p95 = 20.0 * math.exp(0.4 * 1.6448536)
    misses = 0
    for _ in range(400):
        b = quantile_bounds(_lognormal_hist(rng, 2000, 20.0), 0.95, 0.05)
        assert b.low is not None and b.high is not None and b.low < b.high
        misses += b.high < true_p95
    assert misses / 400 <= 0.05 + 0.03
    assert quantile_bounds(_lognormal_hist(rng, 20, 20.0), 0.95, 0.005).high is None   # 20 say nothing
    hist = _lognormal_hist(rng, 5000, 20.0)
    assert quantiles(hist, (0.05, 0.5, 0.95, 1.0)) == [hist.quantile(q) for q in (0.05, 0.5, 0.95, 1.0)]
    assert quantiles(LatencyHistogram(), (0.5,)) == [None]


@pytest.mark.parametrize("errors", [0, 5, 40])
def test_rate_test_reports_its_numbers(errors: int) -> None:
    ev = rate_test(errors, 1000, LIMIT, alpha=ALPHA, beta=BETA)
    assert ev.fail_at == pytest.approx(math.log(100)) and ev.pass_at == pytest.approx(math.log(0.01))
    assert ev.samples == 1000 and ev.test == "SPRT"
    assert ev.llr == pytest.approx(errors * math.log(3) + (1000 - errors) * math.log(0.97 / 0.99))
