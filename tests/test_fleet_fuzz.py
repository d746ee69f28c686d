"""Fuzzing the tracker with hypothesis: whatever one sender publishes, the tracker never raises and
the state of every other device (and their group's aggregates) stays exactly as it was."""

from __future__ import annotations

from typing import Any

import orjson
from edgekit_agent.protocol import event_payload, health_payload, status_payload
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgekit.fleet import FleetState, FleetView, Ingestor, TrackerConfig
from edgekit.fleet.aggregating import GroupAggregate

T0 = 1_700_000_000.0
DIGEST = "sha256:" + "cd" * 32
MODEL = {"name": "m", "version": "1", "digest": DIGEST}

_text = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)   # JSON can carry any but surrogates
json_scalars = (st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
                | st.floats(allow_nan=False, allow_infinity=False) | _text)
json_values = st.recursive(json_scalars, lambda inner: st.lists(inner, max_size=3)
                           | st.dictionaries(_text, inner, max_size=3), max_leaves=8)
KEYS = ["v", "device", "group", "session", "seq", "ts", "model", "window_s", "inferences", "errors",
        "latency_ms", "probe", "rss_mb", "cpu_pct", "replayed", "state", "agent_version", "ready", "kind",
        "detail", "p50", "p95", "max", "ok", "digest", "name", "latency_hist", "rel_err", "offset", "counts"]


def base(kind: str, device: str = "attacker", group: str = "evil") -> dict[str, Any]:
    common: dict[str, Any] = {"device": device, "group": group, "session": "s", "seq": 1, "ts": T0,
                              "model": dict(MODEL)}
    if kind == "health":
        return dict(health_payload(**common, window_s=10.0, inferences=10, errors=0,
                                   latency_ms={"p50": 1.0, "p95": 2.0, "p99": 3.0, "max": 4.0},
                                   probe={"ok": True, "ts": T0}, rss_mb=1.0, cpu_pct=1.0,
                                   latency_hist={"rel_err": 0.01, "offset": 40, "counts": [3, 0, 5, 2]}))
    if kind == "status":
        return dict(status_payload(**common, state="online", agent_version="1"))
    return dict(event_payload(**common, kind="probe_failed", detail="x"))


@st.composite
def mutated(draw: st.DrawFn) -> tuple[str, bytes]:
    kind = draw(st.sampled_from(["health", "status", "event"]))
    topic_kind = draw(st.sampled_from([kind, kind, "health", "status", "event"]))
    topic = draw(st.sampled_from([
        f"edgekit/v1/evil/attacker/{topic_kind}", f"edgekit/v1/evil/attacker/{topic_kind}",
        "edgekit/v1/evil/attacker", "edgekit/v1/good/victim-1/x", "edgekit/v1//attacker/health",
        "other/evil/attacker/health", "edgekit/v1/evil/+/health"]))
    if draw(st.integers(0, 9)) == 0:
        return topic, draw(st.binary(max_size=200))
    payload: Any = base(kind, device=draw(st.sampled_from(["attacker", "attacker", "victim-1"])))
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.integers(0, 3))
        key = draw(st.sampled_from(KEYS))
        target = payload
        if op == 3:  # reach into a nested object
            nested = [k for k, v in payload.items() if isinstance(v, dict)]
            if nested:
                target = payload[draw(st.sampled_from(nested))]
        if op == 0:
            target.pop(key, None)
        else:
            target[key] = draw(json_values)
    if draw(st.integers(0, 19)) == 0:
        payload = draw(json_values)
    return topic, orjson.dumps(payload)


