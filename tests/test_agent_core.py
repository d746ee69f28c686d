"""The agent core as a library: spool semantics, statistics, injectable clock, many cores sharing
one session (as the fleet simulator runs them), execution provider choice."""

from __future__ import annotations

import json
import os
import sqlite3
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from edgekit_agent.core import AgentCore
from edgekit_agent.errors import SpoolError
from edgekit_agent.loading import load_model
from edgekit_agent.mqtt import backoff_delay
from edgekit_agent.publishing import mark_replayed
from edgekit_agent.runtime import CPU, choose_providers
from edgekit_agent.settings import load_settings
from edgekit_agent.spool import KEEP_CORRUPT, MemorySpool, Spool, SqliteSpool
from edgekit_agent.stats import InferenceStats


@pytest.fixture(params=["sqlite", "memory"])
def make_spool(request: pytest.FixtureRequest, tmp_path: Path) -> Any:
    def make(max_bytes: int = 1 << 20, max_age: float = 3600.0) -> Spool:
        if request.param == "sqlite":
            return SqliteSpool(tmp_path / "spool", max_bytes, max_age)
        return MemorySpool(max_bytes, max_age)

    return make


def test_spool_order_ack_and_replay_marking(make_spool: Any) -> None:
    spool = make_spool()
    ids = [spool.append(f"t/{i}", b'{"n":%d}' % i, 1000.0 + i, replayed=i < 2) for i in range(5)]
    assert [e.id for e in spool.peek(0, 10)] == ids
    assert [e.replayed for e in spool.peek(0, 10)] == [True, True, False, False, False]
    assert [e.id for e in spool.peek(ids[1], 2)] == ids[2:4]
    spool.delete(ids[:2])
    assert spool.stats()[0] == 3
    assert spool.mark_replayed() == 3
    assert all(e.replayed for e in spool.peek(0, 10))


def test_spool_size_bound_drops_oldest(make_spool: Any) -> None:
    spool = make_spool(max_bytes=1000)
    for i in range(30):
        spool.append("edgekit/v1/g/d/health", b"x" * 60, 1000.0 + i, replayed=True)
    count, size = spool.stats()
    assert size <= 1000 and count == 1000 // (60 + 21 + 32)
    left = [e.created for e in spool.peek(0, 100)]
    assert left == [1000.0 + i for i in range(30 - count, 30)]
    dropped = spool.take_dropped()
    assert dropped.by_size == 30 - count and dropped.topics == {"health": 30 - count}
    assert dropped.oldest_ts == 1000.0 and spool.take_dropped().total == 0


def test_spool_age_bound(make_spool: Any) -> None:
    spool = make_spool(max_age=10.0)
    for i in range(10):
        spool.append("t/event", b"{}", 100.0 + i, replayed=False)
    spool.prune(now=115.0)  # older than 105 goes
    assert [e.created for e in spool.peek(0, 100)] == [105.0 + i for i in range(5)]
    assert spool.take_dropped().by_age == 5


def test_sqlite_spool_survives_reopen_and_moves_corruption_aside(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path, 1 << 20, 3600)
    for i in range(3):
        spool.append("t", b"%d" % i, float(i), replayed=False)
    spool.close()
    again = SqliteSpool(tmp_path, 1 << 20, 3600)
    assert [e.payload for e in again.peek(0, 10)] == [b"0", b"1", b"2"] and again.stats()[0] == 3
    again.close()
    for suffix in ("-wal", "-shm"):
        Path(f"{again.path}{suffix}").unlink(missing_ok=True)
    again.path.write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    fresh = SqliteSpool(tmp_path, 1 << 20, 3600)
    assert fresh.stats() == (0, 0) and fresh.take_dropped().corrupt
    assert any(p.name.startswith("spool.sqlite3.corrupt-") for p in tmp_path.iterdir())


