"""The gate verdict: a pure function from (policy, Kubernetes and telemetry figures, baseline or
control group, elapsed times, the wave's last verdict) to advance / hold / roll back, with the
reason and every figure against its threshold. Each gate's outcome is pass, fail or inconclusive
from a stated test (``edgekit.rollout.evidence``); the verdict names the test, its numbers and the
confidence. The engine records the verdict in the EdgeRollout status as it is.

Order of judgement (first match wins):

1. pods not all Ready      -> hold; roll back at the wave timeout            (gate ``pods-ready``),
   or at once when a device of the wave reports its golden probe failed on the new digest: its
   pod never gets Ready (readiness is the probe), and a golden probe is a check, not a sample
                                                                            (gate ``probe``)
2. a hard gate fails on evidence -> roll back (during the bake too when fail-fast), once it has
   failed ``policy.consecutive`` judgements of new data in a row, or at the wave timeout
                                                        (``error-rate``, ``probe``, ``p95``,
                                                         ``p95-regression``)
3. still baking            -> hold
4. too few devices report the new digest -> hold; at the wave timeout roll back (policy
   ``fail``) or leave the silent devices out and judge the rest (policy ``skip``). Devices known
   offline (last will) are left out at once under ``skip``, silent ones after the silence
   deadline (default: the wave timeout).                                    (``reporting``)
5. the error-rate test is inconclusive -> hold (the bake goes on); at the wave timeout roll back
   (``--inconclusive fail``) or pass (``pass``); an operator's promotion passes it
6. manual promotion wanted and not given -> hold                            (``promotion``)
7. otherwise advance.

Latency gates block on a fail only: the error rate sets the minimum sample.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edgekit_agent.protocol.histograms import LatencyHistogram

from edgekit.rollout.evidence import (
    DETECT_FACTOR,
    FAIL,
    INCONCLUSIVE,
    PASS,
    TAIL_SPRT,
    Outcome,
    RateEvidence,
    above,
    control_test,
    quantile_bounds,
    quantiles,
    rate_test,
    tail_test,
)
from edgekit.rollout.strategy import GatePolicy
from edgekit.units import fmt_duration, fmt_percent

if TYPE_CHECKING:
    from edgekit.fleet.views import WindowStats

Decision = Literal["advance", "hold", "rollback"]
ADVANCE: Decision = "advance"
HOLD: Decision = "hold"
ROLLBACK: Decision = "rollback"


@dataclass(frozen=True)
class KubeFigures:
    desired: int
    ready: int


@dataclass(frozen=True)
class TelemetryFigures:
    """The part of a fleet telemetry window (``edgekit.fleet.WindowStats``) that gates look at,
    for the wave's devices, since its pods became Ready, on the new digest."""

    expected: int
    reported: int = 0
    on_digest: int = 0
    off_digest: int = 0
    inferences: int = 0
    errors: int = 0
    error_rate: float | None = None
    p50_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    probe_failures: int = 0
    silent: tuple[str, ...] = ()
    offline: tuple[str, ...] = ()
    # every latency of the window, merged over the devices (None: no device sent a histogram)
    latency_hist: LatencyHistogram | None = None
    # why the fleet's picture may lack devices (the broker dropped retained statuses); None: complete
    incomplete: str | None = None

    def to_json(self) -> dict[str, Any]:
        # the histogram stays out of the status record: its percentiles are what a reader needs
        return _drop_none({
            "incomplete": self.incomplete,
            "expected": self.expected, "reported": self.reported, "onDigest": self.on_digest,
            "offDigest": self.off_digest, "inferences": self.inferences, "errors": self.errors,
            "errorRate": self.error_rate, "p50Ms": self.p50_ms, "p95Ms": self.p95_ms, "p99Ms": self.p99_ms,
            "probeFailures": self.probe_failures, "silent": list(self.silent), "offline": list(self.offline),
        })

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> TelemetryFigures:
        return cls(expected=int(d.get("expected", 0)), reported=int(d.get("reported", 0)),
                   on_digest=int(d.get("onDigest", 0)), off_digest=int(d.get("offDigest", 0)),
                   inferences=int(d.get("inferences", 0)), errors=int(d.get("errors", 0)),
                   error_rate=d.get("errorRate"), p50_ms=d.get("p50Ms"), p95_ms=d.get("p95Ms"),
                   p99_ms=d.get("p99Ms"), probe_failures=int(d.get("probeFailures", 0)),
                   silent=tuple(d.get("silent", ())), offline=tuple(d.get("offline", ())),
                   incomplete=d.get("incomplete"))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    # Server-side apply reads an explicit null as "remove": leave unset figures out.
    return {k: v for k, v in d.items() if v is not None}


