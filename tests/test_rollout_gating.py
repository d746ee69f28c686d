"""The gate verdict function: every decision with its reason and figures."""

from __future__ import annotations

import math
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest
from edgekit_agent.protocol.histograms import LatencyHistogram

from edgekit.rollout.gating import (
    Baseline,
    Elapsed,
    KubeFigures,
    TelemetryFigures,
    Verdict,
    figures_from_window,
    judge,
)
from edgekit.rollout.strategy import GatePolicy

POLICY = GatePolicy(max_error_rate=0.01, max_p95_ms=80.0, max_p95_regression=0.2, min_reporting=0.9,
                    probe_must_pass=True, offline_policy="fail", wave_timeout_s=60.0)
HEALTHY = TelemetryFigures(expected=10, reported=10, on_digest=10, inferences=1000, errors=2,
                           error_rate=0.002, p50_ms=4.0, p95_ms=10.0, p99_ms=12.0)
BASE = Baseline(p95_ms=9.0, error_rate=0.0, devices=10)
READY = KubeFigures(10, 10)
BAKED = Elapsed(since_move_s=40, since_ready_s=35)


def verdict(policy: GatePolicy = POLICY, *, kube: KubeFigures = READY, tele: TelemetryFigures = HEALTHY,
            baseline: Baseline | None = BASE, elapsed: Elapsed = BAKED, auto: bool = True,
            bake: float = 30.0) -> Verdict:
    return judge(policy, bake_s=bake, auto_promote=auto, kube=kube, tele=tele, baseline=baseline,
                 elapsed=elapsed)


def test_healthy_wave_advances_with_figures() -> None:
    v = verdict()
    assert v.decision == "advance"
    assert v.reason == "all gates pass"
    assert {f.gate for f in v.figures} == {"pods-ready", "reporting", "error-rate", "probe", "p95",
                                            "p95-regression"}
    assert all(f.ok for f in v.figures)
    assert v.figure("p95-regression").value == pytest.approx(1 / 9)  # type: ignore[union-attr]
    assert Verdict.from_json(v.to_json()) == v


def test_pods_not_ready_holds_then_rolls_back_at_timeout() -> None:
    v = verdict(kube=KubeFigures(10, 7), elapsed=Elapsed(10))
    assert (v.decision, v.gate) == ("hold", "pods-ready")
    assert "7/10" in v.reason
    v = verdict(kube=KubeFigures(10, 7), elapsed=Elapsed(61))
    assert (v.decision, v.gate) == ("rollback", "pods-ready")
    assert "only 7/10 pods Ready after 1m01s" in v.reason


def test_a_failed_golden_probe_rolls_back_before_the_pods_are_ready() -> None:
    """Readiness is the golden probe: a device that reports it failed will never be Ready, so the
    wave is not held to its timeout. Only a failure on the new digest counts (the window's own
    filter), and without the probe gate the wave waits as before."""
    silent = TelemetryFigures(expected=10, probe_failures=1)
    v = verdict(kube=KubeFigures(10, 9), tele=silent, elapsed=Elapsed(5))
    assert (v.decision, v.gate) == ("rollback", "probe")
    assert "golden probe failed on 1 devices" in v.reason and "9/10 pods are Ready" in v.reason
    assert v.figure("probe").ok is False  # type: ignore[union-attr]
    assert verdict(kube=KubeFigures(10, 9), tele=TelemetryFigures(expected=10), elapsed=Elapsed(5)).decision == "hold"
    no_probe = replace(POLICY, probe_must_pass=False)
    assert verdict(no_probe, kube=KubeFigures(10, 9), tele=silent, elapsed=Elapsed(5)).decision == "hold"


def test_baking_holds() -> None:
    v = verdict(elapsed=Elapsed(12, 10))
    assert v.decision == "hold" and v.reason.startswith("baking: 10s of 30s")
    assert verdict(elapsed=Elapsed(12, 10, promoted=True)).decision == "advance"


def test_error_rate_breach_rolls_back_even_while_baking() -> None:
    bad = replace(HEALTHY, errors=200, error_rate=0.2)
    v = verdict(tele=bad, elapsed=Elapsed(5, 2))
    assert (v.decision, v.gate) == ("rollback", "error-rate")
    assert "error rate 20% (max 1%, 200/1000 inferences)" in v.reason
    fig = v.figure("error-rate")
    assert fig is not None and fig.value == 0.2 and fig.threshold == 0.01 and fig.ok is False
    # without fail-fast the breach waits for the end of the bake
    slow = replace(POLICY, fail_fast=False)
    assert verdict(slow, tele=bad, elapsed=Elapsed(5, 2)).decision == "hold"
    assert verdict(slow, tele=bad).decision == "rollback"


