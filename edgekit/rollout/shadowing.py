"""The shadow wave (``edgekit push --shadow-first``): before any device switches, the canary's
devices keep serving the current model and run the candidate beside it on a sampled share of live
requests; the rollout goes on only when their agreement is shown to be at least
``min_agreement``. Pure: the policy, the figures merged from the devices' reports, the test.

Where it runs: a DaemonSet ``<app>-<shadow revision>`` renders the *current* image with the
candidate as its ``shadow_image``, and only the canary's nodes are relabelled to it. A kubelet
then replaces one pod per canary node and nothing else; changing the current revision's own
DaemonSet would restart its pods on every node of the group.

The test, valid however often the engine looks (every few seconds, for as long as the shadow
runs), pooled over the canary's cumulative counts; ``alpha = 1 - confidence`` bounds both the
chance of ever failing a good candidate and of ever passing a bad one:

- top1: Wald's SPRT on the disagreement rate (``evidence.rate_test``, the error-rate gate's test):
  H0 disagreement ``<= 1 - min_agreement`` against H1 ``>= DETECT_FACTOR x`` that, so ``delta``,
  the agreement gap the test is built to detect, is ``(DETECT_FACTOR - 1) x (1 - min_agreement)``
  (0.04 below a minimum of 0.98: an agreement of 0.94). Its likelihood ratio is a supermartingale
  under H0, so by Ville's inequality it ever reaches ``1/alpha`` (fail) with chance at most
  ``alpha``; under H1 it ever falls to ``alpha`` (pass) with chance at most ``alpha``. Between the
  two it holds for more samples.
- cosine and ``MODULE:FUNCTION`` scores: a two-sided normal-mixture confidence sequence for the
  mean score (Robbins; Howard et al. 2021), with the sample variance as the normal approximation's
  variance: the mean lies within ``sd * sqrt(2 (n + m) log(sqrt((n + m) / m) / alpha)) / n`` at
  every ``n`` at once, each side with chance ``alpha`` of ever being crossed, tightest near
  ``n = m = min_samples``. Pass when the lower bound reaches ``min_agreement``, fail when the
  upper bound stays below it.
- the candidate's own failures on live inputs: the same SPRT of its error rate against 1%; it
  only fails the wave.

Judging waits for ``min_samples`` so an early run of luck decides nothing; a shadow still
undecided at its timeout fails (safety first).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from statistics import NormalDist
from typing import Any, Literal

from edgekit.errors import ThresholdRangeError
from edgekit.rollout.evidence import DETECT_FACTOR, FAIL, PASS, RateEvidence, rate_test

ShadowDecision = Literal["pass", "fail", "hold"]
MAX_CANDIDATE_ERROR_RATE = 0.01  # a candidate that fails more often than this on live inputs fails


@dataclass(frozen=True)
class ShadowPolicy:
    min_agreement: float = 0.98
    ratio: float = 0.1
    metric: str = "top1"
    min_samples: int = 200
    confidence: float = 0.99
    timeout_s: float = 600.0

    def to_json(self) -> dict[str, Any]:
        """``spec.shadow`` of the EdgeRollout."""
        return {"minAgreement": self.min_agreement, "ratio": self.ratio, "metric": self.metric,
                "minSamples": self.min_samples, "confidence": self.confidence, "timeout": f"{self.timeout_s:g}s"}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> ShadowPolicy:
        from edgekit.rollout.strategy import parse_duration

        base = cls()
        return validate_shadow(cls(
            min_agreement=float(d.get("minAgreement", base.min_agreement)),
            ratio=float(d.get("ratio", base.ratio)), metric=str(d.get("metric", base.metric)),
            min_samples=int(d.get("minSamples", base.min_samples)),
            confidence=float(d.get("confidence", base.confidence)),
            timeout_s=parse_duration(d.get("timeout", base.timeout_s), flag="shadow.timeout")))

    def describe(self) -> str:
        return (f"shadow first: {self.metric} agreement ≥ {self.min_agreement:g} at {self.confidence:.0%} "
                f"confidence, ≥ {self.min_samples} samples, {self.ratio:g} of requests, "
                f"at most {self.timeout_s:g}s")


def validate_shadow(policy: ShadowPolicy) -> ShadowPolicy:
    if not 0 < policy.min_agreement <= 1:
        raise ThresholdRangeError(f"--min-agreement {policy.min_agreement:g} must be in (0, 1]")
    if not 0 < policy.ratio <= 1:
        raise ThresholdRangeError(f"--shadow-ratio {policy.ratio:g} must be in (0, 1]")
    if not 0.5 <= policy.confidence < 1:
        raise ThresholdRangeError(f"shadow confidence {policy.confidence:g} must be in [0.5, 1)")
    if policy.min_samples < 1:
        raise ThresholdRangeError(f"shadow minimum samples {policy.min_samples} must be ≥ 1")
    if policy.timeout_s <= 0:
        raise ThresholdRangeError("the shadow timeout must be above 0")
    if policy.metric not in ("top1", "cosine") and ":" not in policy.metric:
        raise ThresholdRangeError(f"shadow metric {policy.metric!r}: use top1, cosine or MODULE:FUNCTION")
    return policy


@dataclass(frozen=True)
class ShadowFigures:
    """The canary's shadow reports on one candidate, pooled (counts are cumulative per device)."""

    devices: int = 0             # canary devices asked about
    reporting: int = 0           # of them, reporting a shadow of this candidate
    samples: int = 0
    agree: int = 0
    score_sum: float = 0.0
    score_sq: float = 0.0
    errors: int = 0
    latency_ratio: float | None = None   # worst candidate/serving p95 among the devices
    rss_delta_mb: float | None = None    # largest memory the candidate added

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "devices": self.devices, "reporting": self.reporting, "samples": self.samples, "agree": self.agree,
            "scoreSum": round(self.score_sum, 6), "scoreSq": round(self.score_sq, 6), "errors": self.errors,
            "latencyRatio": self.latency_ratio, "rssDeltaMb": self.rss_delta_mb}.items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> ShadowFigures | None:
        if not d:
            return None
        return cls(int(d.get("devices", 0)), int(d.get("reporting", 0)), int(d.get("samples", 0)),
                   int(d.get("agree", 0)), float(d.get("scoreSum", 0.0)), float(d.get("scoreSq", 0.0)),
                   int(d.get("errors", 0)), d.get("latencyRatio"), d.get("rssDeltaMb"))


