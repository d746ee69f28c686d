"""The platforms edgekit deploys to (``--target``, ``spec.target``): everything that differs between
them, in one table that the renderer, the device groups, the settings, the CRD schema and the
command line read."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from edgekit.errors import ConfigError
from edgekit.kube import names

__all__ = ["DEFAULT_TARGET", "GROUP_FORMS", "TARGETS", "Target", "check_target"]


@dataclass(frozen=True)
class Target:
    """Per-platform scheduling (which nodes are edge nodes, what to tolerate, how the model arrives)
    and what a bare group ``NAME`` means there."""

    name: str
    model_source: Literal["image-volume", "init-container"]
    node_terms: tuple[dict[str, Any], ...] = ()  # extra matchExpressions
    tolerations: tuple[dict[str, Any], ...] = ()
    group_kind: Literal["label", "kubeedge", "openyurt"] = "label"  # also the prefix of ``kind:NAME``
    group_label: str = names.GROUP_LABEL  # the label that puts a node in group NAME
    group_object: tuple[str, str] | None = None  # (apiVersion, kind) of the platform's own group object


TARGETS: dict[str, Target] = {
    "k3s": Target("k3s", "image-volume"),
    # edgecore has no image volumes; edge nodes carry node-role.kubernetes.io/edge (and often its taint)
    "kubeedge": Target(
        "kubeedge", "init-container",
        node_terms=({"key": names.KUBEEDGE_EDGE_LABEL, "operator": "Exists"},),
        tolerations=({"key": names.KUBEEDGE_EDGE_LABEL, "operator": "Exists", "effect": "NoSchedule"},),
        group_kind="kubeedge", group_label=names.KUBEEDGE_GROUP_LABEL,
        group_object=("apps.kubeedge.io/v1alpha1", "NodeGroup"),
    ),
    "openyurt": Target(
        "openyurt", "image-volume",
        node_terms=({"key": names.OPENYURT_EDGE_LABEL, "operator": "In", "values": ["true"]},),
        # keep pods through cloud-edge disconnects (node autonomy): never evict for unreachable
        tolerations=({"key": "node.kubernetes.io/unreachable", "operator": "Exists", "effect": "NoExecute"},
                     {"key": "node.kubernetes.io/not-ready", "operator": "Exists", "effect": "NoExecute"}),
        group_kind="openyurt", group_label=names.OPENYURT_POOL_LABEL,
        group_object=("apps.openyurt.io/v1beta1", "NodePool"),
    ),
}

DEFAULT_TARGET = "k3s"

# How a device group is written (help texts, the CRD schema): "NAME, kubeedge:NAME, ... or selector:EXPR".
GROUP_FORMS = ", ".join(["NAME", *(f"{t.group_kind}:NAME" for t in TARGETS.values() if t.group_kind != "label")]) \
    + " or selector:EXPR"


def check_target(name: str) -> None:
    """ConfigError (field ``target``) unless ``name`` is in TARGETS."""
    if name not in TARGETS:
        raise ConfigError(f"unknown target {name!r} ({', '.join(TARGETS)})", field="target")