def test_latency_gates() -> None:
    v = verdict(tele=replace(HEALTHY, p95_ms=95.0))
    assert (v.decision, v.gate) == ("rollback", "p95")   # absolute gate is checked first
    v = verdict(tele=replace(HEALTHY, p95_ms=12.0))
    assert (v.decision, v.gate) == ("rollback", "p95-regression")
    assert "p95 12.0 ms vs baseline 9.0 ms: +33.33% (max +20%)" in v.reason
    # no baseline (first install): the regression gate is not judged
    v = verdict(tele=replace(HEALTHY, p95_ms=12.0), baseline=None)
    assert v.decision == "advance" and v.figure("p95-regression").ok is None  # type: ignore[union-attr]


def test_probe_failures() -> None:
    v = verdict(tele=replace(HEALTHY, probe_failures=2))
    assert (v.decision, v.gate) == ("rollback", "probe")
    no_probe = replace(POLICY, probe_must_pass=False)
    assert verdict(no_probe, tele=replace(HEALTHY, probe_failures=2)).decision == "advance"


def test_no_data_is_not_a_breach_but_not_a_pass_either() -> None:
    silent = TelemetryFigures(expected=10, silent=tuple(f"d{i}" for i in range(10)))
    v = verdict(tele=silent)
    assert (v.decision, v.gate) == ("hold", "reporting")
    v = verdict(tele=silent, elapsed=Elapsed(61, 55))
    assert (v.decision, v.gate) == ("rollback", "reporting")
    v = verdict(replace(POLICY, offline_policy="skip"), tele=silent, elapsed=Elapsed(61, 55))
    assert v.decision == "rollback"          # skipping everyone leaves nothing to judge


def test_offline_policy_fail_holds_then_rolls_back() -> None:
    tele = replace(HEALTHY, reported=8, on_digest=8, offline=("d8", "d9"), silent=("d8", "d9"))
    v = verdict(tele=tele)
    assert (v.decision, v.gate) == ("hold", "reporting")
    assert "8/10 devices report the new model (80%, min 90%)" in v.reason
    v = verdict(tele=tele, elapsed=Elapsed(60, 55))
    assert (v.decision, v.gate) == ("rollback", "reporting")
    assert "wave timeout" in v.reason


def test_offline_policy_skip_leaves_known_offline_out_at_once() -> None:
    skip = replace(POLICY, offline_policy="skip")
    tele = replace(HEALTHY, reported=8, on_digest=8, offline=("d8", "d9"), silent=("d8", "d9"))
    v = verdict(skip, tele=tele)
    assert v.decision == "advance"
    assert v.skipped == ("d8", "d9")
    assert "2 silent/offline devices skipped" in v.reason
    # silent but not known offline: wait for the deadline, then skip
    quiet = replace(HEALTHY, reported=8, on_digest=8, silent=("d8", "d9"))
    assert verdict(skip, tele=quiet).decision == "hold"
    v = verdict(skip, tele=quiet, elapsed=Elapsed(60, 55))
    assert v.decision == "advance" and v.skipped == ("d8", "d9")


def test_devices_still_on_the_old_model_are_not_skipped() -> None:
    skip = replace(POLICY, offline_policy="skip")
    tele = replace(HEALTHY, reported=10, on_digest=7, off_digest=3)
    v = verdict(skip, tele=tele, elapsed=Elapsed(60, 55))
    assert (v.decision, v.gate) == ("rollback", "reporting")


def test_manual_promotion() -> None:
    v = verdict(auto=False)
    assert (v.decision, v.gate) == ("hold", "promotion")
    assert verdict(auto=False, elapsed=Elapsed(40, 35, promoted=True)).decision == "advance"
    # promotion does not override a breach
    bad = replace(HEALTHY, errors=500, error_rate=0.5)
    assert verdict(auto=False, tele=bad, elapsed=Elapsed(40, 35, promoted=True)).decision == "rollback"


def test_gates_switched_off() -> None:
    policy = GatePolicy(max_error_rate=None, min_reporting=0.5, wave_timeout_s=60)
    v = verdict(policy, tele=replace(HEALTHY, error_rate=0.9, p95_ms=1000.0))
    assert v.decision == "advance"
    assert {f.gate for f in v.figures} == {"pods-ready", "reporting"}


def test_figures_from_window_accepts_counts_or_device_lists() -> None:
    stats = SimpleNamespace(expected=5, reported=4, silent=["e"], inferences=10, errors=1, error_rate=0.1,
                            p50_ms=1.0, p95_ms=2.0, p99_ms=3.0, probe_failures=0, on_digest=4, off_digest=0,
                            offline=("e",))
    f = figures_from_window(stats)
    assert (f.expected, f.reported, f.silent, f.offline, f.error_rate) == (5, 4, ("e",), ("e",), 0.1)
    f = figures_from_window({"expected": 5, "on_digest": ["a", "b"], "silent": 3, "error_rate": None})
    assert (f.on_digest, f.silent, f.error_rate) == (2, (), None)
    assert TelemetryFigures.from_json(f.to_json()) == f


