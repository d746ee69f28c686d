"""The gate verdict: a pure function from (policy, Kubernetes and telemetry figures, baseline,
elapsed times) to advance / hold / roll back, with the reason and every figure against its
threshold. The engine records the verdict in the EdgeRollout status as it is.

Order of judgement (first match wins):

1. pods not all Ready      -> hold; roll back at the wave timeout            (gate ``pods-ready``)
2. a hard gate is breached -> roll back (during the bake too when fail-fast) (``error-rate``,
                                                        ``probe``, ``p95``, ``p95-regression``)
3. still baking            -> hold
4. too few devices report the new digest -> hold; at the wave timeout roll back (policy
   ``fail``) or leave the silent devices out and judge the rest (policy ``skip``). Devices known
   offline (last will) are left out at once under ``skip``, silent ones after the silence
   deadline (default: the wave timeout).                                    (``reporting``)
5. manual promotion wanted and not given -> hold                            (``promotion``)
6. otherwise advance.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from edgekit_agent.protocol.histograms import LatencyHistogram

from edgekit.rollout.strategy import GatePolicy, fmt_duration, fmt_percent

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

    def to_json(self) -> dict[str, Any]:
        # the histogram stays out of the status record: its percentiles are what a reader needs
        return _drop_none({
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
                   silent=tuple(d.get("silent", ())), offline=tuple(d.get("offline", ())))


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
    ok: bool | None     # None: not judged (no data, or the gate is off)
    text: str

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"gate": self.gate, "value": self.value, "threshold": self.threshold, "ok": self.ok,
                           "text": self.text})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GateFigure:
        return cls(d["gate"], d.get("value"), d.get("threshold"), d.get("ok"), d.get("text", ""))


@dataclass(frozen=True)
class Verdict:
    decision: Decision
    reason: str
    gate: str | None = None
    figures: tuple[GateFigure, ...] = ()
    skipped: tuple[str, ...] = ()

    def figure(self, gate: str) -> GateFigure | None:
        return next((f for f in self.figures if f.gate == gate), None)

    def to_json(self) -> dict[str, Any]:
        return _drop_none({"decision": self.decision, "reason": self.reason, "gate": self.gate,
                           "figures": [f.to_json() for f in self.figures], "skipped": list(self.skipped)})

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> Verdict:
        return cls(d["decision"], d.get("reason", ""), d.get("gate"),
                   tuple(GateFigure.from_json(f) for f in d.get("figures", ())), tuple(d.get("skipped", ())))


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f} ms"


def regression(p95_ms: float | None, baseline: Baseline | None) -> float | None:
    if p95_ms is None or baseline is None or not baseline.p95_ms or baseline.p95_ms <= 0:
        return None
    return (p95_ms - baseline.p95_ms) / baseline.p95_ms


def gate_figures(policy: GatePolicy, kube: KubeFigures, tele: TelemetryFigures, baseline: Baseline | None,
                 skipped: Iterable[str] = ()) -> tuple[GateFigure, ...]:
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
        ok = None if tele.error_rate is None else tele.error_rate <= policy.max_error_rate
        figs.append(GateFigure("error-rate", tele.error_rate, policy.max_error_rate, ok,
                               f"error rate {fmt_percent(tele.error_rate)} (max {fmt_percent(policy.max_error_rate)}, "
                               f"{tele.errors}/{tele.inferences} inferences)"))
    if policy.probe_must_pass:
        probed = tele.on_digest > 0
        figs.append(GateFigure("probe", float(tele.probe_failures), 0.0,
                               (tele.probe_failures == 0) if probed else None,
                               f"golden probe failed on {tele.probe_failures} devices"))
    if policy.max_p95_ms is not None:
        ok = None if tele.p95_ms is None else tele.p95_ms <= policy.max_p95_ms
        figs.append(GateFigure("p95", tele.p95_ms, policy.max_p95_ms, ok,
                               f"p95 {_ms(tele.p95_ms)} (max {_ms(policy.max_p95_ms)})"))
    if policy.max_p95_regression is not None:
        reg = regression(tele.p95_ms, baseline)
        base = baseline.p95_ms if baseline else None
        text = (f"p95 {_ms(tele.p95_ms)} vs baseline {_ms(base)}: "
                f"{'+' if (reg or 0) >= 0 else ''}{fmt_percent(reg)} (max +{fmt_percent(policy.max_p95_regression)})")
        figs.append(GateFigure("p95-regression", reg, policy.max_p95_regression,
                               None if reg is None else reg <= policy.max_p95_regression, text))
    return tuple(figs)


_HARD_GATES = ("error-rate", "probe", "p95", "p95-regression")


def judge(policy: GatePolicy, *, bake_s: float, auto_promote: bool, kube: KubeFigures,
          tele: TelemetryFigures, baseline: Baseline | None, elapsed: Elapsed,
          control: TelemetryFigures | None = None) -> Verdict:
    """Advance, hold or roll back one wave. Pure: same inputs, same verdict.

    ``control``: the group's devices still on the old revision, over the same window as ``tele``
    (``policy.baseline == "control"``); None when there are none or the policy compares with
    ``baseline`` (the wave's own devices before the move)."""
    timed_out = elapsed.since_move_s >= policy.wave_timeout_s
    skipped: set[str] = set()
    if policy.offline_policy == "skip":
        skipped |= set(tele.offline)
        if elapsed.since_move_s >= policy.silence_after_s:
            skipped |= set(tele.silent)
    figs = gate_figures(policy, kube, tele, baseline, skipped)
    by_gate = {f.gate: f for f in figs}
    skipped_t = tuple(sorted(skipped))

    def verdict(decision: Decision, reason: str, gate: str | None = None) -> Verdict:
        return Verdict(decision, reason, gate, figs, skipped_t)

    if kube.ready < kube.desired:
        if timed_out:
            return verdict(ROLLBACK, f"only {kube.ready}/{kube.desired} pods Ready after "
                                     f"{fmt_duration(elapsed.since_move_s)} (wave timeout "
                                     f"{fmt_duration(policy.wave_timeout_s)})", "pods-ready")
        return verdict(HOLD, f"waiting for pods: {kube.ready}/{kube.desired} Ready", "pods-ready")

    since_ready = elapsed.since_ready_s or 0.0
    baking = not elapsed.promoted and since_ready < bake_s
    if not baking or policy.fail_fast:
        for name in _HARD_GATES:
            fig = by_gate.get(name)
            if fig is not None and fig.ok is False:
                return verdict(ROLLBACK, f"gate {name} failed: {fig.text}", name)
    if baking:
        return verdict(HOLD, f"baking: {fmt_duration(since_ready)} of {fmt_duration(bake_s)}")

    reporting = by_gate["reporting"]
    if reporting.ok is not True:
        if timed_out:
            if policy.offline_policy == "fail" or reporting.value is None or tele.on_digest == 0:
                return verdict(ROLLBACK, f"gate reporting failed at the wave timeout "
                                         f"({fmt_duration(policy.wave_timeout_s)}): {reporting.text}", "reporting")
            return verdict(ROLLBACK, f"gate reporting failed after skipping silent devices: {reporting.text}",
                           "reporting")
        return verdict(HOLD, f"waiting for devices: {reporting.text}", "reporting")

    if not auto_promote and not elapsed.promoted:
        return verdict(HOLD, "gates pass; awaiting promotion (edgekit rollout promote)", "promotion")
    reason = "all gates pass"
    if skipped_t:
        reason += f"; {len(skipped_t)} silent/offline devices skipped"
    return verdict(ADVANCE, reason)

