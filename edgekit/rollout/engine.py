"""The rollout engine: drives one EdgeRollout through its waves, one recorded step at a time.

Each step is written to the EdgeRollout status *before* the action it names, and every action is
idempotent, so whichever engine picks the rollout up next (``edgekit rollout resume`` after a
crash, the in-cluster controller) repeats at most the step that was in flight and continues:

    wave Pending  --(baseline; write Moving)-->  relabel the wave's nodes (one patch each,
                                                  concurrently), ensure <app>-<revision> exists
    wave Moving   --(write Waiting)-->            pods of the new DaemonSet Ready on the wave's
                                                  nodes (a list + watch, not per-node polls)
    wave Waiting  --(write Baking)-->             bake, then judge (``gating.judge``) from the
                                                  fleet telemetry: hold / advance / roll back
    wave Baking   --(write Passed, next wave)--> ...
    all passed    --> delete DaemonSets that run nowhere --> Succeeded
    roll back     --(write RollingBack)--> relabel every moved node to the revision it came
                     from --(write relabelled-back)--> delete the new DaemonSet once it runs
                     nowhere --> RolledBack

The wave is compared (``GatePolicy.baseline``) with its control group: the group's devices still
on the old revision (those of later waves; with ``spread_by`` only those in the wave's zones), over
the same window. The last wave has none left and is judged against the thresholds alone.
``baseline == "before"`` compares the wave's devices with themselves before the move instead.

Only the holder of the rollout's Lease acts (``edgekit.rollout.leasing``); a second engine is
refused. Operator requests arrive through the resource (``spec.paused``, the abort and promote
annotations), seen at once through a watch.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from edgekit.errors import (
    RolloutError,
    RolloutInProgressError,
    TemporaryError,
)
from edgekit.rollout import resource as r
from edgekit.rollout.gating import (
    ADVANCE,
    ROLLBACK,
    Baseline,
    Elapsed,
    KubeFigures,
    TelemetryFigures,
    Verdict,
    judge,
)
from edgekit.rollout.leasing import Lease
from edgekit.rollout.planning import NO_ZONE, PlannedWave, plan_waves
from edgekit.rollout.ports import ClusterPort, PodTracker, RolloutWatch, TelemetryPort
from edgekit.rollout.resource import EdgeRollout, HistoryEntry, ImageRef, RolloutSpec, RolloutStatus, WaveStatus
from edgekit.rollout.shadowing import ShadowFigures, ShadowPolicy
from edgekit.rollout.shadowwave import shadow_due, shadow_moves_back, step_shadow
from edgekit.rollout.strategy import Strategy, fmt_duration

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineOptions:
    lease_s: float = 15.0
    tick_s: float = 0.5              # how often a holding wave is looked at again
    refresh_s: float = 5.0           # how often live figures are written while nothing changes
    cleanup_timeout_s: float = 60.0  # wait this long for a DaemonSet to run nowhere, then delete it
    retry_s: float = 2.0             # back-off after a temporary API failure that names no delay
    holder: str | None = None


@dataclass
class Live:
    """What the engine sees right now (for live views); not persisted."""

    rollout: EdgeRollout
    verdict: Verdict | None = None
    ready: int = 0
    updated: float = 0.0
    extra: dict[str, float] = field(default_factory=dict)


def _moves_back(status: RolloutStatus) -> dict[str, str | None]:
    moves = shadow_moves_back(status)
    moves.update({n: w.from_revisions.get(n) for w in status.waves if w.phase != r.W_PENDING for n in w.nodes})
    return moves


def plan_rollout(*, name: str, namespace: str, app: str, group: str, image: ImageRef, strategy: Strategy,
                 nodes: dict[str, dict[str, str]], revisions: dict[str, ImageRef], profile: str = "k3s",
                 undo_of: str | None = None, now: float, shadow: ShadowPolicy | None = None) -> EdgeRollout:
    """The EdgeRollout a push would create (pure): frozen wave plan with each node's origin."""
    label = r.node_label(app)
    current = {n: labels.get(label) for n, labels in nodes.items()}
    to_move = {n: labels for n, labels in nodes.items() if current[n] != image.revision}
    if not to_move:
        raise RolloutError(f"every node of group {group!r} already runs {app} revision {image.revision}",
                           hint="nothing to roll out")
    plan: Sequence[PlannedWave] = plan_waves(to_move, strategy, group=group)
    tally = Counter(rev for rev in current.values() if rev and rev != image.revision)
    previous_rev = tally.most_common(1)[0][0] if tally else None
    previous = revisions.get(previous_rev) if previous_rev else None
    spec = RolloutSpec(app=app, group=group, target=image, strategy=strategy, profile=profile,
                       previous=previous, undo_of=undo_of, shadow=shadow)
    status = RolloutStatus(
        phase=r.PENDING, revision=image.revision, previous_revision=previous_rev,
        waves=[WaveStatus(w.index, str(w.target), list(w.nodes), {n: current[n] for n in w.nodes},
                          zones=dict(w.zones)) for w in plan],
        message=f"planned {len(plan)} waves over {len(to_move)} nodes",
        history=[HistoryEntry(now, r.EV_PLANNED, f"{len(plan)} waves over {len(to_move)} nodes "
                                                 f"({', '.join(str(w.size) for w in plan)})")],
    )
    return EdgeRollout(name, namespace, spec, status)


