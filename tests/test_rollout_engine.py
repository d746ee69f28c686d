"""The engine on the in-memory cluster: every path of the state machine, fast. The same engine
runs against the real control plane in tests/test_rollout_e2e.py."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import replace

import pytest

from edgekit.errors import EngineConflictError, KubeUnavailableError, RolloutError, RolloutInProgressError
from edgekit.rollout import resource as r
from edgekit.rollout.engine import Engine, EngineOptions, request_abort, request_pause, request_promote
from edgekit.rollout.memory import MemoryCluster, MemoryTelemetry, SimulatedCrash
from edgekit.rollout.resource import ImageRef, revision_for
from edgekit.rollout.strategy import build_strategy, with_gates

NS, APP, GROUP = "edgekit", "detector", "cameras"
OLD = ImageRef("reg/detector@sha256:" + "0" * 64, "sha256:" + "0" * 64, revision_for("sha256:" + "0" * 64))
NEW = ImageRef("reg/detector@sha256:" + "1" * 64, "sha256:" + "1" * 64, revision_for("sha256:" + "1" * 64))
FAST = EngineOptions(lease_s=5.0, tick_s=0.01, refresh_s=0.05, cleanup_timeout_s=0.2)


class Clock:
    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.time() + self.offset


def fleet(n: int = 20, *, deployed: bool = True) -> tuple[MemoryCluster, MemoryTelemetry]:
    members = {f"edge-{i}": {"topology.kubernetes.io/zone": f"z{i % 2}"} for i in range(n)}
    cluster = MemoryCluster({GROUP: members, "empty": {}})
    if deployed:
        cluster.daemonsets[(NS, APP, OLD.revision)] = OLD
        cluster.relabel_nodes(APP, {m: OLD.revision for m in members})
    telemetry = MemoryTelemetry(cluster, APP, NS, {OLD.digest: {"error_rate": 0.0, "p95_ms": 10.0},
                                                   NEW.digest: {"error_rate": 0.0, "p95_ms": 11.0}})
    cluster.calls.clear()
    return cluster, telemetry


def strategy(**kw: object) -> object:
    args: dict[str, object] = {"waves": "1,25%,100%", "bake": "0.05s", "wave_timeout": "2s", "baseline": "0s"}
    args.update(kw)
    return build_strategy(**args)  # type: ignore[arg-type]


def push(cluster: MemoryCluster, telemetry: MemoryTelemetry, *, clock: Callable[[], float] = time.time,
         image: ImageRef = NEW, **kw: object) -> tuple[Engine, str]:
    engine = Engine(cluster, telemetry, options=FAST, clock=clock)
    ro = engine.prepare(namespace=NS, app=APP, group=GROUP, image=image, strategy=strategy(**kw))  # type: ignore[arg-type]
    engine.create(ro)
    return engine, ro.name


def revisions(cluster: MemoryCluster) -> set[str | None]:
    return {cluster.revision_of(APP, n) for n in cluster.groups[GROUP]}


def in_thread(fn: Callable[[], object]) -> tuple[threading.Thread, list[object]]:
    out: list[object] = []

    def target() -> None:
        try:
            out.append(fn())
        except BaseException as exc:  # handed to the test
            out.append(exc)
    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def wait_for(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.01)


def test_healthy_rollout_completes_and_retires_the_old_daemonset() -> None:
    cluster, telemetry = fleet(20)
    engine, name = push(cluster, telemetry)
    ro = engine.run(NS, name)
    assert ro.status.phase == "Succeeded"
    assert revisions(cluster) == {NEW.revision}
    assert (NS, APP, OLD.revision) not in cluster.daemonsets
    assert [len(w.nodes) for w in ro.status.waves] == [1, 4, 15]
    assert all(w.verdict and w.verdict.decision == "advance" for w in ro.status.waves)
    assert ro.status.condition("Complete")["status"] == "True"  # type: ignore[index]
    assert cluster.calls["patch-node"] == 20         # one label patch per node moved
    assert cluster.calls["watch-pods"] == 1          # one watch for all waves
    stored = cluster.get_rollout(NS, name)
    assert stored.status.phase == "Succeeded"
    events = [h.event for h in stored.status.history]
    assert events.count(r.EV_PASSED) == 3 and events[-1] == r.EV_FINISHED
    lease = cluster.leases[(NS, f"edgerollout-{name}")]
    assert lease.holder is None                       # released on the way out


def test_error_rate_stops_the_canary_and_rolls_back() -> None:
    cluster, telemetry = fleet(20)
    telemetry.behaviour[NEW.digest] = {"error_rate": 0.2, "p95_ms": 11.0}
    engine, name = push(cluster, telemetry, bake="1s")
    ro = engine.run(NS, name)
    assert ro.status.phase == "RolledBack"
    assert revisions(cluster) == {OLD.revision}
    assert (NS, APP, NEW.revision) not in cluster.daemonsets
    assert (NS, APP, OLD.revision) in cluster.daemonsets
    canary = ro.status.waves[0]
    assert canary.phase == "Failed" and canary.verdict is not None
    assert canary.verdict.gate == "error-rate"
    assert "error rate 20% (max 1%" in canary.verdict.reason
    fig = canary.verdict.figure("error-rate")
    assert fig is not None and fig.value == pytest.approx(0.2)
    assert [w.phase for w in ro.status.waves[1:]] == ["Pending", "Pending"]
    cond = ro.status.condition("RolledBack")
    assert cond is not None and cond["reason"] == "ErrorRate"
    assert cluster.calls["patch-node"] == 2           # moved one, moved it back


def test_latency_regression_is_caught() -> None:
    cluster, telemetry = fleet(10)
    telemetry.behaviour[NEW.digest] = {"error_rate": 0.0, "p95_ms": 30.0}
    engine, name = push(cluster, telemetry, max_p95_regression="20%")
    ro = engine.run(NS, name)
    assert ro.status.phase == "RolledBack"
    verdict = ro.status.waves[0].verdict
    assert verdict is not None and verdict.gate == "p95-regression"
    assert ro.status.waves[0].baseline is not None and ro.status.waves[0].baseline.p95_ms == 10.0
    assert "+200%" in verdict.reason


def test_first_install_rolls_back_to_no_label() -> None:
    cluster, telemetry = fleet(5, deployed=False)
    telemetry.behaviour[NEW.digest] = {"error_rate": 0.5}
    engine, name = push(cluster, telemetry)
    ro = engine.run(NS, name)
    assert ro.status.phase == "RolledBack"
    assert revisions(cluster) == {None}
    assert not cluster.daemonsets


def test_a_temporary_failure_waits_the_servers_retry_after_instead_of_the_own_backoff() -> None:
    cluster, telemetry = fleet(5)
    engine = Engine(cluster, telemetry, options=replace(FAST, retry_s=60.0))  # own backoff: longer than the test
    ro = engine.prepare(namespace=NS, app=APP, group=GROUP, image=NEW, strategy=strategy())  # type: ignore[arg-type]
    engine.create(ro)
    relabel, relabelled_at = cluster.relabel_nodes, []

    def timed_relabel(app: str, moves: dict[str, str | None]) -> None:
        relabelled_at.append(time.monotonic())
        relabel(app, moves)
    cluster.relabel_nodes = timed_relabel  # type: ignore[method-assign]
    cluster.crash_when(lambda kind, _: kind == "patch-node",
                       KubeUnavailableError("the Kubernetes API answered 429", retry_after=0.3))
    thread, out = in_thread(lambda: engine.run(NS, ro.name))
    thread.join(10)
    assert not thread.is_alive(), "the engine waited its own 60 s backoff"
    assert isinstance(out[0], r.EdgeRollout) and out[0].status.phase == "Succeeded"
    assert relabelled_at[1] - relabelled_at[0] >= 0.3  # the retry came no sooner than asked


def test_crash_mid_wave_then_resume_finishes() -> None:
    cluster, telemetry = fleet(20)
    clock = Clock()
    engine, name = push(cluster, telemetry, clock=clock)
    moved = []

    def crash(kind: str, node: object) -> bool:
        if kind == "patch-node":
            moved.append(node)
        return kind == "patch-node" and len(moved) == 3   # in the middle of wave 2's relabel
    cluster.crash_when(crash)
    with pytest.raises(SimulatedCrash):
        engine.run(NS, name)
    ro = cluster.get_rollout(NS, name)
    assert ro.status.phase == "Progressing" and ro.status.waves[1].phase == "Moving"
    assert len(revisions(cluster)) == 2               # half moved

    # the dead engine's lease still holds: a successor is refused until it expires
    with pytest.raises(EngineConflictError) as info:
        Engine(cluster, telemetry, options=FAST, clock=clock).run(NS, name)
    assert info.value.exit_code == 65
    clock.offset += FAST.lease_s + 1
    ro = Engine(cluster, telemetry, options=FAST, clock=clock).run(NS, name)
    assert ro.status.phase == "Succeeded"
    assert revisions(cluster) == {NEW.revision}
    assert [w.phase for w in ro.status.waves] == ["Passed"] * 3
    assert any(h.event == r.EV_ENGINE and "wave 2/3 (Moving)" in h.message for h in ro.status.history)


def test_crash_during_rollback_then_resume_relabels_everyone_back() -> None:
    cluster, telemetry = fleet(20)
    clock = Clock()
    telemetry.behaviour[NEW.digest] = {"error_rate": 0.0, "p95_ms": 11.0}
    engine, name = push(cluster, telemetry, clock=clock)
    # fail at wave 3 (after 5 nodes moved), then crash half-way through relabelling back
    state = {"back": 0}

    def crash(kind: str, detail: object) -> bool:
        if kind == "patch-node":
            ro = cluster.peek(NS, name)
            if ro and ro.status.current_wave == 2 and ro.status.waves[2].phase == "Moving":
                telemetry.behaviour[NEW.digest] = {"error_rate": 0.3}
            if ro and ro.status.phase == "RollingBack":
                state["back"] += 1
                return state["back"] == 7
        return False
    cluster.crash_when(crash)
    with pytest.raises(SimulatedCrash):
        engine.run(NS, name)
    assert cluster.get_rollout(NS, name).status.phase == "RollingBack"
    clock.offset += FAST.lease_s + 1
    ro = Engine(cluster, telemetry, options=FAST, clock=clock).run(NS, name)
    assert ro.status.phase == "RolledBack"
    assert revisions(cluster) == {OLD.revision}
    assert (NS, APP, NEW.revision) not in cluster.daemonsets


def test_second_engine_is_refused_while_the_first_runs() -> None:
    cluster, telemetry = fleet(10)
    engine, name = push(cluster, telemetry, auto_promote=False)
    thread, out = in_thread(lambda: engine.run(NS, name))
    wait_for(lambda: (cluster.peek(NS, name) or engine.ro).status.phase == "Progressing")
    with pytest.raises(EngineConflictError) as info:
        Engine(cluster, telemetry, options=FAST).run(NS, name)
    assert "is being run by engine" in info.value.one_line()
    request_abort(cluster, NS, name)
    thread.join(10)
    assert out and out[0].status.phase == "RolledBack"  # type: ignore[union-attr]


def test_second_push_on_the_same_app_and_group_is_refused() -> None:
    cluster, telemetry = fleet(10)
    push(cluster, telemetry)
    calls = dict(cluster.calls)
    with pytest.raises(RolloutInProgressError) as info:
        push(cluster, telemetry, image=OLD)
    assert info.value.exit_code == 65
    assert "detector-cameras-1 of detector on group cameras is Pending" in info.value.one_line()
    assert cluster.calls["create-rollout"] == calls["create-rollout"]   # nothing created


def test_manual_promotion_and_pause_resume() -> None:
    cluster, telemetry = fleet(10)
    engine, name = push(cluster, telemetry, auto_promote=False)
    thread, out = in_thread(lambda: engine.run(NS, name))

    def wave_gate(i: int) -> str | None:
        ro = cluster.peek(NS, name)
        w = ro.status.waves[i] if ro else None
        return w.verdict.gate if w and w.verdict else None
    wait_for(lambda: wave_gate(0) == "promotion")
    request_pause(cluster, NS, name, True)
    wait_for(lambda: cluster.get_rollout(NS, name).status.phase == "Paused")
    request_promote(cluster, NS, name)        # promoted, but paused: the wave does not pass yet
    wait_for(lambda: cluster.get_rollout(NS, name).status.waves[0].promoted)
    time.sleep(0.2)
    ro = cluster.get_rollout(NS, name)
    assert ro.status.current_wave == 0 and ro.status.waves[0].phase == "Baking"
    assert ro.status.waves[0].verdict.reason.endswith("paused")  # type: ignore[union-attr]
    request_pause(cluster, NS, name, False)
    wait_for(lambda: cluster.get_rollout(NS, name).status.waves[0].phase == "Passed")
    for i in (1, 2):
        wait_for(lambda i=i: wave_gate(i) == "promotion")   # type: ignore[misc]
        request_promote(cluster, NS, name)
    thread.join(10)
    assert out and out[0].status.phase == "Succeeded"  # type: ignore[union-attr]
    events = [h.event for h in out[0].status.history]  # type: ignore[union-attr]
    assert events.count(r.EV_PROMOTED) == 3 and r.EV_PAUSED in events and r.EV_RESUMED in events
    with pytest.raises(RolloutError):
        request_promote(cluster, NS, name)


def test_abort_rolls_back_every_moved_node() -> None:
    cluster, telemetry = fleet(20)
    engine, name = push(cluster, telemetry, auto_promote=False)
    thread, out = in_thread(lambda: engine.run(NS, name))
    wait_for(lambda: cluster.get_rollout(NS, name).status.waves[0].phase == "Baking")
    request_promote(cluster, NS, name)
    wait_for(lambda: cluster.get_rollout(NS, name).status.waves[1].phase == "Baking")
    request_abort(cluster, NS, name, "operator changed their mind")
    thread.join(10)
    ro = out[0]
    assert ro.status.phase == "RolledBack"  # type: ignore[union-attr]
    assert "aborted: operator changed their mind" in ro.status.message  # type: ignore[union-attr]
    assert revisions(cluster) == {OLD.revision}


def test_offline_devices_skip_completes_and_reports_them() -> None:
    cluster, telemetry = fleet(20)
    telemetry.offline = {"edge-3", "edge-13"}
    engine, name = push(cluster, telemetry, offline_policy="skip")
    ro = engine.run(NS, name)
    assert ro.status.phase == "Succeeded"
    assert "2 devices were silent/offline and skipped: edge-13, edge-3" in ro.status.message


def test_offline_devices_fail_holds_then_rolls_back_at_the_timeout() -> None:
    cluster, telemetry = fleet(20)
    telemetry.offline = {"edge-3", "edge-13", "edge-7"}
    engine, name = push(cluster, telemetry, offline_policy="fail", wave_timeout="0.5s", waves="50%,100%")
    ro = engine.run(NS, name)
    assert ro.status.phase == "RolledBack"
    verdict = ro.status.waves[0].verdict
    assert verdict is not None and verdict.gate == "reporting" and "wave timeout" in verdict.reason
    assert any(h.event == r.EV_ROLLBACK for h in ro.status.history)
    assert revisions(cluster) == {OLD.revision}


def test_pods_that_never_become_ready_roll_back_at_the_timeout() -> None:
    cluster, telemetry = fleet(10)
    cluster.never_ready = {"edge-0"}
    engine, name = push(cluster, telemetry, wave_timeout="0.3s")
    ro = engine.run(NS, name)
    assert ro.status.phase == "RolledBack"
    assert ro.status.waves[0].verdict.gate == "pods-ready"  # type: ignore[union-attr]


def test_old_revision_still_used_elsewhere_is_kept() -> None:
    cluster, telemetry = fleet(6)
    cluster.add_group("gateways", {"gw-0": {}})
    cluster.relabel_nodes(APP, {"gw-0": OLD.revision})
    engine, name = push(cluster, telemetry)
    assert engine.run(NS, name).status.phase == "Succeeded"
    assert (NS, APP, OLD.revision) in cluster.daemonsets     # gw-0 still runs it


def test_nothing_to_move() -> None:
    cluster, telemetry = fleet(4)
    with pytest.raises(RolloutError) as info:
        push(cluster, telemetry, image=OLD)
    assert "already runs detector revision" in info.value.one_line()


# --- the control group (GatePolicy.baseline) ------------------------------------------------------

def run_with(cluster: MemoryCluster, telemetry: MemoryTelemetry, **gates: object) -> r.EdgeRollout:
    """Push NEW with the engine test strategy and ``gates`` changed; run it to its end."""
    kw = {k: gates.pop(k) for k in ("waves", "spread_by") if k in gates}
    strat = with_gates(strategy(**kw), **gates)  # type: ignore[arg-type]
    engine = Engine(cluster, telemetry, options=FAST)
    ro = engine.create(engine.prepare(namespace=NS, app=APP, group=GROUP, image=NEW, strategy=strat))
    return engine.run(NS, ro.name)


def control_windows(telemetry: MemoryTelemetry) -> list[tuple[tuple[str, ...], float, str | None]]:
    return [asked for asked in telemetry.asked if asked[2] == OLD.digest]


def test_each_wave_is_compared_with_the_devices_still_on_the_old_revision_over_the_same_window() -> None:
    cluster, telemetry = fleet(20)
    cluster.relabel_nodes(APP, {"edge-19": None})          # runs nothing: no control device
    for node in ("edge-18", "edge-17"):                    # the control group answers differently
        telemetry.device_behaviour[node] = {"error_rate": 0.03, "p95_ms": 40.0}
    ro = run_with(cluster, telemetry)
    assert ro.status.phase == "Succeeded"
    canary, second, last = ro.status.waves
    later = [n for w in (second, last) for n in w.nodes if n != "edge-19"]
    asked = control_windows(telemetry)
    assert last.nodes[-1] == "edge-19"
    expected = {tuple(later): canary, tuple(last.nodes[:-1]): second}
    assert {devices for devices, _, _ in asked} == set(expected)
    for devices, since, _ in asked:                        # over the wave's own window
        assert since == pytest.approx(expected[devices].ready_at, abs=0.01)
    # recorded in the stored status, compactly
    stored = cluster.get_rollout(NS, ro.name).status.waves
    assert stored[0].control is not None and stored[0].control.expected == 18
    assert stored[0].control.on_digest == 18 and stored[0].control.errors == 6      # 2 devices x 3/100
    assert stored[0].control.p95_ms == 40.0 and stored[0].telemetry.p95_ms == 11.0  # type: ignore[union-attr]
    assert stored[1].control is not None and stored[1].control.expected == len(last.nodes) - 1
    raw = cluster.rollouts[(NS, ro.name)]["status"]["waves"][0]["control"]
    assert "silent" not in raw or raw["silent"] == []
    # the last wave has none left: judged against the thresholds, and says so
    assert stored[2].control is None
    assert last.verdict is not None and "no control group" in last.verdict.reason


def test_with_spread_by_only_the_wave_s_zones_are_compared() -> None:
    cluster, telemetry = fleet(20)                          # zones z0 (even) and z1 (odd)
    ro = run_with(cluster, telemetry, spread_by="topology.kubernetes.io/zone")
    canary, second, _ = ro.status.waves
    zone = {n: f"z{int(n.split('-')[1]) % 2}" for n in cluster.groups[GROUP]}
    asked = control_windows(telemetry)
    first = next(devices for devices, _, _ in asked if canary.nodes[0] not in devices and len(devices) < 19)
    (canary_zone,) = {zone[n] for n in canary.nodes}
    assert first and {zone[n] for n in first} == {canary_zone}
    assert set(first) == {n for w in ro.status.waves[1:] for n in w.nodes if zone[n] == canary_zone}
    assert {zone[n] for n in second.nodes} == {"z0", "z1"}
    assert second.control is not None and second.control.expected == len(ro.status.waves[2].nodes)


def test_a_group_moved_at_once_has_no_control_group() -> None:
    cluster, telemetry = fleet(6)
    ro = run_with(cluster, telemetry, waves="100%")
    (wave,) = ro.status.waves
    assert ro.status.phase == "Succeeded"
    assert control_windows(telemetry) == [] and wave.control is None
    assert wave.verdict is not None and "no control group" in wave.verdict.reason


def test_baseline_before_compares_with_the_same_devices_before_the_move_as_it_did() -> None:
    cluster, telemetry = fleet(20)
    telemetry.behaviour[NEW.digest] = {"error_rate": 0.0, "p95_ms": 30.0}
    ro = run_with(cluster, telemetry, baseline="before", max_p95_regression=0.2)
    assert ro.status.phase == "RolledBack"
    canary = ro.status.waves[0]
    assert control_windows(telemetry) == [] and canary.control is None
    assert canary.baseline is not None and canary.baseline.p95_ms == 10.0
    assert canary.verdict is not None and canary.verdict.gate == "p95-regression"
    assert "control" not in canary.verdict.reason