def pool_reports(devices: Iterable[str], reports: Mapping[str, Mapping[str, Any]], digest: str,
                 metric: str) -> ShadowFigures:
    """Pool each device's newest ``shadow`` object (health payload) about ``digest``."""
    names = list(dict.fromkeys(devices))
    reporting = samples = agree = errors = 0
    score_sum = score_sq = 0.0
    ratios: list[float] = []
    rss: list[float] = []
    for name in names:
        rep = reports.get(name)
        if not rep or rep.get("digest") != digest or rep.get("metric") != metric:
            continue
        reporting += 1
        samples += int(rep.get("samples") or 0)
        errors += int(rep.get("errors") or 0)
        agreement = rep.get("agreement") or {}
        agree += int(agreement.get("agree") or 0)
        score_sum += float(agreement.get("sum") or 0.0)
        score_sq += float(agreement.get("sum_sq") or 0.0)
        ratio = (rep.get("latency_ms") or {}).get("ratio")
        if isinstance(ratio, int | float):
            ratios.append(float(ratio))
        delta = rep.get("rss_delta_mb")
        if isinstance(delta, int | float):
            rss.append(float(delta))
    return ShadowFigures(len(names), reporting, samples, agree, score_sum, score_sq, errors,
                         max(ratios) if ratios else None, max(rss) if rss else None)


def wilson_bounds(agree: int, n: int, confidence: float) -> tuple[float, float]:
    """One-sided Wilson score bounds (lower, upper) of a proportion, each at ``confidence``, for
    one look: judged at every look they would fail a good candidate far more often than stated."""
    if n <= 0:
        return 0.0, 1.0
    z = NormalDist().inv_cdf(confidence)
    p = agree / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mean_sequence_bounds(total: float, squares: float, n: int, confidence: float,
                         rho_samples: int) -> tuple[float, float]:
    """Bounds of a mean score valid at every ``n`` at once (see the module docstring): a
    normal-mixture confidence sequence, each side crossed with chance at most ``1 - confidence``,
    tuned to be tightest at ``rho_samples``."""
    if n <= 1:
        return -math.inf, math.inf
    mean, m, alpha = total / n, max(1, rho_samples), 1 - confidence
    width = math.sqrt(2 * (n + m) * math.log(math.sqrt((n + m) / m) / alpha))
    half = math.sqrt(_variance(total, squares, n)) * width / n
    return mean - half, mean + half


