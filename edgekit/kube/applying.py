"""Server-side apply (field manager ``edgekit``), dry-run diffs, label patches, deletes.

``apply_objects`` is all-or-nothing where the API allows it: every object is first applied with a
server dry run (validation, admission, RBAC and field-manager conflicts are all checked), and only
when all of them pass are they applied for real, in dependency order (CRDs, namespaces and RBAC
before workloads; custom resources only once their CRD is established).
"""

from __future__ import annotations

import copy
import difflib
import time
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Literal

from edgekit.errors import KubeError, KubeInvalidError, KubeNotFoundError, KubeUnavailableError
from edgekit.kube.client import KubeClient
from edgekit.kube.resources import Resource, resource_for
from edgekit.kube.yamlio import dump

__all__ = [
    "FIELD_MANAGER",
    "ApplyReport",
    "ApplyResult",
    "apply_objects",
    "delete_object",
    "label_nodes",
    "patch_labels",
    "sort_for_apply",
    "wait_crd_established",
]

FIELD_MANAGER = "edgekit"

_ORDER = {
    "CustomResourceDefinition": 0, "Namespace": 1, "ClusterRole": 2, "ClusterRoleBinding": 3,
    "ServiceAccount": 4, "Role": 5, "RoleBinding": 6, "Secret": 7, "ConfigMap": 8, "Service": 9,
    "ValidatingAdmissionPolicy": 10, "ValidatingAdmissionPolicyBinding": 11, "NetworkPolicy": 12,
    "Deployment": 20, "DaemonSet": 21,
}
_CUSTOM = 30  # custom resources go last, once their CRD is established
_VOLATILE_META = ("managedFields", "resourceVersion", "uid", "creationTimestamp", "generation",
                  "selfLink")

Action = Literal["created", "configured", "unchanged"]


@dataclass(frozen=True)
class ApplyResult:
    kind: str
    name: str
    namespace: str | None
    action: Action
    diff: str = ""
    validated: bool = True  # False when the dry run was impossible (its namespace/CRD is new)

    @property
    def ref(self) -> str:
        ns = f"{self.namespace}/" if self.namespace else ""
        return f"{self.kind.lower()}/{ns}{self.name}"


@dataclass
class ApplyReport:
    dry_run: bool
    results: list[ApplyResult] = field(default_factory=list)

    @property
    def changed(self) -> bool:
        return any(r.action != "unchanged" for r in self.results)

    def diff(self) -> str:
        return "".join(r.diff for r in self.results)

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.results:
            out[r.action] = out.get(r.action, 0) + 1
        return out


def _rank(obj: Mapping[str, Any]) -> int:
    kind = str(obj.get("kind"))
    if kind in _ORDER:
        return _ORDER[kind]
    api_version = str(obj.get("apiVersion", ""))
    builtin = "/" not in api_version or api_version.split("/")[0].endswith(".k8s.io") or \
        "." not in api_version.split("/")[0]
    return 10 if builtin else _CUSTOM