def test_sqlite_spool_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        spool = SqliteSpool(tmp_path / "spool", 1 << 20, 3600)
        spool.append("t", b"x", 1.0, replayed=False)
        modes = {p.name: p.stat().st_mode & 0o777 for p in (tmp_path / "spool").iterdir()}
        spool.close()
        assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700
        assert modes == {"spool.sqlite3": 0o600, "spool.sqlite3-wal": 0o600, "spool.sqlite3-shm": 0o600}
        # a spool an older agent left world-readable is restricted when opened
        for p in (tmp_path / "spool").iterdir():
            p.chmod(0o644)
        (tmp_path / "spool").chmod(0o755)
        SqliteSpool(tmp_path / "spool", 1 << 20, 3600).close()
        assert (tmp_path / "spool").stat().st_mode & 0o777 == 0o700
        assert {p.stat().st_mode & 0o777 for p in (tmp_path / "spool").iterdir()} == {0o600}
    finally:
        os.umask(old)


def test_only_the_newest_corrupt_spool_copies_are_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    for stamp in range(1000, 1005):
        (tmp_path / f"spool.sqlite3.corrupt-{stamp}").write_bytes(b"old")
    (tmp_path / "spool.sqlite3.corrupt-1000-wal").write_bytes(b"old")
    (tmp_path / "spool.sqlite3").write_bytes(b"SQLite format 3\x00" + os.urandom(4096))
    with caplog.at_level("WARNING", logger="edgekit_agent"):
        SqliteSpool(tmp_path, 1 << 20, 3600).close()
    copies = sorted(p.name for p in tmp_path.iterdir() if ".corrupt-" in p.name)
    assert len(copies) == KEEP_CORRUPT == 3
    assert copies[:2] == ["spool.sqlite3.corrupt-1003", "spool.sqlite3.corrupt-1004"]  # and the one just made
    assert "removed 3 older corrupt spool copies" in caplog.text


def test_sqlite_spool_unwritable_dir_is_a_spool_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(SpoolError) as info:
        SqliteSpool(blocker / "spool")
    assert info.value.exit_code == 37


def test_spool_concurrent_appends_keep_every_message(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path, 1 << 24, 3600)

    def writer(k: int) -> None:
        for i in range(200):
            spool.append("t", b"%d-%d" % (k, i), 0.0, replayed=False)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    entries = spool.peek(0, 10_000)
    assert len(entries) == 800
    for k in range(4):  # per writer, order is kept
        mine = [int(e.payload.split(b"-")[1]) for e in entries if e.payload.startswith(b"%d-" % k)]
        assert mine == list(range(200))


def test_stats_window_percentiles_and_histogram() -> None:
    stats = InferenceStats()
    for ms in range(1, 101):
        stats.record(ms / 1000)
    for _ in range(3):
        stats.record_error("boom")
    stats.fold()
    stats.record(0.5)
    w = stats.take_window()
    assert (w.inferences, w.errors, w.last_error) == (104, 3, "boom")
    assert w.p50_ms == pytest.approx(51, abs=1) and w.p99_ms == pytest.approx(100, abs=2) and w.max_ms == 500
    assert stats.take_window().inferences == 0
    buckets = dict(stats.cumulative_buckets())
    assert buckets[0.01] == 10 and buckets[0.1] == 100 and buckets[float("inf")] == 101


def test_stats_lose_nothing_under_concurrent_recording() -> None:
    # A fixed count per thread: recording as fast as possible for as long as the windows take would
    # let the pending list outgrow memory whenever folding is starved of the GIL on a busy machine.
    stats = InferenceStats()
    per_thread = 200_000

    def worker() -> None:
        record = stats.record
        for _ in range(per_thread):
            record(0.001)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    total = 0
    while any(t.is_alive() for t in threads):
        total += stats.take_window().inferences
    for t in threads:
        t.join()
    total += stats.take_window().inferences
    assert total == 2 * per_thread


class FakeClock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now


