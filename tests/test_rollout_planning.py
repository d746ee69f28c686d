"""The wave planner: deterministic, canary first, cumulative targets, spread across zones."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgekit.errors import EmptyGroupError, InvalidWavesError, SelectorError
from edgekit.rollout.planning import natural_key, order_nodes, plan_waves
from edgekit.rollout.strategy import build_strategy

ZONE = "topology.kubernetes.io/zone"


def group(n: int, zones: int = 0) -> dict[str, dict[str, str]]:
    return {f"edge-{i}": ({ZONE: f"z{i % zones}"} if zones else {}) for i in range(n)}


def test_two_hundred_nodes_in_four_waves() -> None:
    plan = plan_waves(group(200), build_strategy(waves="1,5%,25%,100%"))
    assert [w.size for w in plan] == [1, 9, 40, 150]
    assert [w.cumulative for w in plan] == [1, 10, 50, 200]
    assert plan[0].nodes == ("edge-0",)          # natural order: edge-2 before edge-10
    assert plan[1].nodes[:2] == ("edge-1", "edge-2")
    moved = [n for w in plan for n in w.nodes]
    assert sorted(moved) == sorted(group(200)) and len(set(moved)) == 200


def test_percentages_that_round_together_drop_empty_waves() -> None:
    plan = plan_waves(group(10), build_strategy(waves="1,5%,10%,100%"))
    assert [w.size for w in plan] == [1, 9]
    assert [str(w.target) for w in plan] == ["1", "100%"]
    assert [w.index for w in plan] == [0, 1]


def test_counts_beyond_the_group_are_clamped() -> None:
    plan = plan_waves(group(3), build_strategy(waves="1,5,100%"))
    assert [w.size for w in plan] == [1, 2]


def test_waves_that_do_not_cover_the_group() -> None:
    with pytest.raises(InvalidWavesError) as info:
        plan_waves(group(50), build_strategy(waves="1,10"))
    assert "cover 10 of 50 nodes" in info.value.one_line()


def test_count_overtaken_by_group_size() -> None:
    plan = plan_waves(group(20), build_strategy(waves="5,10%,100%"))
    assert [w.size for w in plan] == [5, 15]


def test_empty_group() -> None:
    with pytest.raises(EmptyGroupError) as info:
        plan_waves({}, build_strategy(), group="cameras")
    assert info.value.exit_code == 62
    assert "'cameras' has no nodes" in info.value.one_line()


def test_spread_by_zone_every_wave_spans_zones() -> None:
    nodes = group(90, zones=3)
    plan = plan_waves(nodes, build_strategy(waves="1,10%,50%,100%", spread_by=ZONE))
    assert [w.size for w in plan] == [1, 8, 36, 45]
    for wave in plan[1:]:
        counts = dict(wave.zones)
        assert set(counts) == {"z0", "z1", "z2"}
        assert max(counts.values()) - min(counts.values()) <= 1


def test_spread_by_uneven_zones_and_unlabelled_nodes() -> None:
    nodes = {f"a-{i}": {ZONE: "a"} for i in range(60)}
    nodes |= {f"b-{i}": {ZONE: "b"} for i in range(30)}
    nodes |= {f"c-{i}": {} for i in range(10)}
    plan = plan_waves(nodes, build_strategy(waves="1,10%,100%", spread_by=ZONE))
    second = dict(plan[1].zones)
    assert second == {"": 1, "a": 5, "b": 3}   # with the canary (a): 6:3:1 over the first 10


def test_canary_selector_puts_the_matching_nodes_first() -> None:
    nodes = group(30, zones=3)
    for name in ("edge-29", "edge-7"):
        nodes[name]["edgekit.io/canary"] = "true"
    strategy = build_strategy(waves="2,50%,100%", spread_by=ZONE, canary_selector="edgekit.io/canary=true")
    plan = plan_waves(nodes, strategy)
    assert plan[0].nodes == ("edge-7", "edge-29")
    rest = [n for w in plan[1:] for n in w.nodes]
    assert rest == order_nodes({n: v for n, v in nodes.items() if n not in ("edge-7", "edge-29")}, ZONE)
    # the strategy goes through the resource and back unchanged
    assert type(strategy).from_json(strategy.to_json()) == strategy


def test_canary_selector_that_matches_nothing_or_does_not_parse() -> None:
    with pytest.raises(SelectorError, match="matches no node"):
        plan_waves(group(5), build_strategy(waves="1,100%", canary_selector="edgekit.io/canary=true"))
    with pytest.raises(SelectorError, match="does not parse"):
        build_strategy(waves="1,100%", canary_selector="a in (b")


def test_natural_order() -> None:
    assert sorted(["n10", "n2", "n1", "m3"], key=natural_key) == ["m3", "n1", "n2", "n10"]


@settings(max_examples=150, deadline=None)
@given(
    names=st.sets(st.from_regex(r"[a-z]{1,3}-[0-9]{1,3}", fullmatch=True), min_size=1, max_size=120),
    zones=st.integers(min_value=0, max_value=5),
    waves=st.sampled_from(["1,5%,25%,100%", "100%", "2,10,100%", "1,50%,100%", "3,33%,66%,100%"]),
    spread=st.booleans(),
)
def test_plan_properties(names: set[str], zones: int, waves: str, spread: bool) -> None:
    nodes = {n: ({ZONE: f"z{hash(n) % zones}"} if zones else {}) for n in sorted(names)}
    strategy = build_strategy(waves=waves, spread_by=ZONE if spread else None)
    plan = plan_waves(nodes, strategy)
    moved = [n for w in plan for n in w.nodes]
    assert sorted(moved) == sorted(nodes)                 # every node exactly once
    assert all(w.size > 0 for w in plan)
    assert plan[-1].cumulative == len(nodes)
    assert plan == plan_waves(dict(reversed(list(nodes.items()))), strategy)  # input order is irrelevant
    assert moved == order_nodes(nodes, strategy.spread_by)