def victims() -> tuple[FleetState, Ingestor]:
    state = FleetState(TrackerConfig(history=4, flood_limit=10_000))
    ingest = Ingestor(state)
    for i, dev in enumerate(["victim-1", "victim-2"]):
        ingest.ingest(f"edgekit/v1/good/{dev}/status", orjson.dumps(base("status", dev, "good")), T0, True)
        h = base("health", dev, "good")
        h.update(seq=5, inferences=100 + i, errors=i)
        ingest.ingest(f"edgekit/v1/good/{dev}/health", orjson.dumps(h), T0)
    return state, ingest


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(mutated(), min_size=1, max_size=8))
def test_fuzzed_messages_never_raise_nor_touch_other_devices(messages: list[tuple[str, bytes]]) -> None:
    state, ingest = victims()
    view = FleetView(state)
    before = [view.device(d, now=T0) for d in ("victim-1", "victim-2")]
    window_before = view.window(["victim-1", "victim-2"], T0, DIGEST)
    good_before = view.groups(now=T0, group="good")
    for topic, payload in messages:
        outcome = ingest.ingest(topic, payload, T0 + 1)
        assert isinstance(outcome, str)
    assert [view.device(d, now=T0) for d in ("victim-1", "victim-2")] == before
    after = view.window(["victim-1", "victim-2"], T0, DIGEST)
    assert after.to_dict() | {"as_of": 0} == window_before.to_dict() | {"as_of": 0}
    assert view.groups(now=T0, group="good") == good_before
    # Every group's running aggregate still equals a recount from its devices.
    for name, agg in state.groups.items():
        fresh = GroupAggregate(name)
        for dev in state.devices.values():
            if dev.group == name:
                fresh.add(dev.contrib)
        assert (agg.status, agg.digests, agg.lat_hist) == (fresh.status, fresh.digests, fresh.lat_hist)
        assert (agg.no_hist, agg.dense.count) == (fresh.no_hist, fresh.dense.count)
        assert (agg.dense.slots == fresh.dense.slots).all()
    # Snapshots and rows of whatever the attacker created render without error.
    view.snapshot(with_devices=True).to_dict()
    view.window(list(state.devices), 0.0)
    c = state.counters
    assert c.received == 4 + len(messages)
    assert c.accepted + c.rejected_total <= c.received


@settings(max_examples=200, deadline=None)
@given(st.floats(min_value=0, allow_nan=False, allow_infinity=False),
       st.integers(min_value=0, max_value=2**63), st.floats(min_value=0, allow_nan=False, allow_infinity=False))
def test_extreme_but_valid_values(big: float, seq: int, ts: float) -> None:
    state, ingest = victims()
    h = base("health")
    h.update(seq=seq, ts=ts, window_s=big or 1.0, inferences=seq, errors=seq // 2, rss_mb=big, cpu_pct=big,
             latency_ms={"p50": big, "p95": big, "p99": big, "max": big}, probe={"ok": False, "ts": big})
    assert ingest.ingest("edgekit/v1/evil/attacker/health", orjson.dumps(h), T0) == "latest"
    view = FleetView(state)
    row = view.device("attacker", now=T0)
    assert row is not None and row.inferences is not None
    view.window(["attacker"], 0.0)
    view.snapshot(with_devices=True)


@settings(max_examples=200, deadline=None)
@given(st.integers(-400, 800) | st.integers(-(2**63), 2**63 - 1),
       st.lists(st.integers(0, 300) | st.integers(-(2**63), 2**64 - 1), max_size=40),
       st.integers(0, 3000) | st.integers(0, 2**40))
def test_any_histogram_numbers_are_kept_only_when_valid(offset: int, counts: list[int], inferences: int) -> None:
    state, ingest = victims()
    h = base("health")
    h.update(inferences=inferences, latency_hist={"rel_err": 0.01, "offset": offset, "counts": counts})
    assert ingest.ingest("edgekit/v1/evil/attacker/health", orjson.dumps(h), T0) == "latest"
    stats = FleetView(state).window(["attacker", "victim-1"], 0.0)
    valid = not counts or (offset >= -345 and offset + len(counts) - 1 <= 755
                           and all(0 <= c < 2**53 for c in counts) and sum(counts) <= inferences)
    assert state.counters.hist_rejected == (0 if valid else 1)
    assert stats.latency_exact == (valid or inferences == 0)
    assert stats.no_hist == ([] if valid or inferences == 0 else ["attacker"])
    if stats.latency_exact:   # the victim's 10 latencies, and the attacker's (kept as 32-bit counts)
        kept = sum(min(c, 2**32 - 1) for c in counts) if inferences else 0
        assert stats.latency_hist is not None and stats.latency_hist.count == 10 + kept
