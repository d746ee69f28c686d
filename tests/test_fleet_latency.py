"""Fleet latency from the agents' histograms: window and group percentiles over every latency (not a
p95 of per-device p95s), old agents without histograms, hostile histograms, the exporter, and
``fleet status`` JSON. The truth is always computed with numpy from the raw samples fed in."""

from __future__ import annotations

import json
import threading
import time
import uuid
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from click.testing import CliRunner
from edgekit_agent.protocol import health_payload, status_payload
from edgekit_agent.protocol.histograms import MAX_BUCKETS, LatencyHistogram
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from edgekit.cli import cli
from edgekit.fleet import FleetState, FleetView, Ingestor, TrackerConfig
from edgekit.fleet.exporting import FleetCollector
from edgekit.rehearsal.mosquitto import MosquittoBroker
from edgekit.rollout.service import FleetTelemetry
from tests.fixtures.fleet import SimFleet

OLD = "sha256:" + "01" * 32
NEW = "sha256:" + "02" * 32
T0 = 1_700_000_000.0
REL = 0.01


def model(digest: str = OLD) -> dict[str, str]:
    return {"name": "digits", "version": "2" if digest == NEW else "1", "digest": digest}


def payload(device: str, seq: int, ts: float, samples: np.ndarray, *, group: str = "g", session: str = "s1",
            digest: str = OLD, hist: Any = True, errors: int = 0, inferences: int | None = None) -> dict[str, Any]:
    """A health payload as the agent builds it: its own percentiles of the window's samples, and
    (unless ``hist`` is False, or a raw value to send instead) the histogram of them."""
    p50, p95, p99 = (float(v) for v in np.percentile(samples, [50, 95, 99])) if len(samples) else (0.0,) * 3
    wire = LatencyHistogram.from_ms(samples).to_wire() if hist is True else None if hist is False else hist
    return dict(health_payload(
        device=device, group=group, session=session, seq=seq, ts=ts, model=model(digest),  # type: ignore[arg-type]
        window_s=10.0, inferences=len(samples) + errors if inferences is None else inferences, errors=errors,
        latency_ms={"p50": p50, "p95": p95, "p99": p99, "max": float(samples.max()) if len(samples) else 0.0},
        probe={"ok": True, "ts": ts}, rss_mb=50.0, cpu_pct=5.0, latency_hist=wire))  # type: ignore[arg-type]


class Fleet:
    def __init__(self, **config: Any) -> None:
        self.state = FleetState(TrackerConfig(**config))
        self.ingest = Ingestor(self.state)
        self.view = FleetView(self.state)

    def send(self, p: dict[str, Any]) -> str:
        return self.ingest.ingest(f"edgekit/v1/{p['group']}/{p['device']}/health", orjson.dumps(p), T0 + 100)


def within(value: float | None, truth: float, rel: float = REL) -> bool:
    return value is not None and abs(value - truth) <= rel * truth


def mixed_fleet(rng: np.random.Generator) -> tuple[dict[str, list[np.ndarray]], list[str]]:
    """8 busy fast devices and 4 quiet slow ones, 3 windows each: the fleet's p95 is a fast
    latency, while a p95 of the devices' p95s is a slow one."""
    windows: dict[str, list[np.ndarray]] = {}
    for i in range(8):
        windows[f"fast-{i}"] = [rng.lognormal(np.log(10 + i), 0.3, 2000) for _ in range(3)]
    for i in range(4):
        windows[f"slow-{i}"] = [rng.lognormal(np.log(80), 0.4, 50) for _ in range(3)]
    return windows, list(windows)


def test_window_p95_is_the_fleet_p95_not_a_p95_of_p95s() -> None:
    windows, names = mixed_fleet(np.random.default_rng(7))
    f = Fleet()
    for name, ws in windows.items():
        for k, samples in enumerate(ws):
            assert f.send(payload(name, k + 1, T0 + 10 * k, samples)) == "latest"
    everything = np.concatenate([s for ws in windows.values() for s in ws])
    stats = f.view.window(names, T0)
    assert stats.latency_exact and stats.no_hist == []
    for q, got in ((50, stats.p50_ms), (95, stats.p95_ms), (99, stats.p99_ms)):
        assert within(got, float(np.percentile(everything, q))), (q, got)
        assert within(got, float(np.percentile(everything, q, method="inverted_cdf"))), (q, got)
    assert stats.latency_hist is not None and stats.latency_hist.count == len(everything)
    # what the view reported before histograms: the p95 across devices of each device's p95
    device_p95 = [np.average([np.percentile(w, 95) for w in ws], weights=[len(w) for w in ws])
                  for ws in windows.values()]
    p95_of_p95s = float(np.percentile(device_p95, 95))
    truth = float(np.percentile(everything, 95))
    assert p95_of_p95s > 3 * truth

    # a window from the second report on counts only the later windows
    later = f.view.window(names, T0 + 10)
    tail = np.concatenate([s for ws in windows.values() for s in ws[1:]])
    assert within(later.p95_ms, float(np.percentile(tail, 95)))

    # the group figures: every latency of each device's latest window
    (g,) = f.view.groups(now=T0 + 100)
    latest = np.concatenate([ws[-1] for ws in windows.values()])
    assert g.latency_exact and g.no_hist == 0
    for q, got in ((50, g.p50_ms), (95, g.p95_ms), (99, g.p99_ms)):
        assert within(got, float(np.percentile(latest, q))), (q, got)