def sort_for_apply(objects: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Objects in apply order (stable): CRDs, namespaces, RBAC, config, workloads, custom resources."""
    return [dict(o) for o in sorted(objects, key=_rank)]


def _check(obj: Mapping[str, Any]) -> None:
    meta = obj.get("metadata") or {}
    if not obj.get("apiVersion") or not obj.get("kind") or not meta.get("name"):
        raise KubeInvalidError(f"object without apiVersion/kind/metadata.name: {dict(obj)!r:.120}")


def _normalized(obj: Mapping[str, Any] | None) -> str:
    if not obj:
        return ""
    data = copy.deepcopy(dict(obj))
    meta = data.get("metadata") or {}
    for key in _VOLATILE_META:
        meta.pop(key, None)
    annotations = meta.get("annotations") or {}
    annotations.pop("deprecated.daemonset.template.generation", None)
    if not annotations:
        meta.pop("annotations", None)
    data.pop("status", None)  # owned by controllers, not by what edgekit applies
    return dump(data, sort_keys=True)


def _diff(live: Mapping[str, Any] | None, desired: Mapping[str, Any], ref: str) -> str:
    before, after = _normalized(live), _normalized(desired)
    if before == after:
        return ""
    lines = difflib.unified_diff(before.splitlines(keepends=True), after.splitlines(keepends=True),
                                 fromfile=f"live/{ref}" if live else "/dev/null",
                                 tofile=f"edgekit/{ref}")
    return "".join(lines)


def _apply_one(client: KubeClient, res: Resource, obj: Mapping[str, Any], *, namespace: str | None,
               field_manager: str, force: bool, dry_run: bool) -> dict[str, Any]:
    body = dict(obj)
    if res.namespaced:
        body["metadata"] = {**(obj.get("metadata") or {}), "namespace": namespace}
    path = res.path(namespace, body["metadata"]["name"])
    answer: dict[str, Any] = client.request(
        "PATCH", path, body=body, content_type="application/apply-patch+yaml",
        query={"fieldManager": field_manager, "force": force, "dryRun": "All" if dry_run else None})
    return answer


def wait_crd_established(client: KubeClient, name: str, timeout: float = 30.0) -> None:
    """Wait until a CRD's kind is served (condition ``Established``)."""
    res = resource_for("apiextensions.k8s.io/v1", "CustomResourceDefinition")
    deadline = time.monotonic() + timeout
    while True:
        crd = client.get(res.path(name=name))
        conditions = (crd.get("status") or {}).get("conditions") or []
        if any(c.get("type") == "Established" and c.get("status") == "True" for c in conditions):
            return
        if time.monotonic() > deadline:
            raise KubeUnavailableError(
                f"CustomResourceDefinition {name} not established after {timeout:.0f}s")
        time.sleep(0.2)


def apply_objects(client: KubeClient, objects: Sequence[Mapping[str, Any]], *,
                  namespace: str | None = None, field_manager: str = FIELD_MANAGER,
                  force: bool = False, dry_run: bool = False) -> ApplyReport:
    """Server-side apply ``objects`` (validated all together first; see the module docstring).

    ``namespace`` is the default for namespaced objects without ``metadata.namespace``.
    With ``dry_run`` nothing is written and each result carries a unified diff against the live
    object. ``force`` takes over fields owned by another field manager (otherwise: KubeConflictError).
    """
    ordered = sort_for_apply(objects)
    for obj in ordered:
        _check(obj)
    new_crds = {o["metadata"]["name"]: o for o in ordered if o["kind"] == "CustomResourceDefinition"}
    new_crd_kinds = {(f"{o['spec']['group']}/{v['name']}", o["spec"]["names"]["kind"])
                     for o in new_crds.values() for v in o["spec"].get("versions", [])}
    ns_res = resource_for("v1", "Namespace")
    batch_namespaces = {o["metadata"]["name"] for o in ordered if o["kind"] == "Namespace"}
    missing_ns: set[str] = set()
    for ns in batch_namespaces:
        if client.get_or_none(ns_res.path(name=ns)) is None:
            missing_ns.add(ns)

    plan: list[tuple[dict[str, Any], Resource | None, str | None, dict[str, Any] | None]] = []
    for obj in ordered:
        key = (obj["apiVersion"], obj["kind"])
        if key in new_crd_kinds:
            try:
                res: Resource | None = resource_for(*key, client=client)
            except KubeNotFoundError:
                res = None  # the CRD is new: the kind is not served yet
        else:
            res = resource_for(*key, client=client)
        ns = (obj["metadata"].get("namespace") or namespace) if (res is None or res.namespaced) else None
        if res is not None and res.namespaced and not ns:
            raise KubeInvalidError(f"{obj['kind']} {obj['metadata']['name']} needs a namespace")
        if res is None or (ns in missing_ns):
            plan.append((obj, res, ns, None))  # cannot be dry-run before its namespace/CRD exists
            continue
        plan.append((obj, res, ns, _apply_one(client, res, obj, namespace=ns, field_manager=field_manager,
                                              force=force, dry_run=True)))

    report = ApplyReport(dry_run=dry_run)
    for obj, res, ns, preview in plan:
        name = obj["metadata"]["name"]
        ref_kind = obj["kind"]
        ref = f"{ref_kind.lower()}/{ns + '/' if ns else ''}{name}"
        before_rv = ((preview or {}).get("metadata") or {}).get("resourceVersion") or ""
        if dry_run:
            live = client.get_or_none(res.object_path(obj, ns)) if (res and before_rv) else None
            desired: Mapping[str, Any] = preview or obj
            text = _diff(live, desired, ref)
            action: Action = "created" if not before_rv else ("configured" if text else "unchanged")
            report.results.append(ApplyResult(ref_kind, name, ns, action, text, preview is not None))
            continue
        if res is None:
            crd = next(c for c in new_crds.values() if c["spec"]["names"]["kind"] == ref_kind)
            wait_crd_established(client, crd["metadata"]["name"])
            res = resource_for(obj["apiVersion"], ref_kind, client=client)
        answer = _apply_one(client, res, obj, namespace=ns, field_manager=field_manager,
                            force=force, dry_run=False)
        after_rv = (answer.get("metadata") or {}).get("resourceVersion") or ""
        action = "created" if not before_rv else ("unchanged" if after_rv == before_rv else "configured")
        report.results.append(ApplyResult(ref_kind, name, ns, action, "", preview is not None))
        if ref_kind == "CustomResourceDefinition":
            wait_crd_established(client, name)
    return report


def patch_labels(client: KubeClient, api_version: str, kind: str, name: str,
                 labels: Mapping[str, str | None], *, namespace: str | None = None,
                 field_manager: str = FIELD_MANAGER) -> dict[str, Any]:
    """Set (value) or remove (``None``) labels on one object with a JSON merge patch.

    A merge patch touches only the named labels, so several apps (and other controllers) can label
    the same node independently; the change is recorded under ``field_manager``.
    """
    res = resource_for(api_version, kind, client=client)
    answer: dict[str, Any] = client.request(
        "PATCH", res.path(namespace, name), body={"metadata": {"labels": dict(labels)}},
        content_type="application/merge-patch+json", query={"fieldManager": field_manager})
    return answer


def label_nodes(client: KubeClient, names: Iterable[str], labels: Mapping[str, str | None], *,
                field_manager: str = FIELD_MANAGER, workers: int = 4) -> int:
    """Label many nodes (one PATCH each, ``workers`` at a time). Returns how many were patched.

    Raises the first error after the other in-flight patches finish.
    """
    names = list(names)
    if not names:
        return 0

    def one(node: str) -> None:
        patch_labels(client, "v1", "Node", node, labels, field_manager=field_manager)

    errors: list[KubeError] = []
    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(names)))) as pool:
        for future in [pool.submit(one, n) for n in names]:
            try:
                future.result()
            except KubeError as exc:
                errors.append(exc)
    if errors:
        raise errors[0]
    return len(names)


def delete_object(client: KubeClient, api_version: str, kind: str, name: str, *,
                  namespace: str | None = None, missing_ok: bool = True,
                  propagation: str = "Background") -> bool:
    """Delete one object; returns False when it was already gone (and ``missing_ok``)."""
    res = resource_for(api_version, kind, client=client)
    try:
        client.request("DELETE", res.path(namespace, name),
                       body={"kind": "DeleteOptions", "apiVersion": "v1",
                             "propagationPolicy": propagation})
    except KubeNotFoundError:
        if not missing_ok:
            raise
        return False
    return True
