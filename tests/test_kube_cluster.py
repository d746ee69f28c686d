"""edgekit against a real control plane (etcd, kube-apiserver, controller-manager, scheduler, KWOK)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from edgekit.cli import cli
from edgekit.errors import (
    ConfigError,
    GroupNotFoundError,
    KubeConflictError,
    KubeForbiddenError,
    KubeInvalidError,
)
from edgekit.kube import (
    apply_objects,
    delete_object,
    install_objects,
    label_nodes,
    rollout_label,
)
from edgekit.kube.client import KubeClient
from edgekit.kube.deploying import deploy_revision, install
from edgekit.kube.groups import list_groups, parse_group, show_group
from edgekit.kube.rendering import RenderSettings, render
from edgekit.rehearsal.nodes import FleetSpec
from edgekit.rehearsal.pki import write_kubeconfig
from edgekit.rehearsal.processes import free_port
from tests.fixtures.agent import make_keypair
from tests.fixtures.kube import KubeHandle

pytestmark = pytest.mark.kube

DIGEST = "sha256:" + "5e1d" * 16
IMAGE = f"registry.local:5000/models/digits@{DIGEST}"


def run(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


def one_line_error(result: Result, code: int, text: str) -> None:
    assert result.exit_code == code, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("edgekit: error:"), result.output
    assert text in lines[0], lines[0]


def wait_for(check: Any, timeout: float = 60.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.3)


@pytest.fixture(scope="module")
def installed(kube_cluster: KubeHandle) -> KubeHandle:
    with kube_cluster.client() as client:
        install(client, "edgekit")
    return kube_cluster


# --- the control plane itself -----------------------------------------------------------------
def test_control_plane_versions_and_kubectl(kube_cluster: KubeHandle) -> None:
    client = kube_cluster.client()
    assert client.version()["gitVersion"] == "v1.36.3"
    out = json.loads(kube_cluster.kubectl("version", "-o", "json").stdout)
    assert out["serverVersion"]["gitVersion"] == out["clientVersion"]["gitVersion"] == "v1.36.3"
    assert out["kustomizeVersion"].startswith("v5.")
    assert all(kube_cluster.cluster.status()["components"].values())


def test_kwok_nodes_become_ready_with_group_labels(kube_cluster: KubeHandle) -> None:
    pool = kube_cluster.unique("cams")
    names = kube_cluster.add_nodes(10, pools=f"{pool}=10", arch="arm64=0.7,amd64=0.3")
    assert len(names) == 10
    client = kube_cluster.client()
    nodes = client.list("/api/v1/nodes", label_selector=f"apps.openyurt.io/nodepool={pool}")
    assert len(nodes) == 10
    node = nodes[0]
    assert node["status"]["nodeInfo"]["architecture"] == node["metadata"]["labels"]["kubernetes.io/arch"]
    assert any(c["type"] == "Ready" and c["status"] == "True" for c in node["status"]["conditions"])


# --- install: CRD + RBAC --------------------------------------------------------------------
def test_install_is_idempotent_and_the_crd_works(installed: KubeHandle, kube_namespace: str) -> None:
    client = installed.client()
    # The API server type-checks each new admission policy and writes its status a moment after
    # install; such a write between our dry run and the apply would read as "configured".
    vaps = "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
    wait_for(lambda: all((p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
                         for p in client.list(vaps) if p["metadata"]["name"].startswith("edgekit")),
             timeout=30)
    report = install(client, "edgekit")
    assert report.counts() == {"unchanged": len(install_objects())}
    er: dict[str, Any] = {"apiVersion": "edgekit.io/v1alpha1", "kind": "EdgeRollout",
          "metadata": {"name": "digits-v2"},
          "spec": {"app": "digits", "group": "cameras", "image": IMAGE, "waves": [1, "10%", "100%"]}}
    apply_objects(client, [er], namespace=kube_namespace)
    got = client.get(f"/apis/edgekit.io/v1alpha1/namespaces/{kube_namespace}/edgerollouts/digits-v2")
    assert got["spec"]["bakeTime"] == "60s" and got["spec"]["target"] == "k3s"  # schema defaults
    # status is a subresource: the spec apply above did not touch it, a status patch does
    client.request("PATCH", f"/apis/edgekit.io/v1alpha1/namespaces/{kube_namespace}/edgerollouts/digits-v2/status",
                   body={"status": {"phase": "Progressing", "currentWave": 1, "revision": "5e1d5e1d5e1d"}},
                   content_type="application/merge-patch+json")
    table = installed.kubectl("get", "edgerollouts", "-n", kube_namespace).stdout
    assert "Progressing" in table and "digits" in table and "PHASE" in table
    bad = {**er, "metadata": {"name": "bad"}, "spec": {**er["spec"], "image": "registry.local/models/digits:v2"}}
    with pytest.raises(KubeInvalidError, match=r"spec\.image"):
        apply_objects(client, [bad], namespace=kube_namespace)


def _policies_settled(client: KubeClient, namespace: str) -> bool:
    """The API server has type-checked the admission policies of ``namespace`` (it writes their
    status a moment after install; such a write between dry run and apply reads as "configured")."""
    policies = [p for p in client.list("/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies")
                if p["metadata"]["name"].endswith(f".{namespace}")]
    return bool(policies) and all((p.get("status") or {}).get("observedGeneration") == p["metadata"]["generation"]
                                  for p in policies)


def test_install_writes_the_trust_configmaps_read_only_to_the_engine(kube_cluster: KubeHandle,
                                                                     tmp_path: Path) -> None:
    from edgekit.kube.install import ENGINE_NAME
    from edgekit.rehearsal.certs import TestCA
    from tests.fixtures.kube import wait_until_admission_enforced

    ns = kube_cluster.unique("trust")
    _, pub = make_keypair(tmp_path)
    ca = TestCA(tmp_path / "ca")
    kc = str(kube_cluster.kubeconfig)
    client = kube_cluster.client()
    cms = f"/api/v1/namespaces/{ns}/configmaps"
    try:
        # bad PEM: one line, its own exit code, and nothing applied (not even the namespace)
        one_line_error(run("install", "-n", ns, "--kubeconfig", kc, "--public-key", str(ca.cert_path)),
                       29, "not a PEM public key")
        one_line_error(run("install", "-n", ns, "--kubeconfig", kc, "--public-key", str(pub),
                           "--mqtt-ca", str(pub)), 53, "not a PEM certificate")
        assert client.get_or_none(f"/api/v1/namespaces/{ns}") is None

        printed = run("install", "-n", ns, "--print", "--public-key", str(pub), "--mqtt-ca", str(ca.cert_path))
        assert printed.exit_code == 0 and "name: edgekit-cosign-key" in printed.output \
            and "name: edgekit-mqtt-ca" in printed.output, printed.output

        done = run("install", "-n", ns, "--kubeconfig", kc, "--public-key", str(pub), "--mqtt-ca", str(ca.cert_path))
        assert done.exit_code == 0, done.output
        assert f"configmap/{ns}/edgekit-cosign-key created" in done.output
        assert f"configmap/{ns}/edgekit-mqtt-ca created" in done.output
        assert client.get(f"{cms}/edgekit-cosign-key")["data"] == {"cosign.pub": pub.read_text()}
        assert client.get(f"{cms}/edgekit-mqtt-ca")["data"] == {"ca.crt": ca.cert_path.read_text()}

        wait_for(lambda: _policies_settled(client, ns), timeout=30)
        again = install(client, ns, public_key_pem=pub.read_text(), mqtt_ca_pem=ca.cert_path.read_text())
        assert again.counts() == {"unchanged": len(install_objects()) + 2}

        engine = KubeClient.from_kubeconfig(kube_cluster.cluster.service_account_kubeconfig(ns, ENGINE_NAME))
        wait_until_admission_enforced(engine, ns)
        _, other = make_keypair(tmp_path, "attacker")
        for name, key, forged in (("edgekit-cosign-key", "cosign.pub", other.read_text()),
                                  ("edgekit-mqtt-ca", "ca.crt", TestCA(tmp_path / "evil").cert_path.read_text())):
            assert engine.get(f"{cms}/{name}")["data"][key]  # the engine reads it ...
            cm = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": ns},
                  "data": {key: forged}}
            with pytest.raises(KubeForbiddenError, match="written by edgekit install"):  # ... and may not write it
                apply_objects(engine, [cm], force=True)
            with pytest.raises(KubeForbiddenError, match="written by edgekit install"):
                engine.request("PUT", f"{cms}/{name}", body={**cm, "metadata": {
                    **cm["metadata"], "resourceVersion": client.get(f"{cms}/{name}")["metadata"]["resourceVersion"]}})
        assert client.get(f"{cms}/edgekit-cosign-key")["data"] == {"cosign.pub": pub.read_text()}
        assert client.get(f"{cms}/edgekit-mqtt-ca")["data"] == {"ca.crt": ca.cert_path.read_text()}
        engine.close()
    finally:
        if client.get_or_none(f"/api/v1/namespaces/{ns}"):
            client.request("DELETE", f"/api/v1/namespaces/{ns}")


def test_engine_rbac_allows_its_job_and_nothing_more(installed: KubeHandle) -> None:
    pool = installed.unique("rbac")
    installed.add_nodes(3, pools=f"{pool}=3")
    kubeconfig = installed.cluster.service_account_kubeconfig("edgekit", "edgekit-engine")
    engine = KubeClient.from_kubeconfig(kubeconfig)
    settings = RenderSettings(app=installed.unique("eng"), image=IMAGE, group=parse_group(pool))
    result = deploy_revision(engine, settings)  # SA, ConfigMap, Service, DaemonSet in its namespace
    assert {r.action for r in result.report.results} == {"created"}
    node_names = [s.name for s in show_group(engine, settings.group, namespace="edgekit")[1]]
    assert label_nodes(engine, node_names, {rollout_label(settings.app): "r1"}) == 3
    with pytest.raises(KubeForbiddenError):
        delete_object(engine, "v1", "Node", node_names[0])
    with pytest.raises(KubeForbiddenError):
        apply_objects(engine, render(RenderSettings(app="x", image=IMAGE, group=settings.group,
                                                    namespace="default")))
    with pytest.raises(KubeForbiddenError):
        engine.list("/api/v1/namespaces/edgekit/secrets")
    engine.close()


# --- render --apply / --dry-run, DaemonSet on the labelled nodes ----------------------------
def test_render_apply_then_relabel_moves_pods(kube_cluster: KubeHandle, kube_namespace: str,
                                              tmp_path: Path) -> None:
    pool = kube_cluster.unique("move")
    nodes = kube_cluster.add_nodes(12, pools=f"{pool}=12", arch="arm64=0.5,amd64=0.5")
    kc = str(kube_cluster.kubeconfig)
    args = ["render", IMAGE, "--group", pool, "--app", "digits", "-n", kube_namespace, "--kubeconfig", kc]
    client = kube_cluster.client()
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets/digits-5e1d5e1d5e1d"
    key_path = f"/api/v1/namespaces/{kube_namespace}/configmaps/edgekit-cosign-key"
    # signed by default: without a key (or --allow-unsigned) nothing reaches the cluster
    before = client.list(f"/api/v1/namespaces/{kube_namespace}/configmaps")
    one_line_error(run(*args, "--apply"), 85, "requires a public key")
    assert client.get_or_none(path) is None and client.get_or_none(key_path) is None
    assert client.list(f"/api/v1/namespaces/{kube_namespace}/configmaps") == before
    _, pub = make_keypair(tmp_path)
    args += ["--public-key", str(pub)]
    out = run(*args, "--apply")
    assert out.exit_code == 0, out.output
    assert "daemonset/" + kube_namespace + "/digits-5e1d5e1d5e1d created" in out.output
    assert "configmap/" + kube_namespace + "/edgekit-cosign-key created" in out.output
    assert client.get(key_path)["data"] == {"cosign.pub": pub.read_text()}
    again = run(*args, "--apply")
    # the key ConfigMap, SA, agent ConfigMap, Service, NetworkPolicy, DaemonSet
    assert again.output.count("unchanged") == 6, again.output
    volumes = client.get(path)["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "model", "image": {"reference": IMAGE, "pullPolicy": "IfNotPresent"}}
    label_nodes(client, nodes[:5], {rollout_label("digits"): "5e1d5e1d5e1d"})
    wait_for(lambda: client.get(path).get("status", {}).get("numberReady") == 5)
    summary, states = show_group(client, parse_group(pool), namespace=kube_namespace)
    assert summary.apps == {"digits": {"5e1d5e1d5e1d": 5}}
    assert summary.pods_ready == {"digits": {"5e1d5e1d5e1d": 5}}
    assert {s.name for s in states if s.pods} == set(nodes[:5])
    # groups show through the CLI, as JSON
    shown = run("groups", "show", pool, "-n", kube_namespace, "--kubeconfig", kc, "--output", "json")
    data = json.loads(shown.output)
    assert data["nodes"] == 12 and data["pods_ready"] == {"digits": {"5e1d5e1d5e1d": 5}}
    assert sum(n["ready"] for n in data["node_list"]) == 12
    # a changed setting shows as a diff in --dry-run and changes nothing
    diff = run(*args, "--dry-run", "--agent-image", "edgekit/edgekit-agent:9.9")
    assert diff.exit_code == 0 and "+        image: edgekit/edgekit-agent:9.9" in diff.output
    assert "daemonset/" + kube_namespace + "/digits-5e1d5e1d5e1d would be configured" in diff.output
    assert client.get(path)["spec"]["template"]["spec"]["containers"][0]["image"] == "edgekit/edgekit-agent:0.1.0"


def test_push_ships_the_key_once_and_never_replaces_another(kube_cluster: KubeHandle, kube_namespace: str,
                                                            tmp_path: Path) -> None:
    """What ``edgekit push --public-key`` does before it creates a rollout (``ClusterPort.ship_key``)."""
    from edgekit.rollout.kubecluster import KubeCluster

    client = kube_cluster.client()
    cluster = KubeCluster(client)
    _, pub = make_keypair(tmp_path, "release")
    _, other = make_keypair(tmp_path, "other")
    path = f"/api/v1/namespaces/{kube_namespace}/configmaps/edgekit-cosign-key"
    cluster.ship_key(kube_namespace, "edgekit-cosign-key", pub.read_text())
    created = client.get(path)
    assert created["data"] == {"cosign.pub": pub.read_text()}
    cluster.ship_key(kube_namespace, "edgekit-cosign-key", pub.read_text())  # the same key: nothing to do
    with pytest.raises(ConfigError, match="holds another public key"):
        cluster.ship_key(kube_namespace, "edgekit-cosign-key", other.read_text())
    assert client.get(path)["metadata"]["resourceVersion"] == created["metadata"]["resourceVersion"]


def test_init_container_pods_become_ready(kube_cluster: KubeHandle, kube_namespace: str) -> None:
    pool = kube_cluster.unique("ke")
    nodes = kube_cluster.add_nodes(4, pools=f"{pool}=4")
    client = kube_cluster.client()
    settings = RenderSettings(app="ke", image=IMAGE, group=parse_group(pool, "kubeedge"), target="kubeedge",
                              namespace=kube_namespace)
    deploy_revision(client, settings)
    label_nodes(client, nodes, {rollout_label("ke"): "5e1d5e1d5e1d"})
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets/ke-5e1d5e1d5e1d"
    wait_for(lambda: client.get(path).get("status", {}).get("numberReady") == 4)


def test_accelerator_pods_only_on_nodes_with_the_device(kube_cluster: KubeHandle, kube_namespace: str) -> None:
    pool = kube_cluster.unique("gpu")
    nodes = kube_cluster.add_nodes(8, pools=f"{pool}=8", accelerators={"nvidia.com/gpu": 0.25})
    client = kube_cluster.client()
    settings = RenderSettings(app="det", image=IMAGE, group=parse_group(pool), namespace=kube_namespace,
                              accelerator="nvidia.com/gpu")
    result = deploy_revision(client, settings)
    assert (result.group_nodes, result.accelerator_nodes) == (8, 2)
    label_nodes(client, nodes, {rollout_label("det"): "5e1d5e1d5e1d"})
    path = f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets/det-5e1d5e1d5e1d"
    status = wait_for(lambda: (s := client.get(path).get("status", {})).get("numberReady") == 2 and s)
    assert status["desiredNumberScheduled"] == 2
    plain = kube_cluster.unique("cpu")
    kube_cluster.add_nodes(2, pools=f"{plain}=2")
    with pytest.raises(GroupNotFoundError, match=r"advertises nvidia\.com/gpu"):
        deploy_revision(client, RenderSettings(app="det", image=IMAGE, group=parse_group(plain),
                                               namespace=kube_namespace, accelerator="nvidia.com/gpu"))


# --- constant API calls -------------------------------------------------------------------------
def test_api_calls_do_not_grow_with_the_fleet(kube_cluster: KubeHandle, kube_namespace: str) -> None:
    pool = kube_cluster.unique("calls")
    kube_cluster.add_nodes(5, pools=f"{pool}=5")
    client = kube_cluster.client()
    settings = RenderSettings(app="calls", image=IMAGE, group=parse_group(pool), namespace=kube_namespace)
    counts = []
    for extra in (0, 40):
        if extra:
            kube_cluster.cluster.add_nodes(FleetSpec(pools={pool: extra}), start=100)
        client.log.reset()
        list_groups(client)
        show_group(client, settings.group)
        deploy_revision(client, settings)
        counts.append(len(client.log))
    assert counts[0] == counts[1], counts


# --- faults: one line, distinct exit codes, nothing half-applied --------------------------------
def test_group_matching_no_node(kube_cluster: KubeHandle) -> None:
    one_line_error(run("groups", "show", "no-such-group", "--kubeconfig", str(kube_cluster.kubeconfig)),
                   61, "matches no node")
    one_line_error(run("render", IMAGE, "-g", "kubeedge:nowhere", "-a", "x", "--apply", "--allow-unsigned",
                       "--kubeconfig", str(kube_cluster.kubeconfig)), 61, "matches no node")


def test_unreachable_api_server(kube_cluster: KubeHandle, tmp_path: Path) -> None:
    dead = write_kubeconfig(tmp_path / "dead", f"https://127.0.0.1:{free_port()}", kube_cluster.cluster.pki.ca_cert,
                            token="x")
    one_line_error(run("groups", "list", "--kubeconfig", str(dead)), 41, "cannot reach the Kubernetes API")


def test_expired_credentials(kube_cluster: KubeHandle) -> None:
    expired = kube_cluster.cluster.kubeconfig_for("old-admin", ("system:masters",), expired=True)
    one_line_error(run("groups", "list", "--kubeconfig", str(expired)), 42, "refused the credentials")
    valid = kube_cluster.cluster.kubeconfig_for("new-admin", ("system:masters",))
    assert run("groups", "list", "--kubeconfig", str(valid)).exit_code == 0


def test_rbac_forbidden(kube_cluster: KubeHandle) -> None:
    nobody = kube_cluster.cluster.workdir / "nobody.kubeconfig"
    one_line_error(run("groups", "list", "--kubeconfig", str(nobody)), 43, "forbidden")
    one_line_error(run("install", "--kubeconfig", str(nobody)), 43, "forbidden")


def test_conflicting_field_manager_applies_nothing(kube_cluster: KubeHandle, kube_namespace: str) -> None:
    pool = kube_cluster.unique("conf")
    kube_cluster.add_nodes(2, pools=f"{pool}=2")
    client = kube_cluster.client()
    settings = RenderSettings(app="conf", image=IMAGE, group=parse_group(pool), namespace=kube_namespace)
    objects = render(settings)
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    # someone else already owns the DaemonSet's history limit with another value
    apply_objects(client, [{**ds, "spec": {**ds["spec"], "revisionHistoryLimit": 7}}], namespace=kube_namespace,
                  field_manager="someone-else")
    kc = str(kube_cluster.kubeconfig)
    args = ["render", IMAGE, "-g", pool, "-a", "conf", "-n", kube_namespace, "--kubeconfig", kc, "--allow-unsigned"]
    one_line_error(run(*args, "--apply"), 45, "--force-conflicts")
    # preflight failed, so the objects ordered before the DaemonSet were not written either
    assert client.get_or_none(f"/api/v1/namespaces/{kube_namespace}/configmaps/conf-5e1d5e1d5e1d") is None
    assert client.get_or_none(f"/api/v1/namespaces/{kube_namespace}/serviceaccounts/conf") is None
    with pytest.raises(KubeConflictError):
        deploy_revision(client, settings)
    ok = run(*args, "--apply", "--force-conflicts")
    assert ok.exit_code == 0, ok.output
    got = client.get(f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets/conf-5e1d5e1d5e1d")
    assert got["spec"]["revisionHistoryLimit"] == 2


def test_render_apply_takes_the_broker_from_the_namespace_defaults(kube_cluster: KubeHandle,
                                                                   kube_namespace: str) -> None:
    pool = kube_cluster.unique("dflt")
    kube_cluster.add_nodes(1, pools=f"{pool}=1")
    client = kube_cluster.client()
    apply_objects(client, [{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "edgekit-agent-defaults"},
                            "data": {"config.json": json.dumps({"broker_url": "mqtts://broker.fleet.test:30883"})}}],
                  namespace=kube_namespace)
    deploy_revision(client, RenderSettings(app="dflt", image=IMAGE, group=parse_group(pool), namespace=kube_namespace))
    cm = client.get(f"/api/v1/namespaces/{kube_namespace}/configmaps/dflt-5e1d5e1d5e1d")
    assert json.loads(cm["data"]["config.json"])["broker_url"] == "mqtts://broker.fleet.test:30883"