def next_rollout_name(existing: Sequence[EdgeRollout], app: str, group: str) -> str:
    seq = 0
    prefix = r.rollout_name(app, group, 0)[:-1]
    for ro in existing:
        if ro.name.startswith(prefix) and ro.name[len(prefix):].isdigit():
            seq = max(seq, int(ro.name[len(prefix):]))
    return r.rollout_name(app, group, seq + 1)


class Engine:
    def __init__(self, cluster: ClusterPort, telemetry: TelemetryPort | None, *,
                 options: EngineOptions | None = None, clock: Callable[[], float] = time.time,
                 stop: threading.Event | None = None) -> None:
        self.cluster = cluster
        self.telemetry = telemetry
        self.options = options or EngineOptions()
        self.clock = clock
        self.stop = stop or threading.Event()
        self.live: Live | None = None
        self._lease: Lease | None = None
        self._watch: RolloutWatch | None = None
        self._tracker: PodTracker | None = None
        self._shadow_tracker: PodTracker | None = None
        self._last_write = 0.0
        self._hold_key: tuple[str, str | None] | None = None
        self._hold_since = 0.0
        self._hold_written = False
        self._ensured: set[str] = set()
        self._controls: dict[tuple[str, int], tuple[str, ...]] = {}
        self.on_change: Callable[[Live], None] | None = None

    # --- creating -------------------------------------------------------------------------
    def prepare(self, *, namespace: str, app: str, group: str, image: ImageRef, strategy: Strategy,
                profile: str = "k3s", undo_of: str | None = None, shadow: ShadowPolicy | None = None) -> EdgeRollout:
        """Check everything and plan, changing nothing. The errors a push can meet come from here."""
        nodes = self.cluster.group_nodes(group, profile)
        existing = self.cluster.list_rollouts(namespace, app=app)
        for ro in existing:
            if ro.spec.group == group and ro.active:
                raise RolloutInProgressError(
                    f"rollout {ro.name} of {app} on group {group} is {ro.status.phase}",
                    hint=f"follow it with `edgekit rollout status {ro.name} --watch` or stop it with "
                         f"`edgekit rollout abort {ro.name}`")
        revisions = self.cluster.app_revisions(namespace, app)
        return plan_rollout(name=next_rollout_name(existing, app, group), namespace=namespace, app=app,
                            group=group, image=image, strategy=strategy, nodes=nodes, revisions=revisions,
                            profile=profile, undo_of=undo_of, now=self.clock(), shadow=shadow)

    def create(self, rollout: EdgeRollout) -> EdgeRollout:
        return self.cluster.create_rollout(rollout)

    # --- running --------------------------------------------------------------------------
    def run(self, namespace: str, name: str) -> EdgeRollout:
        """Drive the rollout until it ends (or ``stop`` is set). EngineConflictError when another
        engine holds it."""
        lease = Lease(self.cluster, namespace, name, holder=self.options.holder,
                      duration_s=self.options.lease_s, clock=self.clock)
        ro = self.cluster.get_rollout(namespace, name)
        if ro.status.phase in r.TERMINAL_PHASES:
            return ro
        lease.acquire()
        self._lease = lease
        self.live = Live(ro, updated=self.clock())
        clean = False
        try:
            self._watch = self.cluster.watch_rollout(namespace, name)
            # Recorded with the engine's first write (no write of its own: it is no step).
            ro.status.history.append(HistoryEntry(self.clock(), r.EV_ENGINE,
                                                  f"engine {lease.holder} took the rollout at {self._where(ro)}"))
            while not self.stop.is_set():
                latest = self._watch.latest()
                if latest is not None:
                    self._adopt(latest)
                if self.ro.status.phase in r.TERMINAL_PHASES:
                    break
                try:
                    lease.renew()
                    self._step()
                except TemporaryError as exc:
                    self._back_off(name, exc)
            clean = True
            return self.ro
        except (Exception, KeyboardInterrupt, SystemExit):
            clean = True  # an orderly failure: hand the lease back so `resume` can start at once
            raise
        finally:
            for closing in (self._watch, self._tracker, self._shadow_tracker):
                if closing is not None:
                    with contextlib.suppress(Exception):
                        closing.close()
            self._watch = self._tracker = self._shadow_tracker = None
            if clean:
                lease.release()
            self._lease = None

    @property
    def ro(self) -> EdgeRollout:
        assert self.live is not None
        return self.live.rollout

    @staticmethod
    def _where(ro: EdgeRollout) -> str:
        st = ro.status
        if st.phase == r.PENDING:
            return "the start"
        if st.current_wave < len(st.waves):
            w = st.waves[st.current_wave]
            return f"wave {w.index + 1}/{len(st.waves)} ({w.phase}), phase {st.phase}"
        return f"phase {st.phase}"

    def _adopt(self, latest: EdgeRollout) -> None:
        """Take the operator-controlled parts (spec, annotations) from the newest object; the
        status is ours."""
        assert self.live is not None
        self.live.rollout = replace(self.ro, spec=latest.spec, resource_version=latest.resource_version)

    def _back_off(self, name: str, exc: TemporaryError) -> None:
        """Wait before retrying a step: as long as the server asked (``retry_after``, not cut short
        by rollout changes: it asked for quiet), else our own ``retry_s``."""
        if exc.retry_after is None:
            log.warning("rollout %s: %s; retrying", name, exc.one_line())
            self._sleep(self.options.retry_s)
        else:
            log.warning("rollout %s: %s; retrying in %.1fs as asked", name, exc.one_line(), exc.retry_after)
            self.stop.wait(exc.retry_after)

    def _sleep(self, seconds: float) -> None:
        if seconds <= 0:
            return
        if self._watch is not None:
            self._watch.wait(seconds)
        else:
            self.stop.wait(seconds)

    def _save(self, event: str | None = None, message: str | None = None, wave: int | None = None) -> None:
        now = self.clock()
        st = self.ro.status
        if event is not None:
            st.history.append(HistoryEntry(now, event, message or st.message, wave))
        st.updated_at = now
        if self._lease is not None:
            self._lease.renew()
        saved = self.cluster.write_status(self.ro)
        assert self.live is not None
        self.live.rollout = replace(self.ro, resource_version=saved.resource_version)
        self._last_write = now
        self._changed()

    def _changed(self) -> None:
        if self.live is not None:
            self.live.updated = self.clock()
            if self.on_change is not None:
                with contextlib.suppress(Exception):
                    self.on_change(self.live)

    # --- the state machine ------------------------------------------------------------------
    def _step(self) -> None:
        ro = self.ro
        st, spec = ro.status, ro.spec
        now = self.clock()
        if spec.abort and st.phase in (r.PENDING, r.PROGRESSING, r.PAUSED):
            self._start_rollback(f"aborted: {spec.abort}", "abort", None)
            return
        if shadow_due(ro) and not spec.paused and st.phase in (r.PENDING, r.PROGRESSING):
            step_shadow(self)  # shadowwave.py: the candidate beside the current model, before wave 1
            return
        if st.phase == r.PENDING:
            st.phase = r.PROGRESSING
            st.started_at = st.started_at or now
            st.message = f"wave 1/{len(st.waves)} next"
            started = (f"started: {len(st.waves)} waves over {sum(len(w.nodes) for w in st.waves)} nodes to "
                       f"revision {spec.target.revision}")
            if st.waves and not spec.paused and self._prepare_wave(st.waves[0]):
                # One write: started, and the first wave is Moving.
                st.history.append(HistoryEntry(now, r.EV_ENGINE, started))
                self._save(r.EV_WAVE, st.message, 0)
                return
            self._save(r.EV_ENGINE, started)
            return
        if st.phase == r.PROGRESSING and spec.paused:
            st.phase = r.PAUSED
            st.message = "paused: no new wave starts and no wave is promoted until resumed"
            self._save(r.EV_PAUSED, "paused")
            return
        if st.phase == r.PAUSED and not spec.paused:
            st.phase = r.PROGRESSING
            st.message = "resumed"
            self._save(r.EV_RESUMED, "resumed")
            return
        if st.phase == r.ROLLING_BACK:
            self._roll_back()
            return
        if st.current_wave >= len(st.waves):
            self._finish()
            return
        wave = st.waves[st.current_wave]
        if spec.promote == wave.index and not wave.promoted and wave.phase in (r.W_WAITING, r.W_BAKING,
                                                                              r.W_PENDING, r.W_MOVING):
            wave.promoted = True
            self._save(r.EV_PROMOTED, f"wave {wave.index + 1} promoted by an operator", wave.index)
            return
        paused = st.phase == r.PAUSED
        if wave.phase == r.W_PENDING:
            if paused:
                self._sleep(self.options.tick_s)
                return
            self._start_wave(wave)
        elif wave.phase == r.W_MOVING:
            self._move(wave)
        elif wave.phase == r.W_WAITING:
            self._wait_ready(wave)
        elif wave.phase == r.W_BAKING:
            self._bake_and_judge(wave, paused)
        else:  # Passed/Failed waves are behind current_wave; repair a status cut short
            st.current_wave += 1
            self._save()

    def _start_wave(self, wave: WaveStatus) -> None:
        if not self._prepare_wave(wave):
            self._sleep(self.options.tick_s)
            return
        self._save(r.EV_WAVE, self.ro.status.message, wave.index)

    def _prepare_wave(self, wave: WaveStatus) -> bool:
        """Baseline the wave and mark it Moving (in memory; the caller writes it before acting).
        False while the telemetry has too little history for a baseline."""
        baseline = self._baseline(wave)
        if baseline is _WAIT:
            return False
        st = self.ro.status
        wave.baseline = baseline if isinstance(baseline, Baseline) else None
        wave.phase = r.W_MOVING
        wave.moved_at = self.clock()
        st.message = f"wave {wave.index + 1}/{len(st.waves)}: moving {len(wave.nodes)} nodes"
        return True

    def _baseline(self, wave: WaveStatus) -> Baseline | object | None:
        """The wave's devices on their current model, before the move. Waits (returns _WAIT) while
        the telemetry has not watched long enough to have a baseline window."""
        if self.telemetry is None or not any(wave.from_revisions.get(n) for n in wave.nodes):
            return None
        now = self.clock()
        window = self.ro.spec.strategy.baseline_s
        since = self.telemetry.observing_since()
        if since > now - window and now - since < window:
            return _WAIT
        stats = self.telemetry.window(wave.nodes, now - window, None)
        if stats.reported == 0:
            return None
        return Baseline(stats.p95_ms, stats.error_rate, stats.reported)

    def _move(self, wave: WaveStatus) -> None:
        """Relabel the wave's nodes. Not written afterwards: waiting is no action, and after a
        crash the step is Moving again, whose relabel is idempotent."""
        spec, st = self.ro.spec, self.ro.status
        started = time.perf_counter()
        applying: threading.Thread | None = None
        failure: list[BaseException] = []
        if spec.target.revision not in self._ensured:
            # Once per engine run (applying is idempotent), and beside the relabelling: the
            # DaemonSet controller starts the pods whichever of the two lands first.
            def apply() -> None:
                try:
                    self.cluster.ensure_daemonset(self.ro.namespace, spec, spec.target)
                except BaseException as exc:
                    failure.append(exc)
            applying = threading.Thread(target=apply, name="ensure-daemonset", daemon=True)
            applying.start()
        try:
            self.cluster.relabel_nodes(spec.app, {n: spec.target.revision for n in wave.nodes})
        finally:
            if applying is not None:
                applying.join()
        if failure:
            raise failure[0]
        self._ensured.add(spec.target.revision)
        wave.phase = r.W_WAITING
        st.message = f"wave {wave.index + 1}/{len(st.waves)}: waiting for {len(wave.nodes)} pods to be Ready"
        if self.live is not None:
            self.live.extra["relabel_s"] = self.live.extra.get("relabel_s", 0.0) + time.perf_counter() - started
        self._changed()

    def _shadow_pods(self, revision: str) -> PodTracker:
        if self._shadow_tracker is None:
            self._shadow_tracker = self.cluster.track_pods(self.ro.namespace, self.ro.spec.app, revision)
        return self._shadow_tracker

    def _shadow_figures(self, nodes: Sequence[str], digest: str, metric: str) -> ShadowFigures:
        if self.telemetry is None:
            return ShadowFigures(devices=len(nodes))
        return self.telemetry.shadow(nodes, digest, metric)

    def _pods(self) -> PodTracker:
        if self._tracker is None:
            spec = self.ro.spec
            self._tracker = self.cluster.track_pods(self.ro.namespace, spec.app, spec.target.revision)
        return self._tracker

    def _kube(self, wave: WaveStatus) -> KubeFigures:
        ready = len(self._pods().ready_nodes().intersection(wave.nodes))
        if self.live is not None:
            self.live.ready = ready
        return KubeFigures(len(wave.nodes), ready)

    def _wait_ready(self, wave: WaveStatus) -> None:
        st = self.ro.status
        kube = self._kube(wave)
        now = self.clock()
        wave.ready = kube.ready
        if kube.ready >= kube.desired:
            wave.ready_at = now
            wave.phase = r.W_BAKING
            st.message = (f"wave {wave.index + 1}/{len(st.waves)}: {kube.ready} pods Ready, baking "
                          f"{fmt_duration(self.ro.spec.strategy.bake_s)}")
            self._save(r.EV_READY, st.message, wave.index)
            return
        verdict = judge(self.ro.spec.strategy.gates, bake_s=self.ro.spec.strategy.bake_s,
                        auto_promote=self.ro.spec.strategy.auto_promote, kube=kube,
                        tele=self._telemetry(wave), baseline=wave.baseline,
                        elapsed=Elapsed(now - (wave.moved_at or now), None, wave.promoted))
        self._hold_or_roll_back(wave, verdict, sleep=self._pods().wait)

    def _telemetry(self, wave: WaveStatus) -> TelemetryFigures:
        if self.telemetry is None:
            return TelemetryFigures(expected=len(wave.nodes))
        since = wave.ready_at or wave.moved_at or self.clock()
        return self.telemetry.window(wave.nodes, since, self.ro.spec.target.digest)

    def _control_devices(self, wave: WaveStatus) -> tuple[str, ...]:
        """The wave's control group: nodes of later waves still on the revision they came from
        (the old one), in the wave's zones when the strategy spreads by a label. Worked out once
        per wave and engine (one node list), as the plan does not change."""
        key = (self.ro.name, wave.index)
        if key in self._controls:
            return self._controls[key]
        spec, st = self.ro.spec, self.ro.status
        later = [(n, w.from_revisions.get(n)) for w in st.waves[wave.index + 1:] for n in w.nodes]
        old = st.previous_revision
        # a node that ran nothing (first install) or another revision is no control
        chosen = [n for n, rev in later if rev is not None and (old is None or rev == old)]
        if chosen and spec.strategy.spread_by:
            label = spec.strategy.spread_by
            labels = self.cluster.group_nodes(spec.group, spec.profile)
            zones = {labels.get(n, {}).get(label, NO_ZONE) for n in wave.nodes}
            chosen = [n for n in chosen if labels.get(n, {}).get(label, NO_ZONE) in zones]
        self._controls[key] = tuple(chosen)
        return self._controls[key]

    def _control(self, wave: WaveStatus) -> TelemetryFigures | None:
        """The control group's figures over the wave's window, on the old model (None: no
        control group, or the policy compares with the devices before the move)."""
        if self.telemetry is None or self.ro.spec.strategy.gates.baseline != "control":
            return None
        devices = self._control_devices(wave)
        if not devices:
            return None
        since = wave.ready_at or wave.moved_at or self.clock()
        previous = self.ro.spec.previous
        return self.telemetry.window(devices, since, previous.digest if previous and previous.digest else None)

    def _bake_and_judge(self, wave: WaveStatus, paused: bool) -> None:
        st, strategy = self.ro.status, self.ro.spec.strategy
        now = self.clock()
        kube = self._kube(wave)
        tele = self._telemetry(wave)
        control = self._control(wave)
        wave.ready = kube.ready
        wave.telemetry = tele
        # recorded compactly: the figures, not the names of every silent control device
        wave.control = replace(control, silent=(), offline=(), latency_hist=None) if control else None
        verdict = judge(strategy.gates, bake_s=strategy.bake_s, auto_promote=strategy.auto_promote, kube=kube,
                        tele=tele, baseline=wave.baseline, previous=wave.verdict,
                        elapsed=Elapsed(now - (wave.moved_at or now), now - (wave.ready_at or now), wave.promoted),
                        control=control)
        if (control is None and self.telemetry is not None and strategy.gates.baseline == "control"
                and "control" not in verdict.reason):
            verdict = replace(verdict, reason=f"{verdict.reason} (no control group: no device of the group is "
                                              f"left on the old revision; judged against the thresholds alone)")
        if verdict.decision == ADVANCE and not paused:
            wave.verdict, wave.verdict_at = verdict, now
            wave.phase = r.W_PASSED
            st.current_wave += 1
            more = st.current_wave < len(st.waves)
            st.message = (f"wave {wave.index + 1}/{len(st.waves)} passed: {verdict.reason}"
                          + (f"; wave {st.current_wave + 1} next" if more else "; cleaning up"))
            if more and not self.ro.spec.abort and self._prepare_wave(st.waves[st.current_wave]):
                # One write for both steps: this wave passed, the next one is Moving.
                st.history.append(HistoryEntry(now, r.EV_PASSED, f"wave {wave.index + 1}/{len(st.waves)} "
                                                                 f"passed: {verdict.reason}", wave.index))
                self._save(r.EV_WAVE, st.message, st.current_wave)
                return
            self._save(r.EV_PASSED, st.message, wave.index)
            return
        if verdict.decision == ADVANCE:  # paused: hold the pass until resumed
            verdict = replace(verdict, decision="hold", reason=f"{verdict.reason}; paused")
        self._hold_or_roll_back(wave, verdict)

    def _hold_or_roll_back(self, wave: WaveStatus, verdict: Verdict,
                           sleep: Callable[[float], object] | None = None) -> None:
        """Roll back now, or hold: the hold is written once it has lasted a second (short holds
        such as pods starting cost no write), then every ``refresh_s`` for status readers."""
        now = self.clock()
        if self.live is not None:
            self.live.verdict = verdict
        if verdict.decision == ROLLBACK:
            wave.verdict, wave.verdict_at = verdict, now
            wave.phase = r.W_FAILED
            self._start_rollback(verdict.reason, verdict.gate or "gate", wave.index)
            return
        key = (verdict.decision, verdict.gate)
        if key != self._hold_key:
            self._hold_key, self._hold_since, self._hold_written = key, now, False
        due = (not self._hold_written and now - self._hold_since >= 1.0) or (
            now - self._last_write >= self.options.refresh_s)
        if due:
            wave.verdict, wave.verdict_at = verdict, now
            self.ro.status.message = f"wave {wave.index + 1}/{len(self.ro.status.waves)}: {verdict.reason}"
            self._hold_written = True
            self._save()
        else:
            self._changed()
        (sleep or self._sleep)(self.options.tick_s)

    # --- rollback and the end -----------------------------------------------------------------
    def _start_rollback(self, reason: str, gate: str, wave: int | None) -> None:
        st = self.ro.status
        now = self.clock()
        for w in st.waves:
            if w.phase in (r.W_MOVING, r.W_WAITING, r.W_BAKING):
                w.phase = r.W_FAILED
                w.verdict_at = w.verdict_at or now
        st.phase = r.ROLLING_BACK
        st.message = f"rolling back {len(_moves_back(st))} nodes: {reason}"
        st.set_condition("RolledBack", True, _reason_word(gate), reason, now)
        self._save(r.EV_ROLLBACK, reason, wave)

    def _roll_back(self) -> None:
        spec, st = self.ro.spec, self.ro.status
        started = st.event_time(r.EV_ROLLBACK) or 0.0
        relabelled = st.event_time(r.EV_RELABELLED)
        if relabelled is None or relabelled < started:
            moves = _moves_back(st)
            self.cluster.relabel_nodes(spec.app, moves)
            st.message = (f"{len(moves)} nodes back on their previous revision; "
                          f"removing {spec.app}-{spec.target.revision}")
            self._save(r.EV_RELABELLED, f"{len(moves)} nodes relabelled back")
            return
        retiring = [spec.target.revision] + ([st.shadow.revision] if st.shadow is not None else [])
        if not all([self._retire(rev, since=relabelled) for rev in retiring]):
            self._sleep(self.options.tick_s)
            return
        cond = st.condition("RolledBack") or {}
        st.phase = r.ROLLED_BACK
        st.message = f"rolled back: {cond.get('message', '')}"
        self._save(r.EV_FINISHED, st.message)

    def _retire(self, revision: str, *, since: float) -> bool:
        """Delete ``<app>-<revision>`` once it runs nowhere. True when done (or nothing to do)."""
        spec, ns = self.ro.spec, self.ro.namespace
        if self.cluster.nodes_on_revision(spec.app, revision):
            return True  # still wanted elsewhere (another group): keep it
        scheduled = self.cluster.daemonset_scheduled(ns, spec.app, revision)
        if scheduled is None:
            return True
        if scheduled > 0 and self.clock() - since < self.options.cleanup_timeout_s:
            return False
        self.cluster.delete_daemonset(ns, spec.app, revision)
        return True

    def _finish(self) -> None:
        spec, st = self.ro.spec, self.ro.status
        since = max((w.verdict_at or 0.0) for w in st.waves) if st.waves else self.clock()
        pending = [rev for rev in self.cluster.app_revisions(self.ro.namespace, spec.app)
                   if rev != spec.target.revision and not self._retire(rev, since=since)]
        if pending:
            self._sleep(self.options.tick_s)
            return
        now = self.clock()
        moved = sum(len(w.nodes) for w in st.waves)
        skipped = sorted({n for w in st.waves if w.verdict for n in w.verdict.skipped})
        st.phase = r.SUCCEEDED
        st.message = f"{moved} nodes on revision {spec.target.revision}" + (
            f"; {len(skipped)} devices were silent/offline and skipped: {', '.join(skipped[:10])}"
            + ("…" if len(skipped) > 10 else "") if skipped else "")
        st.set_condition("Complete", True, "AllWavesPassed", st.message, now)
        self._save(r.EV_FINISHED, st.message)