def test_gates_get_the_merged_histogram_through_fleet_telemetry() -> None:
    windows, names = mixed_fleet(np.random.default_rng(11))
    f = Fleet()
    for name, ws in windows.items():
        for k, samples in enumerate(ws):
            f.send(payload(name, k + 1, T0 + 10 * k, samples, digest=NEW if k == 2 else OLD))
    telemetry = FleetTelemetry(SimpleNamespace(view=lambda: f.view))  # type: ignore[arg-type]
    figures = telemetry.window(names, T0, NEW)
    on_new = np.concatenate([ws[2] for ws in windows.values()])
    assert figures.latency_hist is not None and figures.latency_hist.count == len(on_new)
    assert within(figures.p95_ms, float(np.percentile(on_new, 95)))
    assert within(figures.latency_hist.quantile(0.99), float(np.percentile(on_new, 99)))
    assert figures.inferences == len(on_new)


def test_devices_without_histograms_still_count_and_the_figures_say_approximate() -> None:
    rng = np.random.default_rng(3)
    f = Fleet()
    new = {f"new-{i}": rng.lognormal(np.log(10), 0.3, 500) for i in range(5)}
    old = {f"old-{i}": rng.lognormal(np.log(40), 0.3, 500) for i in range(2)}
    for name, samples in new.items():
        f.send(payload(name, 1, T0, samples))
    for name, samples in old.items():
        f.send(payload(name, 1, T0, samples, hist=False))
    stats = f.view.window([*new, *old], T0)
    assert not stats.latency_exact and stats.latency_hist is None
    assert sorted(stats.no_hist) == sorted(old)
    assert stats.inferences == 3500 and stats.reported == 7
    # the fallback is today's figure: the p95 across devices of their own p95s
    p95s = [float(np.percentile(s, 95)) for s in [*new.values(), *old.values()]]
    assert stats.p95_ms is not None and abs(stats.p95_ms - float(np.percentile(p95s, 95))) < 0.01
    # the new agents alone are exact
    only_new = f.view.window(list(new), T0)
    assert only_new.latency_exact
    assert within(only_new.p95_ms, float(np.percentile(np.concatenate(list(new.values())), 95)))
    (g,) = f.view.groups(now=T0 + 100)
    assert not g.latency_exact and g.no_hist == 2 and g.p95_ms is not None
    # an old agent upgraded: once its window holds only reports with histograms, it is exact again
    for name, samples in old.items():
        f.send(payload(name, 2, T0 + 10, samples))
    assert f.view.window([*new, *old], T0 + 10).no_hist == []
    (g,) = f.view.groups(now=T0 + 100)
    assert g.latency_exact and g.no_hist == 0


HOSTILE: list[tuple[Any, int | None]] = [
    ({"rel_err": 0.01, "offset": 0, "counts": [1] * (MAX_BUCKETS + 1)}, None),   # too many buckets
    ({"rel_err": 0.01, "offset": 0, "counts": [-1, 5]}, None),                   # negative
    ({"rel_err": 0.01, "offset": 10**9, "counts": [1]}, None),                   # far above the range
    ({"rel_err": 0.01, "offset": -(2**62), "counts": [1]}, None),                # far below
    ({"rel_err": 0.01, "offset": 0, "counts": [2**60]}, 2**62),                  # count out of bounds
    ({"rel_err": 0.02, "offset": 0, "counts": [1]}, None),                       # another bucket width
    ({"rel_err": 0.01, "offset": 0, "counts": "abc"}, None),
    ({"rel_err": 0.01, "offset": 0, "counts": [True]}, None),
    ({"rel_err": 0.01, "offset": 0, "counts": [1.5]}, None),
    ({"rel_err": 0.01, "offset": 1.5, "counts": [1]}, None),
    ({"rel_err": 0.01, "counts": [1]}, None),
    ([1, 2, 3], None),
    ("histogram", None),
    ({"rel_err": 0.01, "offset": 200, "counts": [10_000]}, None),               # more latencies than inferences
]


