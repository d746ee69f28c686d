"""Device groups: which nodes form a group, and what runs on them.

A group is written as

    NAME               nodes labelled edgekit.io/group=NAME (or, with a kubeedge/openyurt target,
                       that platform's label)
    kubeedge:NAME      a KubeEdge NodeGroup: nodes labelled apps.kubeedge.io/belonging-to=NAME
    openyurt:NAME      an OpenYurt NodePool: nodes labelled apps.openyurt.io/nodepool=NAME
    selector:EXPR      any label selector, e.g. selector:site=berlin,kubernetes.io/arch=arm64

Reading a group costs a constant number of API calls whatever its size: one paginated list of the
group's nodes and one list of edgekit's pods (see ``bench/kube.py``).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, cast

from edgekit.errors import GroupNotFoundError, SelectorError
from edgekit.kube import names
from edgekit.kube.client import KubeClient
from edgekit.kube.selectors import Requirement, format_selector, matches, parse_selector
from edgekit.kube.targets import TARGETS

__all__ = [
    "DeviceGroup",
    "GroupSummary",
    "NodeState",
    "group_nodes",
    "list_groups",
    "node_states",
    "parse_group",
    "show_group",
    "summarize",
]

GroupKind = Literal["label", "kubeedge", "openyurt", "selector"]
_KIND_LABEL: dict[str, str] = {t.group_kind: t.group_label for t in TARGETS.values()}  # kind -> its label
_TARGET_KIND: dict[str, GroupKind] = {name: t.group_kind for name, t in TARGETS.items()}


@dataclass(frozen=True)
class DeviceGroup:
    """A named set of nodes, defined by a label selector."""

    name: str
    kind: GroupKind
    requirements: tuple[Requirement, ...]

    @property
    def selector(self) -> str:
        return format_selector(self.requirements)

    @property
    def spec(self) -> str:
        """The text form that :func:`parse_group` reads back."""
        return f"selector:{self.selector}" if self.kind == "selector" else \
            (self.name if self.kind == "label" else f"{self.kind}:{self.name}")

    def matches(self, labels: Mapping[str, str]) -> bool:
        return matches(self.requirements, labels)


def parse_group(text: str, target: str | None = None) -> DeviceGroup:
    """``NAME`` | ``kubeedge:NAME`` | ``openyurt:NAME`` | ``selector:EXPR`` (or a bare selector)."""
    text = text.strip()
    prefix, sep, rest = text.partition(":")
    if sep and prefix in _KIND_LABEL:
        kind: GroupKind = prefix  # type: ignore[assignment]
        name = rest.strip()
    elif sep and prefix == "selector":
        reqs = parse_selector(rest)
        return DeviceGroup(rest.strip(), "selector", reqs)
    elif any(c in text for c in "=!( ,"):
        return DeviceGroup(text, "selector", parse_selector(text))
    else:
        kind = _TARGET_KIND.get(target or "", "label")
        name = text
    if not name:
        raise SelectorError(f"group {text!r} has no name")
    names.check_label_value(name, "group")
    return DeviceGroup(name, kind, parse_selector(f"{_KIND_LABEL[kind]}={name}"))


def _ready(node: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


@dataclass(frozen=True)
class NodeState:
    """One node as ``groups show`` reports it."""

    name: str
    arch: str
    zone: str
    ready: bool
    revisions: Mapping[str, str]  # app -> revision the node is labelled for
    pods: Mapping[str, tuple[str, bool]]  # app -> (revision of the pod running there, Ready)
    accelerators: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class GroupSummary:
    group: DeviceGroup
    nodes: int
    ready: int
    by_arch: Mapping[str, int]
    by_zone: Mapping[str, int]
    apps: Mapping[str, Mapping[str, int]]  # app -> revision -> nodes labelled for it
    pods_ready: Mapping[str, Mapping[str, int]]  # app -> revision -> Ready pods in the group
    kinds: tuple[str, ...] = ()  # for list_groups: the labels that define the same node set

    def as_dict(self) -> dict[str, Any]:
        return {"group": self.group.spec, "name": self.group.name, "kinds": list(self.kinds or
                (self.group.kind,)), "selector": self.group.selector, "nodes": self.nodes,
                "ready": self.ready, "arch": dict(self.by_arch), "zones": dict(self.by_zone),
                "apps": {a: dict(r) for a, r in self.apps.items()},
                "pods_ready": {a: dict(r) for a, r in self.pods_ready.items()}}


def node_states(nodes: Iterable[Mapping[str, Any]], pods: Iterable[Mapping[str, Any]] = ()) -> list[NodeState]:
    """Pure: nodes + edgekit pods -> per-node state (sorted by name)."""
    by_node: dict[str, dict[str, tuple[str, bool]]] = {}
    for pod in pods:
        meta = pod.get("metadata") or {}
        labels = meta.get("labels") or {}
        node = (pod.get("spec") or {}).get("nodeName")
        app = labels.get(names.APP_LABEL)
        if not node or not app or meta.get("deletionTimestamp"):
            continue
        by_node.setdefault(node, {})[app] = (labels.get(names.REVISION_LABEL, ""), _pod_ready(pod))
    out = []
    for node in nodes:
        meta = node.get("metadata") or {}
        labels = meta.get("labels") or {}
        capacity = (node.get("status") or {}).get("allocatable") or {}
        revisions = {k[len(names.ROLLOUT_LABEL_PREFIX):]: v for k, v in labels.items()
                     if k.startswith(names.ROLLOUT_LABEL_PREFIX)}
        out.append(NodeState(
            name=meta.get("name", ""), arch=labels.get(names.ARCH_LABEL, "?"),
            zone=labels.get(names.ZONE_LABEL, ""), ready=_ready(node), revisions=revisions,
            pods=by_node.get(meta.get("name", ""), {}),
            accelerators={k: str(v) for k, v in capacity.items() if "/" in k and str(v) not in ("0", "")},
        ))
    return sorted(out, key=lambda s: s.name)


def summarize(group: DeviceGroup, states: Sequence[NodeState], kinds: tuple[str, ...] = ()) -> GroupSummary:
    """Pure: counts by architecture, zone, readiness, and revision per app."""
    apps: dict[str, Counter[str]] = {}
    pods_ready: dict[str, Counter[str]] = {}
    for s in states:
        for app, rev in s.revisions.items():
            apps.setdefault(app, Counter())[rev] += 1
        for app, (rev, ready) in s.pods.items():
            if ready:
                pods_ready.setdefault(app, Counter())[rev] += 1
    return GroupSummary(
        group=group, nodes=len(states), ready=sum(s.ready for s in states),
        by_arch=dict(sorted(Counter(s.arch for s in states).items())),
        by_zone=dict(sorted(Counter(s.zone for s in states if s.zone).items())),
        apps={a: dict(sorted(c.items())) for a, c in sorted(apps.items())},
        pods_ready={a: dict(sorted(c.items())) for a, c in sorted(pods_ready.items())},
        kinds=kinds,
    )


def _edgekit_pods(client: KubeClient, namespace: str | None) -> list[dict[str, Any]]:
    path = f"/api/v1/namespaces/{namespace}/pods" if namespace else "/api/v1/pods"
    selector = ",".join(f"{k}={v}" for k, v in names.MANAGED_BY_LABELS.items())
    return client.list(path, label_selector=selector)


def group_nodes(client: KubeClient, group: DeviceGroup) -> list[dict[str, Any]]:
    """The group's nodes (one paginated list call); GroupNotFoundError when it has none."""
    nodes = client.list("/api/v1/nodes", label_selector=group.selector)
    if not nodes:
        raise GroupNotFoundError(f"device group {group.spec!r} matches no node (selector {group.selector})",
                                 hint="see `edgekit groups list` for the groups this cluster has")
    return nodes


