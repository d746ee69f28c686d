"""What ``edgekit install`` puts into a cluster: the EdgeRollout CRD, the namespace, least-privilege
RBAC and the admission policies that narrow it.

The rollout engine keeps all of its state in ``EdgeRollout`` objects (``edgekit.io/v1alpha1``),
so any machine can pick a rollout up. The engine's identity (ServiceAccount ``edgekit-engine``) may:
get/list/watch/patch nodes (relabelling moves a node between revisions), and in its own namespace
manage DaemonSets, EdgeRollouts (+status), the per-revision ConfigMaps/ServiceAccounts/Services/
NetworkPolicies it renders, read pods, hold a Lease, and write Events. Nothing else. RBAC cannot
say what a DaemonSet, Service or NetworkPolicy may hold, which node fields a patch may touch or
which ConfigMap names may be created, so ``edgekit.kube.admission`` adds ValidatingAdmissionPolicies
for that. The namespace carries Pod Security ``warn``/``audit: restricted`` (not ``enforce``: the
agent's spool will be a hostPath, which Pod Security forbids and edgekit's own policy allows under
one prefix).

With the operator's PEM files it also writes the trust ConfigMaps the devices mount, which the
engine may read but never write: ``edgekit-cosign-key`` (the release public key) and
``edgekit-mqtt-ca`` (the broker's CA).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgekit.gates import crd_schema
from edgekit.kube import names
from edgekit.kube.admission import DEFAULT_AGENT_REPOSITORIES, engine_admission
from edgekit.kube.rendering import key_configmap, mqtt_ca_configmap
from edgekit.kube.targets import DEFAULT_TARGET, TARGETS

__all__ = ["ENGINE_NAME", "edgerollout_crd", "engine_rbac", "install_objects"]

ENGINE_NAME = "edgekit-engine"
POD_SECURITY_LABELS = {"pod-security.kubernetes.io/warn": "restricted",
                       "pod-security.kubernetes.io/audit": "restricted"}

_DURATION = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


def _condition_schema() -> dict[str, Any]:
    return {
        "type": "object",
        "required": ["type", "status"],
        "properties": {
            "type": {"type": "string"},
            "status": {"type": "string", "enum": ["True", "False", "Unknown"]},
            "reason": {"type": "string"},
            "message": {"type": "string"},
            "lastTransitionTime": {"type": "string", "format": "date-time"},
            "observedGeneration": {"type": "integer", "format": "int64"},
        },
    }


def _schema() -> dict[str, Any]:
    wave_step = {"x-kubernetes-int-or-string": True,
                 "description": "Nodes in this wave: a count (5) or a share of the group ('10%')."}
    spec = {
        "type": "object",
        "required": ["app", "group", "image"],
        "properties": {
            "app": {"type": "string", "maxLength": 40, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                    "description": "Application name; its DaemonSets are <app>-<revision>."},
            "group": {"type": "string", "minLength": 1,
                      "description": "Device group: NAME (label edgekit.io/group), kubeedge:NAME, "
                                     "openyurt:NAME or selector:EXPR."},
            "image": {"type": "string", "pattern": r"^[^\s]+@sha256:[a-f0-9]{64}$",
                      "description": "Model image reference, pinned by digest."},
            "revision": {"type": "string", "maxLength": 22, "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                         "description": "Revision name (default: derived from the image digest)."},
            "target": {"type": "string", "enum": list(TARGETS), "default": DEFAULT_TARGET},
            "waves": {"type": "array", "maxItems": 20, "items": wave_step,
                      "description": "Wave sizes, canary first."},
            "bakeTime": {"type": "string", "pattern": _DURATION, "default": "60s",
                         "description": "How long each wave runs before its gate is judged."},
            "spreadBy": {"type": "string", "description": "Spread waves over this topology label."},
            "canarySelector": {"type": "string", "maxLength": 1024,
                               "description": "Label selector of the nodes moved first (the canary)."},
            "paused": {"type": "boolean"},
            "gates": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": True,
                "properties": crd_schema(),
            },
            "shadow": {
                "type": "object",
                "description": "Shadow wave first (push --shadow-first): the canary runs the candidate beside "
                               "the current model and the rollout goes on only when they agree.",
                "properties": {
                    "minAgreement": {"type": "number", "minimum": 0, "maximum": 1},
                    "ratio": {"type": "number", "minimum": 0, "maximum": 1},
                    "metric": {"type": "string", "minLength": 1,
                               "description": "top1, cosine or MODULE:FUNCTION (as edgekit quantize --metric)."},
                    "minSamples": {"type": "integer", "minimum": 1},
                    "confidence": {"type": "number", "minimum": 0.5, "maximum": 1},
                    "timeout": {"type": "string", "pattern": _DURATION},
                },
            },
        },
    }
    status = {
        "type": "object",
        "properties": {
            "phase": {"type": "string"},
            "message": {"type": "string"},
            "revision": {"type": "string"},
            "previousRevision": {"type": "string"},
            "currentWave": {"type": "integer", "minimum": 0},
            "observedGeneration": {"type": "integer", "format": "int64"},
            "startedAt": {"type": "string", "format": "date-time"},
            "updatedAt": {"type": "string", "format": "date-time"},
            "waves": {
                "type": "array",
                "items": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": True,
                    "properties": {
                        "index": {"type": "integer", "minimum": 0},
                        "nodes": {"type": "array", "items": {"type": "string"}},
                        "verdict": {"type": "string"},
                        "startedAt": {"type": "string", "format": "date-time"},
                        "finishedAt": {"type": "string", "format": "date-time"},
                    },
                },
            },
            "shadow": {"type": "object", "x-kubernetes-preserve-unknown-fields": True,
                       "description": "The shadow wave: nodes, phase, pooled figures and verdict."},
            "history": {"type": "array",
                        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
            "conditions": {"type": "array", "items": _condition_schema(),
                           "x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
        },
    }
    return {"type": "object", "properties": {"spec": spec, "status": status}, "required": ["spec"]}


def edgerollout_crd() -> dict[str, Any]:
    """The ``EdgeRollout`` CustomResourceDefinition (structural schema, status subresource)."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"edgerollouts.{names.API_GROUP}", "labels": dict(names.MANAGED_BY_LABELS)},
        "spec": {
            "group": names.API_GROUP,
            "scope": "Namespaced",
            "names": {"plural": "edgerollouts", "singular": "edgerollout", "kind": "EdgeRollout",
                      "listKind": "EdgeRolloutList", "shortNames": ["er"], "categories": ["edgekit"]},
            "versions": [{
                "name": "v1alpha1",
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {"openAPIV3Schema": _schema()},
                "additionalPrinterColumns": [
                    {"name": "App", "type": "string", "jsonPath": ".spec.app"},
                    {"name": "Group", "type": "string", "jsonPath": ".spec.group"},
                    {"name": "Revision", "type": "string", "jsonPath": ".status.revision"},
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Wave", "type": "integer", "jsonPath": ".status.currentWave"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                ],
            }],
        },
    }


