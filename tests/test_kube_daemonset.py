"""The DaemonSet a real kubelet runs: how the model arrives (decided from node status), which
architectures it may land on, the hostPath spool per app, the grace period that drains it, the
probes and the securityContext. Pure functions; the API server's view is in test_kube_admission.py."""

from __future__ import annotations

import json
from typing import Any

import pytest

from edgekit.errors import ConfigError
from edgekit.kube.groups import parse_group
from edgekit.kube.modelsources import choose_model_source, node_supports_image_volumes
from edgekit.kube.platforms import common_arches
from edgekit.kube.rendering import STOP_SECONDS, RenderSettings, render
from edgekit.rehearsal.nodes import FleetSpec, node_objects

DIGEST = "sha256:" + "3f2a9c1b7d0e" + "0" * 52
IMAGE = f"registry.local:5000/models/digits@{DIGEST}"


def _node(name: str, runtime: str, kubelet: str = "v1.36.3") -> dict[str, Any]:
    return {"metadata": {"name": name},
            "status": {"nodeInfo": {"containerRuntimeVersion": runtime, "kubeletVersion": kubelet}}}


def _pod(objects: list[dict[str, Any]]) -> dict[str, Any]:
    ds = next(o for o in objects if o["kind"] == "DaemonSet")
    spec: dict[str, Any] = ds["spec"]["template"]["spec"]
    return spec


def _config(objects: list[dict[str, Any]]) -> dict[str, Any]:
    cm = next(o for o in objects if o["kind"] == "ConfigMap" and "config.json" in o.get("data", {}))
    config: dict[str, Any] = json.loads(cm["data"]["config.json"])
    return config


@pytest.mark.parametrize(("runtime", "kubelet", "ok"), [
    ("containerd://2.4.2", "v1.36.3", True),
    ("containerd://2.1.0", "v1.35.0", True),
    ("cri-o://1.31.2", "v1.35.1+k3s1", True),
    ("containerd://2.0.5", "v1.36.3", False),      # containerd before 2.1 cannot mount images
    ("containerd://2.2.3-k3s1", "v1.36.1+k3s1", False),  # k3s's 2.2 builds mount them empty
    ("containerd://2.3.2-k3s1", "v1.36.2+k3s1", True),
    ("containerd://1.7.27-k3s1", "v1.33.4+k3s1", False),
    ("cri-o://1.30.9", "v1.36.0", False),
    ("containerd://2.4.2", "v1.34.2", False),      # beta but off by default: status cannot tell
    ("docker://28.1.1", "v1.36.3", False),         # cri-dockerd: unknown, so no
    ("", "", False),
])
def test_a_node_mounts_image_volumes_only_with_both_halves(runtime: str, kubelet: str, ok: bool) -> None:
    supported, why = node_supports_image_volumes({"containerRuntimeVersion": runtime, "kubeletVersion": kubelet})
    assert supported is ok and why


def test_auto_picks_the_image_volume_only_when_every_real_node_can() -> None:
    good = [_node("n1", "containerd://2.4.2"), _node("n2", "cri-o://1.32.0")]
    assert choose_model_source(good, "image-volume").source == "image-volume"
    mixed = [*good, _node("old", "containerd://1.7.27")]
    choice = choose_model_source(mixed, "image-volume")
    assert choice.source == "init-container" and "old" in choice.reason and "1.7.27" in choice.reason
    # edgecore has no image volumes, whatever a node says
    assert choose_model_source(good, "init-container").source == "init-container"


def test_kwok_nodes_do_not_vote() -> None:
    """KWOK nodes (edgekit's fleet, and KWOK's own runtime string) run no pods: a group of them
    keeps the target's default, and a mixed group gets what its real nodes support."""
    kwok = node_objects(FleetSpec(pools={"cams": 3}))
    assert choose_model_source(kwok, "image-volume").source == "image-volume"
    kwok_runtime = [_node("k", "kwok-v0.7.0", "v1.36.3-kwok")]
    assert choose_model_source(kwok_runtime, "image-volume").reason.startswith("no real node")
    assert choose_model_source([*kwok, _node("real", "containerd://2.4.2")], "image-volume").source == "image-volume"
    assert choose_model_source([*kwok, _node("real", "containerd://1.7.0")], "image-volume").source == "init-container"