def _names(value: Any) -> tuple[str, ...]:
    if value is None or isinstance(value, (int, float)):
        return ()
    return tuple(sorted(str(v) for v in value))


def _count(value: Any) -> int:
    if value is None:
        return 0
    if isinstance(value, (int, float)):
        return int(value)
    return len(value)


def figures_from_window(stats: WindowStats | Mapping[str, Any]) -> TelemetryFigures:
    """The gates' figures from a fleet ``WindowStats`` (or a mapping of its fields, as bench and
    test doubles write them). Device lists or counts both work."""
    get: Callable[..., Any] = (stats.get if isinstance(stats, Mapping)
                               else (lambda key, default=None: getattr(stats, key, default)))
    error_rate = get("error_rate")
    return TelemetryFigures(
        expected=_count(get("expected")), reported=_count(get("reported")),
        on_digest=_count(get("on_digest")), off_digest=_count(get("off_digest")),
        inferences=int(get("inferences", 0) or 0), errors=int(get("errors", 0) or 0),
        error_rate=None if error_rate is None else float(error_rate),
        p50_ms=_opt(get("p50_ms")), p95_ms=_opt(get("p95_ms")), p99_ms=_opt(get("p99_ms")),
        probe_failures=_count(get("probe_failures")),
        silent=_names(get("silent")), offline=_names(get("offline")),
        latency_hist=get("latency_hist"),
    )


def _opt(value: Any) -> float | None:
    return None if value is None else float(value)


@dataclass(frozen=True)
class Baseline:
    """The wave's devices before the move, on their old model."""

    p95_ms: float | None = None
    error_rate: float | None = None
    devices: int = 0

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"p95Ms": self.p95_ms, "errorRate": self.error_rate, "devices": self.devices})

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> Baseline | None:
        if not d:
            return None
        return cls(p95_ms=d.get("p95Ms"), error_rate=d.get("errorRate"), devices=int(d.get("devices", 0)))


@dataclass(frozen=True)
class Elapsed:
    since_move_s: float
    since_ready_s: float | None = None  # None until every pod of the wave is Ready
    promoted: bool = False               # an operator said: skip the bake / manual gate


@dataclass(frozen=True)
class GateFigure:
    gate: str
    value: float | None
    threshold: float | None
    ok: bool | None     # None: not judged (no data, the gate is off) or inconclusive
    text: str
    # the evidence (None for gates that count rather than test: pods, reporting, probe)
    outcome: Outcome | None = None    # pass | fail | inconclusive
    test: str | None = None           # e.g. "SPRT", "SPRT vs control", "SPRT of the share above"
    confidence: float | None = None   # of a fail verdict, over all looks
    statistic: float | None = None    # the SPRT's log likelihood ratio, or the p95's lower bound
    samples: int | None = None        # inferences (or latencies) the test saw
    min_samples: int | None = None    # the fewest it needs to pass

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"gate": self.gate, "value": self.value, "threshold": self.threshold, "ok": self.ok,
                           "text": self.text, "outcome": self.outcome, "test": self.test,
                           "confidence": self.confidence, "statistic": _finite(self.statistic),
                           "samples": self.samples, "minSamples": self.min_samples})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateFigure:
        return cls(d["gate"], d.get("value"), d.get("threshold"), d.get("ok"), d.get("text", ""),
                   d.get("outcome"), d.get("test"), d.get("confidence"), d.get("statistic"), d.get("samples"),
                   d.get("minSamples"))


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    gate: str | None = None
    figures: tuple[GateFigure, ...] = ()
    skipped: tuple[str, ...] = ()
    # --consecutive: fail judgements in a row so far, and the inference count of the last one (a
    # judgement counts only when new data came in); the engine hands the verdict back next time
    breaches: int = 0
    breach_mark: int = 0

    def figure(self, gate: str) -> GateFigure | None:
        return next((f for f in self.figures if f.gate == gate), None)

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"decision": self.decision, "reason": self.reason, "gate": self.gate,
                           "figures": [f.to_json() for f in self.figures], "skipped": list(self.skipped),
                           "breaches": self.breaches or None, "breachMark": self.breach_mark or None})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verdict:
        return cls(d["decision"], d.get("reason", ""), d.get("gate"),
                   tuple(GateFigure.from_json(f) for f in d.get("figures", ())), tuple(d.get("skipped", ())),
                   int(d.get("breaches", 0)), int(d.get("breachMark", 0)))


