"""The paired sign test behind every "faster than FP32" claim (edgekit.optimize.speedup)."""

from __future__ import annotations

import math
import random

import pytest

from edgekit.optimize import speedup
from edgekit.optimize.speedup import paired_ratio, ratio_interval, sign_test_rank


def _binom_cdf_below(n: int, k: int) -> float:
    """P(Binomial(n, 1/2) < k), summed independently of the module's recurrence."""
    return sum(math.comb(n, i) for i in range(k)) / 2 ** n


@pytest.mark.parametrize("n", [1, 5, 6, 7, 10, 20, 50, 101, 400, 2000])
def test_rank_is_the_largest_within_the_tail(n: int) -> None:
    k = sign_test_rank(n)
    assert _binom_cdf_below(n, k) <= 0.025
    assert _binom_cdf_below(n, k + 1) > 0.025


def test_textbook_ranks() -> None:
    # tables of the sign-test interval for the median: no 95 % interval under 6 values, ranks 6 and 15 of 20
    assert sign_test_rank(5) == 0 and sign_test_rank(6) == 1 and sign_test_rank(20) == 6
    assert sign_test_rank(20, 0.90) == 6 and sign_test_rank(20, 0.99) == 4


def test_normal_approximation_meets_the_exact_rank() -> None:
    exact = sign_test_rank(speedup._EXACT_UP_TO)
    approx = max(0, math.floor(speedup._EXACT_UP_TO / 2 - 1.959964 * math.sqrt(speedup._EXACT_UP_TO) / 2))
    assert abs(exact - approx) <= 1
    assert abs(sign_test_rank(speedup._EXACT_UP_TO + 1) - exact) <= 1


def test_interval_covers_the_true_median_at_its_confidence() -> None:
    # skewed, heavy-tailed ratios, as timings are: lognormal around a known median of 0.8
    rng = random.Random(7)
    trials, covered = 2000, 0
    for _ in range(trials):
        ratios = [0.8 * math.exp(rng.gauss(0.0, 0.3)) for _ in range(40)]
        found = ratio_interval(ratios)
        assert found.low is not None and found.high is not None
        covered += found.low <= 0.8 <= found.high
    # the sign test is conservative: at least the stated 95 %, less than certainty
    assert 0.93 <= covered / trials < 1.0


def test_pairing_cancels_what_slows_both() -> None:
    # the machine slows by up to 5x from round to round; the candidate is 0.7x in every round
    rng = random.Random(1)
    slow = [rng.uniform(1.0, 5.0) for _ in range(60)]
    reference = [10.0 * s for s in slow]
    candidate = [7.0 * s for s in slow]
    found = paired_ratio(reference, candidate)
    assert found.ratio == pytest.approx(0.7) and found.low == pytest.approx(0.7) and found.high == pytest.approx(0.7)
    assert found.faster() and not found.slower()
    # unpaired, the same timings would not show it: their p50s differ by less than their spread
    assert max(candidate) > min(reference)


def test_noise_is_not_a_claim() -> None:
    rng = random.Random(3)
    found = ratio_interval([rng.uniform(0.9, 1.1) for _ in range(200)])
    assert found.low is not None and found.high is not None and found.low < 1.0 < found.high
    assert not found.faster() and not found.slower()
    assert "95% CI" in found.describe() and "sign test" in found.describe() and "200 paired rounds" in found.describe()


def test_too_few_rounds_claim_nothing() -> None:
    found = ratio_interval([0.5, 0.5, 0.5, 0.5, 0.5])
    assert found.ratio == 0.5 and found.low is None and not found.faster()
    assert "too few" in found.describe()
    assert ratio_interval([]).ratio is None and ratio_interval([]).describe() == "not timed"


def test_bad_rounds_are_left_out_and_mismatches_refused() -> None:
    found = paired_ratio([1.0, 0.0, 2.0, 1.0, 1.0, 1.0, 1.0], [0.5, 0.5, float("nan"), 0.5, 0.5, 0.5, 0.5])
    assert found.rounds == 5
    with pytest.raises(ValueError, match="one entry per round"):
        paired_ratio([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="confidence"):
        sign_test_rank(10, 1.5)
