"""One spool root shared by the agents of two revisions (the DaemonSet's hostPath per app), with real
agent processes and a real mosquitto: never two writers on one file, and a new agent drains what an
old one left once that one is gone. Plus the lock itself, on its own."""

from __future__ import annotations

import json
import os
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from edgekit_agent import spoollock
from edgekit_agent.errors import SpoolLockedError

from edgekit.rehearsal.mosquitto import MosquittoBroker
from tests.fixtures.agent import AgentProcess, TelemetryChecker, wait_until
from tests.fixtures.mqtt import MqttRecorder

pytestmark = pytest.mark.mqtt

GROUP = "shared"
Start = Callable[..., AgentProcess]
Recorder = Callable[..., MqttRecorder]


def _cfg(broker_url: str, device: str, folder: Path, spool: Path, instance: str, **over: Any) -> dict[str, Any]:
    return {"device": device, "group": GROUP, "model_dir": str(folder), "broker_url": broker_url,
            "interval": 0.05, "probe_interval": 30, "reconnect_min": 0.2, "reconnect_max": 1.0,
            "spool_dir": str(spool), "spool_instance": instance, **over}


def _sessions(db_path: Path) -> set[str]:
    """The sessions whose reports a spool file holds (its integrity checked first)."""
    with sqlite3.connect(db_path) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        rows = db.execute("SELECT payload FROM outbox").fetchall()
    return {json.loads(bytes(r[0]))["session"] for r in rows if b'"session"' in bytes(r[0])}


def _count(db_path: Path) -> int:
    with sqlite3.connect(db_path) as db:
        return int(db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0])


def test_two_revisions_one_spool_never_share_a_file_and_the_new_one_drains_the_old(
        mqtt_broker_factory: Callable[..., MosquittoBroker], mqtt_recorder: Recorder, agent_process: Start,
        digits_folder: Path, telemetry_checker: TelemetryChecker, tmp_path: Path) -> None:
    dev = f"dev-{uuid.uuid4().hex[:8]}"
    broker = mqtt_broker_factory()
    rec = mqtt_recorder(broker, f"edgekit/v1/{GROUP}/{dev}/#", persistent=True)
    broker.stop()  # both agents spool while the broker is down
    spool = tmp_path / "hostpath-spool"
    old_dir, new_dir = spool / dev / "rev-old", spool / dev / "rev-new"
    old = agent_process(_cfg(broker.url, dev, digits_folder, spool, "rev-old"), wait="ready", name="old")
    wait_until(lambda: (old_dir / "spool.sqlite3").exists() and _count(old_dir / "spool.sqlite3") > 10)
    new = agent_process(_cfg(broker.url, dev, digits_folder, spool, "rev-new"), wait="ready", name="new")
    wait_until(lambda: (new_dir / "spool.sqlite3").exists() and _count(new_dir / "spool.sqlite3") > 10)

    # Both run: each writes its own file, and the old one's is not adopted while its agent lives.
    old_sessions, new_sessions = _sessions(old_dir / "spool.sqlite3"), _sessions(new_dir / "spool.sqlite3")
    assert len(old_sessions) == 1 and len(new_sessions) == 1 and old_sessions != new_sessions
    assert (spool.stat().st_mode & 0o777, (spool / dev).stat().st_mode & 0o777) == (0o700, 0o700)
    assert old_dir.stat().st_mode & 0o777 == 0o700
    assert (old_dir / "spool.sqlite3").stat().st_mode & 0o777 == 0o600

    assert old.terminate() == 0  # broker down: its reports stay in its spool
    wait_until(lambda: not old_dir.exists(), timeout=20)  # adopted by the running agent
    assert old_sessions <= _sessions(new_dir / "spool.sqlite3")
    assert sorted(p.name for p in (spool / dev).iterdir()) == ["rev-new"]

    broker.start()
    old_session = next(iter(old_sessions))

    def old_complete(msgs: list[Any]) -> bool:
        docs = [d for _, d in telemetry_checker.check_all(msgs) if d.get("session") == old_session]
        return any(d.get("kind") == "agent_stopping" for d in docs)

    msgs = rec.wait_for(old_complete, timeout=60)
    docs = telemetry_checker.check_all(msgs)
    health = sorted({d["seq"] for k, d in docs if k == "health" and d["session"] == old_session})
    # every report the old agent made, from its first to the one it sent while stopping, arrived
    # through the new one, marked replayed
    assert health == list(range(len(health))) and len(health) > 10
    assert all(d["replayed"] for k, d in docs if k != "status" and d["session"] == old_session)
    assert new.terminate() == 0


