"""How the model reaches the pods of a group (``model_source: auto``): an image volume where every
node can mount one, else the init-container fetch. Pure functions over node status.

An image volume (KEP-4639) needs both halves on a node:

- the kubelet with the ``ImageVolume`` gate on: beta and on by default from 1.35 (alpha in 1.31,
  beta but off by default in 1.33 and 1.34, where node status cannot tell whether an operator
  turned it on, so those count as "no");
- a runtime that implements it: containerd 2.1 or newer, CRI-O 1.31 or newer. Anything else
  (containerd 1.x, cri-dockerd, a runtime we do not know) counts as "no". k3s's own containerd
  builds (``2.2.3-k3s1``) mount image volumes empty, without an error (k3s-io/k3s#14323, fixed with
  containerd 2.3 in v1.36.2+k3s1): a ``-k3s`` build needs 2.3.

One DaemonSet per revision has one pod template, so a group is one mode: image volumes only when
every node that runs pods supports them, else the init container for all (it works on every
node; it costs a fetch per pod). Splitting a mixed group into two DaemonSets would double what the
engine and the admission policy track, for a saving only on the capable nodes.

KWOK nodes run no pods (their "runtime" is KWOK's own version string); they do not vote, so a
group that mixes real and KWOK nodes (the dev cluster) gets what its real nodes support, and a
group of KWOK nodes alone gets the target's default.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

__all__ = ["KUBELET_MIN", "RUNTIME_MIN", "ModelSourceChoice", "choose_model_source", "node_supports_image_volumes"]

ModelSource = Literal["image-volume", "init-container"]

KUBELET_MIN = (1, 35)  # ImageVolume on by default
RUNTIME_MIN = {"containerd": (2, 1), "cri-o": (1, 31)}
K3S_CONTAINERD_MIN = (2, 3)  # k3s's containerd 2.2 builds mount image volumes empty
_VERSION = re.compile(r"^v?(\d+)\.(\d+)")
_KWOK_ANNOTATION = "kwok.x-k8s.io/node"


@dataclass(frozen=True)
class ModelSourceChoice:
    source: ModelSource
    reason: str  # one line, for the DaemonSet's annotation and the logs


def _version(text: str) -> tuple[int, int] | None:
    m = _VERSION.match(text.strip())
    return (int(m.group(1)), int(m.group(2))) if m else None


def _is_kwok(node: Mapping[str, Any]) -> bool:
    annotations = (node.get("metadata") or {}).get("annotations") or {}
    runtime = str((((node.get("status") or {}).get("nodeInfo")) or {}).get("containerRuntimeVersion") or "")
    return _KWOK_ANNOTATION in annotations or runtime.startswith("kwok")


def node_supports_image_volumes(node_info: Mapping[str, Any]) -> tuple[bool, str]:
    """(supported, why) from a node's ``status.nodeInfo`` (``containerRuntimeVersion`` such as
    ``containerd://2.4.2``, ``kubeletVersion`` such as ``v1.36.3``)."""
    runtime = str(node_info.get("containerRuntimeVersion") or "")
    kubelet = str(node_info.get("kubeletVersion") or "")
    kv = _version(kubelet)
    if kv is None or kv < KUBELET_MIN:
        return False, f"kubelet {kubelet or '?'} < v{KUBELET_MIN[0]}.{KUBELET_MIN[1]}"
    name, _, version = runtime.partition("://")
    need = RUNTIME_MIN.get(name.lower())
    rv = _version(version)
    if need is None or rv is None:
        return False, f"runtime {runtime or '?'} has no known image volume support"
    if "k3s" in version and name.lower() == "containerd":
        need = max(need, K3S_CONTAINERD_MIN)
    if rv < need:
        return False, f"runtime {runtime} < {name} {need[0]}.{need[1]}"
    return True, f"{runtime}, kubelet {kubelet}"


def choose_model_source(nodes: Iterable[Mapping[str, Any]], default: ModelSource) -> ModelSourceChoice:
    """``auto`` for a group: image volumes only if every (non-KWOK) node supports them; ``default``
    (the target's) when no node can tell; the init container as soon as one node cannot."""
    if default == "init-container":
        return ModelSourceChoice("init-container", "the target has no image volumes")
    voters = [n for n in nodes if not _is_kwok(n)]
    if not voters:
        return ModelSourceChoice(default, "no real node to ask (KWOK only): the target's default")
    for node in sorted(voters, key=lambda n: str((n.get("metadata") or {}).get("name"))):
        ok, why = node_supports_image_volumes(((node.get("status") or {}).get("nodeInfo")) or {})
        if not ok:
            name = (node.get("metadata") or {}).get("name", "?")
            return ModelSourceChoice("init-container", f"node {name}: {why}")
    return ModelSourceChoice("image-volume", f"all {len(voters)} real node(s) mount image volumes")
