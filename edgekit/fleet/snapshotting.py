"""One-shot and periodic pictures of the fleet (``edgekit fleet status`` and ``fleet watch``)."""

from __future__ import annotations

import time
from collections.abc import Generator
from dataclasses import dataclass
from typing import Final

from edgekit.errors import NoTelemetryError
from edgekit.fleet.settings import FleetSettings
from edgekit.fleet.views import FleetSnapshot
from edgekit.fleet.watching import FleetWatcher

__all__ = ["Rates", "iter_snapshots", "rates", "take_snapshot"]

_RECHECK_WAIT: Final = 30.0   # up to two of the broker's $SYS updates (sys_interval: 10 s by default)


def take_snapshot(settings: FleetSettings, *, wait: float | None = None,
                  with_devices: bool = False) -> FleetSnapshot:
    """Connect, take in every retained status, then wait for one health report from each device
    that is not offline and for the broker's word on dropped messages (at most ``wait`` seconds,
    by default one ``interval``), and return the picture; ``snapshot.completeness`` says whether
    it holds every device. Raises ``NoTelemetryError`` when no device (of ``settings.group``) is
    known."""
    budget = settings.interval if wait is None else wait
    with FleetWatcher(settings).start() as watcher:
        watcher.wait_settled(timeout=max(10.0, budget))
        since = watcher.subscribed_at or time.time()
        view = watcher.view()
        deadline = time.monotonic() + budget
        while time.monotonic() < deadline:
            if watcher.wait_drained(timeout=1.0) and view.unreported(since, settings.group) == 0:
                break
            time.sleep(min(0.1, max(0.0, deadline - time.monotonic())))
        watcher.wait_verified(timeout=max(0.0, deadline - time.monotonic()))
        if watcher.rechecking:   # the broker's drop counter rose: give the second look its time
            watcher.wait_verified(timeout=_RECHECK_WAIT)
        snapshot = watcher.snapshot(group=settings.group, with_devices=with_devices)
    if not snapshot.groups and snapshot.complete:
        where = f"group {settings.group!r}" if settings.group else "any group"
        raise NoTelemetryError(f"no device of {where} is known under {settings.topic_root} on "
                               f"{', '.join(settings.brokers)}",
                               hint="check --group and --topic-root, and that agents report to this broker")
    return snapshot


@dataclass(frozen=True)
class Rates:
    """Per-second rates between two snapshots."""

    seconds: float
    received: float            # messages the watcher received
    applied: float             # messages applied (decoded and counted)
    rejected: float
    reports: dict[str, float]  # health reports per group
    inferences: dict[str, float]
    errors: dict[str, float]


def rates(prev: FleetSnapshot, cur: FleetSnapshot) -> Rates:
    dt = max(cur.taken_at - prev.taken_at, 1e-6)
    before = {g.group: g for g in prev.groups}

    def per_group(attr: str) -> dict[str, float]:
        out = {}
        for g in cur.groups:
            old = before.get(g.group)
            out[g.group] = max(0.0, (getattr(g, attr) - (getattr(old, attr) if old else 0)) / dt)
        return out

    return Rates(
        seconds=dt,
        received=max(0, cur.counters.received - prev.counters.received) / dt,
        applied=max(0, cur.counters.accepted - prev.counters.accepted) / dt,
        rejected=max(0, cur.counters.rejected_total - prev.counters.rejected_total) / dt,
        reports=per_group("reports_total"), inferences=per_group("inferences_total"),
        errors=per_group("errors_total"),
    )


def iter_snapshots(settings: FleetSettings, *, refresh: float = 1.0, with_devices: bool = False,
                   ) -> Generator[tuple[FleetSnapshot, Rates | None], None, None]:
    """Watch the fleet and yield a snapshot (and rates since the previous one) every ``refresh`` s."""
    with FleetWatcher(settings).start() as watcher:
        watcher.wait_settled(timeout=10.0)
        prev: FleetSnapshot | None = None
        while True:
            snap = watcher.snapshot(group=settings.group, with_devices=with_devices)
            yield snap, rates(prev, snap) if prev is not None else None
            prev = snap
            time.sleep(refresh)
