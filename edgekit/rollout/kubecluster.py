"""The engine's cluster port on a real Kubernetes API, through ``edgekit.kube``.

API calls per rollout (``bench/rollout.py`` counts them):

- per node moved: one label PATCH forward (and one back on a rollback), issued ``workers`` at a time;
- per wave: a handful (status writes, one server-side apply of the revision's manifests);
- per rollout: one LIST + WATCH of the new revision's pods, one WATCH of the EdgeRollout, lease
  renewals every third of the lease, and the cleanup (a few GETs and DELETEs).

Nothing is polled per node: readiness comes from the pod watch.
"""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from edgekit.errors import (
    ConfigError,
    EmptyGroupError,
    GroupNotFoundError,
    KubeConflictError,
    KubeError,
    KubeNotFoundError,
    RolloutInProgressError,
    RolloutNotFoundError,
)
from edgekit.kube import names
from edgekit.kube.applying import FIELD_MANAGER, delete_object, patch_labels, sort_for_apply
from edgekit.kube.client import KubeClient
from edgekit.kube.groups import DeviceGroup, group_nodes, parse_group
from edgekit.kube.modelsources import choose_model_source
from edgekit.kube.rendering import KEY_FILE, RenderSettings, key_configmap, render
from edgekit.kube.resources import resource_for
from edgekit.kube.targets import TARGETS
from edgekit.rollout import resource as r
from edgekit.rollout.leasing import LeaseRecord
from edgekit.rollout.resource import EdgeRollout, ImageRef, RolloutSpec
from edgekit.rollout.watching import ListWatch

_ROLLOUTS = resource_for(r.API_VERSION, r.KIND)
_LEASES = resource_for("coordination.k8s.io/v1", "Lease")
_DAEMONSETS = resource_for("apps/v1", "DaemonSet")
_PODS = resource_for("v1", "Pod")
_CONFIGMAPS = resource_for("v1", "ConfigMap")
_INSTALL_HINT = "is edgekit installed in this namespace? run `edgekit install`"


