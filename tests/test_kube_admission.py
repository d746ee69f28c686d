"""Least privilege the API server enforces: the engine's ServiceAccount against the real kube-apiserver,
its RBAC, edgekit's ValidatingAdmissionPolicies and Pod Security admission."""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from edgekit.errors import KubeForbiddenError
from edgekit.kube import apply_objects, names
from edgekit.kube.applying import FIELD_MANAGER, patch_labels
from edgekit.kube.client import KubeClient
from edgekit.kube.deploying import install
from edgekit.kube.groups import parse_group
from edgekit.kube.install import ENGINE_NAME
from edgekit.kube.rendering import RenderSettings, render
from tests.fixtures.kube import KubeHandle, wait_until_admission_enforced

pytestmark = pytest.mark.kube

IMAGE = "registry.local:5000/models/digits@sha256:" + "5e1d" * 16


@dataclass
class Engine:
    kube: KubeHandle
    namespace: str
    admin: KubeClient
    client: KubeClient  # the engine's ServiceAccount (a bound token), not impersonation

    def daemonset(self, app: str, **settings: Any) -> dict[str, Any]:
        objs = render(RenderSettings(app=app, image=IMAGE, group=parse_group("cams"), namespace=self.namespace,
                                     **settings))
        return next(o for o in objs if o["kind"] == "DaemonSet")

    def apply(self, obj: dict[str, Any]) -> None:
        apply_objects(self.client, [obj])


@pytest.fixture(scope="module")
def engine(kube_cluster: KubeHandle) -> Iterator[Engine]:
    namespace = kube_cluster.unique("adm")
    admin = kube_cluster.client()
    install(admin, namespace)
    kubeconfig = kube_cluster.cluster.service_account_kubeconfig(namespace, ENGINE_NAME)
    client = KubeClient.from_kubeconfig(kubeconfig)
    wait_until_admission_enforced(client, namespace)
    yield Engine(kube_cluster, namespace, admin, client)
    client.close()
    admin.request("DELETE", f"/api/v1/namespaces/{namespace}")


def _pod(ds: dict[str, Any]) -> dict[str, Any]:
    return ds["spec"]["template"]["spec"]  # type: ignore[no-any-return]


def _spool_on_host(ds: dict[str, Any], path: str) -> dict[str, Any]:
    """The DaemonSet with its spool at ``path`` on the node (rendered: /var/lib/edgekit/<app>/spool)."""
    out = copy.deepcopy(ds)
    for v in _pod(out)["volumes"]:
        if v["name"] == "spool":
            v.pop("emptyDir", None)
            v["hostPath"] = {"path": path, "type": "DirectoryOrCreate"}
    return out


def test_the_api_server_runs_both_admission_plugins(engine: Engine) -> None:
    found = {r["name"] for r in engine.admin.get("/apis/admissionregistration.k8s.io/v1")["resources"]}
    assert {"validatingadmissionpolicies", "validatingadmissionpolicybindings"} <= found
    policies = engine.admin.list("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies")
    ours = {p["metadata"]["name"]: p for p in policies if p["metadata"]["name"].endswith("." + engine.namespace)}
    kinds = ("daemonsets", "nodes", "configmaps", "services", "networkpolicies")
    assert set(ours) == {f"{ENGINE_NAME}-{k}.{engine.namespace}" for k in kinds}
    for policy in ours.values():  # every CEL expression compiled and type-checked against the schemas
        assert not (policy.get("status") or {}).get("typeChecking", {}).get("expressionWarnings"), policy["status"]
    ns = engine.admin.get(f"/api/v1/namespaces/{engine.namespace}")["metadata"]["labels"]
    assert ns["pod-security.kubernetes.io/warn"] == ns["pod-security.kubernetes.io/audit"] == "restricted"
    assert "pod-security.kubernetes.io/enforce" not in ns


def test_the_engine_deploys_edgekit_daemonsets(engine: Engine) -> None:
    plain = engine.daemonset("ok-plain", mqtt_auth="none")
    spool = next(v for v in _pod(plain)["volumes"] if v["name"] == "spool")  # as rendered, unchanged
    assert spool["hostPath"] == {"path": "/var/lib/edgekit/ok-plain/spool", "type": "DirectoryOrCreate"}
    engine.apply(plain)
    engine.apply(engine.daemonset("ok-device"))  # node-cert: the device hostPath, read-only
    engine.apply(engine.daemonset("ok-kubeedge", target="kubeedge"))  # init container fetch
    engine.apply(_spool_on_host(engine.daemonset("ok-spool"), "/var/lib/edgekit/ok-spool/"))
    engine.apply(_spool_on_host(engine.daemonset("ok-spool2"), "/var/lib/edgekit/ok-spool2/spool"))
    # the whole revision through the engine's own writer: SA, ConfigMap, Service, NetworkPolicy, DaemonSet
    objs = render(RenderSettings(app="ok-all", image=IMAGE, group=parse_group("cams"), namespace=engine.namespace,
                                 api_from_namespaces=("apps",)))
    report = apply_objects(engine.client, objs)
    assert [r.action for r in report.results] == ["created"] * 5