def show_group(client: KubeClient, group: DeviceGroup, *,
               namespace: str | None = None) -> tuple[GroupSummary, list[NodeState]]:
    """Summary and per-node state of one group (2 list calls, whatever the group's size)."""
    nodes = group_nodes(client, group)
    states = node_states(nodes, _edgekit_pods(client, namespace))
    return summarize(group, states), states


def list_groups(client: KubeClient, *, namespace: str | None = None) -> list[GroupSummary]:
    """Every group found on the cluster's nodes (by the three group labels), 2 list calls.

    A name that defines the same nodes under several labels (edgekit, KubeEdge, OpenYurt) is shown
    once, with all its kinds.
    """
    nodes = client.list("/api/v1/nodes")
    states = {s.name: s for s in node_states(nodes, _edgekit_pods(client, namespace))}
    members: dict[tuple[str, str], list[str]] = {}
    for node in nodes:
        labels = (node.get("metadata") or {}).get("labels") or {}
        for kind, key in _KIND_LABEL.items():
            if value := labels.get(key):
                members.setdefault((kind, value), []).append(node["metadata"]["name"])
    merged: dict[tuple[str, tuple[str, ...]], list[str]] = {}
    for (kind, name), members_of in sorted(members.items(), key=lambda kv: (kv[0][1], kv[0][0] != "label")):
        merged.setdefault((name, tuple(sorted(members_of))), []).append(kind)
    out = []
    for (name, node_set), kinds in merged.items():
        first = cast(GroupKind, kinds[0])
        group = DeviceGroup(name, first, parse_selector(f"{_KIND_LABEL[first]}={name}"))
        out.append(summarize(group, [states[n] for n in node_set], kinds=tuple(kinds)))
    return sorted(out, key=lambda s: (s.group.name, s.kinds))
