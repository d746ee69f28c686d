"""The fleet state: ordering and staleness rules, seq gaps, window queries, incremental aggregates."""

from __future__ import annotations

from typing import Any

import orjson
from edgekit_agent.protocol import event_payload, health_payload, status_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.fleet import FleetState, FleetView, Ingestor, TrackerConfig
from edgekit.fleet.aggregating import GroupAggregate, latency_bucket, latency_value, percentile

OLD = "sha256:" + "01" * 32
NEW = "sha256:" + "02" * 32
T0 = 1_700_000_000.0


def model(digest: str = OLD) -> dict[str, str]:
    return {"name": "digits", "version": "2" if digest == NEW else "1", "digest": digest}


class Fleet:
    """An ingestor plus helpers that publish real agent payloads into it."""

    def __init__(self, **config: Any) -> None:
        self.state = FleetState(TrackerConfig(**config))
        self.ingest = Ingestor(self.state)
        self.view = FleetView(self.state)
        self.now = T0

    def health(self, device: str, seq: int, ts: float, *, group: str = "g", session: str = "s1",
               digest: str | None = OLD, inferences: int = 100, errors: int = 0, p95: float = 10.0,
               probe: bool | None = True, replayed: bool = False) -> str:
        p = health_payload(device=device, group=group, session=session, seq=seq, ts=ts,
                           model=model(digest) if digest else None,  # type: ignore[arg-type]
                           window_s=10.0, inferences=inferences, errors=errors,
                           latency_ms={"p50": p95 / 2, "p95": p95, "p99": p95 * 1.5, "max": p95 * 2},
                           probe={"ok": probe, "ts": ts}, rss_mb=50.0, cpu_pct=5.0, replayed=replayed)
        return self.ingest.ingest(f"edgekit/v1/{group}/{device}/health", orjson.dumps(p), self.now)

    def status(self, device: str, online: bool, seq: int, ts: float, *, group: str = "g",
               session: str = "s1", digest: str | None = OLD, retained: bool = False) -> str:
        p = status_payload(device=device, group=group, session=session, seq=seq, ts=ts,
                           model=model(digest) if digest else None,  # type: ignore[arg-type]
                           state="online" if online else "offline", agent_version="0.1.0", ready=online)
        return self.ingest.ingest(f"edgekit/v1/{group}/{device}/status", orjson.dumps(p), self.now,
                                  retained=retained)

    def event(self, device: str, kind: str, seq: int, ts: float, *, group: str = "g", session: str = "s1",
              digest: str | None = OLD) -> str:
        p = event_payload(device=device, group=group, session=session, seq=seq, ts=ts,
                          model=model(digest) if digest else None,  # type: ignore[arg-type]
                          kind=kind, detail="x")
        return self.ingest.ingest(f"edgekit/v1/{group}/{device}/event", orjson.dumps(p), self.now)

    def row(self, device: str) -> Any:
        return self.view.device(device, now=self.now)


def test_latest_health_is_never_overwritten_by_older_reports() -> None:
    f = Fleet()
    assert f.health("d1", 5, T0 + 50, p95=50) == "latest"
    assert f.health("d1", 3, T0 + 30, p95=30, replayed=True) == "history"   # replay from the spool
    assert f.health("d1", 4, T0 + 40, p95=40) == "history"                  # straggler
    assert f.health("d1", 5, T0 + 50, p95=50) == "duplicate"                # QoS 1 redelivery
    assert f.health("d1", 3, T0 + 30, p95=30, replayed=True) == "duplicate"
    assert f.row("d1").p95_ms == 50.0
    # A new session orders by ts; an old session's late report does not win.
    assert f.health("d1", 0, T0 + 60, session="s2", p95=60) == "latest"
    assert f.health("d1", 9, T0 + 55, session="s1", p95=55, replayed=True) == "history"
    assert f.row("d1").p95_ms == 60.0
    c = f.state.counters
    assert (c.duplicates, c.stale) == (2, 3)
    # The late reports still count for "what happened since T".
    w = f.view.window(["d1"], T0)
    assert w.inferences == 500 and w.reported == 1


def test_status_birth_will_and_sessions() -> None:
    f = Fleet()
    assert f.status("d1", True, 1, T0, retained=True) == "status"
    assert f.row("d1").status == "online"
    # The will was composed at connect time (seq 0, old ts) and arrives after later messages.
    f.health("d1", 2, T0 + 10)
    f.status("d1", False, 0, T0 - 1)
    assert f.row("d1").status == "offline"
    # New session: birth; then the old session's will arriving late cannot kill it.
    f.status("d1", True, 0, T0 + 100, session="s2")
    assert f.status("d1", False, 0, T0 - 1, session="s1") == "history"
    assert f.row("d1").status == "online"
    # A live report from a session newer than the status marks the device online.
    f.status("d1", False, 1, T0 + 101, session="s2")
    assert f.row("d1").status == "offline"
    f.health("d1", 0, T0 + 200, session="s3")
    assert f.row("d1").status == "online"
    # ... but a replay from the spool does not.
    f.status("d1", False, 1, T0 + 201, session="s3")
    f.health("d1", 0, T0 + 300, session="s4", replayed=True)
    assert f.row("d1").status == "offline"