def _finite(value: float | None) -> float | None:
    # JSON has no infinity: a proof (one error under a 0% limit) is stored as a large number
    if value is None or math.isfinite(value):
        return value
    return math.copysign(1e9, value)


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def regression(p95_ms: float | None, baseline: Baseline | None) -> float | None:
    if p95_ms is None or baseline is None or not baseline.p95_ms or baseline.p95_ms <= 0:
        return None
    return (p95_ms - baseline.p95_ms) / baseline.p95_ms


def _conf(policy: GatePolicy) -> str:
    return f"{fmt_percent(policy.confidence)} confidence"


def error_rate_figure(policy: GatePolicy, tele: TelemetryFigures,
                      control: TelemetryFigures | None) -> GateFigure:
    """The error-rate gate: the SPRT against the threshold and, with a control group, against the
    control's rate. Fail needs both (the new model is worse than the limit *and* than the old one
    beside it); pass needs the threshold test to pass, or the group as a whole to be above the
    limit with the wave no worse than its control."""
    limit = policy.max_error_rate
    assert limit is not None
    head = (f"error rate {fmt_percent(tele.error_rate)} (max {fmt_percent(limit)}, "
            f"{tele.errors}/{tele.inferences} inferences)")
    ev = rate_test(tele.errors, tele.inferences, limit, alpha=policy.alpha, beta=policy.beta)
    use_control = policy.baseline == "control" and control is not None
    ctl = (control_test(tele.errors, tele.inferences, control.errors, control.inferences,
                        alpha=policy.alpha, beta=policy.beta) if use_control and control is not None else None)
    p1 = fmt_percent(min(DETECT_FACTOR * limit, (1 + limit) / 2))
    words = (f"{ev.test} of ≤ {fmt_percent(limit)} vs ≥ {p1}: log LR {ev.llr:.2f} "
             f"(fail ≥ {ev.fail_at:.2f}, pass ≤ {ev.pass_at:.2f})")
    if ctl is not None and control is not None:
        words += (f"; {ctl.test} {fmt_percent(_rate(control))} ({control.errors}/{control.inferences}): "
                  f"log LR {ctl.llr:.2f}")
    outcome: Outcome
    if ev.outcome == FAIL and (ctl is None or ctl.outcome == FAIL):
        outcome, verdict_words = FAIL, f"above the limit at {_conf(policy)}"
        if ctl is not None:
            verdict_words += " and worse than the control group"
    elif ev.outcome == PASS:
        outcome, verdict_words = PASS, f"below {p1} at {fmt_percent(policy.power)} power"
    elif ev.outcome == FAIL and ctl is not None and ctl.outcome == PASS:
        outcome, verdict_words = PASS, "above the limit, but no worse than the control group"
    else:
        outcome = INCONCLUSIVE
        verdict_words = (f"inconclusive, needs ≥ {ev.min_samples} inferences" if tele.inferences < ev.min_samples
                         else "inconclusive")
        if ev.outcome == FAIL:
            verdict_words = "above the limit, not yet worse than the control group: inconclusive"
    return GateFigure("error-rate", tele.error_rate, limit, _ok(outcome), f"{head}: {words}: {verdict_words}",
                      outcome, ev.test if ctl is None else f"{ev.test} + {ctl.test}", policy.confidence,
                      ev.llr, tele.inferences, ev.min_samples)


def _rate(t: TelemetryFigures) -> float | None:
    if t.error_rate is not None:
        return t.error_rate
    return t.errors / t.inferences if t.inferences else None


