"""Is a model faster than its reference? A paired sign test on interleaved timings (pure).

Timings interleave the models compared: round ``i`` runs each of them once, back to back, so the
per-round ratio ``candidate_i / reference_i`` cancels whatever slowed the machine in that round
(another process, a frequency step). The figure is the median of those ratios. Its confidence
interval is the sign test's, which assumes nothing about the shape of the timings: the order
statistics ``r_(k)`` and ``r_(n+1-k)`` of the ``n`` sorted ratios, with ``k`` the largest rank
such that ``P(Binomial(n, 1/2) < k) <= alpha / 2``.

"Faster" is a claim at that confidence: the whole interval lies below the bound (1.0, or a margin
under it). With too few rounds no interval exists (fewer than 6 at 95 %), and nothing is claimed.
Ratios pooled from several devices keep their pairing (each ratio is within one device's round), so
the same test applies to them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "DEFAULT_CONFIDENCE",
    "RECORD_FIELDS",
    "TEST_NAME",
    "PairedRatio",
    "paired_ratio",
    "ratio_interval",
    "recorded_test",
    "sign_test_rank",
]

DEFAULT_CONFIDENCE = 0.95
TEST_NAME = "sign test on paired per-round ratios"
RECORD_FIELDS = ("test", "ratio", "ci_low", "ci_high", "confidence", "rounds")  # as reports record a test
_EXACT_UP_TO = 5000  # rounds; above, the normal approximation of the binomial is exact to a rank


def sign_test_rank(n: int, confidence: float = DEFAULT_CONFIDENCE) -> int:
    """The 1-based rank ``k`` of the interval's lower end among ``n`` sorted values (the upper end
    is rank ``n + 1 - k``); 0 when ``n`` values are too few for ``confidence``."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), not {confidence}")
    if n <= 0:
        return 0
    tail = (1.0 - confidence) / 2.0
    if n > _EXACT_UP_TO:
        z = _normal_quantile(1.0 - tail)
        return max(0, math.floor(n / 2.0 - z * math.sqrt(n) / 2.0))
    whole = 1 << n  # exact integer arithmetic: 2**n does not fit a float for large n
    below, k, term = 0, 0, 1  # term = C(n, k)
    while k <= n // 2:
        if (below + term) / whole > tail:
            break
        below += term
        k += 1
        term = term * (n - k + 1) // k
    return k


def _normal_quantile(p: float) -> float:
    """Inverse of the standard normal CDF by bisection (ample for a rank)."""
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2.0
        if 0.5 * math.erfc(-mid / math.sqrt(2.0)) < p:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2.0


@dataclass(frozen=True)
class PairedRatio:
    """The median per-round ratio of a candidate to its reference, with its confidence interval."""

    ratio: float | None        # median of the per-round ratios; None without rounds
    low: float | None          # interval ends; None when the rounds are too few for one
    high: float | None
    rounds: int
    confidence: float = DEFAULT_CONFIDENCE

    def faster(self, below: float = 1.0) -> bool:
        """Shown faster: the whole interval lies under ``below``."""
        return self.high is not None and self.high < below

    def slower(self, above: float = 1.0) -> bool:
        """Shown slower: the whole interval lies over ``above``."""
        return self.low is not None and self.low > above

    def describe(self) -> str:
        """``0.64x (95% CI 0.62-0.66x, sign test, 412 paired rounds)``."""
        if self.ratio is None:
            return "not timed"
        level = f"{self.confidence:.0%}"
        if self.low is None or self.high is None:
            return f"{self.ratio:.2f}x ({self.rounds} paired rounds: too few for a {level} interval)"
        return (f"{self.ratio:.2f}x ({level} CI {self.low:.2f}-{self.high:.2f}x, sign test, "
                f"{self.rounds} paired rounds)")

    def to_dict(self) -> dict[str, Any]:
        return dict(zip(RECORD_FIELDS, (TEST_NAME, self.ratio, self.low, self.high, self.confidence, self.rounds),
                        strict=True))


def recorded_test(figure: Mapping[str, Any], *, ratio: bool = True) -> dict[str, Any]:
    """The paired test's fields out of a figure a report recorded (``to_dict``'s), whichever way it
    travelled: None where absent, ``rounds`` 0. ``ratio=False`` leaves the ratio to the caller."""
    record = {k: figure.get(k) for k in RECORD_FIELDS if ratio or k != "ratio"}
    record["rounds"] = figure.get("rounds") or 0
    return record


def ratio_interval(ratios: Sequence[float], confidence: float = DEFAULT_CONFIDENCE) -> PairedRatio:
    """The median and sign-test interval of per-round ratios (already paired)."""
    clean = sorted(r for r in ratios if math.isfinite(r) and r > 0.0)
    n = len(clean)
    if n == 0:
        return PairedRatio(None, None, None, 0, confidence)
    mid = n // 2
    median = clean[mid] if n % 2 else (clean[mid - 1] + clean[mid]) / 2.0
    k = sign_test_rank(n, confidence)
    if k == 0:
        return PairedRatio(round(median, 4), None, None, n, confidence)
    return PairedRatio(round(median, 4), round(clean[k - 1], 4), round(clean[n - k], 4), n, confidence)


def paired_ratio(reference: Sequence[float], candidate: Sequence[float],
                 confidence: float = DEFAULT_CONFIDENCE) -> PairedRatio:
    """``candidate`` against ``reference``, timed in the same rounds (index ``i`` is round ``i``).
    Rounds where either has no positive time are left out."""
    if len(reference) != len(candidate):
        raise ValueError(f"paired timings must have one entry per round: {len(reference)} != {len(candidate)}")
    return ratio_interval([c / r for r, c in zip(reference, candidate, strict=True) if r > 0.0 and c > 0.0],
                          confidence)