def test_cleared_status_forgets_the_device() -> None:
    f = Fleet()
    f.status("d1", True, 0, T0)
    f.status("d2", True, 0, T0)
    assert f.view.groups()[0].devices == 2
    assert f.ingest.ingest("edgekit/v1/g/d1/status", b"", f.now) == "cleared"
    assert f.view.groups()[0].devices == 1
    assert f.row("d1") is None


def test_seq_gaps_open_and_fill() -> None:
    f = Fleet()
    f.status("d1", True, 0, T0, retained=True)
    f.health("d1", 10, T0 + 1)                   # joined mid-session: 10 is the baseline
    f.health("d1", 11, T0 + 2)
    f.health("d1", 15, T0 + 3)                   # 12, 13, 14 missing
    assert (f.state.counters.seq_gaps, f.row("d1").gaps_open) == (3, 3)
    f.health("d1", 12, T0 + 1.5, replayed=True)  # arrives late from the spool
    f.health("d1", 13, T0 + 1.6)
    assert f.row("d1").gaps_open == 1
    assert f.state.counters.gaps_filled == 2
    # Events are numbered on their own: no gap between health 15 and event 0, 1; a gap at 3.
    f.event("d1", "error_burst", 0, T0 + 4)
    f.event("d1", "error_burst", 1, T0 + 5)
    f.event("d1", "error_burst", 3, T0 + 6)
    assert f.row("d1").gaps_open == 2
    f.status("d1", False, 1, T0)                 # the will's reserved number is not tracked
    assert f.state.counters.out_of_order == 2
    f.health("d1", 0, T0 + 100, session="s2")    # new session: tracking restarts
    assert f.row("d1").gaps_open == 0


def test_window_query() -> None:
    f = Fleet()
    since = T0 + 100
    # a: old digest before since, new after; b: new with errors and a failed probe; c: stays on old;
    # d: silent since; e: offline; x: never seen.
    f.health("a", 1, T0 + 50, digest=OLD, inferences=1000, errors=500)
    f.health("a", 2, T0 + 110, digest=NEW, inferences=100, errors=1, p95=20)
    f.health("a", 3, T0 + 120, digest=NEW, inferences=300, errors=0, p95=40)
    f.health("b", 1, T0 + 110, digest=NEW, inferences=100, errors=10, p95=100, probe=False)
    f.health("c", 1, T0 + 110, digest=OLD, inferences=100, errors=0)
    f.health("d", 1, T0 + 90, digest=NEW)
    f.health("e", 1, T0 + 110, digest=NEW, inferences=0, errors=0)
    f.status("e", False, 0, T0)
    w = f.view.window(["a", "b", "c", "d", "e", "x", "a"], since, NEW)
    assert w.expected == 6
    assert w.reported == 3                         # a, b, e (c only on OLD)
    assert sorted(w.silent) == ["d", "x"]
    assert w.inferences == 500 and w.errors == 11
    assert w.error_rate == round(11 / 500, 6)
    assert w.off_digest == ["c"] and w.on_digest == 3
    assert w.offline == ["e"]
    assert w.probe_failures == 1
    # a's p95 is the inference-weighted mean of its reports: (20*100 + 40*300) / 400 = 35.
    assert w.p95_ms == round(percentile([35.0, 100.0], 95), 3)  # type: ignore[arg-type]
    assert w.p50_ms == round(percentile([17.5, 50.0], 50), 3)  # type: ignore[arg-type]
    # Without a digest every report since counts.
    w_all = f.view.window(["a", "b", "c"], since)
    assert w_all.reported == 3 and w_all.inferences == 600 and w_all.off_digest == []
    # An unknown digest matches nothing.
    w_none = f.view.window(["a"], since, "sha256:" + "ff" * 32)
    assert w_none.reported == 0 and w_none.off_digest == ["a"] and w_none.p95_ms is None
    # A probe_failed event counts too, on its digest.
    f.event("c", "probe_failed", 2, T0 + 130, digest=OLD)
    assert f.view.window(["c"], since, OLD).probe_failures == 1
    assert f.view.window(["c"], since, NEW).probe_failures == 0


def test_window_reports_truncated_history() -> None:
    f = Fleet(history=4)
    for i in range(10):
        f.health("a", i, T0 + i * 10)
    w = f.view.window(["a"], T0)
    assert w.truncated == ["a"] and w.inferences == 400
    assert f.view.window(["a"], T0 + 60).truncated == []


