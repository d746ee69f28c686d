"""What the rollout commands do, one function each, on a ``Session`` (cluster + images + telemetry).

The CLI parses flags, calls one of these, renders the answer. Every check a push can fail runs in
``plan_push`` before anything is written, so a bad input changes nothing in the cluster.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

from edgekit.errors import EngineConflictError, RolloutError, RolloutNotFoundError
from edgekit.rollout import resource as r
from edgekit.rollout.engine import (
    Engine,
    EngineOptions,
    Live,
    last_succeeded,
    request_abort,
    request_pause,
    request_promote,
)
from edgekit.rollout.gating import TelemetryFigures, figures_from_window
from edgekit.rollout.ports import ClusterPort, ImagePort, TelemetryPort
from edgekit.rollout.resource import EdgeRollout
from edgekit.rollout.settings import RolloutSettings
from edgekit.rollout.shadowing import ShadowFigures, ShadowPolicy, pool_reports
from edgekit.rollout.strategy import Strategy

if TYPE_CHECKING:
    from edgekit.fleet.settings import FleetSettings
    from edgekit.fleet.watching import FleetWatcher

log = logging.getLogger(__name__)


class FleetTelemetry:
    """``TelemetryPort`` on a running ``edgekit.fleet.FleetWatcher``."""

    def __init__(self, watcher: FleetWatcher) -> None:
        self.watcher = watcher
        self.started = time.time()

    def observing_since(self) -> float:
        return float(self.watcher.subscribed_at or self.started)

    def window(self, devices: Sequence[str], since: float, digest: str | None) -> TelemetryFigures:
        """The gates' figures: p50/p95/p99 of every latency of the window and the merged histogram
        itself (``latency_hist``), when every counted report carried one; otherwise the per-device
        approximation and no histogram (``WindowStats.latency_exact``)."""
        view = self.watcher.view()
        found = view.completeness()
        figures = figures_from_window(view.window(devices, since, digest))
        if found is not None and not found.complete:   # the judge holds, then rolls back at the timeout
            figures = replace(figures, incomplete=found.reason or "the broker dropped retained statuses")
        return figures

    def shadow(self, devices: Sequence[str], digest: str, metric: str) -> ShadowFigures:
        return pool_reports(devices, self.watcher.view().shadow_reports(devices), digest, metric)

    def close(self) -> None:
        self.watcher.stop()


def open_fleet_telemetry(fleet_settings: FleetSettings) -> FleetTelemetry:
    from edgekit.fleet.watching import FleetWatcher

    watcher = FleetWatcher(fleet_settings).start()
    watcher.wait_settled(timeout=10)
    return FleetTelemetry(watcher)


@dataclass
class Session:
    cluster: ClusterPort
    settings: RolloutSettings
    images: ImagePort | None = None
    telemetry_factory: Callable[[], TelemetryPort] | None = None
    telemetry: TelemetryPort | None = None
    stop: threading.Event = field(default_factory=threading.Event)

    @property
    def namespace(self) -> str:
        return self.settings.namespace

    def options(self) -> EngineOptions:
        return EngineOptions(lease_s=self.settings.lease_seconds, tick_s=self.settings.tick_seconds)

    def open_telemetry(self) -> TelemetryPort | None:
        """Connect to the fleet's telemetry now (a push does this before it creates anything, so an
        unreachable broker leaves the cluster unchanged)."""
        if self.telemetry is None and self.telemetry_factory is not None:
            self.telemetry = self.telemetry_factory()
        return self.telemetry

    def engine(self) -> Engine:
        self.open_telemetry()
        return Engine(self.cluster, self.telemetry, options=self.options(), stop=self.stop)

    def close(self) -> None:
        for closing in (self.telemetry, self.cluster):
            with contextlib.suppress(Exception):
                closing.close()  # type: ignore[union-attr]


@dataclass
class PushPlan:
    rollout: EdgeRollout
    image_bytes: int | None
    signed_by: str | None
    gates: list[str]

    def to_json(self) -> dict[str, Any]:
        st, spec = self.rollout.status, self.rollout.spec
        return {
            "name": self.rollout.name, "namespace": self.rollout.namespace, "app": spec.app, "group": spec.group,
            "image": spec.target.image, "revision": spec.target.revision,
            "previous": spec.previous.image if spec.previous else None,
            "signedBy": self.signed_by, "imageBytes": self.image_bytes,
            "bytesToShip": None if self.image_bytes is None else self.image_bytes * len(st.moved_nodes or [
                n for w in st.waves for n in w.nodes]),
            "gates": self.gates, "strategy": spec.strategy.to_json(),
            "waves": [{"index": w.index, "target": w.target, "nodes": w.nodes, "zones": w.zones,
                       "bytes": None if self.image_bytes is None else self.image_bytes * len(w.nodes)}
                      for w in st.waves],
        }


def plan_push(session: Session, *, image: str, group: str, app: str, strategy: Strategy,
              undo_of: str | None = None, shadow: ShadowPolicy | None = None) -> PushPlan:
    """Pin the image, check its signature, resolve the group, refuse a second rollout, plan the
    waves. Writes nothing."""
    from edgekit.kube.names import check_app_name
    from edgekit.kube.platforms import common_arches

    check_app_name(app)
    assert session.images is not None
    pinned = session.images.pin(image)
    signed_by = session.images.verify_signature(pinned)
    engine = Engine(session.cluster, None, options=session.options())
    rollout = engine.prepare(namespace=session.namespace, app=app, group=group, image=pinned, strategy=strategy,
                             profile=session.settings.target, undo_of=undo_of, shadow=shadow)
    # The pods may run only where both images have a build: refused here, before anything is written.
    platforms = session.images.platforms(pinned)
    common_arches(session.settings.agent_platforms, platforms)
    rollout.spec.model_platforms = platforms or None
    gates = strategy.gates.active_gates() + ([shadow.describe()] if shadow is not None else [])
    return PushPlan(rollout, session.images.image_size(pinned), signed_by, gates)


def start(session: Session, plan: PushPlan) -> EdgeRollout:
    """Create the planned rollout. Signed by default: a public key (whose ConfigMap the devices
    verify with is created first when missing) or ``allow_unsigned``."""
    settings = session.settings
    settings.require_trust("a rollout")
    if settings.public_key is not None:
        from edgekit.kube.rendering import KEY_CONFIGMAP
        from edgekit.settings import read_public_key_pem

        session.cluster.ship_key(session.namespace, settings.public_key_configmap or KEY_CONFIGMAP,
                                 read_public_key_pem(settings.public_key))
    return session.cluster.create_rollout(plan.rollout)


def run(session: Session, name: str, on_change: Callable[[Live], None] | None = None) -> EdgeRollout:
    """Drive a rollout to its end in this process (EngineConflictError when another engine has it)."""
    session.settings.require_trust("the rollout engine")
    engine = session.engine()
    engine.on_change = on_change
    return engine.run(session.namespace, name)


def find(session: Session, name: str | None = None, *, app: str | None = None,
         group: str | None = None) -> EdgeRollout:
    """A rollout by name, else the newest of an app (on a group)."""
    if name:
        return session.cluster.get_rollout(session.namespace, name)
    if not app:
        raise RolloutError("name a rollout, or give --app (and --group)")
    found = history(session, app=app, group=group)
    if not found:
        where = f" on group {group}" if group else ""
        raise RolloutNotFoundError(f"no rollout of {app}{where} in namespace {session.namespace}")
    return found[-1]


def history(session: Session, *, app: str | None = None, group: str | None = None) -> list[EdgeRollout]:
    """Rollouts oldest first."""
    found = session.cluster.list_rollouts(session.namespace, app=app, group=group)
    return sorted(found, key=lambda ro: (ro.created_at or 0.0, _seq(ro.name)))


def _seq(name: str) -> int:
    tail = name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else 0


def pause(session: Session, name: str) -> EdgeRollout:
    return request_pause(session.cluster, session.namespace, name, True)


def unpause(session: Session, name: str) -> EdgeRollout:
    ro = session.cluster.get_rollout(session.namespace, name)
    if ro.spec.paused:
        return request_pause(session.cluster, session.namespace, name, False)
    return ro


def promote(session: Session, name: str) -> EdgeRollout:
    return request_promote(session.cluster, session.namespace, name)


def abort(session: Session, name: str, reason: str) -> EdgeRollout:
    return request_abort(session.cluster, session.namespace, name, reason)


def plan_undo(session: Session, *, app: str, group: str, strategy: Strategy | None = None) -> PushPlan:
    """A new rollout of the group back to the revision before its last successful rollout."""
    last = last_succeeded(history(session, app=app, group=group), app, group)
    if last is None:
        raise RolloutError(f"no successful rollout of {app} on group {group} to undo")
    if last.spec.previous is None or not last.spec.previous.digest:
        raise RolloutError(f"rollout {last.name} was a first install: there is no earlier revision to go back to")
    return plan_push(session, image=last.spec.previous.image, group=group, app=app,
                     strategy=strategy or last.spec.strategy, undo_of=last.name)


def control(session: Session, *, on_event: Callable[[str], None] | None = None, parallel: int = 8,
            rescan_s: float = 5.0) -> None:
    """``edgekit controller``: run every active EdgeRollout of the namespace that no engine holds,
    until ``session.stop`` is set. One engine thread per rollout, at most ``parallel`` at once."""
    session.settings.require_trust("the rollout engine")
    say = on_event or (lambda message: log.info("%s", message))
    running: dict[str, threading.Thread] = {}

    def drive(name: str) -> None:
        try:
            ro = run(session, name)
            say(f"{name}: {ro.status.phase}: {ro.status.message}")
        except EngineConflictError:
            pass  # another engine (a foreground push) has it
        except Exception as exc:  # keep the controller alive; the rollout's status says where it is
            say(f"{name}: engine stopped: {exc}")

    while not session.stop.is_set():
        try:
            rollouts = session.cluster.list_rollouts(session.namespace)
        except Exception as exc:
            say(f"cannot list rollouts: {exc}")
            session.stop.wait(rescan_s)
            continue
        for name in [n for n, t in running.items() if not t.is_alive()]:
            running.pop(name)
        for ro in rollouts:
            if not ro.active or ro.name in running or len(running) >= parallel:
                continue
            lease = session.cluster.get_lease(session.namespace, f"edgerollout-{ro.name}")
            if lease is not None and lease.holder and not lease.expired(time.time()):
                continue
            say(f"{ro.name}: taking over at phase {ro.status.phase}")
            thread = threading.Thread(target=drive, args=(ro.name,), name=f"engine {ro.name}", daemon=True)
            running[ro.name] = thread
            thread.start()
        session.stop.wait(rescan_s)
    for thread in running.values():
        thread.join(timeout=10)


def terminal_error(ro: EdgeRollout) -> None:
    """Raise RolledBackError for a rollout that ended rolled back (scripts see a failure)."""
    from edgekit.errors import RolledBackError

    if ro.status.phase == r.ROLLED_BACK:
        cond = ro.status.condition("RolledBack") or {}
        raise RolledBackError(f"rollout {ro.name} rolled back: {cond.get('message') or ro.status.message}")
