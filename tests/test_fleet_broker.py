"""The shipped broker settings (fleet-manifests/base/mosquitto/telemetry.conf) do not lose telemetry:
a subscriber with a persistent session that is away during a burst (and a broker restart) gets
every report; with stock queue limits it does not."""

from __future__ import annotations

import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edgekit.fleet.watching import FleetWatcher
from edgekit.rehearsal.mosquitto import MosquittoBroker
from tests.fixtures.fleet import SimFleet, fleet_settings

pytestmark = pytest.mark.mqtt

CONF = Path(__file__).resolve().parents[1] / "fleet-manifests" / "base" / "mosquitto" / "telemetry.conf"
DEVICES, ROUNDS = 100, 30   # 3,000 reports: three times stock mosquitto's per-client queue


def _received_after_absence(broker: MosquittoBroker, sim_fleet: Callable[..., SimFleet], *, restart: bool) -> int:
    group = f"g-{uuid.uuid4().hex[:8]}"
    settings = fleet_settings(broker, group=group, client_id=f"exporter-{group}", session_expiry=600)
    FleetWatcher(settings).start().stop()          # the subscriber's session now exists, then it goes away
    fleet = sim_fleet(broker, group, DEVICES)
    for _ in range(ROUNDS):
        fleet.health()
    if restart:
        broker.restart()
    watcher = FleetWatcher(settings).start()
    try:
        expected = DEVICES * ROUNDS
        deadline = time.monotonic() + 30
        last, stable_since = -1, time.monotonic()
        while time.monotonic() < deadline:
            groups = watcher.view().groups()
            got = groups[0].reports_total if groups else 0
            if got >= expected:
                break
            if got != last:
                last, stable_since = got, time.monotonic()
            elif time.monotonic() - stable_since > 3:
                break                                  # nothing more is coming
            time.sleep(0.1)
        groups = watcher.view().groups()
        return groups[0].reports_total if groups else 0
    finally:
        watcher.stop()


def test_telemetry_conf_keeps_every_report_across_absence_and_restart(
        mqtt_broker_factory: Callable[..., MosquittoBroker], sim_fleet: Callable[..., SimFleet],
        tmp_path: Path) -> None:
    conf_d = tmp_path / "conf.d"
    conf_d.mkdir()
    shutil.copy(CONF, conf_d / "telemetry.conf")
    broker = mqtt_broker_factory(extra_config=f"include_dir {conf_d}")
    assert _received_after_absence(broker, sim_fleet, restart=True) == DEVICES * ROUNDS


def test_stock_limits_lose_reports(mqtt_broker_factory: Callable[..., MosquittoBroker],
                                   sim_fleet: Callable[..., SimFleet]) -> None:
    broker = mqtt_broker_factory(max_queued_messages=1000)   # mosquitto's default
    received = _received_after_absence(broker, sim_fleet, restart=False)
    assert received < DEVICES * ROUNDS / 2
