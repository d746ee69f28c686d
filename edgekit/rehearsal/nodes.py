"""Fake edge nodes for KWOK: deterministic Node objects for pools, architectures, zones, accelerators.

Every node carries the three device-group labels at once (``edgekit.io/group``, KubeEdge's
``apps.kubeedge.io/belonging-to`` and OpenYurt's ``apps.openyurt.io/nodepool``, all = the pool name)
and both edge-role labels, so the same fleet serves k3s, KubeEdge and OpenYurt profiles.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from edgekit.errors import ConfigError
from edgekit.kube import names

__all__ = ["KWOK_ANNOTATION", "FleetSpec", "device_labels", "node_objects", "parse_counts", "parse_weights",
           "spread"]

KWOK_ANNOTATION = "kwok.x-k8s.io/node"
KWOK_LABEL = "type"  # kwok's own examples label fake nodes type=kwok
_ACCELERATOR_LABELS = {"nvidia.com/gpu": "nvidia.com/gpu.present"}


def parse_counts(text: str, field_name: str = "pools") -> dict[str, int]:
    """``cameras=150,gateways=50`` -> {"cameras": 150, "gateways": 50}."""
    out: dict[str, int] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            count = int(value)
        except ValueError:
            count = -1
        if not sep or not name or count < 0:
            raise ConfigError(f"{part!r} is not NAME=COUNT", field=field_name)
        names.check_label_value(name, field_name)
        out[name] = count
    return out


def parse_weights(text: str, field_name: str = "arch") -> dict[str, float]:
    """``arm64=0.7,amd64=0.3`` -> weights (any positive numbers; normalised by :func:`spread`)."""
    out: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, sep, value = part.partition("=")
        try:
            weight = float(value)
        except ValueError:
            weight = -1.0
        if not sep or not name or weight < 0 or math.isnan(weight):
            raise ConfigError(f"{part!r} is not NAME=WEIGHT", field=field_name)
        out[name] = weight
    if out and sum(out.values()) <= 0:
        raise ConfigError("weights must not all be zero", field=field_name)
    return out


def spread(total: int, weights: Mapping[str, float]) -> list[str]:
    """``total`` labels in proportion to ``weights`` (largest remainder), interleaved evenly."""
    if not weights or total <= 0:
        return []
    norm = sum(weights.values())
    exact = {k: total * w / norm for k, w in weights.items()}
    counts = {k: int(v) for k, v in exact.items()}
    for k in sorted(exact, key=lambda k: exact[k] - counts[k], reverse=True)[: total - sum(counts.values())]:
        counts[k] += 1
    # Interleave: position i gets the label whose quota is furthest behind (stable, deterministic).
    out: list[str] = []
    used = dict.fromkeys(counts, 0)
    for i in range(total):
        best = max(counts, key=lambda k: (counts[k] * (i + 1) / total - used[k], -list(counts).index(k)))
        used[best] += 1
        out.append(best)
    return out


@dataclass(frozen=True)
class FleetSpec:
    """What fake nodes to create. ``pools`` maps group name -> node count."""

    pools: Mapping[str, int]
    arch: Mapping[str, float] = field(default_factory=lambda: {"amd64": 1.0})
    zones: tuple[str, ...] = ("zone-a", "zone-b", "zone-c")
    accelerators: Mapping[str, float] = field(default_factory=dict)  # resource -> share of nodes
    cpu: str = "4"
    memory: str = "8Gi"
    max_pods: str = "110"
    extra_labels: Mapping[str, str] = field(default_factory=dict)

    @classmethod
    def simple(cls, nodes: int, pools: str | None = None, arch: str | None = None,
               **kwargs: Any) -> FleetSpec:
        """From CLI-style text; pools default to one group ``edge`` with all nodes."""
        pool_counts = parse_counts(pools) if pools else {"edge": nodes}
        if pools and nodes and sum(pool_counts.values()) != nodes:
            raise ConfigError(f"pools add up to {sum(pool_counts.values())} nodes, not {nodes}",
                              field="pools")
        weights = parse_weights(arch) if arch else {"amd64": 1.0}
        return cls(pools=pool_counts, arch=weights, **kwargs)

    @property
    def total(self) -> int:
        return sum(self.pools.values())


def device_labels(name: str, pool: str, arch: str, zone: str) -> dict[str, str]:
    """The labels every edge node carries, fake or real: hostname, os, arch, zone, group, edge role."""
    return {
        names.HOSTNAME_LABEL: name, names.OS_LABEL: "linux", names.ARCH_LABEL: arch, names.ZONE_LABEL: zone,
        names.GROUP_LABEL: pool, names.KUBEEDGE_GROUP_LABEL: pool, names.OPENYURT_POOL_LABEL: pool,
        names.KUBEEDGE_EDGE_LABEL: "", names.OPENYURT_EDGE_LABEL: "true",
    }


def node_objects(spec: FleetSpec, *, start: int = 1) -> list[dict[str, Any]]:
    """Node manifests ``<pool>-<nnnn>`` (numbered from ``start`` within each pool)."""
    out: list[dict[str, Any]] = []
    for pool, count in spec.pools.items():
        arches = spread(count, spec.arch)
        accel_plan: dict[str, list[bool]] = {}
        for resource, share in spec.accelerators.items():
            with_it = round(count * share)
            accel_plan[resource] = [i * with_it // max(count, 1) != (i + 1) * with_it // max(count, 1)
                                    for i in range(count)]
        for i in range(count):
            name = f"{pool}-{start + i:04d}"
            arch = arches[i]
            zone = spec.zones[i % len(spec.zones)] if spec.zones else "zone-a"
            labels = {**device_labels(name, pool, arch, zone), KWOK_LABEL: "kwok", **spec.extra_labels}
            capacity = {"cpu": spec.cpu, "memory": spec.memory, "pods": spec.max_pods}
            for resource, plan in accel_plan.items():
                if plan[i]:
                    capacity[resource] = "1"
                    labels[_ACCELERATOR_LABELS.get(resource, f"{names.PREFIX}/accelerator")] = (
                        "true" if resource in _ACCELERATOR_LABELS else resource.replace("/", "_"))
            out.append({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "labels": labels,
                             "annotations": {KWOK_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"}},
                "spec": {},
                "status": {
                    "capacity": capacity, "allocatable": dict(capacity),
                    "nodeInfo": {"architecture": arch, "operatingSystem": "linux",
                                 "kubeletVersion": "v1.36.3-kwok", "osImage": "edgekit fake edge node"},
                },
            })
    return out