def test_fleet_telemetry_hands_the_engine_the_gates_figures() -> None:
    from edgekit.rollout.service import FleetTelemetry
    from tests.test_fleet_state import NEW, OLD, T0, Fleet

    f = Fleet()
    f.health("a", 1, T0 + 10, digest=NEW, inferences=100, errors=2, p95=20)
    f.health("b", 1, T0 + 10, digest=OLD)
    f.status("c", False, 0, T0)
    telemetry = FleetTelemetry(SimpleNamespace(view=lambda: f.view, subscribed_at=T0 - 5))  # type: ignore[arg-type]
    assert telemetry.observing_since() == T0 - 5
    assert telemetry.window(["a", "b", "c", "x"], T0, NEW) == TelemetryFigures(
        expected=4, reported=1, on_digest=1, off_digest=1, inferences=100, errors=2, error_rate=0.02,
        p50_ms=10.0, p95_ms=20.0, p99_ms=30.0, probe_failures=0, silent=("c", "x"), offline=("c",))


# --- evidence: pass, fail or inconclusive -------------------------------------------------------

ERRORS_ONLY = GatePolicy(max_error_rate=0.01, wave_timeout_s=600.0)


def judged(tele: TelemetryFigures, *, at: float = 130.0, policy: GatePolicy = ERRORS_ONLY,
           control: TelemetryFigures | None = None, previous: Verdict | None = None) -> Verdict:
    return judge(policy, bake_s=120.0, auto_promote=True, kube=READY, tele=tele, baseline=None,
                 elapsed=Elapsed(at, at - 5), control=control, previous=previous)


def wave(inferences: int, errors: int, **kw: object) -> TelemetryFigures:
    return TelemetryFigures(expected=10, reported=10, on_digest=10, inferences=inferences, errors=errors,
                            error_rate=errors / inferences if inferences else None, **kw)  # type: ignore[arg-type]


def test_one_error_in_six_is_not_evidence() -> None:
    # the demo's old verdict: "error rate 16.67% (max 1%, 1/6 inferences)" rolled back by luck
    v = judged(wave(6, 1), at=30.0)
    assert v.decision == "hold" and v.figure("error-rate").outcome == "inconclusive"  # type: ignore[union-attr]
    v = judged(wave(6, 1))
    assert (v.decision, v.gate) == ("hold", "error-rate")
    assert "inconclusive, the bake goes on" in v.reason and "needs ≥ 226 inferences" in v.reason


def test_inconclusive_holds_then_the_policy_decides_at_the_timeout() -> None:
    few = wave(150, 0)
    assert judged(few).decision == "hold"
    v = judged(few, at=600.0)
    assert (v.decision, v.gate) == ("rollback", "error-rate")
    assert "still inconclusive at the wave timeout (10m), --inconclusive fail" in v.reason
    v = judged(few, at=600.0, policy=replace(ERRORS_ONLY, inconclusive="pass"))
    assert v.decision == "advance" and "inconclusive at the wave timeout, passed (--inconclusive pass)" in v.reason
    # an operator's promotion ends the extended bake, and says so
    v = judge(ERRORS_ONLY, bake_s=120.0, auto_promote=True, kube=READY, tele=few, baseline=None,
              elapsed=Elapsed(200.0, 195.0, promoted=True))
    assert v.decision == "advance" and "inconclusive, promoted by an operator" in v.reason
    # enough clean samples: pass as soon as the bake is over
    assert judged(wave(1000, 2)).decision == "advance"


def test_fail_verdict_names_the_test_its_numbers_and_the_confidence() -> None:
    v = judged(wave(500, 20), at=30.0)  # fail-fast during the bake, on evidence
    assert (v.decision, v.gate) == ("rollback", "error-rate")
    assert "error rate 4% (max 1%, 20/500 inferences): SPRT of ≤ 1% vs ≥ 3%: log LR" in v.reason
    assert "above the limit at 99% confidence" in v.reason
    fig = v.figure("error-rate")
    assert fig is not None and (fig.outcome, fig.test, fig.confidence, fig.samples) == ("fail", "SPRT", 0.99, 500)
    assert fig.statistic == pytest.approx(20 * math.log(3) + 480 * math.log(0.97 / 0.99))
    assert Verdict.from_json(v.to_json()) == v
    # a record written before the evidence fields still reads
    old = {"decision": "rollback", "reason": "r", "figures": [{"gate": "error-rate", "value": 0.2, "ok": False,
                                                               "text": "t"}]}
    assert Verdict.from_json(old).figure("error-rate").outcome is None  # type: ignore[union-attr]


