"""The engine's shadow-wave steps (``edgekit push --shadow-first``), before wave 1.

Each step is written to ``status.shadow`` before the action it names, as the waves' are:

    (none)   --(write Pending)-->  the canary's nodes that run the current revision are chosen
    Pending  --(write Running)-->  ensure ``<app>-shadow-<target revision>`` (the current image,
                                   the candidate as its shadow) and relabel those nodes to it
    Running  -->                   pods Ready, then judge the pooled shadow reports
                                   (``shadowing.judge_shadow``): hold / pass / fail
    Passed   -->                   wave 1 starts as without a shadow wave (its nodes' origin is
                                   still the revision they ran before the shadow)
    Failed   -->                   roll back: the shadow nodes go back to their revision, the
                                   shadow DaemonSet is deleted; no node ever ran the candidate
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from edgekit.rollout import resource as r
from edgekit.rollout.shadowing import (
    SH_FAILED,
    SH_PASSED,
    SH_PENDING,
    SH_RUNNING,
    ShadowStatus,
    ShadowVerdict,
    judge_shadow,
    shadow_revision,
)

if TYPE_CHECKING:
    from edgekit.rollout.engine import Engine

EV_SHADOW, EV_SHADOW_READY, EV_SHADOW_PASSED = "shadow-started", "shadow-ready", "shadow-passed"


def shadow_due(ro: r.EdgeRollout) -> bool:
    """The rollout has a shadow wave that has not decided yet."""
    sh = ro.status.shadow
    return ro.spec.shadow is not None and (sh is None or sh.phase in (SH_PENDING, SH_RUNNING))


def step_shadow(engine: Engine) -> None:
    ro = engine.ro
    spec, st = ro.spec, ro.status
    policy = spec.shadow
    assert policy is not None
    now = engine.clock()
    sh = st.shadow
    if sh is None:
        wave = st.waves[0]
        current = spec.previous.revision if spec.previous else None
        nodes = [n for n in wave.nodes if current is not None and wave.from_revisions.get(n) == current]
        st.phase = r.PROGRESSING
        st.started_at = st.started_at or now
        if not nodes:
            st.shadow = ShadowStatus(shadow_revision(spec.target.revision), [], {}, SH_FAILED)
            reason = ("shadow wave impossible: no canary node runs the current revision "
                      f"{current or '(none)'}; push without --shadow-first")
            st.shadow.verdict = ShadowVerdict("fail", reason, "none")
            st.shadow.verdict_at = now
            engine._start_rollback(reason, "shadow", None)
            return
        st.shadow = ShadowStatus(shadow_revision(spec.target.revision), nodes,
                                 {n: wave.from_revisions.get(n) for n in nodes})
        st.message = (f"shadow wave: {len(nodes)} canary nodes keep {current} and run {spec.target.revision} "
                      f"as shadow; {policy.describe()}")
        engine._save(EV_SHADOW, st.message)
        return
    if sh.phase == SH_PENDING:
        sh.phase = SH_RUNNING
        sh.moved_at = now
        engine._save()
    if sh.revision not in engine._ensured:
        # Idempotent, so once per engine run (after a crash the step is repeated).
        assert spec.previous is not None
        engine.cluster.ensure_shadow_daemonset(ro.namespace, spec, spec.previous, sh.revision, spec.target)
        engine.cluster.relabel_nodes(spec.app, {n: sh.revision for n in sh.nodes})
        engine._ensured.add(sh.revision)
    if sh.ready_at is None:
        tracker = engine._shadow_pods(sh.revision)
        ready = len(tracker.ready_nodes().intersection(sh.nodes))
        if ready >= len(sh.nodes):
            sh.ready_at = now
            st.message = f"shadow wave: {ready} pods Ready, sampling live requests"
            engine._save(EV_SHADOW_READY, st.message)
            return
        if now - (sh.moved_at or now) >= policy.timeout_s:
            _fail(engine, ShadowVerdict("fail", f"shadow wave: only {ready} of {len(sh.nodes)} pods Ready "
                                                f"within the shadow timeout", "pods Ready"))
            return
        tracker.wait(engine.options.tick_s)
        return
    figures = engine._shadow_figures(sh.nodes, spec.target.digest, policy.metric)
    verdict = judge_shadow(policy, figures, now - sh.ready_at)
    if verdict.decision == "pass":
        sh.phase, sh.verdict, sh.verdict_at = SH_PASSED, verdict, now
        st.message = f"{verdict.reason}; wave 1/{len(st.waves)} next"
        engine._save(EV_SHADOW_PASSED, verdict.reason)
        return
    if verdict.decision == "fail":
        _fail(engine, verdict)
        return
    if now - engine._last_write >= engine.options.refresh_s:
        sh.verdict, sh.verdict_at = verdict, now
        st.message = verdict.reason
        engine._save()
    engine._sleep(engine.options.tick_s)


def _fail(engine: Engine, verdict: ShadowVerdict) -> None:
    sh = engine.ro.status.shadow
    assert sh is not None
    sh.phase, sh.verdict, sh.verdict_at = SH_FAILED, verdict, engine.clock()
    engine._start_rollback(verdict.reason, "shadow-agreement", None)


def shadow_moves_back(status: r.RolloutStatus) -> dict[str, str | None]:
    """The shadow nodes' way back to where they came from (when they may have been relabelled)."""
    sh = status.shadow
    if sh is None or not sh.active:
        return {}
    return {n: sh.from_revisions.get(n) for n in sh.nodes}


__all__ = ["EV_SHADOW", "EV_SHADOW_PASSED", "EV_SHADOW_READY", "shadow_due", "shadow_moves_back", "step_shadow"]