def _rule(groups: list[str], resources: list[str], verbs: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "resources": resources, "verbs": verbs}


def engine_rbac(namespace: str = names.DEFAULT_NAMESPACE) -> list[dict[str, Any]]:
    """ServiceAccount, ClusterRole(+Binding) for nodes, Role(+Binding) for the namespace."""
    labels = dict(names.MANAGED_BY_LABELS)
    rbac = "rbac.authorization.k8s.io/v1"
    subject = [{"kind": "ServiceAccount", "name": ENGINE_NAME, "namespace": namespace}]
    cluster_role = f"{ENGINE_NAME}-nodes"
    return [
        {"apiVersion": "v1", "kind": "ServiceAccount",
         "metadata": {"name": ENGINE_NAME, "namespace": namespace, "labels": labels}},
        {"apiVersion": rbac, "kind": "ClusterRole", "metadata": {"name": cluster_role, "labels": labels},
         "rules": [_rule([""], ["nodes"], ["get", "list", "watch", "patch"])]},
        {"apiVersion": rbac, "kind": "ClusterRoleBinding",
         "metadata": {"name": f"{cluster_role}-{namespace}", "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": cluster_role},
         "subjects": subject},
        {"apiVersion": rbac, "kind": "Role", "metadata": {"name": ENGINE_NAME, "namespace": namespace,
                                                          "labels": labels},
         "rules": [
             _rule(["apps"], ["daemonsets"], ["get", "list", "watch", "create", "patch", "update", "delete"]),
             _rule([names.API_GROUP], ["edgerollouts"],
                   ["get", "list", "watch", "create", "patch", "update", "delete"]),
             _rule([names.API_GROUP], ["edgerollouts/status"], ["get", "patch", "update"]),
             _rule([""], ["serviceaccounts", "services"], ["get", "list", "create", "patch", "update", "delete"]),
             _rule(["networking.k8s.io"], ["networkpolicies"],
                   ["get", "list", "create", "patch", "update", "delete"]),
             # ConfigMaps are read freely (none is secret); writes carry per-revision names that
             # resourceNames cannot list, so admission allows only <app>-<revision> agent configs
             # and never the trust ConfigMaps (edgekit-mqtt-ca, edgekit-cosign-key).
             _rule([""], ["configmaps"], ["get", "list", "watch"]),
             _rule([""], ["configmaps"], ["create", "patch", "update", "delete"]),
             _rule([""], ["pods"], ["get", "list", "watch"]),
             _rule(["coordination.k8s.io"], ["leases"], ["get", "list", "watch", "create", "patch", "update"]),
             _rule(["", "events.k8s.io"], ["events"], ["create", "patch"]),
         ]},
        {"apiVersion": rbac, "kind": "RoleBinding",
         "metadata": {"name": ENGINE_NAME, "namespace": namespace, "labels": labels},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": ENGINE_NAME},
         "subjects": subject},
    ]


def install_objects(namespace: str = names.DEFAULT_NAMESPACE,
                    agent_repositories: Sequence[str] = DEFAULT_AGENT_REPOSITORIES, *,
                    public_key_pem: str | None = None, mqtt_ca_pem: str | None = None) -> list[dict[str, Any]]:
    """Everything ``edgekit install`` applies, in apply order. ``agent_repositories``: the agent
    images the engine may run (repositories, any tag or digest). ``public_key_pem`` /
    ``mqtt_ca_pem``: the trust ConfigMaps to write as well (checked PEM text; none when omitted)."""
    ns = {"apiVersion": "v1", "kind": "Namespace",
          "metadata": {"name": namespace, "labels": {**names.MANAGED_BY_LABELS, **POD_SECURITY_LABELS}}}
    trust = []
    if public_key_pem is not None:
        trust.append(key_configmap(namespace, public_key_pem))
    if mqtt_ca_pem is not None:
        trust.append(mqtt_ca_configmap(namespace, mqtt_ca_pem))
    return [edgerollout_crd(), ns, *engine_rbac(namespace),
            *engine_admission(namespace, ENGINE_NAME, agent_repositories), *trust]
