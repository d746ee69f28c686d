"""Where each kind lives in the REST API (no discovery round-trips for the kinds edgekit writes)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from edgekit.errors import KubeNotFoundError

if TYPE_CHECKING:
    from edgekit.kube.client import KubeClient

__all__ = ["Resource", "resource_for"]


@dataclass(frozen=True)
class Resource:
    api_version: str
    kind: str
    plural: str
    namespaced: bool

    @property
    def base(self) -> str:
        return "/api/v1" if self.api_version == "v1" else f"/apis/{self.api_version}"

    def path(self, namespace: str | None = None, name: str | None = None,
             subresource: str | None = None) -> str:
        parts = [self.base]
        if self.namespaced and namespace:
            parts += ["namespaces", quote(namespace, safe="")]
        parts.append(self.plural)
        if name:
            parts.append(quote(name, safe=""))
            if subresource:
                parts.append(subresource)
        return "/".join(parts)

    def object_path(self, obj: dict[str, Any], default_namespace: str | None = None) -> str:
        meta = obj.get("metadata") or {}
        return self.path(meta.get("namespace") or default_namespace, meta.get("name"))


_KNOWN = [
    Resource("v1", "Namespace", "namespaces", False),
    Resource("v1", "Node", "nodes", False),
    Resource("v1", "Pod", "pods", True),
    Resource("v1", "ConfigMap", "configmaps", True),
    Resource("v1", "Secret", "secrets", True),
    Resource("v1", "Service", "services", True),
    Resource("v1", "ServiceAccount", "serviceaccounts", True),
    Resource("v1", "Event", "events", True),
    Resource("apps/v1", "DaemonSet", "daemonsets", True),
    Resource("apps/v1", "Deployment", "deployments", True),
    Resource("apps/v1", "ControllerRevision", "controllerrevisions", True),
    Resource("coordination.k8s.io/v1", "Lease", "leases", True),
    Resource("rbac.authorization.k8s.io/v1", "Role", "roles", True),
    Resource("rbac.authorization.k8s.io/v1", "RoleBinding", "rolebindings", True),
    Resource("rbac.authorization.k8s.io/v1", "ClusterRole", "clusterroles", False),
    Resource("rbac.authorization.k8s.io/v1", "ClusterRoleBinding", "clusterrolebindings", False),
    Resource("apiextensions.k8s.io/v1", "CustomResourceDefinition", "customresourcedefinitions", False),
    Resource("policy/v1", "PodDisruptionBudget", "poddisruptionbudgets", True),
    Resource("networking.k8s.io/v1", "NetworkPolicy", "networkpolicies", True),
    Resource("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicy", "validatingadmissionpolicies", False),
    Resource("admissionregistration.k8s.io/v1", "ValidatingAdmissionPolicyBinding",
             "validatingadmissionpolicybindings", False),
    Resource("edgekit.io/v1alpha1", "EdgeRollout", "edgerollouts", True),
    Resource("apps.kubeedge.io/v1alpha1", "NodeGroup", "nodegroups", False),
    Resource("apps.openyurt.io/v1beta1", "NodePool", "nodepools", False),
]
_BY_KIND: dict[tuple[str, str], Resource] = {(r.api_version, r.kind): r for r in _KNOWN}


def resource_for(api_version: str, kind: str, client: KubeClient | None = None) -> Resource:
    """The resource of a kind: from the table, else by asking the API server's discovery (1 call)."""
    if found := _BY_KIND.get((api_version, kind)):
        return found
    if client is None:
        raise KubeNotFoundError(f"unknown kind {kind} in {api_version} (no cluster to ask)")
    base = "/api/v1" if api_version == "v1" else f"/apis/{api_version}"
    try:
        answer = client.get(base)
    except KubeNotFoundError as exc:
        raise KubeNotFoundError(f"the API server does not serve {api_version} (kind {kind})",
                                hint="is its CustomResourceDefinition installed?") from exc
    for res in answer.get("resources", []):
        if res.get("kind") == kind and "/" not in res.get("name", ""):
            found = Resource(api_version, kind, res["name"], bool(res.get("namespaced")))
            _BY_KIND[(api_version, kind)] = found
            return found
    raise KubeNotFoundError(f"the API server has no kind {kind} in {api_version}")