def test_flood_and_capacity() -> None:
    f = Fleet(flood_limit=5, flood_window_s=60, max_devices=2)
    results = [f.health("a", i, T0 + i) for i in range(8)]
    assert results.count("flood") == 2   # the first message creates the device, then 5 per window
    # A spool replay after an outage is not a flood.
    assert all(f.health("a", i, T0 - 1000 + i, session="s0", replayed=True) == "history" for i in range(20))
    f.now += 60
    assert f.health("a", 9, T0 + 9) == "latest"
    f.health("b", 1, T0)
    assert f.health("c", 1, T0) == "capacity"
    assert f.state.counters.rejected["flood"] == 2 and f.state.counters.rejected["capacity"] == 1


def test_device_moving_groups() -> None:
    f = Fleet()
    f.status("a", True, 0, T0, group="g1", session="s1")
    f.health("a", 1, T0, group="g1", session="s1")
    # The node is relabelled into g2; its agent restarts with a new session.
    f.status("a", True, 0, T0 + 10, group="g2", session="s2")
    f.health("a", 1, T0 + 11, group="g2", session="s2")
    assert [(g.group, g.devices) for g in f.view.groups()] == [("g2", 1)]
    # The old group's retained status (older) arrives, e.g. on resubscribe: it does not move it back.
    f.status("a", False, 1, T0 + 5, group="g1", session="s1", retained=True)
    f.health("a", 2, T0 + 6, group="g1", session="s1", replayed=True)
    assert [(g.group, g.devices, g.online) for g in f.view.groups()] == [("g2", 1, 1)]


def test_group_figures() -> None:
    f = Fleet(interval=10, silent_after=3, max_error_rate=0.05)
    for i in range(10):
        f.status(f"d{i}", True, 0, T0, retained=True)
    for i in range(8):
        f.health(f"d{i}", 1, T0, inferences=100, errors=10 if i == 0 else 0, p95=10.0 + i,
                 digest=NEW if i < 2 else OLD)
    f.status("d9", False, 0, T0)
    g = f.view.groups(now=f.now)[0]
    assert (g.devices, g.online, g.offline, g.reporting, g.silent, g.healthy) == (10, 9, 1, 8, 2, 7)
    assert g.digests == {OLD: 8, NEW: 2}
    assert g.inferences == 800 and g.errors == 10
    assert g.p50_of_p95_ms is not None and abs(g.p50_of_p95_ms - 13.5) < 1.0
    # 31 s later nobody has reported within 3 intervals.
    later = f.view.groups(now=f.now + 31)[0]
    assert later.reporting == 0 and later.healthy == 0


def test_latency_buckets_are_within_two_percent() -> None:
    for ms in (0.05, 1.0, 3.3, 47.0, 1234.5, 99_999.0):
        assert abs(latency_value(latency_bucket(ms)) - ms) / ms < 0.021


def _recompute(state: FleetState, group: str) -> GroupAggregate:
    agg = GroupAggregate(group)
    for dev in state.devices.values():
        if dev.group == group:
            agg.add(dev.contrib)
    return agg


ops = st.lists(st.tuples(
    st.sampled_from(["health", "status", "event", "clear"]),
    st.sampled_from(["a", "b", "c"]), st.sampled_from(["g1", "g2"]), st.sampled_from(["s1", "s2"]),
    st.integers(0, 6), st.floats(0, 100), st.booleans(), st.integers(0, 50),
), max_size=60)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops)
def test_incremental_aggregates_equal_a_full_recount(sequence: list[tuple[Any, ...]]) -> None:
    f = Fleet(interval=10)
    for kind, dev, group, session, seq, dt, flag, n in sequence:
        f.now = T0 + dt
        if kind == "health":
            f.health(dev, seq, T0 + dt, group=group, session=session, errors=n, replayed=flag,
                     digest=NEW if flag else OLD)
        elif kind == "status":
            f.status(dev, flag, seq, T0 + dt, group=group, session=session, retained=n % 2 == 0)
        elif kind == "event":
            f.event(dev, "model_loaded", seq, T0 + dt, group=group, session=session, digest=NEW)
        else:
            f.ingest.ingest(f"edgekit/v1/{group}/{dev}/status", b"", f.now)
    for name, agg in f.state.groups.items():
        fresh = _recompute(f.state, name)
        assert agg.status == fresh.status
        assert agg.digests == fresh.digests
        assert agg.lat_hist == fresh.lat_hist
        assert (agg.inferences, agg.errors) == (fresh.inferences, fresh.errors)
        assert {k: v for k, v in agg.cells.items() if v} == fresh.cells