def _ok(outcome: Outcome) -> bool | None:
    return {PASS: True, FAIL: False}.get(outcome)


def _tail_words(ev: RateEvidence, hist: LatencyHistogram, limit_ms: float, policy: GatePolicy,
                confidence: float) -> str:
    k = above(hist, limit_ms)
    verdict = {FAIL: f"fail at {fmt_percent(confidence)} confidence",
               PASS: f"pass at {fmt_percent(policy.power)} power"}.get(ev.outcome, "inconclusive")
    return (f"{ev.test} {_ms(limit_ms)}: {k}/{hist.count} latencies, SPRT of ≤ 5% vs ≥ 15%: log LR "
            f"{ev.llr:.2f} (fail ≥ {ev.fail_at:.2f}): {verdict}")


def p95_figure(policy: GatePolicy, tele: TelemetryFigures) -> GateFigure:
    """The absolute p95 gate: an SPRT of the share of latencies above the limit (5% or less: the
    p95 is within it); from a device's own p95 alone (no histogram, older agents) the point
    figure decides, as before."""
    limit = policy.max_p95_ms
    assert limit is not None
    hist = tele.latency_hist
    if hist is None or hist.count == 0:
        ok = None if tele.p95_ms is None else tele.p95_ms <= limit
        return GateFigure("p95", tele.p95_ms, limit, ok, f"p95 {_ms(tele.p95_ms)} (max {_ms(limit)})",
                          None if ok is None else (PASS if ok else FAIL), "point p95 (no histogram)")
    p95 = quantiles(hist, (0.95,))[0]
    ev = tail_test(hist, limit, alpha=policy.alpha, beta=policy.beta)
    return GateFigure("p95", p95, limit, _ok(ev.outcome),
                      f"p95 {_ms(p95)} (max {_ms(limit)}): {_tail_words(ev, hist, limit, policy, policy.confidence)}",
                      ev.outcome, ev.test, policy.confidence, ev.llr, hist.count)


def regression_figure(policy: GatePolicy, tele: TelemetryFigures, baseline: Baseline | None,
                      control: TelemetryFigures | None) -> GateFigure:
    """The p95 regression gate: the SPRT of the share of the wave's latencies above ``(1 + limit)``
    x the reference p95 — the control group's upper confidence bound on its p95 (the bound and
    the test at half the alpha each), or the p95 of the wave's devices before the move. Without
    histograms: the point figures, as before."""
    limit = policy.max_p95_regression
    assert limit is not None
    hist = tele.latency_hist if tele.latency_hist is not None and tele.latency_hist.count else None
    alpha = policy.alpha
    ref_high: float | None = None
    ref_words = ""
    if policy.baseline == "control" and control is not None:
        ref_name, ref_p95 = "control", control.p95_ms
        if control.latency_hist is not None and control.latency_hist.count:
            alpha = policy.alpha / 2
            rb = quantile_bounds(control.latency_hist, 0.95, alpha)
            ref_p95, ref_high = rb.point, rb.high
            ref_words = f" (upper bound {_ms(rb.high)}, {rb.samples} latencies)"
    else:
        ref_name, ref_p95 = "baseline", baseline.p95_ms if baseline else None
        ref_high = ref_p95   # one figure, taken as exact
    wave_p95 = quantiles(hist, (0.95,))[0] if hist is not None else tele.p95_ms
    reg = regression(wave_p95, Baseline(p95_ms=ref_p95))
    head = (f"p95 {_ms(wave_p95)} vs {ref_name} {_ms(ref_p95)}{ref_words}: "
            f"{'+' if (reg or 0) >= 0 else ''}{fmt_percent(reg)} (max +{fmt_percent(limit)})")
    if reg is None or ref_p95 is None or wave_p95 is None:
        return GateFigure("p95-regression", reg, limit, None, head)
    if hist is None or (control is not None and policy.baseline == "control" and control.latency_hist is None):
        ok = reg <= limit
        return GateFigure("p95-regression", reg, limit, ok, head, PASS if ok else FAIL, "point p95 (no histogram)")
    if ref_high is None:   # too few control latencies for a bound: no verdict yet
        return GateFigure("p95-regression", reg, limit, None, f"{head}: too few control latencies: inconclusive",
                          INCONCLUSIVE, TAIL_SPRT, 1 - alpha, None, hist.count)
    cut = (1 + limit) * ref_high
    ev = tail_test(hist, cut, alpha=alpha, beta=policy.beta)
    return GateFigure("p95-regression", reg, limit, _ok(ev.outcome),
                      f"{head}: {_tail_words(ev, hist, cut, policy, 1 - alpha)}", ev.outcome, ev.test,
                      policy.confidence, ev.llr, hist.count)