@pytest.mark.parametrize(("bad", "inferences"), HOSTILE)
def test_hostile_histograms_are_dropped_and_counted_and_break_nothing(bad: Any, inferences: int | None) -> None:
    rng = np.random.default_rng(5)
    f = Fleet()
    honest = {f"ok-{i}": rng.lognormal(np.log(10), 0.3, 300) for i in range(3)}
    for name, samples in honest.items():
        f.send(payload(name, 1, T0, samples))
    samples = rng.lognormal(np.log(10), 0.3, 300)
    assert f.send(payload("evil", 1, T0, samples, hist=bad, inferences=inferences)) == "latest"
    assert f.state.counters.hist_rejected == 1
    assert f.state.counters.rejected_total == 0
    stats = f.view.window([*honest, "evil"], T0)
    assert stats.reported == 4 and stats.no_hist == ["evil"] and not stats.latency_exact
    assert stats.inferences == 900 + (300 if inferences is None else min(inferences, 2**32 - 1))  # kept as u32
    assert within(f.view.window(list(honest), T0).p95_ms,
                  float(np.percentile(np.concatenate(list(honest.values())), 95)))
    assert f.view.groups(now=T0 + 100)[0].no_hist == 1
    assert f.view.snapshot(now=T0 + 100).to_dict()["ingest"]["hist_rejected"] == 1


def test_a_histogram_wider_than_the_limit_is_not_kept() -> None:
    f = Fleet(max_hist_bytes=256)
    wide = LatencyHistogram(0, (300,) * 200)   # 16-bit counts: 403 packed bytes
    p = payload("wide", 1, T0, np.array([1.0]), hist=wide.to_wire(), inferences=wide.count)
    assert f.send(p) == "latest"
    assert f.state.counters.hist_rejected == 1
    assert f.view.window(["wide"], T0).no_hist == ["wide"]
    assert f.state.devices["wide"].hists in (None, [None])


def test_histograms_follow_the_history_ring_and_late_reports() -> None:
    rng = np.random.default_rng(9)
    f = Fleet(history=4)
    windows = [rng.lognormal(np.log(5 + k), 0.2, 400) for k in range(7)]
    for k in (0, 1, 2, 3, 4, 6):                  # the ring wraps; window 5 comes late
        f.send(payload("d", k + 1, T0 + 10 * k, windows[k]))
    assert f.send(payload("d", 6, T0 + 50, windows[5])) == "history"   # replaces the oldest kept (ts 20)
    stats = f.view.window(["d"], T0 + 30)
    truth = np.concatenate([windows[k] for k in (3, 4, 5, 6)])
    assert stats.latency_exact and stats.latency_hist is not None
    assert stats.latency_hist.count == len(truth)
    assert within(stats.p95_ms, float(np.percentile(truth, 95)))


def test_the_group_table_shows_the_fleet_percentiles_and_marks_approximations() -> None:
    from rich.console import Console

    from edgekit.cli.fleet import _render

    rng = np.random.default_rng(19)
    f = Fleet()
    exact = {f"d{i}": rng.lognormal(np.log(10 + 5 * i), 0.3, 2000) for i in range(4)}
    for name, samples in exact.items():
        f.send(payload(name, 1, T0, samples))
    f.send(payload("old-0", 1, T0, rng.lognormal(np.log(10), 0.3, 500), group="old", hist=False))
    con = Console(width=200, force_terminal=False)
    with con.capture() as captured:
        con.print(_render(con, f.view.snapshot(now=T0 + 5), None, devices=False, sort="name"))
    lines = {line.split()[0]: line for line in captured.get().splitlines() if line.split()}
    assert "LATENCY" in lines["GROUP"]
    figures = next(cell for cell in lines["g"].split() if cell.count("/") == 2)
    everything = np.concatenate(list(exact.values()))
    for got, q in zip(figures.split("/"), (50, 95, 99), strict=True):
        assert within(float(got), float(np.percentile(everything, q, method="inverted_cdf")), REL + 0.005), q
    assert next(cell for cell in lines["old"].split() if cell.count("/") == 2).startswith("~")
    assert "1 device(s) without a usable latency histogram" in captured.get()


