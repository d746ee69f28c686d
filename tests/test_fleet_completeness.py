"""A fleet picture holds every device whatever the broker's queue limits, or says it does not.

The brokers here keep mosquitto's stock per-client limits (20 in flight, 1000 queued); only
``sys_interval`` is shortened so that its drop counter updates within a second. Device counts are
checked against the devices the test published, never against what the watcher says of itself.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import replace

import paho.mqtt.client as mqtt
import pytest
import requests
from click.testing import CliRunner
from paho.mqtt.enums import CallbackAPIVersion

from edgekit.cli import cli
from edgekit.errors import IncompleteTelemetryError
from edgekit.fleet.completeness import SyncProgress, assess, counter_value, recheck
from edgekit.fleet.exporting import start_exporter
from edgekit.fleet.watching import FleetWatcher
from edgekit.rehearsal.mosquitto import MosquittoBroker
from edgekit.rollout.gating import Elapsed, KubeFigures, judge
from edgekit.rollout.service import FleetTelemetry
from edgekit.rollout.strategy import GatePolicy
from tests.fixtures.fleet import ROOT, SimFleet, fleet_settings

STOCK = "max_queued_messages 1000\nmax_inflight_messages 20\nmax_queued_bytes 0\nsys_interval 1"
TINY_BYTES = STOCK + "\nmax_queued_bytes 20000"     # ~60 statuses: the snapshot cannot be complete
DEVICES = 2000


# --- the rules (pure) ----------------------------------------------------------------------------
def test_rules() -> None:
    assert not assess(SyncProgress(statuses=5), local_dropped=0).complete      # burst not in yet
    synced = SyncProgress(synced=True, statuses=5, drop_base=7)
    waiting = assess(synced, local_dropped=0)
    assert waiting.complete and not waiting.verified and "waiting" in (waiting.reason or "")
    lost_here = assess(synced, local_dropped=3)
    assert not lost_here.complete and "dropped 3" in (lost_here.reason or "")
    unchanged = SyncProgress(synced=True, statuses=5, drop_base=7, tick=True, verdict=True)
    assert assess(unchanged, local_dropped=0).verified
    dropped = SyncProgress(synced=True, statuses=5, drop_base=7, drop_seen=19, tick=True, verdict=True)
    found = assess(dropped, local_dropped=0)
    assert not found.complete and found.broker_dropped == 12
    hidden = assess(SyncProgress(synced=True, statuses=5, sys_denied=True), local_dropped=0)
    assert hidden.complete and not hidden.verified and "does not publish" in (hidden.reason or "")
    assert (counter_value(b"1937"), counter_value(b"12 seconds"), counter_value(b"")) == (1937, 12, None)


def test_a_rise_of_the_broker_counter_is_checked_again_from_a_fresh_base() -> None:
    rose = SyncProgress(synced=True, statuses=5, drop_base=7, drop_seen=19, tick=True, verdict=True)
    again = recheck(rose)
    assert again is not None and (again.drop_base, again.rechecks, again.synced) == (19, 1, False)
    interim = assess(again, local_dropped=0)
    assert not interim.complete and "checking again" in (interim.reason or "")
    # the second look: unchanged counter -> complete; a rise again -> incomplete, and no third look
    assert assess(replace(again, synced=True, tick=True, verdict=True, drop_seen=19), local_dropped=0).verified
    again_rose = replace(again, synced=True, tick=True, verdict=True, drop_seen=25)
    assert not assess(again_rose, local_dropped=0).complete and recheck(again_rose) is None
    assert recheck(replace(rose, drop_seen=7)) is None


# --- real brokers ---------------------------------------------------------------------------------
def _retained(broker: MosquittoBroker, devices: int) -> str:
    group = f"g-{uuid.uuid4().hex[:8]}"
    fleet = SimFleet(broker, group, devices)
    try:
        fleet.birth()
    finally:
        fleet.close()
    return group


def _qos1_subscriber_gets(broker: MosquittoBroker, topic: str) -> int:
    """What a plain QoS 1 subscriber receives of the retained burst (the behaviour before the fix)."""
    got: list[str] = []
    acked: set[int] = set()
    client = mqtt.Client(CallbackAPIVersion.VERSION2, protocol=mqtt.MQTTv5)
    client.on_message = lambda c, u, m: got.append(m.topic)
    client.on_subscribe = lambda c, u, mid, r, p: acked.add(mid)

    def round_trip() -> None:   # a SUBACK from the broker: what it had sent before is in
        mid = client.subscribe("no/such/topic", 0)[1]
        deadline = time.monotonic() + 10
        while mid not in acked:
            assert time.monotonic() < deadline, "no SUBACK"
            time.sleep(0.01)

    client.connect(broker.host, broker.port)
    client.loop_start()
    try:
        client.subscribe(topic, 1)
        round_trip()
        last, deadline = -1, time.monotonic() + 20
        while len(got) != last and time.monotonic() < deadline:   # until it stops growing
            last = len(got)
            round_trip()
        return len(got)
    finally:
        client.disconnect()
        client.loop_stop()


@pytest.fixture
def stock_broker(mqtt_broker_factory: Callable[..., MosquittoBroker]) -> MosquittoBroker:
    return mqtt_broker_factory(extra_config=STOCK, persistence=False)


@pytest.mark.mqtt
def test_status_shows_every_device_of_a_stock_broker(stock_broker: MosquittoBroker) -> None:
    group = _retained(stock_broker, DEVICES)
    # the limit is real: a QoS 1 subscription gets 20 in flight + 1000 queued
    assert _qos1_subscriber_gets(stock_broker, f"{ROOT}/{group}/+/status") < DEVICES
    result = CliRunner().invoke(cli, ["fleet", "status", "--broker", stock_broker.url, "--group", group,
                                      "--wait", "3", "--output", "json"], catch_exceptions=False)
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(g["group"], g["devices"]) for g in data["groups"]] == [(group, DEVICES)]
    assert data["complete"] is True and data["completeness"]["verified"] is True


@pytest.mark.mqtt
def test_incomplete_snapshot_is_said_everywhere(mqtt_broker_factory: Callable[..., MosquittoBroker]) -> None:
    broker = mqtt_broker_factory(extra_config=TINY_BYTES, persistence=False)
    group = _retained(broker, DEVICES)

    result = CliRunner().invoke(cli, ["fleet", "status", "--broker", broker.url, "--group", group,
                                      "--wait", "3", "--output", "json"], catch_exceptions=False)
    assert result.exit_code == IncompleteTelemetryError.exit_code == 58
    data = json.loads(result.stdout)
    assert data["complete"] is False and 0 < data["groups"][0]["devices"] < DEVICES
    assert "incomplete" in result.stderr and "broker dropped" in result.stderr

    table = CliRunner().invoke(cli, ["fleet", "status", "--broker", broker.url, "--group", group, "--wait", "3"])
    assert table.exit_code == 58 and "INCOMPLETE" in table.stdout

    watch = CliRunner().invoke(cli, ["fleet", "watch", "--broker", broker.url, "--group", group, "--output", "json",
                                     "--refresh", "0.5", "--duration", "8"], catch_exceptions=False)
    frames = [json.loads(line) for line in watch.stdout.splitlines()]
    assert frames and frames[-1]["complete"] is False and "broker dropped" in frames[-1]["completeness"]["reason"]

    settings = fleet_settings(broker, group=group)
    with start_exporter(settings, "127.0.0.1", 0) as exporter:
        assert exporter.watcher.wait_settled(timeout=20)
        assert not exporter.watcher.wait_verified(timeout=10).complete
        metrics = requests.get(exporter.url, timeout=10).text
    assert "edgekit_fleet_snapshot_complete 0.0" in metrics

    # the gates' figures say so, and the judge holds on them instead of passing a partial fleet
    telemetry = FleetTelemetry(FleetWatcher(settings).start())
    try:
        assert telemetry.watcher.wait_settled(timeout=20)
        telemetry.watcher.wait_verified(timeout=10)
        figures = telemetry.window(["any-device"], time.time() - 60, None)
        assert figures.incomplete
    finally:
        telemetry.close()
    verdict = judge(GatePolicy(max_error_rate=None), bake_s=0.0, auto_promote=True, kube=KubeFigures(1, 1),
                    tele=replace(figures, expected=1, reported=1, on_digest=1), baseline=None,
                    elapsed=Elapsed(10.0, 10.0))
    assert (verdict.decision, verdict.gate) == ("hold", "telemetry"), verdict.reason
    late = judge(GatePolicy(max_error_rate=None), bake_s=0.0, auto_promote=True, kube=KubeFigures(1, 1),
                 tele=replace(figures, expected=1, reported=1, on_digest=1), baseline=None,
                 elapsed=Elapsed(10_000.0, 10_000.0))
    assert (late.decision, late.gate) == ("rollback", "telemetry"), late.reason


@pytest.mark.mqtt
def test_complete_snapshot_feeds_the_gates_and_the_exporter(stock_broker: MosquittoBroker) -> None:
    group = _retained(stock_broker, 50)
    settings = fleet_settings(stock_broker, group=group)
    with start_exporter(settings, "127.0.0.1", 0) as exporter:
        assert exporter.watcher.wait_settled(timeout=20)
        assert exporter.watcher.wait_verified(timeout=10).verified
        metrics = requests.get(exporter.url, timeout=10).text
    assert "edgekit_fleet_snapshot_complete 1.0" in metrics
    telemetry = FleetTelemetry(FleetWatcher(settings).start())
    try:
        assert telemetry.watcher.wait_settled(timeout=20)
        assert telemetry.window([f"{group}-00000"], time.time() - 60, None).expected == 1
    finally:
        telemetry.close()


@pytest.mark.mqtt
def test_broker_hiding_its_counters_gives_an_unverified_picture(mqtt_broker_auth_acl: MosquittoBroker) -> None:
    """The recommended ACL lets the reader see only the topic root, not $SYS."""
    settings = fleet_settings(mqtt_broker_auth_acl, mqtt_username="fleet", mqtt_password="fleet-secret",
                              group=f"g-{uuid.uuid4().hex[:8]}")
    with FleetWatcher(settings).start() as watcher:
        assert watcher.wait_settled(timeout=20)
        found = watcher.wait_verified(timeout=5)
    assert found.complete and not found.verified and "does not publish" in (found.reason or "")