def _privileged(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["securityContext"].update(privileged=True, allowPrivilegeEscalation=True)


def _escalating(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["securityContext"]["allowPrivilegeEscalation"] = True


def _root(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["securityContext"].update(runAsUser=0, runAsNonRoot=False)


def _root_init(ds: dict[str, Any]) -> None:
    _pod(ds)["initContainers"][0]["securityContext"].update(runAsUser=0, runAsNonRoot=False)


def _cap_add(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["securityContext"]["capabilities"] = {"drop": ["ALL"], "add": ["NET_ADMIN"]}


def _writable_root(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["securityContext"]["readOnlyRootFilesystem"] = False


def _unconfined(ds: dict[str, Any]) -> None:
    _pod(ds)["securityContext"]["seccompProfile"] = {"type": "Unconfined"}
    del _pod(ds)["containers"][0]["securityContext"]["seccompProfile"]


def _host_network(ds: dict[str, Any]) -> None:
    _pod(ds)["hostNetwork"] = True


def _host_pid(ds: dict[str, Any]) -> None:
    _pod(ds)["hostPID"] = True


def _foreign_image(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["image"] = "evil.example/edgekit/edgekit-agent:0.1.0"


def _lookalike_image(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["image"] = "edgekit/edgekit-agent-evil:0.1.0"


def _foreign_init_image(ds: dict[str, Any]) -> None:
    _pod(ds)["initContainers"][0]["image"] = "busybox:1.36"


def _shell(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["command"] = ["sh", "-c", "cat /etc/edgekit-agent/device/tls.key"]


def _host_root(ds: dict[str, Any]) -> None:
    _pod(ds)["volumes"].append({"name": "tmp2", "hostPath": {"path": "/"}})


def _host_tmp(ds: dict[str, Any]) -> None:
    tmp = next(v for v in _pod(ds)["volumes"] if v["name"] == "tmp")
    tmp.pop("emptyDir")
    tmp["hostPath"] = {"path": "/tmp"}


def _secret_volume(ds: dict[str, Any]) -> None:
    next(v for v in _pod(ds)["volumes"] if v["name"] == "mqtt-ca").pop("configMap")
    next(v for v in _pod(ds)["volumes"] if v["name"] == "mqtt-ca")["secret"] = {"secretName": "edgekit-mqtt-tls"}


def _device_elsewhere(ds: dict[str, Any]) -> None:
    next(v for v in _pod(ds)["volumes"] if v["name"] == "device")["hostPath"]["path"] = "/etc/kubernetes/pki"


def _device_writable(ds: dict[str, Any]) -> None:
    next(m for m in _pod(ds)["containers"][0]["volumeMounts"] if m["name"] == "device")["readOnly"] = False


def _token(ds: dict[str, Any]) -> None:
    _pod(ds)["automountServiceAccountToken"] = True


def _engine_account(ds: dict[str, Any]) -> None:
    _pod(ds)["serviceAccountName"] = ENGINE_NAME


def _secret_env(ds: dict[str, Any]) -> None:
    _pod(ds)["containers"][0]["env"].append(
        {"name": "X", "valueFrom": {"secretKeyRef": {"name": "edgekit-mqtt-tls", "key": "tls.key"}}})


@pytest.mark.parametrize(("change", "text"), [
    (_privileged, "must not be privileged"),
    (_escalating, "allowPrivilegeEscalation"),
    (_root, "non-root"),
    (_root_init, "non-root"),
    (_cap_add, "drop ALL capabilities and add none"),
    (_writable_root, "read-only root filesystem"),
    (_unconfined, "seccomp"),
    (_host_network, "hostNetwork"),
    (_host_pid, "hostPID"),
    (_foreign_image, "agent image"),
    (_lookalike_image, "agent image"),
    (_foreign_init_image, "agent image"),
    (_shell, "edgekit-agent"),
    (_host_root, "volumes not of edgekit's shape: tmp2"),
    (_host_tmp, "volumes not of edgekit's shape: tmp"),
    (_secret_volume, "volumes not of edgekit's shape: mqtt-ca"),
    (_device_elsewhere, "volumes not of edgekit's shape: device"),
    (_device_writable, "device volume is mounted read-only"),
    (_token, "no API token"),
    (_engine_account, "own ServiceAccount"),
    (_secret_env, "no Secret"),
])
def test_the_engine_may_not_deploy_anything_else(engine: Engine, change: Callable[[dict[str, Any]], None],
                                                 text: str) -> None:
    ds = engine.daemonset("bad", target="kubeedge")  # with the init container
    change(ds)
    with pytest.raises(KubeForbiddenError, match="denied request") as err:
        engine.apply(ds)
    assert text in str(err.value)
    daemonsets = f"/apis/apps/v1/namespaces/{engine.namespace}/daemonsets"
    assert engine.admin.get_or_none(f"{daemonsets}/{ds['metadata']['name']}") is None
    engine.admin.request("POST", daemonsets, body=ds,
                         query={"dryRun": "All"})  # people (here: the admin) are not held to it


@pytest.mark.parametrize("path", ["/var/lib/edgekit/other-app", "/var/lib/edgekit", "/var/lib/kubelet",
                                  "/var/lib/edgekit/spool-xx", "/var/lib/edgekit/spool-x-other"])
def test_the_spool_stays_in_its_apps_host_folder(engine: Engine, path: str) -> None:
    ds = _spool_on_host(engine.daemonset("spool-x"), path)
    with pytest.raises(KubeForbiddenError, match="volumes not of edgekit's shape: spool"):
        engine.apply(ds)


def test_the_engine_may_change_only_rollout_labels_on_nodes(engine: Engine) -> None:
    (node,) = engine.kube.add_nodes(1, pools=f"{engine.kube.unique('adm')}=1")
    path = f"/api/v1/nodes/{node}"

    def merge(body: dict[str, Any]) -> None:
        engine.client.request("PATCH", path, body=body, content_type="application/merge-patch+json")

    patch_labels(engine.client, "v1", "Node", node, {names.rollout_label("app"): "r1"})
    patch_labels(engine.client, "v1", "Node", node, {names.rollout_label("app"): None})
    denied: list[dict[str, Any]] = [
        {"spec": {"taints": [{"key": "x", "value": "y", "effect": "NoSchedule"}]}},
        {"spec": {"unschedulable": True}},
        {"metadata": {"labels": {names.GROUP_LABEL: "elsewhere"}}},
        {"metadata": {"labels": {"node-role.kubernetes.io/control-plane": ""}}},
        {"metadata": {"labels": {names.rollout_label("app"): "r2", "kubernetes.io/hostname": None}}},
        {"metadata": {"annotations": {"x": "y"}}},
    ]
    for body in denied:
        with pytest.raises(KubeForbiddenError, match="denied request"):
            merge(body)
    live = engine.admin.get(path)
    assert names.rollout_label("app") not in live["metadata"]["labels"]
    # (a fresh node may still carry the node controller's not-ready taint: only ours must be absent)
    assert all(t["key"] != "x" for t in live["spec"].get("taints") or []) and not live["spec"].get("unschedulable")
    # the Go kubectl as the engine, impersonated by the admin, meets the same policy
    as_engine = f"--as=system:serviceaccount:{engine.namespace}:{ENGINE_NAME}"
    ok = engine.kube.kubectl(as_engine, "label", "node", node, f"{names.rollout_label('app')}=r3")
    assert ok.returncode == 0
    bad = engine.kube.kubectl(as_engine, "taint", "node", node, "x=y:NoSchedule", check=False)
    assert bad.returncode != 0 and "may not change a node's spec" in bad.stderr
    bad = engine.kube.kubectl(as_engine, "cordon", node, check=False)
    assert "denied request" in bad.stderr  # (kubectl cordon prints the error but exits 0)
    live = engine.admin.get(path)
    # (a fresh node may still carry the node controller's not-ready taint: only ours must be absent)
    assert all(t["key"] != "x" for t in live["spec"].get("taints") or []) and not live["spec"].get("unschedulable")
    assert live["metadata"]["labels"][names.rollout_label("app")] == "r3"


def test_trust_configmaps_are_read_only_to_the_engine(engine: Engine) -> None:
    ns = engine.namespace
    ca = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edgekit-mqtt-ca", "namespace": ns},
          "data": {"ca.crt": "the real CA"}}
    apply_objects(engine.admin, [ca])  # the operator (or edgekit install) writes it
    assert engine.client.get(f"/api/v1/namespaces/{ns}/configmaps/edgekit-mqtt-ca")["data"]["ca.crt"] == "the real CA"
    forged = {**ca, "data": {"ca.crt": "an attacker's CA"}}
    with pytest.raises(KubeForbiddenError, match="written by edgekit install"):
        apply_objects(engine.client, [forged], force=True)
    with pytest.raises(KubeForbiddenError, match="written by edgekit install"):
        engine.client.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/edgekit-mqtt-ca")
    key = {**ca, "metadata": {"name": "edgekit-cosign-key", "namespace": ns}, "data": {"cosign.pub": "x"}}
    with pytest.raises(KubeForbiddenError, match="written by edgekit install"):
        engine.client.request("POST", f"/api/v1/namespaces/{ns}/configmaps", body=key)
    other = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kube-proxy-ish", "namespace": ns}}
    with pytest.raises(KubeForbiddenError, match=r"only agent configs <app>-<revision>"):
        engine.client.request("PATCH", f"/api/v1/namespaces/{ns}/configmaps/kube-proxy-ish", body=other,
                              content_type="application/apply-patch+yaml",
                              query={"fieldManager": FIELD_MANAGER})
    assert engine.admin.get(f"/api/v1/namespaces/{ns}/configmaps/edgekit-mqtt-ca")["data"]["ca.crt"] == "the real CA"
    # its own per-revision config: written and deleted
    cm = next(o for o in render(RenderSettings(app="cfg", image=IMAGE, group=parse_group("cams"), namespace=ns))
              if o["kind"] == "ConfigMap")
    apply_objects(engine.client, [cm])
    engine.client.request("DELETE", f"/api/v1/namespaces/{ns}/configmaps/{cm['metadata']['name']}")
    with pytest.raises(KubeForbiddenError):  # RBAC: still no Secrets
        engine.client.list(f"/api/v1/namespaces/{ns}/secrets")


def test_the_engine_keeps_the_api_inside_the_cluster(engine: Engine) -> None:
    objs = {o["kind"]: o for o in render(RenderSettings(app="net", image=IMAGE, group=parse_group("cams"),
                                                        namespace=engine.namespace, api_from_namespaces=("apps",)))}
    apply_objects(engine.client, [objs["Service"], objs["NetworkPolicy"]])
    svc, netpol = objs["Service"], objs["NetworkPolicy"]
    exposed: list[tuple[dict[str, Any], str]] = [
        ({**svc, "spec": {**svc["spec"], "type": "NodePort"}}, "node-local ClusterIP"),
        ({**svc, "spec": {**svc["spec"], "externalIPs": ["203.0.113.7"]}}, "node-local ClusterIP"),
        ({**svc, "spec": {**svc["spec"], "internalTrafficPolicy": "Cluster"}}, "node-local ClusterIP"),
        ({**svc, "metadata": {**svc["metadata"], "name": "kubernetes-ish"}}, "only Services <app>"),
        ({**netpol, "spec": {**netpol["spec"], "ingress": [{}]}}, "only namespaces named"),
        ({**netpol, "spec": {**netpol["spec"], "ingress": [{"from": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]}},
         "only namespaces named"),
        ({**netpol, "spec": {**netpol["spec"], "ingress": [{"from": [{"namespaceSelector": {}}]}]}},
         "only namespaces named"),
        ({**netpol, "spec": {**netpol["spec"], "podSelector": {}}}, "select the app's pods"),
    ]
    for obj, text in exposed:
        with pytest.raises(KubeForbiddenError, match="denied request") as err:
            apply_objects(engine.client, [obj])
        assert text in str(err.value)


def test_the_agent_pod_is_restricted_but_for_the_spool(engine: Engine, kube_namespace: str) -> None:
    """Pod Security ``enforce: restricted`` on the rendered pod: the single violation is the hostPath
    spool (and the device hostPath with node-cert), which edgekit's own policy allows."""
    admin = engine.admin
    admin.request("PATCH", f"/api/v1/namespaces/{kube_namespace}", content_type="application/merge-patch+json",
                  body={"metadata": {"labels": {"pod-security.kubernetes.io/enforce": "restricted"}}})

    def dry_run_pod(**settings: Any) -> str:
        ds = _spool_on_host(engine.daemonset("psa", **settings), "/var/lib/edgekit/psa/")
        pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "psa", "namespace": kube_namespace},
               "spec": {**_pod(ds), "nodeName": "nowhere"}}
        with pytest.raises(KubeForbiddenError) as err:
            admin.request("POST", f"/api/v1/namespaces/{kube_namespace}/pods", body=pod, query={"dryRun": "All"})
        return str(err.value)

    for target in ("k3s", "kubeedge"):  # image volume; init container
        message = dry_run_pod(mqtt_auth="none", target=target)
        assert message.endswith('violates PodSecurity "restricted:latest": restricted volume types '
                                '(volume "spool" uses restricted volume type "hostPath")'), message
    message = dry_run_pod()
    assert message.endswith('violates PodSecurity "restricted:latest": restricted volume types '
                            '(volumes "spool", "device" use restricted volume type "hostPath")'), message