def _variance(total: float, squares: float, n: int) -> float:
    mean = total / n
    return max(0.0, (squares - n * mean * mean) / (n - 1))


@dataclass(frozen=True)
class ShadowVerdict:
    decision: ShadowDecision
    reason: str
    test: str
    agreement: float | None = None
    lower: float | None = None    # the mean score's bounds (cosine, MODULE:FUNCTION)
    upper: float | None = None
    samples: int = 0
    confidence: float = 0.0
    figures: ShadowFigures = field(default_factory=ShadowFigures)
    llr: float | None = None      # top1: the SPRT's log likelihood ratio and its two bounds
    fail_at: float | None = None
    pass_at: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {k: v for k, v in {
            "decision": self.decision, "reason": self.reason, "test": self.test, "agreement": self.agreement,
            "lower": self.lower, "upper": self.upper, "samples": self.samples, "confidence": self.confidence,
            "figures": self.figures.to_json(), "llr": self.llr, "failAt": self.fail_at,
            "passAt": self.pass_at}.items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None) -> ShadowVerdict | None:
        if not d:
            return None
        return cls(d["decision"], d.get("reason", ""), d.get("test", ""), d.get("agreement"), d.get("lower"),
                   d.get("upper"), int(d.get("samples", 0)), float(d.get("confidence", 0.0)),
                   ShadowFigures.from_json(d.get("figures")) or ShadowFigures(), d.get("llr"), d.get("failAt"),
                   d.get("passAt"))


def agreement_delta(min_agreement: float) -> float:
    """The agreement gap below ``min_agreement`` the top-1 SPRT is built to detect with the
    stated confidence (its H1), as the error-rate gate detects ``DETECT_FACTOR`` x its threshold."""
    disagree = 1 - min_agreement
    return min(DETECT_FACTOR * disagree, (1 + disagree) / 2) - disagree


def judge_shadow(policy: ShadowPolicy, figures: ShadowFigures, elapsed_s: float) -> ShadowVerdict:
    """Pass, fail or hold the shadow wave on the pooled figures, ``elapsed_s`` after its pods were
    Ready: a sequential test, valid at every look (see the module docstring)."""
    n, conf = figures.samples, policy.confidence
    alpha = 1 - conf
    sprt: RateEvidence | None = None
    lower = upper = math.nan
    if policy.metric == "top1":
        delta = agreement_delta(policy.min_agreement)
        test = (f"SPRT of top-1 agreement ≥ {policy.min_agreement:g} against ≤ "
                f"{policy.min_agreement - delta:.4g} (delta {delta:.4g}) at {conf:.0%} confidence, "
                f"valid at every look")
        value = figures.agree / n if n else None
        sprt = rate_test(n - figures.agree, n, 1 - policy.min_agreement, alpha=alpha, beta=alpha)
        numbers = f"log LR {_fmt(sprt.llr, 2)}: fail ≥ {sprt.fail_at:.2f}, pass ≤ {sprt.pass_at:.2f}"
    else:
        test = (f"confidence sequence (normal mixture) on the mean {policy.metric} score at {conf:.0%} "
                f"confidence, valid at every look")
        value = figures.score_sum / n if n else None
        lower, upper = mean_sequence_bounds(figures.score_sum, figures.score_sq, n, conf, policy.min_samples)
        numbers = f"bounds {_fmt(lower)}–{_fmt(upper)}"
    timed_out = elapsed_s >= policy.timeout_s

    def verdict(decision: ShadowDecision, reason: str) -> ShadowVerdict:
        return ShadowVerdict(decision, reason, test, None if value is None else round(value, 6),
                             _rounded(lower), _rounded(upper), n, conf, figures,
                             None if sprt is None else _rounded(sprt.llr),
                             None if sprt is None else round(sprt.fail_at, 6),
                             None if sprt is None else round(sprt.pass_at, 6))

    attempts = n + figures.errors
    failing = rate_test(figures.errors, attempts, MAX_CANDIDATE_ERROR_RATE, alpha=alpha, beta=alpha)
    if attempts >= policy.min_samples and failing.outcome == FAIL:
        return verdict("fail", f"the candidate failed {figures.errors} of {attempts} shadow runs on live inputs "
                               f"(SPRT of its error rate against {MAX_CANDIDATE_ERROR_RATE:.0%} at "
                               f"{conf:.0%} confidence)")
    evidence = (f"{policy.metric} agreement {_fmt(value)} over {n} samples from {figures.reporting}/"
                f"{figures.devices} devices ({numbers}; need ≥ {policy.min_agreement:g}; {test})")
    if n < policy.min_samples:
        if timed_out:
            return verdict("fail", f"shadow timed out with {n} of {policy.min_samples} samples: {evidence}")
        return verdict("hold", f"waiting for shadow samples ({n}/{policy.min_samples}): {evidence}")
    if sprt is not None:
        passed, failed = sprt.outcome == PASS, sprt.outcome == FAIL
    else:
        passed, failed = lower >= policy.min_agreement, upper < policy.min_agreement
    if passed:
        return verdict("pass", f"shadow passed: {evidence}")
    if failed:
        return verdict("fail", f"shadow failed: {evidence}")
    if timed_out:
        return verdict("fail", f"shadow inconclusive at its timeout (failing for safety): {evidence}")
    return verdict("hold", f"shadow inconclusive so far: {evidence}")