def _micro(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _pod_ready(pod: Mapping[str, Any]) -> bool:
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


class _Pods:
    """Ready pods of one revision, by node, from a list + watch."""

    def __init__(self, watch: ListWatch) -> None:
        self.watch = watch

    def ready_nodes(self) -> set[str]:
        return {p["spec"]["nodeName"] for p in self.watch.snapshot()
                if (p.get("spec") or {}).get("nodeName") and _pod_ready(p)}

    def wait(self, timeout: float) -> bool:
        return self.watch.wait(timeout)

    def close(self) -> None:
        self.watch.close()


class _RolloutWatch:
    def __init__(self, watch: ListWatch, name: str) -> None:
        self.watch = watch
        self.name = name
        self._seen = 0

    def latest(self) -> EdgeRollout | None:
        with self.watch.changed:
            self._seen = self.watch.version
            obj = self.watch.objects.get(self.name)
        return EdgeRollout.from_json(obj) if obj else None

    def wait(self, timeout: float) -> bool:
        return self.watch.wait(timeout, seen=self._seen)

    def close(self) -> None:
        self.watch.close()


class KubeCluster:
    """``ClusterPort`` on a live API server. ``render_options`` go to ``RenderSettings`` (agent
    image, broker URL, MQTT auth, telemetry interval, public key ConfigMap...)."""

    def __init__(self, client: KubeClient, *, render_options: Mapping[str, Any] | None = None,
                 workers: int = 32) -> None:
        self.client = client
        self.render_options = dict(render_options or {})
        self.workers = workers
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        # Relabelling runs ``workers`` requests at once next to two long watches: give the HTTP
        # pool room for all of them, or urllib3 drops and re-opens TLS connections all the time.
        pool = getattr(getattr(client.api, "rest_client", None), "pool_manager", None)
        if pool is not None and int(pool.connection_pool_kw.get("maxsize") or 1) < workers + 4:
            pool.connection_pool_kw["maxsize"] = workers + 4
            pool.clear()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    # --- device groups ----------------------------------------------------------------------
    def _group(self, group: str, profile: str = "k3s") -> DeviceGroup:
        return parse_group(group, profile)

    def group_nodes(self, group: str, profile: str = "k3s") -> dict[str, dict[str, str]]:
        parsed = self._group(group, profile)
        try:
            nodes = group_nodes(self.client, parsed)
        except GroupNotFoundError as exc:
            if parsed.kind == "selector" or self._group_object_exists(parsed):
                raise EmptyGroupError(f"device group {group!r} has no nodes (selector {parsed.selector})",
                                      hint="check the nodes' labels; nothing was changed") from exc
            raise GroupNotFoundError(
                f"unknown device group {group!r}: no node is labelled {parsed.selector}",
                hint="see `edgekit groups list`; nothing was changed") from exc
        return {n["metadata"]["name"]: dict(n["metadata"].get("labels") or {}) for n in nodes}

    def _group_object_exists(self, group: DeviceGroup) -> bool:
        """A KubeEdge NodeGroup / OpenYurt NodePool may exist with no nodes in it (an empty group)."""
        kinds = {t.group_kind: t.group_object for t in TARGETS.values() if t.group_object}
        if group.kind not in kinds:
            return False
        res = resource_for(*kinds[group.kind])
        try:
            return self.client.get_or_none(res.path(name=group.name)) is not None
        except KubeError:
            return False

    def nodes_on_revision(self, app: str, revision: str) -> list[str]:
        nodes = self.client.list("/api/v1/nodes", label_selector=f"{names.rollout_label(app)}={revision}")
        return sorted(n["metadata"]["name"] for n in nodes)

    def relabel_nodes(self, app: str, moves: Mapping[str, str | None]) -> None:
        if not moves:
            return
        label = names.rollout_label(app)
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="relabel")
        futures = [self._pool.submit(patch_labels, self.client, "v1", "Node", node, {label: rev})
                   for node, rev in moves.items()]
        errors = []
        for future in futures:
            try:
                future.result()
            except KubeNotFoundError:
                pass  # the node left the cluster: nothing runs there to move
            except KubeError as exc:
                errors.append(exc)
        if errors:
            raise errors[0]

    # --- workloads --------------------------------------------------------------------------
    def ship_key(self, namespace: str, name: str, pem: str) -> None:
        held = self.client.get_or_none(_CONFIGMAPS.path(namespace, name))
        if held is None:
            self.client.request("POST", _CONFIGMAPS.path(namespace), body=key_configmap(namespace, pem, name))
        elif (held.get("data") or {}).get(KEY_FILE) != pem:
            raise ConfigError(f"ConfigMap {namespace}/{name} holds another public key than the one given",
                              field="public_key",
                              hint="to change the devices' key: edgekit render ... --public-key FILE --apply; "
                                   "or pass the key that ConfigMap holds")

    def ensure_daemonset(self, namespace: str, spec: RolloutSpec, image: ImageRef) -> None:
        """Server-side apply of the revision's objects, one PATCH each (field manager ``edgekit``).
        No dry-run round first: these are edgekit's own objects, rendered and checked by
        ``edgekit.kube.rendering``, and applying is idempotent."""
        settings = RenderSettings(app=spec.app, image=image.image, group=self._group(spec.group, spec.profile),
                                  target=spec.profile, namespace=namespace, revision=image.revision,
                                  require_digest=True, **self._options(spec))
        for obj in sort_for_apply(render(settings)):
            res = resource_for(obj["apiVersion"], obj["kind"])
            self.client.request("PATCH", res.path(namespace, obj["metadata"]["name"]), body=obj,
                                content_type="application/apply-patch+yaml",
                                query={"fieldManager": FIELD_MANAGER, "force": True})

    def ensure_shadow_daemonset(self, namespace: str, spec: RolloutSpec, serving: ImageRef, revision: str,
                                candidate: ImageRef) -> None:
        policy = spec.shadow
        settings = RenderSettings(app=spec.app, image=serving.image, group=self._group(spec.group, spec.profile),
                                  target=spec.profile, namespace=namespace, revision=revision,
                                  require_digest=True, shadow_image=candidate.image,
                                  shadow_ratio=policy.ratio if policy else 0.1,
                                  shadow_metric=policy.metric if policy else "top1", **self._options(spec))
        for obj in sort_for_apply(render(settings)):
            res = resource_for(obj["apiVersion"], obj["kind"])
            self.client.request("PATCH", res.path(namespace, obj["metadata"]["name"]), body=obj,
                                content_type="application/apply-patch+yaml",
                                query={"fieldManager": FIELD_MANAGER, "force": True})

    def _options(self, spec: RolloutSpec) -> dict[str, Any]:
        """``render_options`` with ``model_source: auto`` decided from the group's nodes (one list)."""
        options = dict(self.render_options)
        if spec.model_platforms:
            options["model_platforms"] = spec.model_platforms
        if options.get("model_source", "auto") == "auto":
            group = self._group(spec.group, spec.profile)
            try:
                nodes = group_nodes(self.client, group)
            except GroupNotFoundError:
                nodes = []
            options["model_source"] = choose_model_source(nodes, TARGETS[spec.profile].model_source).source
        return options

    def daemonset_scheduled(self, namespace: str, app: str, revision: str) -> int | None:
        if self.client.get_or_none(_DAEMONSETS.path(namespace, f"{app}-{revision}")) is None:
            return None
        pods = self.client.list(_PODS.path(namespace),
                                label_selector=f"{names.APP_LABEL}={app},{names.REVISION_LABEL}={revision}")
        return len(pods)

    def delete_daemonset(self, namespace: str, app: str, revision: str) -> None:
        name = f"{app}-{revision}"
        delete_object(self.client, "apps/v1", "DaemonSet", name, namespace=namespace)
        delete_object(self.client, "v1", "ConfigMap", name, namespace=namespace)

    def app_revisions(self, namespace: str, app: str) -> dict[str, ImageRef]:
        out: dict[str, ImageRef] = {}
        for ds in self.client.list(_DAEMONSETS.path(namespace), label_selector=f"{names.APP_LABEL}={app}"):
            meta = ds.get("metadata") or {}
            rev = (meta.get("labels") or {}).get(names.REVISION_LABEL)
            image = (meta.get("annotations") or {}).get(names.IMAGE_ANNOTATION, "")
            if rev:
                out[rev] = ImageRef(image, r.digest_of(image), rev)
        return out

    def track_pods(self, namespace: str, app: str, revision: str) -> _Pods:
        watch = ListWatch(self.client, _PODS.path(namespace),
                          label_selector=f"{names.APP_LABEL}={app},{names.REVISION_LABEL}={revision}")
        return _Pods(watch.start())

    # --- EdgeRollouts -----------------------------------------------------------------------
    def get_rollout(self, namespace: str, name: str) -> EdgeRollout:
        try:
            return EdgeRollout.from_json(self.client.get(_ROLLOUTS.path(namespace, name)))
        except KubeNotFoundError as exc:
            raise RolloutNotFoundError(f"no rollout {name} in namespace {namespace}",
                                       hint="see `edgekit rollout history`") from exc

    def list_rollouts(self, namespace: str, app: str | None = None, group: str | None = None) -> list[EdgeRollout]:
        selector = f"{r.LABEL_APP}={app}" if app else None
        try:
            items = self.client.list(_ROLLOUTS.path(namespace), label_selector=selector)
        except KubeNotFoundError as exc:
            raise KubeNotFoundError(f"the cluster does not serve EdgeRollouts in namespace {namespace}",
                                    hint=_INSTALL_HINT) from exc
        found = [EdgeRollout.from_json(o) for o in items]
        return [ro for ro in found if group is None or ro.spec.group == group]

    def create_rollout(self, rollout: EdgeRollout) -> EdgeRollout:
        body = rollout.to_json(with_status=False)
        body["metadata"].pop("resourceVersion", None)
        try:
            self.client.request("POST", _ROLLOUTS.path(rollout.namespace), body=body,
                                query={"fieldManager": FIELD_MANAGER})
        except KubeConflictError as exc:
            raise RolloutInProgressError(f"rollout {rollout.name} already exists",
                                         hint="another push started at the same moment") from exc
        except KubeNotFoundError as exc:
            raise KubeNotFoundError(f"cannot create EdgeRollout in namespace {rollout.namespace}: {exc.message}",
                                    hint=_INSTALL_HINT) from exc
        return self.write_status(rollout)

    def write_status(self, rollout: EdgeRollout) -> EdgeRollout:
        body = {"apiVersion": r.API_VERSION, "kind": r.KIND,
                "metadata": {"name": rollout.name, "namespace": rollout.namespace},
                "status": rollout.status.to_json()}
        answer = self.client.request(
            "PATCH", _ROLLOUTS.path(rollout.namespace, rollout.name, "status"), body=body,
            content_type="application/apply-patch+yaml", query={"fieldManager": FIELD_MANAGER, "force": True})
        meta = answer.get("metadata") or {}
        return EdgeRollout(rollout.name, rollout.namespace, rollout.spec, rollout.status,
                           resource_version=meta.get("resourceVersion"),
                           created_at=r.from_time(meta.get("creationTimestamp")))

    def patch_rollout(self, namespace: str, name: str, *, spec: Mapping[str, Any] | None = None,
                      annotations: Mapping[str, str | None] | None = None) -> EdgeRollout:
        body: dict[str, Any] = {}
        if spec:
            body["spec"] = dict(spec)
        if annotations:
            body["metadata"] = {"annotations": dict(annotations)}
        try:
            answer = self.client.request("PATCH", _ROLLOUTS.path(namespace, name), body=body,
                                         content_type="application/merge-patch+json",
                                         query={"fieldManager": FIELD_MANAGER})
        except KubeNotFoundError as exc:
            raise RolloutNotFoundError(f"no rollout {name} in namespace {namespace}") from exc
        return EdgeRollout.from_json(answer)

    def watch_rollout(self, namespace: str, name: str) -> _RolloutWatch:
        watch = ListWatch(self.client, _ROLLOUTS.path(namespace), field_selector=f"metadata.name={name}")
        return _RolloutWatch(watch.start(), name)

    # --- leases -----------------------------------------------------------------------------
    def get_lease(self, namespace: str, name: str) -> LeaseRecord | None:
        obj = self.client.get_or_none(_LEASES.path(namespace, name))
        if obj is None:
            return None
        spec = obj.get("spec") or {}
        return LeaseRecord(
            holder=spec.get("holderIdentity") or None, duration_s=float(spec.get("leaseDurationSeconds") or 15),
            acquired_at=r.from_time(spec.get("acquireTime")), renewed_at=r.from_time(spec.get("renewTime")),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=(obj.get("metadata") or {}).get("resourceVersion"))

    def write_lease(self, namespace: str, name: str, record: LeaseRecord) -> LeaseRecord:
        spec = {k: v for k, v in {
            "holderIdentity": record.holder, "leaseDurationSeconds": max(1, round(record.duration_s)),
            "acquireTime": _micro(record.acquired_at), "renewTime": _micro(record.renewed_at),
            "leaseTransitions": record.transitions}.items() if v is not None}
        meta: dict[str, Any] = {"name": name, "namespace": namespace,
                                "labels": dict(names.MANAGED_BY_LABELS)}
        body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease", "metadata": meta, "spec": spec}
        if record.resource_version is None:
            answer = self.client.request("POST", _LEASES.path(namespace), body=body,
                                         query={"fieldManager": FIELD_MANAGER})
        else:
            meta["resourceVersion"] = record.resource_version
            answer = self.client.request("PUT", _LEASES.path(namespace, name), body=body,
                                         query={"fieldManager": FIELD_MANAGER})
        version = (answer.get("metadata") or {}).get("resourceVersion")
        return LeaseRecord(record.holder, record.duration_s, record.acquired_at, record.renewed_at,
                           record.transitions, version)