def gate_figures(policy: GatePolicy, kube: KubeFigures, tele: TelemetryFigures, baseline: Baseline | None,
                 skipped: Iterable[str] = (), control: TelemetryFigures | None = None) -> tuple[GateFigure, ...]:
    """Every gate's figure against its threshold (the live view and the verdict record both use it)."""
    skipped = set(skipped)
    figs = [GateFigure("pods-ready", float(kube.ready), float(kube.desired), kube.ready >= kube.desired,
                       f"{kube.ready}/{kube.desired} pods Ready")]
    denominator = tele.expected - len(skipped)
    share = tele.on_digest / denominator if denominator > 0 else None
    figs.append(GateFigure(
        "reporting", share, policy.min_reporting, None if share is None else share >= policy.min_reporting,
        f"{tele.on_digest}/{max(denominator, 0)} devices report the new model ({fmt_percent(share)}, "
        f"min {fmt_percent(policy.min_reporting)})" + (f", {len(skipped)} skipped" if skipped else "")))
    if policy.max_error_rate is not None:
        figs.append(error_rate_figure(policy, tele, control))
    if policy.probe_must_pass:
        # a failure counts even from a device with no health report yet (its pod is not Ready)
        probed = tele.on_digest > 0 or tele.probe_failures > 0
        figs.append(GateFigure("probe", float(tele.probe_failures), 0.0,
                               (tele.probe_failures == 0) if probed else None,
                               f"golden probe failed on {tele.probe_failures} devices"))
    if policy.max_p95_ms is not None:
        figs.append(p95_figure(policy, tele))
    if policy.max_p95_regression is not None:
        figs.append(regression_figure(policy, tele, baseline, control))
    return tuple(figs)


_HARD_GATES = ("error-rate", "probe", "p95", "p95-regression")
# gates that must show evidence of a pass before the wave advances (the others block on a fail
# only: latency bounds need far more samples than the error rate to be decisive)
_EVIDENCE_GATES = ("error-rate",)


def _streak(previous: Verdict | None, tele: TelemetryFigures) -> tuple[int, int]:
    """Consecutive fail judgements including this one, and this one's data mark: a judgement of
    the same data as the last breach (the engine looks every tick) does not count again."""
    if previous is None or previous.breaches <= 0:
        return 1, tele.inferences
    if tele.inferences > previous.breach_mark:
        return previous.breaches + 1, tele.inferences
    return previous.breaches, previous.breach_mark