def test_an_agent_of_the_same_instance_waits_then_fails_clearly(
        mqtt_broker: MosquittoBroker, agent_process: Start, digits_folder: Path, tmp_path: Path) -> None:
    dev = f"dev-{uuid.uuid4().hex[:8]}"
    spool = tmp_path / "spool"
    first = agent_process(_cfg(mqtt_broker.url, dev, digits_folder, spool, "rev-a"), wait="ready", name="first")
    second = agent_process(_cfg(mqtt_broker.url, dev, digits_folder, spool, "rev-a", spool_lock_timeout_s=1.5),
                           wait="none", name="second")
    assert second.proc.proc is not None
    assert second.proc.proc.wait(60) == SpoolLockedError.exit_code
    log = second.log()
    assert "is locked by another agent" in log or "still locked by another agent" in log
    assert "Traceback" not in log
    assert first.terminate() == 0
    # once the first is gone, an agent of that instance takes the same directory and its leftovers
    third = agent_process(_cfg(mqtt_broker.url, dev, digits_folder, spool, "rev-a"), wait="ready", name="third")
    assert sorted(p.name for p in (spool / dev).iterdir()) == ["rev-a"]
    assert third.terminate() == 0


def test_the_lock_waits_for_its_holder_and_says_who(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    held = spoollock.acquire(tmp_path / "s", 1.0)
    assert spoollock.try_lock(tmp_path / "s") is None  # a second open file: flock refuses it
    ticks = iter(range(100))
    with pytest.raises(SpoolLockedError) as info:
        spoollock.acquire(tmp_path / "s", 6.0, clock=lambda: float(next(ticks)))
    assert f"pid {os.getpid()}" in info.value.one_line()
    assert "waiting up to" in caplog.text
    held.release()
    again = spoollock.acquire(tmp_path / "s", 1.0)
    assert again.held
    again.release()



def test_a_spool_folder_the_agent_cannot_write_is_a_clear_error() -> None:
    """What a kubelet makes of a missing hostPath (root's, 0755) seen by the agent's uid 10001."""
    import shutil
    import subprocess
    import sys
    import tempfile

    top = Path(tempfile.mkdtemp(prefix="edgekit-hostpath-"))  # not under pytest's 0700 root: 10001 must reach it
    top.chmod(0o755)
    host = top / "spool"
    host.mkdir()
    host.chmod(0o755 if os.getuid() == 0 else 0o555)
    code = ("from edgekit_agent.spool import open_spool\n"
            "from edgekit_agent.errors import SpoolError\n"
            "try:\n"
            f"    open_spool({str(host)!r}, max_bytes=1 << 20, max_age=60, instance='rev', device='dev')\n"
            "except SpoolError as exc:\n"
            "    print(exc.exit_code, exc.one_line())\n")
    agent_src = str(Path(__file__).resolve().parents[1] / "agent")
    prefix = ["setpriv", "--reuid", "10001", "--regid", "10001", "--clear-groups"] if os.getuid() == 0 else []
    try:
        done = subprocess.run([*prefix, sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                              env={**os.environ, "PYTHONPATH": agent_src}, check=False)
    finally:
        host.chmod(0o755)
        shutil.rmtree(top, ignore_errors=True)
    out = done.stdout.strip()
    assert done.returncode == 0 and out.startswith("37 cannot create the spool directory"), (out, done.stderr)
    assert f"make {host} writable by uid" in out and "node preparation" in out