def test_the_renderer_follows_the_decision() -> None:
    base = {"app": "digits", "image": IMAGE, "group": parse_group("cams")}
    volume = _pod(render(RenderSettings(**base, model_source="image-volume")))
    fetch = _pod(render(RenderSettings(**base, model_source="init-container")))
    assert "image" in next(v for v in volume["volumes"] if v["name"] == "model") and "initContainers" not in volume
    assert fetch["initContainers"][0]["command"][:3] == ["edgekit-agent", "fetch", IMAGE]


def test_architectures_are_those_both_images_provide() -> None:
    both = ("linux/amd64", "linux/arm64")
    assert common_arches(both, None) == ["amd64", "arm64"]
    assert common_arches(both, ("linux/arm64", "linux/arm/v7")) == ["arm64"]
    assert common_arches(("linux/arm64",), both) == ["arm64"]
    with pytest.raises(ConfigError, match="share no architecture") as info:
        common_arches(("linux/arm64",), ("linux/amd64",))
    assert info.value.field == "model_platforms"
    with pytest.raises(ConfigError, match="not os/arch"):
        common_arches(("arm64",), None)

    base = {"app": "digits", "image": IMAGE, "group": parse_group("cams")}
    spec = _pod(render(RenderSettings(**base, agent_platforms=("linux/arm64",), model_platforms=both)))
    exprs = spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"][
        "nodeSelectorTerms"][0]["matchExpressions"]
    assert {"key": "kubernetes.io/arch", "operator": "In", "values": ["arm64"]} in exprs
    with pytest.raises(ConfigError):  # found before anything is applied
        RenderSettings(**base, agent_platforms=("linux/arm64",), model_platforms=("linux/amd64",))


def test_spool_on_a_hostpath_per_app_one_directory_per_revision() -> None:
    base = {"app": "digits", "image": IMAGE, "group": parse_group("cams")}
    objects = render(RenderSettings(**base, shadow_image=f"registry.local:5000/models/digits@sha256:{'1' * 64}"))
    spec, config = _pod(objects), _config(objects)
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["spool"] == {"name": "spool", "hostPath": {"path": "/var/lib/edgekit/digits/spool",
                                                               "type": "DirectoryOrCreate"}}
    (agent,) = spec["containers"]
    mount = next(m for m in agent["volumeMounts"] if m["name"] == "spool")
    assert not mount.get("readOnly") and config["spool_dir"] == mount["mountPath"]
    # each revision its own directory in the shared spool, its shadow model in it too
    assert config["spool_instance"] == "3f2a9c1b7d0e"
    assert config["shadow_model_dir"] == "shadow-model"
    # another app, another directory: apps never share a spool
    other = _pod(render(RenderSettings(**{**base, "app": "faces"})))
    assert next(v for v in other["volumes"] if v["name"] == "spool")["hostPath"]["path"] == \
        "/var/lib/edgekit/faces/spool"


def test_grace_period_covers_the_drain() -> None:
    base = {"app": "digits", "image": IMAGE, "group": parse_group("cams")}
    for drain in (20, 45):
        objects = render(RenderSettings(**base, drain_seconds=drain))
        assert _config(objects)["drain_timeout_s"] == drain
        assert _pod(objects)["terminationGracePeriodSeconds"] == drain + STOP_SECONDS > drain
    with pytest.raises(ConfigError):
        RenderSettings(**base, drain_seconds=0)


