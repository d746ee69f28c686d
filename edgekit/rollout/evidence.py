"""The statistical tests behind the gates (pure, no I/O): each answers pass, fail or inconclusive
with its numbers, and stays valid however often the engine looks.

Error rate — Wald's sequential probability ratio test (SPRT) of ``p <= p0`` (the threshold)
against ``p >= p1 = DETECT_FACTOR * p0`` on the wave's cumulative errors/inferences. The log
likelihood ratio ``llr = k log(p1/p0) + (n-k) log((1-p1)/(1-p0))`` is compared with
``log(1/alpha)`` (fail) and ``log(beta)`` (pass). The likelihood ratio is a non-negative
martingale under ``p0`` (a supermartingale for any ``p <= p0``), so by Ville's inequality the
chance that it *ever* reaches ``1/alpha`` is at most ``alpha``: no correction is needed for
judging every few seconds, any number of looks is covered. Symmetrically a rate of ``p1`` or
worse ever looks like a pass with chance at most ``beta`` (1 - power).

Error rate against a control group — conditional on the errors seen, each error comes from the
wave with probability ``s0 = n_w / (n_w + n_c)`` when both rates are equal, and
``s1 = f n_w / (f n_w + n_c)`` when the wave's rate is ``f = DETECT_FACTOR`` times the
control's: an SPRT of ``s0`` against ``s1`` on ``k_w`` of ``k_w + k_c`` errors (valid as above
while both groups report at a steady pace, as they do over the same window).

Latency — the same SPRT on the share of latencies above a limit ``L``: the p95 is at most ``L``
when at most 5% of latencies lie above it. ``p0 = 5%`` against ``p1 = 15%`` (the p85 above
``L``: clearly slower), counted from the merged histogram (buckets wholly above ``L``). For the
absolute gate ``L`` is the limit; for the regression gate ``(1 + limit)`` x the reference p95 —
the control group's upper confidence bound (order statistic, one look, at half the alpha; the
test takes the other half), or the p95 of the devices before the move.
"""

from __future__ import annotations

import bisect
import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from edgekit_agent.protocol.histograms import REL_ERR, LatencyHistogram, bucket_of, bucket_value

Outcome = Literal["pass", "fail", "inconclusive"]
PASS: Outcome = "pass"
FAIL: Outcome = "fail"
INCONCLUSIVE: Outcome = "inconclusive"

# The fault the error-rate test is built to detect: a rate this many times the threshold.
DETECT_FACTOR = 3.0

SPRT = "SPRT"
SPRT_CONTROL = "SPRT vs control"
TAIL_SPRT = "SPRT of the share above"


@dataclass(frozen=True)
class RateEvidence:
    """One sequential test's state: its outcome, the log likelihood ratio and its two bounds."""

    test: str
    outcome: Outcome
    llr: float
    fail_at: float   # llr at or above: fail (log 1/alpha)
    pass_at: float   # llr at or below: pass (log beta)
    samples: int
    min_samples: int  # the fewest inferences at which this test can pass (none of them errors)


def _alternative(p0: float, factor: float) -> float:
    # p1 must stay a probability: halfway to 1 when factor * p0 would not
    return min(factor * p0, (1.0 + p0) / 2.0)


def min_samples(threshold: float, *, alpha: float, beta: float, factor: float = DETECT_FACTOR) -> int:
    """The fewest inferences (all without error) for the error-rate SPRT to pass: derived from
    the threshold and the power; fewer can only be inconclusive."""
    del alpha  # the pass bound depends on beta alone (Ville's inequality under p1)
    if threshold <= 0:
        return 1
    p1 = _alternative(threshold, factor)
    return math.ceil(math.log(beta) / math.log((1 - p1) / (1 - threshold)) - 1e-9)


