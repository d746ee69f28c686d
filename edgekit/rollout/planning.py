"""The wave plan: a pure, deterministic function of the group's nodes and the strategy.

Nodes are ordered once (natural name order; with ``spread_by``, interleaved across the label's
values so that every prefix of the order — and so every wave — spans the zones in proportion to
their size; with ``canary_selector``, the nodes it matches come before all others, each part
ordered that way), then cut at each wave's cumulative target. The same inputs always give the same plan,
so ``edgekit rollout plan`` shows exactly what ``edgekit push`` will do.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgekit.errors import EmptyGroupError, InvalidWavesError, SelectorError
from edgekit.kube.selectors import matches, parse_selector
from edgekit.rollout.strategy import Strategy, WaveStep

NO_ZONE = ""


@dataclass(frozen=True)
class PlannedWave:
    index: int
    target: WaveStep
    nodes: tuple[str, ...]
    cumulative: int
    zones: tuple[tuple[str, int], ...] = ()

    @property
    def size(self) -> int:
        return len(self.nodes)


def natural_key(name: str) -> tuple[tuple[int, int | str], ...]:
    """``node-2`` before ``node-10``; ties broken by the raw text so the order is total."""
    parts = re.split(r"(\d+)", name)
    return (*((0, int(p)) if p.isdigit() else (1, p) for p in parts if p), (1, name))


def order_nodes(nodes: Mapping[str, Mapping[str, str]], spread_by: str | None = None,
                canary_selector: str | None = None) -> list[str]:
    """The order in which nodes are moved. With ``spread_by``, node ``i`` of a zone of ``n``
    gets key ``(i + 0.5) / n``: merging the zones on that key spreads each zone evenly along the
    order (stride scheduling), so any prefix holds every zone in proportion. With
    ``canary_selector``, the matching nodes lead (an operator's lab devices, or the nodes a team
    watches), so a canary wave no larger than their number is made of them alone."""
    if canary_selector:
        reqs = parse_selector(canary_selector)
        first = {n: labels for n, labels in nodes.items() if matches(reqs, labels)}
        if not first:
            raise SelectorError(f"--canary-selector {canary_selector!r} matches no node of the group left to move",
                                hint="check the nodes' labels: kubectl get nodes --show-labels")
        rest = {n: labels for n, labels in nodes.items() if n not in first}
        return order_nodes(first, spread_by) + order_nodes(rest, spread_by)
    names = sorted(nodes, key=natural_key)
    if not spread_by:
        return names
    zones: dict[str, list[str]] = {}
    for name in names:
        zones.setdefault(nodes[name].get(spread_by, NO_ZONE), []).append(name)
    keyed = [((i + 0.5) / len(members), natural_key(zone), i, name)
             for zone, members in zones.items() for i, name in enumerate(members)]
    keyed.sort(key=lambda item: (item[0], item[1], item[2]))
    return [item[3] for item in keyed]


def wave_targets(waves: Sequence[WaveStep], total: int) -> list[int]:
    """Cumulative node counts per wave for a group of ``total``; empty waves are dropped later."""
    counts: list[int] = []
    for step in waves:
        # A count before a percentage can overtake it on a small group (5 then 10% of 20):
        # the later wave is then already reached and comes out empty.
        counts.append(max(step.resolve(total), counts[-1] if counts else 0))
    if counts[-1] < total:
        raise InvalidWavesError(
            f"--waves {','.join(map(str, waves))} cover {counts[-1]} of {total} nodes",
            hint="end with 100% so every node of the group is moved")
    return counts


def plan_waves(nodes: Mapping[str, Mapping[str, str]], strategy: Strategy, *,
               group: str = "") -> tuple[PlannedWave, ...]:
    """Cut the ordered nodes into waves. ``nodes`` maps node name to its labels."""
    if not nodes:
        raise EmptyGroupError(f"device group {group!r} has no nodes to move" if group else
                              "the device group has no nodes to move",
                              hint="check the group's selector and the nodes' labels")
    order = order_nodes(nodes, strategy.spread_by, strategy.canary_selector)
    counts = wave_targets(strategy.waves, len(order))
    plan: list[PlannedWave] = []
    start = 0
    for step, end in zip(strategy.waves, counts, strict=True):
        if end <= start:
            continue  # a percentage that rounds to the previous wave adds nothing
        members = tuple(order[start:end])
        zones: tuple[tuple[str, int], ...] = ()
        if strategy.spread_by:
            tally = Counter(nodes[n].get(strategy.spread_by, NO_ZONE) for n in members)
            zones = tuple(sorted(tally.items(), key=lambda kv: natural_key(kv[0])))
        plan.append(PlannedWave(len(plan), step, members, end, zones))
        start = end
    return tuple(plan)
