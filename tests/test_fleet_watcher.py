"""FleetWatcher against real mosquitto: many simulated devices, wills, restarts, shared subscriptions,
TLS and passwords, and every connection failure with its own error."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest

from edgekit.errors import BrokerUnreachableError, TelemetryAuthError, TelemetryTLSError
from edgekit.fleet import FleetView
from edgekit.fleet.settings import FleetSettings
from edgekit.fleet.watching import FleetWatcher
from edgekit.rehearsal.certs import TestCA
from edgekit.rehearsal.mosquitto import MosquittoBroker
from edgekit.rehearsal.processes import free_port
from tests.fixtures.fleet import DIGEST_A, DIGEST_B, SimDevice, SimFleet, fleet_settings
from tests.fixtures.mqtt import MQTT_USERS

pytestmark = pytest.mark.mqtt

Watch = Callable[..., FleetWatcher]
Sim = Callable[..., SimFleet]


def uid(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def wait(watcher: FleetWatcher, predicate: Callable[[FleetView], bool], timeout: float = 30.0) -> None:
    assert watcher.wait_for(predicate, timeout), watcher.snapshot().to_dict()


def test_many_devices_real_payloads(mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    group = uid()
    fleet = sim_fleet(mqtt_broker, group, 300)
    fleet.birth()
    other = sim_fleet(mqtt_broker, uid("other"), 5)
    other.birth()
    watcher = fleet_watcher(mqtt_broker, group=group)
    assert watcher.wait_settled(timeout=20)
    g = watcher.view().groups()[0]
    assert (g.group, g.devices, g.online) == (group, 300, 300)   # retained births, other group filtered out

    canary = fleet.devices[:100]
    for d in canary:
        fleet.digest[d] = DIGEST_B
    since = time.time() - 0.01
    fleet.health(canary, inferences=200, errors=20, p95=40.0)
    fleet.health(fleet.devices[100:], inferences=100, errors=0, p95=10.0)
    wait(watcher, lambda v: v.groups()[0].reporting == 300)
    w = watcher.view().window(fleet.devices[:150], since, DIGEST_B)
    assert (w.expected, w.reported, w.on_digest, len(w.off_digest), w.silent) == (150, 100, 100, 50, [])
    assert (w.inferences, w.errors, w.error_rate) == (20_000, 2_000, 0.1)
    assert w.p95_ms == 40.0 and w.offline == [] and w.probe_failures == 0
    g = watcher.view().groups()[0]
    assert g.digests == {DIGEST_A: 200, DIGEST_B: 100}
    assert g.healthy == 200                                     # 10 % errors > 5 %: the canaries are unhealthy
    assert watcher.state.counters.rejected_total == 0
    assert watcher.info()["lag_s"]["max"] is not None


def test_last_will_and_cleared_status(mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    group = uid()
    watcher = fleet_watcher(mqtt_broker, group=group)
    device = SimDevice(mqtt_broker, group, "edge-1")
    wait(watcher, lambda v: (r := v.device("edge-1")) is not None and r.status == "online")
    device.die()
    wait(watcher, lambda v: v.device("edge-1").status == "offline")  # type: ignore[union-attr]
    assert watcher.view().window(["edge-1"], 0).offline == ["edge-1"]
    # An operator deletes the retained status of a decommissioned device: it is forgotten.
    fleet = sim_fleet(mqtt_broker, group, ["edge-1"])
    fleet.clear("edge-1")
    wait(watcher, lambda v: v.device("edge-1") is None)


def test_events_and_probe_failures(mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    group = uid()
    watcher = fleet_watcher(mqtt_broker, group=group)
    fleet = sim_fleet(mqtt_broker, group, 3)
    since = time.time() - 0.01
    fleet.health(fleet.devices[:1], probe=False)
    fleet.health(fleet.devices[1:])
    fleet.event(fleet.devices[2], "probe_failed")
    wait(watcher, lambda v: v.device(fleet.devices[2]) is not None
         and v.device(fleet.devices[2]).last_event == "probe_failed")  # type: ignore[union-attr]
    assert watcher.view().window(fleet.devices, since, DIGEST_A).probe_failures == 2


def test_broker_restart_under_load(mqtt_broker_factory: Callable[..., MosquittoBroker], sim_fleet: Sim,
                                   fleet_watcher: Watch) -> None:
    broker = mqtt_broker_factory()
    group = uid()
    fleet = sim_fleet(broker, group, 200)
    fleet.birth()
    watcher = fleet_watcher(broker, group=group)
    assert watcher.wait_settled(timeout=20)
    stop = threading.Event()

    def load() -> None:
        while not stop.is_set():
            fleet.health(wait=False)
            time.sleep(0.05)

    publisher = threading.Thread(target=load, daemon=True)
    publisher.start()
    try:
        wait(watcher, lambda v: v.groups()[0].reporting == 200)
        applied_before = watcher.applied
        broker.restart()
        wait(watcher, lambda _: watcher.connects >= 2 and watcher.connected)
        wait(watcher, lambda _: watcher.applied > applied_before + 2000)
    finally:
        stop.set()
        publisher.join(10)
    info = watcher.info()
    assert info["disconnects"] >= 1 and info["connected"]
    snap = watcher.snapshot(with_devices=True)
    assert snap.groups[0].devices == 200 and snap.groups[0].online == 200
    assert snap.counters.rejected_total == 0
    # A new subscriber rebuilds the whole picture from the retained status the broker persisted.
    fresh = fleet_watcher(broker, group=group)
    assert fresh.wait_settled(timeout=20)
    assert fresh.view().groups()[0].online == 200


def test_shared_subscription_splits_health_across_two_watchers(
        mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    group, share = uid(), uid("share")
    fleet = sim_fleet(mqtt_broker, group, 100)
    fleet.birth()
    a = fleet_watcher(mqtt_broker, group=group, shared_group=share)
    b = fleet_watcher(mqtt_broker, group=group, shared_group=share)
    for w in (a, b):
        assert w.wait_settled(timeout=20)
        assert w.view().groups()[0].online == 100          # status is not shared: both see everyone
    rounds = 5
    for _ in range(rounds):
        fleet.health()

    def health_applied(w: FleetWatcher) -> int:
        return w.state.counters.accepted - 100

    deadline = time.monotonic() + 30
    while health_applied(a) + health_applied(b) < rounds * 100 and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.3)
    assert health_applied(a) + health_applied(b) == rounds * 100   # every report exactly once
    assert health_applied(a) > 0 and health_applied(b) > 0


def test_tls_and_passwords(mqtt_broker_tls: MosquittoBroker, mqtt_broker_auth_acl: MosquittoBroker,
                           sim_fleet: Sim, fleet_watcher: Watch, tmp_path: Path) -> None:
    group = uid()
    watcher = fleet_watcher(mqtt_broker_tls, group=group)
    fleet = sim_fleet(mqtt_broker_tls, group, 2)
    fleet.birth()
    wait(watcher, lambda v: bool(v.groups()) and v.groups()[0].online == 2)
    # A CA that did not sign the broker's certificate.
    other_ca = TestCA(tmp_path / "other-ca")
    with pytest.raises(TelemetryTLSError) as err:
        FleetWatcher(fleet_settings(mqtt_broker_tls, mqtt_ca_file=str(other_ca.cert_path))).start()
    assert err.value.exit_code == 53 and "certificate" in err.value.one_line().lower()
    # Passwords: the read-only fleet user works, a wrong password is refused at once.
    secret = tmp_path / "pw"
    secret.write_text(MQTT_USERS["fleet"] + "\n")
    ok = fleet_watcher(mqtt_broker_auth_acl, mqtt_username="fleet", mqtt_password_file=str(secret))
    assert ok.connected
    with pytest.raises(TelemetryAuthError) as auth:
        FleetWatcher(fleet_settings(mqtt_broker_auth_acl, mqtt_username="fleet", mqtt_password="wrong")).start()
    assert auth.value.exit_code == 52
    assert auth.value.one_line().startswith(f"{mqtt_broker_auth_acl.url} refused our credentials")


def test_unreachable_broker_and_failover(mqtt_broker: MosquittoBroker, fleet_watcher: Watch) -> None:
    dead = f"mqtt://127.0.0.1:{free_port()}"
    with pytest.raises(BrokerUnreachableError) as err:
        FleetWatcher(fleet_settings(mqtt_broker, brokers=(dead,), connect_timeout=1.0)).start(timeout=2)
    assert err.value.exit_code == 51 and dead in err.value.one_line()
    # With a second broker listed, the watcher fails over to it.
    watcher = fleet_watcher(mqtt_broker, brokers=(dead, mqtt_broker.url))
    assert watcher.info()["broker"] == mqtt_broker.url


def test_mqtt_311(mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    group = uid()
    watcher = fleet_watcher(mqtt_broker, group=group, mqtt_protocol="3.1.1")
    assert watcher.info()["protocol"] == "3.1.1"
    fleet = sim_fleet(mqtt_broker, group, 10)
    fleet.birth()
    fleet.health()
    wait(watcher, lambda v: bool(v.groups()) and v.groups()[0].reporting == 10)


def test_hostile_messages_are_counted_and_harm_no_one(
        mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    group = uid()
    watcher = fleet_watcher(mqtt_broker, group=group, max_payload=4096, flood_limit=50)
    fleet = sim_fleet(mqtt_broker, group, ["good-1", "good-2", "bad"])
    fleet.birth()
    fleet.health()
    wait(watcher, lambda v: bool(v.groups()) and v.groups()[0].reporting == 3)
    before = {d: watcher.view().device(d) for d in ("good-1", "good-2")}
    for payload in (b"{oops", b"[]", b'{"v": 99}', b"x" * 10_000, b'{"v": 1, "device": "good-1"}'):
        fleet.publish("bad", "health", payload)
    fleet.publish("good-1", "health", b'{"v": 1, "device": "bad", "group": "x"}')  # mismatch
    for _ in range(80):                                                             # flood
        fleet.health(["bad"], wait=False, qos=0)
    deadline = time.monotonic() + 20
    while watcher.state.counters.rejected["flood"] == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert watcher.wait_drained()
    rejected = watcher.state.counters.rejected
    assert rejected["malformed_json"] == 2 and rejected["unknown_version"] == 1
    assert rejected["oversize"] == 1 and rejected["missing_field"] == 1 and rejected["device_mismatch"] == 1
    assert rejected["flood"] > 0
    for d, row in before.items():
        after = watcher.view().device(d)
        assert after is not None and row is not None
        assert (after.status, after.inferences, after.p95_ms, after.digest) == \
            (row.status, row.inferences, row.p95_ms, row.digest)


@pytest.mark.slow
def test_fleet_scale_5000_devices(mqtt_broker: MosquittoBroker, sim_fleet: Sim, fleet_watcher: Watch) -> None:
    """5,000 devices, 10 rounds of health reports: every report counted once, no gaps, no rejects."""
    group = uid("scale")
    fleet = sim_fleet(mqtt_broker, group, 5000)
    fleet.birth()
    watcher = fleet_watcher(mqtt_broker, group=group, interval=60.0)
    assert watcher.wait_settled(timeout=30)
    since = time.time() - 0.01
    for _ in range(10):
        fleet.health()
    wait(watcher, lambda v: v.groups()[0].reports_total == 50_000, timeout=120)
    g = watcher.view().groups()[0]
    assert (g.devices, g.online, g.reporting, g.healthy) == (5000, 5000, 5000, 5000)
    w = watcher.view().window(fleet.devices, since, None)
    assert (w.reported, w.inferences, w.silent) == (5000, 5_000_000, [])
    c = watcher.state.counters
    assert (c.rejected_total, c.duplicates, c.seq_gaps) == (0, 0, 0)


def test_auto_falls_back_to_mqtt_311() -> None:
    """A broker that only speaks 3.1.1 refuses a version-5 CONNECT (CONNACK 0x01, as the 3.1.1 spec
    says); the watcher then connects with 3.1.1. mosquitto speaks 5, so this one broker is a
    minimal 3.1.1-only stand-in on a socket."""
    import socket
    import struct

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(4)
    port = server.getsockname()[1]
    levels: list[int] = []

    def serve() -> None:
        for _ in range(4):
            try:
                conn, _ = server.accept()
            except OSError:
                return
            with conn:
                data = conn.recv(4096)
                level = data[data.index(b"MQTT") + 4]
                levels.append(level)
                if level != 4:
                    conn.sendall(b"\x20\x02\x00\x01")        # unacceptable protocol version
                    continue
                conn.sendall(b"\x20\x02\x00\x00")
                subs, acked = b"", 0
                while acked < 3:                             # the watcher sends 3 SUBSCRIBE packets
                    subs += conn.recv(4096)
                    while len(subs) > 4 and len(subs) >= 2 + subs[1]:   # short packets: 1-byte length
                        mid = struct.unpack("!H", subs[2:4])[0]
                        conn.sendall(b"\x90\x03" + struct.pack("!H", mid) + b"\x01")
                        subs, acked = subs[2 + subs[1]:], acked + 1
                conn.recv(4096)                              # until the watcher disconnects
                return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        watcher = FleetWatcher(FleetSettings(brokers=(f"mqtt://127.0.0.1:{port}",), connect_timeout=5.0,
                                             reconnect_min=0.2, reconnect_max=1.0))
        watcher.start(timeout=20)
        assert watcher.info()["protocol"] == "3.1.1"
        watcher.stop()
    finally:
        server.close()
    assert levels[0] == 5 and levels[-1] == 4
