"""The admission policies that hold the rollout engine to edgekit's shape: pure functions to objects.

RBAC says which verbs the engine's ServiceAccount has on which resources; it cannot say what an
object may contain, nor which of a node's fields a patch may touch. These
ValidatingAdmissionPolicies (``admissionregistration.k8s.io/v1``, CEL, enforced by the API server)
apply only to requests of ``system:serviceaccount:<namespace>:edgekit-engine``:

- **DaemonSets** (create/update) must be edgekit agent DaemonSets: agent image from the allowlist,
  command ``edgekit-agent``, Pod Security ``restricted`` on every container (non-root, no privilege
  escalation, read-only root filesystem, seccomp RuntimeDefault/Localhost, all capabilities
  dropped, none added), no host namespaces or host ports, no service-account token, no Secret in
  the environment, and only edgekit's volumes, each of its kind: ``hostPath`` only for ``spool``
  (read-write, under ``/var/lib/edgekit/<app>/``) and ``device`` (read-only, under ``/etc/edgekit/``).
  Pod Security admission forbids every hostPath at ``baseline``, hence edgekit's own profile.
- **Nodes** (update/patch): only ``rollout.edgekit.io/*`` labels may change; spec (taints,
  unschedulable), annotations, finalizers, owners and every other label stay as they were.
- **ConfigMaps** (create/update/delete): only the per-revision agent configs ``<app>-<revision>``
  (labelled so); never the trust ConfigMaps that ``edgekit install`` and the operator write.
- **Services** (create/update): node-local ClusterIP Services ``<app>`` only (no NodePort,
  LoadBalancer, ExternalName or external IPs): the agents' API never leaves the cluster this way.
- **NetworkPolicies** (create/update): ``<app>`` selecting the app's pods, letting in only whole
  namespaces named by ``kubernetes.io/metadata.name`` (no IP blocks, no "from anywhere").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from edgekit.kube import names
from edgekit.kube.rendering import (
    AGENT_VOLUMES,
    DEFAULT_AGENT_IMAGE,
    DEVICE_HOST_PREFIX,
    KEY_CONFIGMAP,
    MQTT_CA_CONFIGMAP,
    SPOOL_HOST_PREFIX,
    parse_image,
)

__all__ = ["DEFAULT_AGENT_REPOSITORIES", "TRUST_CONFIGMAPS", "engine_admission", "engine_username"]

API_VERSION = "admissionregistration.k8s.io/v1"
DEFAULT_AGENT_REPOSITORIES = (parse_image(DEFAULT_AGENT_IMAGE).repository,)
# Written by `edgekit install` or the operator, read by devices: never by the engine.
TRUST_CONFIGMAPS = (MQTT_CA_CONFIGMAP, KEY_CONFIGMAP, "edgekit-agent-defaults")


def engine_username(namespace: str, service_account: str) -> str:
    return f"system:serviceaccount:{namespace}:{service_account}"


def _cel_list(items: Sequence[str]) -> str:
    return "[" + ", ".join(_cel_string(i) for i in items) + "]"


def _cel_string(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _under(path: str, directory: str) -> str:
    """CEL: ``path`` is the directory ``directory`` or below it (the API server's own validation
    already refuses ``..`` in hostPath paths)."""
    return f"({path} == {directory} || {path}.startsWith({directory} + '/'))"


def _daemonset_policy(name: str, user: str, repositories: Sequence[str]) -> dict[str, Any]:
    c_sc = "c.?securityContext"
    p_sc = "variables.pod.?securityContext"
    volume_ok = (
        "v.name == 'model' ? (has(v.image) || has(v.emptyDir)) : "
        "v.name in ['config', 'mqtt-ca', 'keys'] ? has(v.configMap) : "
        "v.name == 'tmp' ? has(v.emptyDir) : "
        f"v.name == 'spool' ? (has(v.emptyDir) || (has(v.hostPath) && variables.app != '' && "
        f"{_under('v.hostPath.path', _cel_string(SPOOL_HOST_PREFIX) + ' + variables.app')})) : "
        f"v.name == 'device' ? (has(v.hostPath) && v.hostPath.path.startsWith({_cel_string(DEVICE_HOST_PREFIX)})) "
        f": false"
    )
    variables = [
        {"name": "app", "expression": f"object.metadata.?labels[?{_cel_string(names.APP_LABEL)}].orValue('')"},
        {"name": "pod", "expression": "object.spec.template.spec"},
        {"name": "containers", "expression": "variables.pod.containers + variables.pod.?initContainers.orValue([])"},
        {"name": "volumes", "expression": "variables.pod.?volumes.orValue([])"},
        {"name": "repositories", "expression": _cel_list(repositories)},
        {"name": "badVolumes", "expression": f"variables.volumes.filter(v, !({volume_ok})).map(v, v.name)"},
    ]
    checks = [
        ("variables.app != ''", f"the DaemonSet must carry the {names.APP_LABEL} label"),
        ("variables.containers.all(c, variables.repositories.exists(r, "
         "c.?image.orValue('').startsWith(r + ':') || c.?image.orValue('').startsWith(r + '@')))",
         f"containers must run the agent image ({', '.join(repositories)})"),
        ("variables.containers.all(c, c.?command.orValue([]).size() > 0 && c.command[0] == 'edgekit-agent')",
         "containers must run edgekit-agent"),
        ("!variables.pod.?hostNetwork.orValue(false) && !variables.pod.?hostPID.orValue(false) && "
         "!variables.pod.?hostIPC.orValue(false) && variables.containers.all(c, "
         "c.?ports.orValue([]).all(p, p.?hostPort.orValue(0) == 0))",
         "no hostNetwork, hostPID, hostIPC or hostPort"),
        (f"variables.containers.all(c, !{c_sc}.?privileged.orValue(false) && "
         f"{c_sc}.?allowPrivilegeEscalation.orValue(true) == false)",
         "containers must not be privileged and must set allowPrivilegeEscalation: false"),
        (f"variables.containers.all(c, {c_sc}.?capabilities.?drop.orValue([]).exists(d, d == 'ALL') && "
         f"{c_sc}.?capabilities.?add.orValue([]).size() == 0)",
         "containers must drop ALL capabilities and add none"),
        (f"variables.containers.all(c, {c_sc}.?readOnlyRootFilesystem.orValue(false))",
         "containers must have a read-only root filesystem"),
        (f"variables.containers.all(c, {c_sc}.?runAsNonRoot.orValue({p_sc}.?runAsNonRoot.orValue(false)) && "
         f"{c_sc}.?runAsUser.orValue({p_sc}.?runAsUser.orValue(-1)) != 0)",
         "containers must run as non-root (runAsNonRoot: true, runAsUser not 0)"),
        (f"variables.containers.all(c, {c_sc}.?seccompProfile.?type.orValue("
         f"{p_sc}.?seccompProfile.?type.orValue('')) in ['RuntimeDefault', 'Localhost'])",
         "containers must run with seccomp profile RuntimeDefault (or Localhost)"),
        (f"{p_sc}.?sysctls.orValue([]).size() == 0 && !{p_sc}.?seLinuxOptions.hasValue() && "
         f"{p_sc}.?appArmorProfile.?type.orValue('') != 'Unconfined' && variables.containers.all(c, "
         f"!{c_sc}.?seLinuxOptions.hasValue() && {c_sc}.?procMount.orValue('Default') == 'Default' && "
         f"{c_sc}.?appArmorProfile.?type.orValue('') != 'Unconfined')",
         "no sysctls, SELinux options, unmasked /proc or unconfined AppArmor"),
        ("variables.pod.?automountServiceAccountToken.orValue(true) == false && "
         "variables.pod.?serviceAccountName.orValue('default') == variables.app",
         "the pod runs as the app's own ServiceAccount, with no API token"),
        ("variables.containers.all(c, c.?envFrom.orValue([]).all(e, !has(e.secretRef)) && "
         "c.?env.orValue([]).all(e, !has(e.valueFrom) || !has(e.valueFrom.secretKeyRef)))",
         "no Secret in the environment"),
        ("variables.containers.all(c, c.?volumeMounts.orValue([]).all(m, m.name != 'device' || "
         "m.?readOnly.orValue(false)))",
         "the device volume is mounted read-only"),
    ]
    validations: list[dict[str, Any]] = [{"expression": e, "message": m, "reason": "Forbidden"} for e, m in checks]
    validations.append({
        "expression": "variables.badVolumes.size() == 0",
        "messageExpression": ("'volumes not of edgekit\\'s shape: ' + variables.badVolumes.join(', ') + "
                              f"' (allowed: {', '.join(AGENT_VOLUMES)}; hostPath only for spool under "
                              f"{SPOOL_HOST_PREFIX}<app>/ and device under {DEVICE_HOST_PREFIX})'"),
        "reason": "Forbidden"})
    return _policy(name, user, [_rules(["apps"], ["daemonsets"], ["CREATE", "UPDATE"])], variables, validations)


def _node_policy(name: str, user: str) -> dict[str, Any]:
    prefix = _cel_string(names.ROLLOUT_LABEL_PREFIX)
    variables = [
        {"name": "newLabels", "expression": "object.metadata.?labels.orValue({})"},
        {"name": "oldLabels", "expression": "oldObject.metadata.?labels.orValue({})"},
    ]
    checks = [
        ("object.spec == oldObject.spec", "the engine may not change a node's spec (taints, unschedulable ...)"),
        ("object.metadata.?annotations.orValue({}) == oldObject.metadata.?annotations.orValue({}) && "
         "object.metadata.?finalizers.orValue([]) == oldObject.metadata.?finalizers.orValue([]) && "
         "object.metadata.?ownerReferences.orValue([]) == oldObject.metadata.?ownerReferences.orValue([])",
         "the engine may not change a node's annotations, finalizers or owners"),
        (f"variables.newLabels.all(k, k.startsWith({prefix}) || "
         f"(k in variables.oldLabels && variables.oldLabels[k] == variables.newLabels[k])) "
         f"&& variables.oldLabels.all(k, k.startsWith({prefix}) || k in variables.newLabels)",
         f"the engine may change only {names.ROLLOUT_LABEL_PREFIX}* labels on nodes"),
    ]
    validations = [{"expression": e, "message": m, "reason": "Forbidden"} for e, m in checks]
    return _policy(name, user, [_rules([""], ["nodes"], ["UPDATE"])], variables, validations)


def _configmap_policy(name: str, user: str) -> dict[str, Any]:
    labels = "variables.cm.metadata.?labels.orValue({})"
    variables = [
        {"name": "cm", "expression": "request.operation == 'DELETE' ? oldObject : object"},
        {"name": "app", "expression": f"{labels}[?{_cel_string(names.APP_LABEL)}].orValue('')"},
        {"name": "revision", "expression": f"{labels}[?{_cel_string(names.REVISION_LABEL)}].orValue('')"},
    ]
    checks = [
        (f"!(variables.cm.metadata.name in {_cel_list(TRUST_CONFIGMAPS)})",
         f"{', '.join(TRUST_CONFIGMAPS)} are written by edgekit install and the operator, not the engine"),
        ("variables.app != '' && variables.revision != '' && "
         "variables.cm.metadata.name == variables.app + '-' + variables.revision",
         f"the engine writes only agent configs <app>-<revision> (labels {names.APP_LABEL}, "
         f"{names.REVISION_LABEL})"),
    ]
    validations = [{"expression": e, "message": m, "reason": "Forbidden"} for e, m in checks]
    return _policy(name, user, [_rules([""], ["configmaps"], ["CREATE", "UPDATE", "DELETE"])], variables,
                   validations)


def _service_policy(name: str, user: str) -> dict[str, Any]:
    app = f"object.metadata.?labels[?{_cel_string(names.APP_LABEL)}].orValue('')"
    checks = [
        (f"{app} != '' && object.metadata.name == {app}",
         f"the engine writes only Services <app> (label {names.APP_LABEL})"),
        ("object.spec.?type.orValue('ClusterIP') == 'ClusterIP' && object.spec.?externalIPs.orValue([]).size() == 0 "
         "&& object.spec.?internalTrafficPolicy.orValue('') == 'Local'",
         "the engine writes only node-local ClusterIP Services (internalTrafficPolicy: Local, no external IPs)"),
    ]
    validations = [{"expression": e, "message": m, "reason": "Forbidden"} for e, m in checks]
    return _policy(name, user, [_rules([""], ["services"], ["CREATE", "UPDATE"])], [], validations)


def _network_policy_policy(name: str, user: str) -> dict[str, Any]:
    app = f"object.metadata.?labels[?{_cel_string(names.APP_LABEL)}].orValue('')"
    ns_label = _cel_string(names.NAMESPACE_NAME_LABEL)
    checks = [
        (f"{app} != '' && object.metadata.name == {app} && "
         f"object.spec.podSelector.?matchLabels.orValue({{}}) == {{{_cel_string(names.APP_LABEL)}: {app}}} && "
         f"!has(object.spec.podSelector.matchExpressions)",
         f"the engine writes only NetworkPolicies <app> that select the app's pods (label {names.APP_LABEL})"),
        (f"object.spec.?ingress.orValue([]).all(r, r.?from.orValue([]).size() > 0 && r.from.all(p, "
         f"!has(p.ipBlock) && !has(p.podSelector) && has(p.namespaceSelector) && "
         f"!has(p.namespaceSelector.matchExpressions) && "
         f"p.namespaceSelector.?matchLabels.orValue({{}}).size() == 1 && "
         f"{ns_label} in p.namespaceSelector.matchLabels))",
         "the engine's NetworkPolicies let in only namespaces named by kubernetes.io/metadata.name"),
    ]
    validations = [{"expression": e, "message": m, "reason": "Forbidden"} for e, m in checks]
    return _policy(name, user, [_rules(["networking.k8s.io"], ["networkpolicies"], ["CREATE", "UPDATE"])], [],
                   validations)


def _rules(groups: list[str], resources: list[str], operations: list[str]) -> dict[str, Any]:
    return {"apiGroups": groups, "apiVersions": ["v1"], "resources": resources, "operations": operations,
            "scope": "*"}


def _policy(name: str, user: str, rules: list[dict[str, Any]], variables: list[dict[str, Any]],
            validations: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION, "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": dict(names.MANAGED_BY_LABELS)},
        "spec": {
            "failurePolicy": "Fail",
            # matchConstraints is atomic for server-side apply: spell out the server's defaults, or
            # two managers applying the same policy (edgekit install, kubectl) would conflict.
            "matchConstraints": {"resourceRules": rules, "matchPolicy": "Equivalent",
                                 "namespaceSelector": {}, "objectSelector": {}},
            # Only the engine is held to edgekit's shape; people and other controllers are not.
            "matchConditions": [{"name": "engine", "expression": f"request.userInfo.username == {_cel_string(user)}"}],
            **({"variables": variables} if variables else {}),  # (an empty list reads back as absent)
            "validations": validations,
        },
    }


def _binding(policy: dict[str, Any]) -> dict[str, Any]:
    name = policy["metadata"]["name"]
    return {"apiVersion": API_VERSION, "kind": "ValidatingAdmissionPolicyBinding",
            "metadata": {"name": name, "labels": dict(names.MANAGED_BY_LABELS)},
            "spec": {"policyName": name, "validationActions": ["Deny"]}}


def engine_admission(namespace: str, service_account: str,
                     agent_repositories: Sequence[str] = DEFAULT_AGENT_REPOSITORIES) -> list[dict[str, Any]]:
    """The policies and their bindings for the engine of ``namespace`` (cluster-scoped objects,
    named after the namespace so installs in several namespaces live side by side)."""
    user = engine_username(namespace, service_account)
    repositories = [parse_image(r).repository for r in agent_repositories]
    policies = [
        _daemonset_policy(f"{service_account}-daemonsets.{namespace}", user, repositories),
        _node_policy(f"{service_account}-nodes.{namespace}", user),
        _configmap_policy(f"{service_account}-configmaps.{namespace}", user),
        _service_policy(f"{service_account}-services.{namespace}", user),
        _network_policy_policy(f"{service_account}-networkpolicies.{namespace}", user),
    ]
    return [*policies, *(_binding(p) for p in policies)]