def detection_samples(threshold: float, *, alpha: float, power: float, factor: float = DETECT_FACTOR) -> int:
    """The inferences a one-sided fixed-sample binomial test at level ``alpha`` needs to detect a
    rate of ``factor`` x the threshold with the given power (normal approximation). A canary that
    cannot reach this many before its wave timeout cannot, in principle, detect that fault."""
    if threshold <= 0:
        return 1
    p1 = _alternative(threshold, factor)
    za, zb = _z(1 - alpha), _z(power)
    root = (za * math.sqrt(threshold * (1 - threshold)) + zb * math.sqrt(p1 * (1 - p1))) / (p1 - threshold)
    return math.ceil(root * root)


def sprt_detection_samples(threshold: float, *, alpha: float, power: float,
                           factor: float = DETECT_FACTOR) -> int:
    """The inferences at which the error-rate SPRT fails a rate of ``factor`` x the threshold with
    the given power (normal approximation of its log likelihood ratio, a random walk with drift
    ``m`` and spread ``s`` per inference: the ``n`` with ``m n - z s sqrt(n) = log(1/alpha)``).
    More than a fixed-sample test needs: the price of judging at every look."""
    if threshold <= 0:
        return 1
    p1 = _alternative(threshold, factor)
    up, down = math.log(p1 / threshold), math.log((1 - p1) / (1 - threshold))
    drift = p1 * up + (1 - p1) * down
    spread = math.sqrt(p1 * (1 - p1)) * (up - down)
    z, bound = _z(power), math.log(1 / alpha)
    root = (z * spread + math.sqrt(z * z * spread * spread + 4 * drift * bound)) / (2 * drift)
    return math.ceil(root * root)


def rate_test(errors: int, inferences: int, threshold: float, *, alpha: float, beta: float,
              factor: float = DETECT_FACTOR) -> RateEvidence:
    """SPRT of the wave's error rate against the threshold (see the module docstring)."""
    fail_at, pass_at = math.log(1 / alpha), math.log(beta)
    need = min_samples(threshold, alpha=alpha, beta=beta, factor=factor)
    errors, inferences = max(0, errors), max(0, inferences)
    if threshold <= 0:
        # p0 = 0: one error is proof; without errors the rate is as low as it can be
        llr = math.inf if errors else -math.inf if inferences else 0.0
    elif threshold >= 1:
        llr = -math.inf if inferences else 0.0
    else:
        p1 = _alternative(threshold, factor)
        llr = (errors * math.log(p1 / threshold)
               + (inferences - errors) * math.log((1 - p1) / (1 - threshold)))
    return RateEvidence(SPRT, _outcome(llr, fail_at, pass_at), llr, fail_at, pass_at, inferences, need)


def control_test(wave_errors: int, wave_inferences: int, control_errors: int, control_inferences: int,
                 *, alpha: float, beta: float, factor: float = DETECT_FACTOR) -> RateEvidence | None:
    """SPRT of "the wave errs ``factor`` x as often as the control" against "as often"; None when
    either side has no inferences."""
    if wave_inferences <= 0 or control_inferences <= 0:
        return None
    fail_at, pass_at = math.log(1 / alpha), math.log(beta)
    s0 = wave_inferences / (wave_inferences + control_inferences)
    s1 = factor * wave_inferences / (factor * wave_inferences + control_inferences)
    llr = wave_errors * math.log(s1 / s0) + control_errors * math.log((1 - s1) / (1 - s0))
    return RateEvidence(SPRT_CONTROL, _outcome(llr, fail_at, pass_at), llr, fail_at, pass_at,
                        wave_errors + control_errors, 0)


def _outcome(llr: float, fail_at: float, pass_at: float) -> Outcome:
    if llr >= fail_at:
        return FAIL
    if llr <= pass_at:
        return PASS
    return INCONCLUSIVE


@dataclass(frozen=True)
class QuantileBounds:
    q: float
    low: float | None    # None: too few samples for a bound
    high: float | None
    samples: int
    point: float | None = None  # the histogram's own q-quantile


