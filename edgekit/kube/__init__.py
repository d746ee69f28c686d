"""edgekit's Kubernetes side: one client seam, server-side apply, device groups, rendering.

    from edgekit.kube import KubeClient, apply_objects, label_nodes, install_objects
    client = KubeClient.from_kubeconfig("kubeconfig")
    apply_objects(client, install_objects("edgekit"))            # CRD, RBAC, admission policies (manager edgekit)
    label_nodes(client, ["edge-0001"], {rollout_label("detector"): "3f2a9c1b7d0e"})
"""

from __future__ import annotations

from edgekit.kube.applying import (
    FIELD_MANAGER,
    ApplyReport,
    ApplyResult,
    apply_objects,
    delete_object,
    label_nodes,
    patch_labels,
    sort_for_apply,
    wait_crd_established,
)
from edgekit.kube.client import KubeClient, RequestLog, error_for_status, translating
from edgekit.kube.install import ENGINE_NAME, edgerollout_crd, engine_rbac, install_objects
from edgekit.kube.names import rollout_label
from edgekit.kube.resources import Resource, resource_for

__all__ = [
    "ENGINE_NAME",
    "FIELD_MANAGER",
    "ApplyReport",
    "ApplyResult",
    "KubeClient",
    "RequestLog",
    "Resource",
    "apply_objects",
    "delete_object",
    "edgerollout_crd",
    "engine_rbac",
    "error_for_status",
    "install_objects",
    "label_nodes",
    "patch_labels",
    "resource_for",
    "rollout_label",
    "sort_for_apply",
    "translating",
    "wait_crd_established",
]
