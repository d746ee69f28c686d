"""The gate verdict function: every decision with its reason and figures."""

from __future__ import annotations

from dataclasses import replace
from types import SimpleNamespace

import pytest

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
