"""``edgekit fleet status|watch|export`` against real mosquitto, and every bad input's one-line error
and exit code."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from edgekit.cli import cli
from edgekit.fleet.exporting import start_exporter
from edgekit.rehearsal.certs import TestCA
from edgekit.rehearsal.mosquitto import MosquittoBroker
from edgekit.rehearsal.processes import free_port
from tests.fixtures.fleet import DIGEST_B, SimDevice, SimFleet, fleet_settings

pytestmark = pytest.mark.mqtt

Sim = Callable[..., SimFleet]


def uid(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture
def populated(mqtt_broker: MosquittoBroker, sim_fleet: Sim) -> Iterator[tuple[str, SimFleet]]:
    """A group of 12 devices: 1 unhealthy (errors), 1 failing its probe, 1 silent, 1 offline (will);
    yields (group, fleet); ``reporting(fleet)`` keeps them reporting in the background."""
    group = uid()
    fleet = sim_fleet(mqtt_broker, group, 11)
    fleet.birth()
    fleet.birth(fleet.devices[3:4], signature="unverified")  # runs unsigned images (allow_unsigned)
    SimDevice(mqtt_broker, group, "dead-1").die()
    yield group, fleet


@contextlib.contextmanager
def reporting(fleet: SimFleet, every: float = 0.3) -> Iterator[None]:
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            report(fleet)
            stop.wait(every)

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def report(fleet: SimFleet) -> None:
    devices = fleet.devices
    fleet.health(devices[3:10])
    fleet.health(devices[:1], errors=50)            # 50 %: unhealthy
    fleet.health(devices[1:2], probe=False)         # probe failed: unhealthy
    fleet.health(devices[2:3], ts=time.time() - 3600)  # reports, but an hour-old measurement
    # devices[10] stays silent


def test_status_table(mqtt_broker: MosquittoBroker, populated: tuple[str, SimFleet]) -> None:
    group, fleet = populated
    with reporting(fleet):
        code, out, err = run("fleet", "status", "--broker", mqtt_broker.url, "--group", group, "--devices",
                             "--sort", "status", "--wait", "2", "--interval", "5")
    assert code == 0, err
    lines = out.splitlines()
    header = next(line for line in lines if line.lstrip().startswith("GROUP"))
    assert "HEALTHY" in header
    row = next(line for line in lines if line.lstrip().startswith(group))
    # devices 12, online 11, offline 1, reporting 10, silent 2 (the silent one and the offline one)
    assert row.split()[1:6] == ["12", "11", "1", "10", "2"]
    assert "dead-1" in out and "offline" in out
    by_device = {line.split()[0]: line for line in lines if line.split() and line.split()[0] in fleet.devices}
    assert "unhealthy" in by_device[fleet.devices[0]] and "50.00%" in by_device[fleet.devices[0]]
    assert "FAILED" in by_device[fleet.devices[1]]
    assert "silent" in by_device[fleet.devices[10]]
    assert "unverified" in by_device[fleet.devices[3]]
    assert [d for d, line in by_device.items() if "unverified" in line] == [fleet.devices[3]]
    assert "(1 unverified)" in row
    assert "\x1b[" not in out                      # plain text when not a terminal
    # --sort status: offline first, then silent, then unhealthy.
    order = [line.split()[0] for line in lines if line.split() and (line.split()[0] in fleet.devices
                                                                      or line.split()[0] == "dead-1")]
    assert order[0] == "dead-1" and order[1] == fleet.devices[10]


def test_status_json(mqtt_broker: MosquittoBroker, populated: tuple[str, SimFleet]) -> None:
    group, fleet = populated
    with reporting(fleet):
        code, out, err = run("fleet", "status", "--broker", mqtt_broker.url, "-g", group, "-O", "json",
                             "--devices", "--wait", "2", "--interval", "5")
    assert code == 0, err
    data = json.loads(out)
    (g,) = data["groups"]
    assert (g["devices"], g["online"], g["offline"], g["reporting"]) == (12, 11, 1, 10)
    assert g["healthy"] == 8
    assert len(data["devices"]) == 12
    assert g["unverified"] == 1
    signatures = {d["device"]: d["signature"] for d in data["devices"]}
    assert signatures[fleet.devices[3]] == "unverified" and signatures["dead-1"] is None
    assert {s for d, s in signatures.items() if d not in (fleet.devices[3], "dead-1")} == {"verified"}
    assert data["ingest"]["rejected"]["malformed_json"] == 0
    assert data["watcher"]["connected"] is True


def test_status_waits_for_one_report_per_device(mqtt_broker: MosquittoBroker, sim_fleet: Sim) -> None:
    """With live devices, status returns once every device that is not offline has reported."""
    group = uid()
    fleet = sim_fleet(mqtt_broker, group, 20)
    fleet.birth()
    fleet.digest.update(dict.fromkeys(fleet.devices, DIGEST_B))
    stop = threading.Event()

    def reporting() -> None:
        while not stop.is_set():
            fleet.health()
            stop.wait(0.3)

    t = threading.Thread(target=reporting, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        code, out, err = run("fleet", "status", "--broker", mqtt_broker.url, "-g", group, "-O", "json",
                             "--interval", "30")
        elapsed = time.monotonic() - started
    finally:
        stop.set()
        t.join(5)
    assert code == 0, err
    g = json.loads(out)["groups"][0]
    assert g["reporting"] == 20 and g["digests"] == {DIGEST_B: 20}
    assert elapsed < 30   # did not wait the whole interval


def test_watch_prints_frames_with_rates(mqtt_broker: MosquittoBroker, populated: tuple[str, SimFleet]) -> None:
    group, fleet = populated
    with reporting(fleet):
        code, out, err = run("fleet", "watch", "--broker", mqtt_broker.url, "-g", group, "-O", "json",
                             "--refresh", "0.3", "--duration", "1")
    assert code == 0, err
    frames = [json.loads(line) for line in out.splitlines()]
    assert len(frames) >= 2
    assert frames[0]["groups"][0]["devices"] == 12 and "rates" in frames[-1]
    code, out, err = run("fleet", "watch", "--broker", mqtt_broker.url, "-g", group, "--devices",
                         "--refresh", "0.3", "--duration", "0.5")
    assert code == 0, err
    assert out.count("GROUP") >= 2 and "msg/s" in out


def scrape(url: str) -> dict[str, float]:
    text = requests.get(url, timeout=10).text
    values: dict[str, float] = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, value = line.rsplit(" ", 1)
            values[name] = float(value)
    return values


def test_exporter_scraped_over_http(mqtt_broker: MosquittoBroker, populated: tuple[str, SimFleet]) -> None:
    group, fleet = populated
    settings = fleet_settings(mqtt_broker, group=group, interval=5.0)
    with start_exporter(settings, "127.0.0.1", 0, per_device=True, max_device_series=5) as exporter:
        exporter.watcher.wait_settled()
        report(fleet)
        assert exporter.watcher.wait_for(lambda v: v.groups()[0].reporting == 10, 20)
        m = scrape(exporter.url)
    g = f'{{group="{group}"}}'
    assert m[f"edgekit_fleet_devices{g}"] == 12
    assert m[f"edgekit_fleet_devices_online{g}"] == 11
    assert m[f"edgekit_fleet_devices_reporting{g}"] == 10
    assert m[f"edgekit_fleet_reports_total{g}"] == 10
    assert m[f"edgekit_fleet_inferences_total{g}"] == 1000
    assert m[f"edgekit_fleet_errors_total{g}"] == 50
    assert m['edgekit_fleet_messages_rejected_total{reason="flood"}'] == 0
    assert m["edgekit_fleet_broker_connected"] == 1
    # per-device series are bounded: 5 of the 12 devices, the rest counted as dropped
    assert sum(1 for k in m if k.startswith("edgekit_fleet_device_up{")) == 5
    assert m["edgekit_fleet_device_series_dropped"] == 7


def test_export_command_and_shared_subscription(mqtt_broker: MosquittoBroker, sim_fleet: Sim, tmp_path: Path) -> None:
    """Two `edgekit fleet export` processes share the health stream; their counters add up."""
    group, share = uid(), uid("share")
    fleet = sim_fleet(mqtt_broker, group, 50)
    fleet.birth()
    ports = [free_port(), free_port()]
    edgekit = str(Path(sys.executable).parent / "edgekit")
    procs = [subprocess.Popen([edgekit, "fleet", "export", "--broker", mqtt_broker.url,
                               "--group", group, "--listen", f"127.0.0.1:{port}", "--shared-group", share],
                              stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
             for port in ports]
    try:
        for proc in procs:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert "serving http://127.0.0.1:" in line, line
        for _ in range(4):
            fleet.health()
        deadline = time.monotonic() + 20
        key = f'edgekit_fleet_reports_total{{group="{group}"}}'
        while True:
            parts = [scrape(f"http://127.0.0.1:{port}/metrics") for port in ports]
            total = sum(p.get(key, 0) for p in parts)
            if total >= 200 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert total == 200
        assert all(p[key] > 0 for p in parts)
        assert all(p[f'edgekit_fleet_devices_online{{group="{group}"}}'] == 50 for p in parts)
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            assert proc.wait(15) == 0


@pytest.mark.parametrize(("args", "code", "message"), [
    (["--broker", "http://x"], 2, "brokers: expected mqtt://host[:port] or mqtts://host[:port]"),
    (["--broker", "mqtt://user:pw@h"], 2, "brokers: 'mqtt://user:pw@h': only scheme, host and port"),
    (["--interval", "0"], 2, "interval: must be a positive number"),
    (["--wait", "-1"], 2, "wait: must be >= 0"),
    (["--group", "a/b"], 2, "group 'a/b' cannot be used as an MQTT topic level"),
    (["--ca-file", "/nonexistent/ca.pem", "--broker", "mqtts://127.0.0.1:1"], 2,
     "mqtt_ca_file: /nonexistent/ca.pem does not exist or is not readable"),
])
def test_bad_settings(args: list[str], code: int, message: str) -> None:
    exit_code, _, err = run("fleet", "status", *args)
    assert exit_code == code
    assert err.startswith(f"edgekit: error: {message}"), err
    assert len(err.strip().splitlines()) == 1


def test_connection_errors(mqtt_broker: MosquittoBroker, mqtt_broker_auth_acl: MosquittoBroker,
                           mqtt_broker_tls: MosquittoBroker, tmp_path: Path) -> None:
    port = free_port()
    code, _, err = run("fleet", "status", "--broker", f"mqtt://127.0.0.1:{port}")
    assert code == 51
    assert err.strip() == (f"edgekit: error: cannot reach mqtt://127.0.0.1:{port}: [Errno 111] Connection refused "
                           "(check --broker and that the broker runs)")
    pw = tmp_path / "pw"
    pw.write_text("wrong\n")
    code, _, err = run("fleet", "status", "--broker", mqtt_broker_auth_acl.url, "--username", "fleet",
                       "--password-file", str(pw))
    assert code == 52
    assert err.startswith(f"edgekit: error: {mqtt_broker_auth_acl.url} refused our credentials: Not authorized")
    other = TestCA(tmp_path / "ca")
    code, _, err = run("fleet", "status", "--broker", mqtt_broker_tls.url, "--ca-file", str(other.cert_path))
    assert code == 53
    assert err.startswith(f"edgekit: error: TLS with {mqtt_broker_tls.url} failed:") and "certificate" in err
    code, _, err = run("fleet", "status", "--broker", mqtt_broker.url, "--group", uid("nobody"), "--wait", "0")
    assert code == 57
    assert err.startswith("edgekit: error: no device of group 'nobody-")
    for e in (err,):
        assert len(e.strip().splitlines()) == 1


def test_export_bad_listen(mqtt_broker: MosquittoBroker) -> None:
    code, _, err = run("fleet", "export", "--broker", mqtt_broker.url, "--listen", "nowhere")
    assert code == 2 and err.startswith("edgekit: error: listen: expected HOST:PORT, got 'nowhere'")
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        code, _, err = run("fleet", "export", "--broker", mqtt_broker.url, "--listen", f"127.0.0.1:{port}")
    assert code == 56
    assert err.startswith(f"edgekit: error: cannot listen on 127.0.0.1:{port}: Address already in use")


def test_every_command_has_examples() -> None:
    for name in ("status", "watch", "export"):
        code, out, _ = run("fleet", name, "--help")
        assert code == 0 and "Examples:" in out