def test_probes_security_and_accelerator() -> None:
    base = {"app": "digits", "image": IMAGE, "group": parse_group("cams")}
    spec = _pod(render(RenderSettings(**base, accelerator="nvidia.com/gpu", model_source="init-container")))
    restricted = {"allowPrivilegeEscalation": False, "privileged": False, "readOnlyRootFilesystem": True,
                  "runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                  "seccompProfile": {"type": "RuntimeDefault"}, "capabilities": {"drop": ["ALL"]}}
    for container in [*spec["containers"], *spec["initContainers"]]:
        assert container["securityContext"] == restricted
    (agent,) = spec["containers"]
    assert agent["readinessProbe"]["httpGet"]["path"] == "/v2/health/ready"  # verified + golden probe passed
    assert agent["livenessProbe"]["httpGet"]["path"] == "/v2/health/live"
    assert agent["startupProbe"]["failureThreshold"] * agent["startupProbe"]["periodSeconds"] >= 60
    assert agent["resources"]["limits"]["nvidia.com/gpu"] == "1"
    objects = render(RenderSettings(**base, accelerator="nvidia.com/gpu"))
    assert _config(objects)["execution_providers"] == ["CUDAExecutionProvider", "CPUExecutionProvider"]


# --- on a real API server -------------------------------------------------------------------------
@pytest.mark.kube
def test_the_engine_decides_the_model_source_from_what_the_nodes_report(kube_cluster: Any,
                                                                        kube_namespace: str) -> None:
    """KWOK nodes say their runtime is KWOK's own version: they do not vote. A real node of the
    same group decides, through its status on the API server."""
    from edgekit.kube.names import GROUP_LABEL
    from edgekit.rehearsal.nodes import device_labels
    from edgekit.rollout.kubecluster import KubeCluster
    from edgekit.rollout.resource import ImageRef, RolloutSpec
    from edgekit.rollout.strategy import build_strategy

    pool = kube_cluster.unique("ms")
    kwok = kube_cluster.add_nodes(3, pools=f"{pool}=3")
    client = kube_cluster.client()
    reported = client.get(f"/api/v1/nodes/{kwok[0]}")["status"]["nodeInfo"]
    assert reported["containerRuntimeVersion"].startswith("kwok"), reported  # e.g. kwok-v0.7.0
    assert not node_supports_image_volumes(reported)[0]

    cluster = KubeCluster(client)
    spec = RolloutSpec("msapp", pool, ImageRef(IMAGE, DIGEST, "3f2a9c1b7d0e"), build_strategy())
    assert cluster._options(spec)["model_source"] == "image-volume"  # KWOK only: the target's default

    real = f"{pool}-real"
    client.request("POST", "/api/v1/nodes", body={"apiVersion": "v1", "kind": "Node", "metadata": {
        "name": real, "labels": device_labels(real, pool, "amd64", "zone-a")}})
    try:
        def report(runtime: str) -> None:
            client.request("PATCH", f"/api/v1/nodes/{real}/status", content_type="application/merge-patch+json",
                           body={"status": {"nodeInfo": {"containerRuntimeVersion": runtime,
                                                         "kubeletVersion": "v1.36.3"}}})

        report("containerd://1.7.27")
        assert cluster._options(spec)["model_source"] == "init-container"
        cluster.ensure_daemonset(kube_namespace, spec, spec.target)
        ds = client.get(f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets/msapp-3f2a9c1b7d0e")
        assert ds["metadata"]["annotations"]["edgekit.io/model-source"] == "init-container"
        assert ds["spec"]["template"]["spec"]["initContainers"][0]["name"] == "fetch-model"
        report("containerd://2.4.2")
        cluster.ensure_daemonset(kube_namespace, spec, spec.target)
        ds = client.get(f"/apis/apps/v1/namespaces/{kube_namespace}/daemonsets/msapp-3f2a9c1b7d0e")
        assert ds["metadata"]["annotations"]["edgekit.io/model-source"] == "image-volume"
        assert "initContainers" not in ds["spec"]["template"]["spec"]
        assert GROUP_LABEL in client.get(f"/api/v1/nodes/{real}")["metadata"]["labels"]
    finally:
        client.request("DELETE", f"/api/v1/nodes/{real}")
