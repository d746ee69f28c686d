"""The shadow wave (push --shadow-first) on the in-memory cluster, and its statistical test."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
from scipy.stats import binomtest

from edgekit.errors import ThresholdRangeError
from edgekit.rollout import resource as r
from edgekit.rollout.engine import Engine, request_abort
from edgekit.rollout.memory import MemoryCluster, MemoryTelemetry
from edgekit.rollout.shadowing import (
    ShadowFigures,
    ShadowPolicy,
    judge_shadow,
    shadow_revision,
    validate_shadow,
    wilson_bounds,
)
from tests.test_rollout_engine import APP, FAST, GROUP, NEW, NS, OLD, fleet, in_thread, revisions, strategy, wait_for

SHADOW = shadow_revision(NEW.revision)


class RecordingCluster(MemoryCluster):
    """Remembers every revision any node was ever labelled with, and every DaemonSet applied."""

    def __init__(self, *args: object, **kw: object) -> None:
        super().__init__(*args, **kw)  # type: ignore[arg-type]
        self.ever: dict[str, set[str | None]] = {}
        self.applied: list[str] = []

    def relabel_nodes(self, app: str, moves: object) -> None:
        for node, rev in dict(moves).items():  # type: ignore[call-overload]
            self.ever.setdefault(node, set()).add(rev)
        super().relabel_nodes(app, moves)  # type: ignore[arg-type]

    def ensure_daemonset(self, namespace: str, spec: r.RolloutSpec, image: r.ImageRef) -> None:
        self.applied.append(image.revision)
        super().ensure_daemonset(namespace, spec, image)

    def ensure_shadow_daemonset(self, namespace: str, spec: r.RolloutSpec, serving: r.ImageRef, revision: str,
                                candidate: r.ImageRef) -> None:
        self.applied.append(revision)
        super().ensure_shadow_daemonset(namespace, spec, serving, revision, candidate)


def shadow_fleet(agreement: float, n: int = 8) -> tuple[RecordingCluster, MemoryTelemetry]:
    base, _ = fleet(n)
    cluster = RecordingCluster({GROUP: {m: dict(base.nodes[m]) for m in base.groups[GROUP]}})
    cluster.daemonsets[(NS, APP, OLD.revision)] = OLD
    cluster.relabel_nodes(APP, {m: OLD.revision for m in cluster.groups[GROUP]})
    cluster.ever.clear()
    telemetry = MemoryTelemetry(cluster, APP, NS, {
        OLD.digest: {"error_rate": 0.0, "p95_ms": 10.0},
        NEW.digest: {"error_rate": 0.0, "p95_ms": 10.0, "shadow_agreement": agreement, "shadow_samples": 400}})
    return cluster, telemetry


def push_shadow(cluster: MemoryCluster, telemetry: MemoryTelemetry, policy: ShadowPolicy,
                **kw: object) -> tuple[Engine, str]:
    engine = Engine(cluster, telemetry, options=FAST)
    ro = engine.prepare(namespace=NS, app=APP, group=GROUP, image=NEW, strategy=strategy(waves="2,100%", **kw),  # type: ignore[arg-type]
                        shadow=policy)
    engine.create(ro)
    return engine, ro.name


def test_a_quietly_wrong_candidate_is_stopped_before_any_node_switches() -> None:
    cluster, telemetry = shadow_fleet(agreement=0.9)
    engine, name = push_shadow(cluster, telemetry, ShadowPolicy(min_agreement=0.98, min_samples=200))
    ro = engine.run(NS, name)
    assert ro.status.phase == r.ROLLED_BACK
    sh = ro.status.shadow
    assert sh is not None and sh.phase == "Failed" and len(sh.nodes) == 2
    assert sh.verdict is not None and sh.verdict.decision == "fail"
    assert sh.verdict.samples == 800 and sh.verdict.agreement == pytest.approx(0.9)
    assert "SPRT" in sh.verdict.reason and "0.9000" in sh.verdict.reason
    # no node was ever labelled with the candidate's revision, and its DaemonSet never existed
    assert all(NEW.revision not in revs for revs in cluster.ever.values())
    assert NEW.revision not in cluster.applied and cluster.applied == [SHADOW]
    assert {n for n, revs in cluster.ever.items() if SHADOW in revs} == set(sh.nodes)
    assert revisions(cluster) == {OLD.revision}
    assert (NS, APP, SHADOW) not in cluster.daemonsets and (NS, APP, OLD.revision) in cluster.daemonsets
    assert (ro.status.condition("RolledBack") or {}).get("reason") == "ShadowAgreement"
    # the status round-trips through the resource's JSON
    again = r.EdgeRollout.from_json(ro.to_json())
    assert again.status.shadow is not None and again.status.shadow.verdict == sh.verdict
    assert again.spec.shadow == ro.spec.shadow


def test_a_good_candidate_passes_the_shadow_wave_and_rolls_out() -> None:
    cluster, telemetry = shadow_fleet(agreement=1.0)
    engine, name = push_shadow(cluster, telemetry, ShadowPolicy(min_agreement=0.98, min_samples=200))
    ro = engine.run(NS, name)
    assert ro.status.phase == r.SUCCEEDED
    assert ro.status.shadow is not None and ro.status.shadow.phase == "Passed"
    events = [h.event for h in ro.status.history]
    assert events.index("shadow-passed") < events.index("wave-started")
    assert revisions(cluster) == {NEW.revision}
    canary = ro.status.shadow.nodes
    assert all(cluster.ever[n] == {SHADOW, NEW.revision} for n in canary)
    assert (NS, APP, SHADOW) not in cluster.daemonsets  # retired once it ran nowhere


def test_an_inconclusive_shadow_holds_then_fails_at_its_timeout() -> None:
    cluster, telemetry = shadow_fleet(agreement=0.96)  # between H0 (≥ 0.98) and H1 (≤ 0.94): undecided
    telemetry.behaviour[NEW.digest]["shadow_samples"] = 150
    engine, name = push_shadow(cluster, telemetry, ShadowPolicy(min_agreement=0.98, min_samples=200,
                                                                timeout_s=0.5))
    started = time.monotonic()
    ro = engine.run(NS, name)
    assert time.monotonic() - started >= 0.5
    assert ro.status.phase == r.ROLLED_BACK
    assert ro.status.shadow is not None and ro.status.shadow.verdict is not None
    assert "inconclusive" in ro.status.shadow.verdict.reason
    assert revisions(cluster) == {OLD.revision}


def test_abort_during_the_shadow_wave_puts_the_canary_back() -> None:
    cluster, telemetry = shadow_fleet(agreement=0.98)
    telemetry.behaviour[NEW.digest]["shadow_samples"] = 10  # never enough: the wave holds
    engine, name = push_shadow(cluster, telemetry, ShadowPolicy(min_samples=200, timeout_s=60))
    thread, out = in_thread(lambda: engine.run(NS, name))
    wait_for(lambda: any(SHADOW in revs for revs in cluster.ever.values()))
    request_abort(cluster, NS, name, "testing")
    thread.join(10)
    ro = out[0]
    assert isinstance(ro, r.EdgeRollout) and ro.status.phase == r.ROLLED_BACK
    assert revisions(cluster) == {OLD.revision}


def test_a_group_with_no_current_revision_cannot_shadow() -> None:
    cluster, telemetry = fleet(4, deployed=False)
    engine = Engine(cluster, telemetry, options=FAST)
    ro = engine.prepare(namespace=NS, app=APP, group=GROUP, image=NEW, strategy=strategy(),  # type: ignore[arg-type]
                        shadow=ShadowPolicy())
    engine.create(ro)
    ro = engine.run(NS, ro.name)
    assert ro.status.phase == r.ROLLED_BACK and "no canary node runs the current revision" in ro.status.message
    assert all(rev is None for rev in revisions(cluster))


@pytest.mark.parametrize(("agree", "n"), [(900, 1000), (199, 200), (50, 60), (1000, 1000), (0, 30)])
def test_wilson_bounds_match_scipy(agree: int, n: int) -> None:
    ci = binomtest(agree, n).proportion_ci(confidence_level=0.98, method="wilson")  # two-sided 98% = 99% each side
    lower, upper = wilson_bounds(agree, n, 0.99)
    assert lower == pytest.approx(ci.low, abs=1e-9) and upper == pytest.approx(ci.high, abs=1e-9)


def test_the_judge_needs_evidence() -> None:
    policy = ShadowPolicy(min_agreement=0.98, min_samples=200, confidence=0.99, timeout_s=100)
    few = ShadowFigures(devices=2, reporting=2, samples=50, agree=40)
    assert judge_shadow(policy, few, 1).decision == "hold"  # clearly bad, but below the minimum sample
    assert judge_shadow(policy, few, 100).decision == "fail"
    bad = ShadowFigures(devices=2, reporting=2, samples=400, agree=360)
    verdict = judge_shadow(policy, bad, 1)
    assert verdict.decision == "fail" and verdict.llr is not None and verdict.fail_at is not None
    assert verdict.llr >= verdict.fail_at and "SPRT" in verdict.test and "99%" in verdict.test
    good = ShadowFigures(devices=2, reporting=2, samples=1000, agree=999)
    assert judge_shadow(policy, good, 1).decision == "pass"
    close = ShadowFigures(devices=2, reporting=2, samples=300, agree=288)  # 0.96: between H0 and H1, undecided
    assert judge_shadow(policy, close, 1).decision == "hold"
    assert judge_shadow(policy, close, 100).decision == "fail"
    failing = ShadowFigures(devices=2, reporting=2, samples=300, agree=300, errors=30)
    assert "failed 30 of 330" in judge_shadow(policy, failing, 1).reason
    cos = ShadowPolicy(metric="cosine", min_agreement=0.99, min_samples=100)
    n, mean, sd = 400, 0.995, 0.01
    sq = n * (sd * sd * (n - 1) / n + mean * mean)
    assert judge_shadow(cos, ShadowFigures(2, 2, n, 0, n * mean, sq), 1).decision == "pass"
    assert math.isclose(judge_shadow(cos, ShadowFigures(2, 2, n, 0, n * mean, sq), 1).agreement or 0, mean)


def test_policy_checks() -> None:
    with pytest.raises(ThresholdRangeError, match="min-agreement"):
        validate_shadow(ShadowPolicy(min_agreement=1.5))
    with pytest.raises(ThresholdRangeError, match="shadow-ratio"):
        validate_shadow(ShadowPolicy(ratio=0))
    assert ShadowPolicy.from_json(ShadowPolicy(min_agreement=0.95, timeout_s=90).to_json()) == \
        ShadowPolicy(min_agreement=0.95, timeout_s=90)


def _shadow_runs(policy: ShadowPolicy, *, agreement: float, runs: int, seed: int, error_rate: float = 0.0,
                 step: int = 20, looks: int = 100, score_sd: float = 0.0) -> tuple[float, float]:
    """Shares of runs the real judge failed and passed when it looks after every ``step`` more
    shadow runs, ``looks`` times (a run still held at the last look counts as neither). top1:
    each row agrees with chance ``agreement``; scores: a clipped normal around ``agreement``."""
    rng = np.random.default_rng(seed)
    failed = passed = 0
    for _ in range(runs):
        tries = np.full(looks, step)
        errors = rng.binomial(tries, error_rate)
        rows = tries - errors
        if policy.metric == "top1":
            agree = rng.binomial(rows, agreement).cumsum()
            total = squares = np.zeros(looks)
        else:
            scores = np.clip(rng.normal(agreement, score_sd, int(rows.sum())), -1.0, 1.0)
            ends = rows.cumsum()
            total, squares = np.cumsum(scores)[ends - 1], np.cumsum(scores * scores)[ends - 1]
            agree = np.zeros(looks, dtype=int)
        n, e = rows.cumsum(), errors.cumsum()
        for i in range(looks):
            figures = ShadowFigures(1, 1, int(n[i]), int(agree[i]), float(total[i]), float(squares[i]), int(e[i]))
            decision = judge_shadow(policy, figures, float(i)).decision
            if decision != "hold":
                failed += decision == "fail"
                passed += decision == "pass"
                break
    return failed / runs, passed / runs


REPEATED = ShadowPolicy(min_agreement=0.98, min_samples=200, confidence=0.99, timeout_s=math.inf)


def test_a_healthy_candidate_is_rarely_stopped_however_often_the_judge_looks() -> None:
    # agreement 0.995 and errors at half the 1% limit, judged every 20 shadow runs up to 2,000
    failed, passed = _shadow_runs(REPEATED, agreement=0.995, error_rate=0.005, runs=2000, seed=11)
    assert failed <= 0.01 and passed >= 0.98
    # at the minimum itself (the worst case of H0) the sequential test still keeps its 1%
    failed, _ = _shadow_runs(REPEATED, agreement=0.98, runs=2000, seed=12)
    assert failed <= 0.01


def test_the_simulation_catches_a_test_that_is_not_valid_under_repeated_looks() -> None:
    # the one-look Wilson bound at 99%, judged at each of the same looks at the minimum itself,
    # stops far more than 1%
    rng = np.random.default_rng(13)
    disagree = rng.binomial(np.full((2000, 100), 20), 0.02).cumsum(axis=1)
    n = np.arange(1, 101) * 20
    stopped = sum(any(wilson_bounds(int(k - d), int(k), 0.99)[1] < 0.98
                      for k, d in zip(n[9:], row[9:], strict=True)) for row in disagree)
    assert stopped / 2000 > 0.02


def test_a_quietly_wrong_candidate_is_stopped_with_power() -> None:
    failed, passed = _shadow_runs(REPEATED, agreement=0.9, runs=2000, seed=14)
    assert failed >= 0.99 and passed == 0


def test_the_mean_score_test_holds_under_repeated_looks_and_has_power() -> None:
    cos = ShadowPolicy(metric="cosine", min_agreement=0.98, min_samples=200, confidence=0.99, timeout_s=math.inf)
    failed, passed = _shadow_runs(cos, agreement=0.98, score_sd=0.005, runs=1000, seed=15)
    assert failed <= 0.01
    failed, passed = _shadow_runs(cos, agreement=0.995, score_sd=0.002, runs=1000, seed=16)
    assert failed <= 0.01 and passed >= 0.99
    failed, passed = _shadow_runs(cos, agreement=0.9, score_sd=0.05, runs=1000, seed=17)
    assert failed >= 0.99 and passed == 0