def test_control_group_decides_whether_the_model_is_to_blame() -> None:
    bad_group = wave(2000, 60)
    # the whole group errs as much: not the new model's fault
    v = judged(bad_group, control=wave(2000, 60))
    assert v.decision == "advance" and "no worse than the control group" in v.reason + str(v.figures)
    # the control is healthy: fail, naming both tests
    v = judged(bad_group, control=wave(20000, 50), at=30.0)
    assert (v.decision, v.gate) == ("rollback", "error-rate")
    assert "SPRT vs control" in v.reason and "worse than the control group" in v.reason
    # baseline "before" ignores a control group
    before = replace(ERRORS_ONLY, baseline="before")
    assert judged(bad_group, control=wave(2000, 60), policy=before, at=30.0).decision == "rollback"


def test_consecutive_breaches_count_new_data_only() -> None:
    three = replace(ERRORS_ONLY, consecutive=3)
    v1 = judged(wave(500, 20), at=30.0, policy=three)
    assert (v1.decision, v1.breaches) == ("hold", 1) and "failed 1 of 3 consecutive" in v1.reason
    again = judged(wave(500, 20), at=31.0, policy=three, previous=v1)   # same data, looked at again
    assert (again.decision, again.breaches) == ("hold", 1)
    v2 = judged(wave(600, 24), at=40.0, policy=three, previous=again)
    assert (v2.decision, v2.breaches) == ("hold", 2)
    v3 = judged(wave(700, 28), at=50.0, policy=three, previous=v2)
    assert (v3.decision, v3.gate, v3.breaches) == ("rollback", "error-rate", 3)
    assert "failed (3 consecutive)" in v3.reason
    # a judgement without fail evidence resets the count
    calm = judged(wave(5000, 28), at=130.0, policy=three, previous=v2)
    assert calm.breaches == 0 and calm.decision == "advance"
    # at the wave timeout a breach rolls back whatever the count
    assert judged(wave(500, 20), at=600.0, policy=three).decision == "rollback"
    assert Verdict.from_json(v2.to_json()) == v2


def _hist(rng: np.random.Generator, n: int, median: float) -> LatencyHistogram:
    return LatencyHistogram.from_ms(rng.lognormal(math.log(median), 0.4, n))


def test_latency_regression_compares_distributions_with_the_control() -> None:
    rng = np.random.default_rng(1)
    policy = replace(ERRORS_ONLY, max_p95_regression=0.2)
    control = wave(50_000, 100, latency_hist=_hist(rng, 50_000, 20.0))
    slow = wave(50_000, 100, latency_hist=_hist(rng, 50_000, 30.0))
    v = judged(slow, control=control, policy=policy, at=30.0)
    assert (v.decision, v.gate) == ("rollback", "p95-regression")
    assert "SPRT of the share above" in v.reason and "fail at 99.5% confidence" in v.reason
    near = wave(50_000, 100, latency_hist=_hist(rng, 50_000, 21.0))   # +5%
    v = judged(near, control=control, policy=policy)
    assert v.decision == "advance" and v.figure("p95-regression").outcome != "fail"  # type: ignore[union-attr]
    # few latencies: no verdict on latency either way, the error-rate gate sets the pace
    v = judged(wave(1000, 1, latency_hist=_hist(rng, 20, 30.0)), control=control, policy=policy)
    assert v.decision == "advance" and v.figure("p95-regression").outcome == "inconclusive"  # type: ignore[union-attr]
    # the devices before the move: one p95 figure as the reference
    before = replace(policy, baseline="before")
    v = judged(slow, policy=before, at=30.0)                     # no figure from before the move
    assert v.decision == "hold" and v.figure("p95-regression").ok is None  # type: ignore[union-attr]
    v = judge(before, bake_s=120.0, auto_promote=True, kube=READY, tele=slow, baseline=Baseline(p95_ms=38.0),
              elapsed=Elapsed(30.0, 25.0))
    assert (v.decision, v.gate) == ("rollback", "p95-regression") and "vs baseline 38.0 ms" in v.reason


def test_absolute_p95_reads_the_merged_histogram() -> None:
    rng = np.random.default_rng(2)
    policy = replace(ERRORS_ONLY, max_p95_ms=30.0)
    hist = _hist(rng, 50_000, 30.0)   # p95 about 58 ms
    v = judged(wave(50_000, 10, latency_hist=hist, p95_ms=5.0), policy=policy, at=30.0)
    fig = v.figure("p95")
    assert (v.decision, v.gate) == ("rollback", "p95")
    assert fig is not None and fig.value == hist.quantile(0.95) and fig.test == "SPRT of the share above"
    # without a histogram (older agents) the reported p95 decides, as before
    v = judged(wave(5000, 10, p95_ms=35.0), policy=policy, at=30.0)
    assert (v.decision, v.gate) == ("rollback", "p95") and "point" in str(v.figure("p95").test)  # type: ignore[union-attr]