def scrape(f: Fleet) -> dict[str, Any]:
    watcher = SimpleNamespace(settings=SimpleNamespace(group=None),
                              snapshot=lambda **kw: f.view.snapshot(now=T0 + 100, **kw))
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FleetCollector(watcher))  # type: ignore[arg-type]
    return {fam.name: fam for fam in text_string_to_metric_families(generate_latest(registry).decode())}


def test_exporter_exposes_fleet_percentiles_and_a_classic_histogram() -> None:
    windows, _ = mixed_fleet(np.random.default_rng(13))
    f = Fleet()
    for name, ws in windows.items():
        for k, samples in enumerate(ws):
            f.send(payload(name, k + 1, T0 + 10 * k, samples))
    families = scrape(f)
    latest = np.concatenate([ws[-1] for ws in windows.values()])
    quantiles = {s.labels["quantile"]: s.value for s in families["edgekit_fleet_latency_ms"].samples}
    for q in ("0.5", "0.95", "0.99"):
        assert within(quantiles[q], float(np.percentile(latest, float(q) * 100))), q
    assert [s.value for s in families["edgekit_fleet_latency_exact"].samples] == [1.0]
    # the classic histogram: every latency received in a histogram, folded to fixed le bounds
    everything = np.concatenate([s for ws in windows.values() for s in ws])
    hist = families["edgekit_fleet_inference_latency_ms"]
    buckets = {float(s.labels["le"]): s.value for s in hist.samples if s.name.endswith("_bucket")}
    count = next(s.value for s in hist.samples if s.name.endswith("_count"))
    total = next(s.value for s in hist.samples if s.name.endswith("_sum"))
    assert count == len(everything) == buckets[float("inf")]
    assert abs(total - everything.sum()) <= REL * everything.sum()
    for le, cumulative in buckets.items():
        if le != float("inf"):
            assert (everything <= le * (1 - REL)).sum() <= cumulative <= (everything <= le * (1 + REL)).sum(), le
    assert 0 < buckets[10.0] < buckets[25.0] < len(everything)

    # a device whose histogram is unusable: counted, and the group's figures are flagged approximate
    f.send(payload("evil", 1, T0, np.array([5.0]), hist={"rel_err": 0.01, "offset": -10**6, "counts": [1]}))
    families = scrape(f)
    assert [s.value for s in families["edgekit_fleet_latency_exact"].samples] == [0.0]
    assert [s.value for s in families["edgekit_fleet_devices_without_histogram"].samples] == [1.0]
    assert [s.value for s in families["edgekit_fleet_histograms_rejected"].samples
            if s.name.endswith("_total")] == [1.0]
    assert {s.labels["quantile"] for s in families["edgekit_fleet_latency_ms"].samples} == {"0.5", "0.95", "0.99"}


@pytest.mark.mqtt
def test_fleet_status_json_carries_the_group_percentiles(mqtt_broker: MosquittoBroker) -> None:
    rng = np.random.default_rng(17)
    group = f"g-{uuid.uuid4().hex[:8]}"
    sim = SimFleet(mqtt_broker, group, 6)
    samples = {d: rng.lognormal(np.log(8 + 4 * i), 0.35, 2000 if i < 4 else 200) for i, d in enumerate(sim.devices)}
    stop = threading.Event()

    def report() -> None:
        infos = []
        for d in sim.devices:
            p = payload(d, sim._next(d), time.time(), samples[d], group=group, session=sim.session[d])
            infos.append(sim.publish(d, "health", p))
        sim._wait(infos)

    def loop() -> None:
        while not stop.is_set():
            report()
            stop.wait(0.3)

    try:
        for d in sim.devices:
            sim._wait([sim.publish(d, "status", status_payload(
                device=d, group=group, session=sim.session[d], seq=sim._next(d), ts=time.time(),
                model=model(), state="online", agent_version="0.2.0", ready=True), retain=True)])  # type: ignore[arg-type]
        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        result = CliRunner().invoke(cli, ["fleet", "status", "--broker", mqtt_broker.url, "-g", group, "-O", "json",
                                          "--wait", "5", "--interval", "5"], catch_exceptions=False)
    finally:
        stop.set()
        sim.close()
    assert result.exit_code == 0, result.stderr
    (g,) = json.loads(result.stdout)["groups"]
    assert g["reporting"] == 6 and g["latency_exact"] is True and g["no_hist"] == 0
    everything = np.concatenate(list(samples.values()))
    for q in (50, 95, 99):   # nearest rank: the sample quantile a histogram is within 1% of
        assert within(g[f"p{q}_ms"], float(np.percentile(everything, q, method="inverted_cdf"))), q