def judge(policy: GatePolicy, *, bake_s: float, auto_promote: bool, kube: KubeFigures,
          tele: TelemetryFigures, baseline: Baseline | None, elapsed: Elapsed,
          control: TelemetryFigures | None = None, previous: Verdict | None = None) -> Verdict:
    """Advance, hold or roll back one wave. Pure: same inputs, same verdict.

    ``control``: the group's devices still on the old revision, over the same window as ``tele``
    (``policy.baseline == "control"``); None when there are none or the policy compares with
    ``baseline`` (the wave's own devices before the move). ``previous``: this wave's last
    verdict, which carries the count of consecutive breaches (``policy.consecutive``)."""
    timed_out = elapsed.since_move_s >= policy.wave_timeout_s
    skipped: set[str] = set()
    if policy.offline_policy == "skip":
        skipped |= set(tele.offline)
        if elapsed.since_move_s >= policy.silence_after_s:
            skipped |= set(tele.silent)
    figs = gate_figures(policy, kube, tele, baseline, skipped, control)
    by_gate = {f.gate: f for f in figs}
    skipped_t = tuple(sorted(skipped))

    def verdict(decision: Decision, reason: str, gate: str | None = None, breaches: tuple[int, int] = (0, 0)
                ) -> Verdict:
        return Verdict(decision, reason, gate, figs, skipped_t, *breaches)

    if kube.ready < kube.desired:
        probe = by_gate.get("probe")
        if probe is not None and probe.ok is False:
            return verdict(ROLLBACK, f"golden probe failed on {tele.probe_failures} devices of the wave "
                                     f"while {kube.ready}/{kube.desired} pods are Ready", "probe")
        if timed_out:
            return verdict(ROLLBACK, f"only {kube.ready}/{kube.desired} pods Ready after "
                                     f"{fmt_duration(elapsed.since_move_s)} (wave timeout "
                                     f"{fmt_duration(policy.wave_timeout_s)})", "pods-ready")
        return verdict(HOLD, f"waiting for pods: {kube.ready}/{kube.desired} Ready", "pods-ready")

    since_ready = elapsed.since_ready_s or 0.0
    baking = not elapsed.promoted and since_ready < bake_s
    if not baking or policy.fail_fast or timed_out:
        failing = next((by_gate[n] for n in _HARD_GATES if n in by_gate and by_gate[n].ok is False), None)
        if failing is not None:
            streak = _streak(previous, tele)
            name = failing.gate
            if streak[0] >= policy.consecutive or timed_out:
                row = f" ({streak[0]} consecutive)" if policy.consecutive > 1 else ""
                return verdict(ROLLBACK, f"gate {name} failed{row}: {failing.text}", name, streak)
            return verdict(HOLD, f"gate {name} failed {streak[0]} of {policy.consecutive} consecutive "
                                 f"judgements: {failing.text}", name, streak)
    if baking:
        return verdict(HOLD, f"baking: {fmt_duration(since_ready)} of {fmt_duration(bake_s)}")

    # A partial picture may hide failing devices: evidence against the wave (above) still counts,
    # but nothing passes on it. Hold; at the wave timeout roll back, whatever --inconclusive says.
    incomplete = tele.incomplete or (control.incomplete if control is not None else None)
    if incomplete:
        if timed_out:
            return verdict(ROLLBACK, f"telemetry still incomplete at the wave timeout "
                                     f"({fmt_duration(policy.wave_timeout_s)}): {incomplete}", "telemetry")
        return verdict(HOLD, f"not judging a partial fleet: {incomplete}", "telemetry")

    reporting = by_gate["reporting"]
    if reporting.ok is not True:
        if timed_out:
            if policy.offline_policy == "fail" or reporting.value is None or tele.on_digest == 0:
                return verdict(ROLLBACK, f"gate reporting failed at the wave timeout "
                                         f"({fmt_duration(policy.wave_timeout_s)}): {reporting.text}", "reporting")
            return verdict(ROLLBACK, f"gate reporting failed after skipping silent devices: {reporting.text}",
                           "reporting")
        return verdict(HOLD, f"waiting for devices: {reporting.text}", "reporting")

    unsure = next((by_gate[n] for n in _EVIDENCE_GATES if n in by_gate and by_gate[n].ok is not True), None)
    note = ""
    if unsure is not None:
        if elapsed.promoted:   # an operator's promotion ends the extended bake as it ends the bake
            note = f"; gate {unsure.gate} inconclusive, promoted by an operator"
        elif not timed_out:
            return verdict(HOLD, f"gate {unsure.gate} inconclusive, the bake goes on (up to the wave timeout "
                                 f"{fmt_duration(policy.wave_timeout_s)}): {unsure.text}", unsure.gate)
        elif policy.inconclusive == "fail":
            return verdict(ROLLBACK, f"gate {unsure.gate} still inconclusive at the wave timeout "
                                     f"({fmt_duration(policy.wave_timeout_s)}), --inconclusive fail: {unsure.text}",
                           unsure.gate)
        else:
            note = f"; gate {unsure.gate} inconclusive at the wave timeout, passed (--inconclusive pass)"

    if not auto_promote and not elapsed.promoted:
        return verdict(HOLD, "gates pass; awaiting promotion (edgekit rollout promote)" + note, "promotion")
    reason = "all gates pass" + note
    if skipped_t:
        reason += f"; {len(skipped_t)} silent/offline devices skipped"
    return verdict(ADVANCE, reason)