def quantiles(hist: LatencyHistogram, qs: Sequence[float]) -> list[float | None]:
    """Several quantiles of a histogram in one pass (nearest rank, as ``LatencyHistogram.quantile``)."""
    cum = list(itertools.accumulate(hist.counts))
    n = cum[-1] if cum else 0
    if n == 0:
        return [None for _ in qs]
    last = len(cum) - 1
    return [bucket_value(hist.offset + min(bisect.bisect_left(cum, max(1, math.ceil(q * n))), last))
            for q in qs]


def quantile_bounds(hist: LatencyHistogram, q: float, alpha: float) -> QuantileBounds:
    """The histogram's ``q``-quantile with order-statistic confidence bounds (``1 - alpha`` each,
    for one look: the reference side of a comparison, which the sequential test then takes as a
    fixed limit), widened by the histogram's relative error. A bound is None while there are too
    few samples for it."""
    n = hist.count
    if n == 0:
        return QuantileBounds(q, None, None, 0)
    spread = _z(1 - alpha) * math.sqrt(n * q * (1 - q))
    lo_rank, hi_rank = math.floor(n * q - spread), math.ceil(n * q + spread)
    low, point, high = quantiles(hist, (max(lo_rank, 1) / n, q, min(hi_rank, n) / n))
    return QuantileBounds(q, None if lo_rank < 1 or low is None else low * (1 - REL_ERR),
                          None if hi_rank > n or high is None else high * (1 + REL_ERR), n, point)


def above(hist: LatencyHistogram, limit_ms: float) -> int:
    """Latencies surely above ``limit_ms``: those in buckets wholly above it (the bucket holding
    the limit is left out, so the count errs low, towards a pass)."""
    first = bucket_of(limit_ms) + 1 - hist.offset
    return sum(hist.counts[max(first, 0):])


def tail_test(hist: LatencyHistogram, limit_ms: float, *, alpha: float, beta: float,
              q: float = 0.95) -> RateEvidence:
    """SPRT of "the ``q``-quantile is at most ``limit_ms``" (at most ``1 - q`` of the latencies lie
    above it) against "``DETECT_FACTOR`` x that share does" (for the p95: 5% against 15%), on the
    latencies above the limit: the error-rate test, so as valid at every look."""
    ev = rate_test(above(hist, limit_ms), hist.count, 1 - q, alpha=alpha, beta=beta)
    return RateEvidence(TAIL_SPRT, ev.outcome, ev.llr, ev.fail_at, ev.pass_at, ev.samples, ev.min_samples)


def _z(p: float) -> float:
    """The standard normal quantile (Acklam's rational approximation, |error| < 1.2e-9)."""
    if not 0 < p < 1:
        raise ValueError("p must be in (0, 1)")
    a = (-3.969683028665376e01, 2.209460984245205e02, -2.759285104469687e02, 1.383577518672690e02,
         -3.066479806614716e01, 2.506628277459239e00)
    b = (-5.447609879822406e01, 1.615858368580409e02, -1.556989798598866e02, 6.680131188771972e01,
         -1.328068155288572e01)
    c = (-7.784894002430293e-03, -3.223964580411365e-01, -2.400758277161838e00, -2.549732539343734e00,
         4.374664141464968e00, 2.938163982698783e00)
    d = (7.784695709041462e-03, 3.224671290700398e-01, 2.445134137142996e00, 3.754408661907416e00)
    low = 0.02425
    if p < low:
        s = math.sqrt(-2 * math.log(p))
        return (((((c[0] * s + c[1]) * s + c[2]) * s + c[3]) * s + c[4]) * s + c[5]) / \
            ((((d[0] * s + d[1]) * s + d[2]) * s + d[3]) * s + 1)
    if p > 1 - low:
        return -_z(1 - p)
    s = p - 0.5
    r = s * s
    return (((((a[0] * r + a[1]) * r + a[2]) * r + a[3]) * r + a[4]) * r + a[5]) * s / \
        (((((b[0] * r + b[1]) * r + b[2]) * r + b[3]) * r + b[4]) * r + 1)