_WAIT = object()


def _reason_word(gate: str) -> str:
    """A condition reason is CamelCase: ``error-rate`` -> ``ErrorRate``."""
    return "".join(part.capitalize() for part in gate.replace("_", "-").split("-")) or "Gate"


# --- operator requests (CLI: pause, resume, promote, abort) -----------------------------------

def request_pause(cluster: ClusterPort, namespace: str, name: str, paused: bool) -> EdgeRollout:
    ro = cluster.get_rollout(namespace, name)
    _require_active(ro, "pause" if paused else "resume")
    return cluster.patch_rollout(namespace, name, spec={"paused": paused})


def request_promote(cluster: ClusterPort, namespace: str, name: str) -> EdgeRollout:
    ro = cluster.get_rollout(namespace, name)
    _require_active(ro, "promote")
    if ro.status.current_wave >= len(ro.status.waves):
        raise RolloutError(f"rollout {name} has no wave left to promote")
    return cluster.patch_rollout(namespace, name, annotations={r.ANN_PROMOTE: str(ro.status.current_wave)})


def request_abort(cluster: ClusterPort, namespace: str, name: str, reason: str = "by an operator") -> EdgeRollout:
    ro = cluster.get_rollout(namespace, name)
    if ro.status.phase == r.ROLLING_BACK:
        return ro
    _require_active(ro, "abort")
    return cluster.patch_rollout(namespace, name, annotations={r.ANN_ABORT: reason})


def _require_active(ro: EdgeRollout, action: str) -> None:
    if not ro.active:
        raise RolloutError(f"cannot {action} rollout {ro.name}: it is {ro.status.phase}")


def last_succeeded(rollouts: Sequence[EdgeRollout], app: str, group: str) -> EdgeRollout | None:
    done = [ro for ro in rollouts
            if ro.spec.app == app and ro.spec.group == group and ro.status.phase == r.SUCCEEDED]
    return max(done, key=lambda ro: (ro.status.finished_at or 0.0, ro.name), default=None)