def test_many_cores_share_one_session_with_their_own_clock(digits_folder: Path) -> None:
    """What the fleet simulator does: one verified model, one onnxruntime session, many devices."""
    model = load_model(digits_folder, allow_unsigned=True)
    clock = FakeClock()
    cores = [AgentCore(load_settings(overrides={"device": f"sim-{i}", "group": "sim", "interval": 10,
                                                "probe_interval": 60}), clock=clock) for i in range(50)]
    for core in cores:
        assert core.use_model(model)
        assert core.model is not None and core.model.session is model.session
    x = np.zeros((1, 1, 8, 8), np.float32)
    for i, core in enumerate(cores):
        for _ in range(i % 3 + 1):
            core.infer({"input": x})
        core.stats.record_error("injected")
    clock.now += 10
    reports = [core.report_health() for core in cores]
    assert [r["inferences"] for r in reports] == [i % 3 + 2 for i in range(50)]
    assert all(r["errors"] == 1 and r["window_s"] == 10 and r["ts"] == clock.now for r in reports)
    assert len({r["session"] for r in reports}) == 50
    # probes follow the injected clock
    before = cores[0].probe_ts
    clock.now += 61
    cores[0].tick()
    assert cores[0].probe_ts == clock.now != before


def test_error_burst_event(digits_folder: Path) -> None:
    clock = FakeClock()
    core = AgentCore(load_settings(overrides={"device": "burst", "interval": 1, "error_burst_min": 3}), clock=clock)
    sent: list[tuple[str, dict[str, Any]]] = []

    class Box:
        def __init__(self) -> None:
            self.spool: Spool = MemorySpool()

        @property
        def connected(self) -> bool:
            return True

        def put(self, topic: str, payload: bytes, created: float) -> None:
            sent.append((topic, json.loads(payload)))

        def publish_status(self) -> None:
            pass

        def stop(self, timeout: float = 5.0) -> None:
            pass

        def abort(self) -> None:
            pass

    core.outbox = Box()
    core.use_model(load_model(digits_folder, allow_unsigned=True))
    with pytest.raises(Exception, match="inference failed"):
        core.infer({"input": np.zeros((1, 2, 8, 8), np.float32)})
    for _ in range(4):
        core.stats.record_error("injected")
    clock.now += 1
    core.tick()
    bursts = [p for t, p in sent if t.endswith("/event") and p["kind"] == "error_burst"]
    assert len(bursts) == 1 and bursts[0]["data"]["errors"] == 5 and "injected" in bursts[0]["detail"]


def test_choose_providers_prefers_what_exists_and_keeps_cpu_last() -> None:
    available = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "AzureExecutionProvider", CPU]
    assert choose_providers((), available) == ["TensorrtExecutionProvider", "CUDAExecutionProvider", CPU]
    assert choose_providers(("OpenVINOExecutionProvider", "CUDAExecutionProvider"), available) == [
        "CUDAExecutionProvider", CPU]
    assert choose_providers((CPU,), [CPU]) == [CPU]


def test_unavailable_provider_falls_back_to_cpu(digits_folder: Path) -> None:
    model = load_model(digits_folder, allow_unsigned=True, providers=("CUDAExecutionProvider",))
    assert model.session.providers == (CPU,)


def test_backoff_grows_with_jitter_and_caps() -> None:
    import random

    rng = random.Random(7)
    delays = [backoff_delay(a, 0.5, 30, rng) for a in range(12)]
    assert all(0.25 <= d <= 30 for d in delays)
    assert delays[5] > delays[0] and max(delays) <= 30 and min(delays[8:]) >= 15
    assert len({round(backoff_delay(3, 0.5, 30, rng), 6) for _ in range(20)}) > 10  # jitter


def test_mark_replayed() -> None:
    assert json.loads(mark_replayed(b'{"seq":3,"replayed":false}')) == {"seq": 3, "replayed": True}


def test_sqlite_file_is_a_plain_database(tmp_path: Path) -> None:
    spool = SqliteSpool(tmp_path)
    spool.append("a/b", b"{}", 1.0, replayed=False)
    with sqlite3.connect(spool.path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("SELECT topic FROM outbox").fetchall() == [("a/b",)]


def test_spool_size_bound_spares_messages_awaiting_puback(make_spool: Any) -> None:
    spool = make_spool(max_bytes=1000)
    ids = [spool.append("t/health", b"x" * 60, float(i), replayed=False) for i in range(8)]
    spool.sent_through = ids[2]  # the publisher has these on the wire
    for i in range(8, 20):
        spool.append("t/health", b"x" * 60, float(i), replayed=False)
    kept = [e.id for e in spool.peek(0, 100)]
    assert kept[:3] == ids[:3] and ids[3] not in kept