def shadow_revision(target_revision: str) -> str:
    """The revision (and DaemonSet suffix) that serves the current image with ``target`` as shadow."""
    return f"shadow-{target_revision}"


def _fmt(value: float | None, digits: int = 4) -> str:
    return "-" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def _rounded(value: float) -> float | None:
    return round(value, 6) if math.isfinite(value) else None


__all__ = ["ShadowFigures", "ShadowPolicy", "ShadowVerdict", "agreement_delta", "judge_shadow",
           "mean_sequence_bounds", "pool_reports", "shadow_revision", "validate_shadow", "wilson_bounds"]


SH_PENDING, SH_RUNNING, SH_PASSED, SH_FAILED = "Pending", "Running", "Passed", "Failed"


@dataclass
class ShadowStatus:
    """``status.shadow``: the canary nodes shadowing the candidate and what they showed."""

    revision: str
    nodes: list[str]
    from_revisions: dict[str, str | None]
    phase: str = SH_PENDING
    moved_at: float | None = None
    ready_at: float | None = None
    verdict: ShadowVerdict | None = None
    verdict_at: float | None = None

    @property
    def active(self) -> bool:
        """The shadow nodes are (or may be) labelled for the shadow revision."""
        return self.phase in (SH_RUNNING, SH_FAILED) or (self.phase == SH_PENDING and self.moved_at is not None)

    def to_json(self, time_text: Any) -> dict[str, Any]:
        by_rev: dict[str, list[str]] = {}
        for node in self.nodes:
            by_rev.setdefault(self.from_revisions.get(node) or "", []).append(node)
        return {k: v for k, v in {
            "revision": self.revision, "phase": self.phase, "nodes": list(self.nodes), "from": by_rev,
            "startedAt": time_text(self.moved_at), "readyAt": time_text(self.ready_at),
            "verdict": self.verdict.decision if self.verdict else None,
            "verdictDetail": self.verdict.to_json() if self.verdict else None,
            "verdictAt": time_text(self.verdict_at)}.items() if v is not None}

    @classmethod
    def from_json(cls, d: Mapping[str, Any] | None, parse_time: Any) -> ShadowStatus | None:
        if not d:
            return None
        from_revisions: dict[str, str | None] = {}
        for rev, nodes in (d.get("from") or {}).items():
            for node in nodes:
                from_revisions[node] = rev or None
        return cls(str(d["revision"]), list(d.get("nodes", ())), from_revisions, d.get("phase", SH_PENDING),
                   parse_time(d.get("startedAt")), parse_time(d.get("readyAt")),
                   ShadowVerdict.from_json(d.get("verdictDetail")), parse_time(d.get("verdictAt")))
