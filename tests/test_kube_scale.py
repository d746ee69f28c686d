"""Fleet scale: 500 KWOK nodes, a DaemonSet over a 300-node group fully Ready (own control plane)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from edgekit.kube import label_nodes, rollout_label
from edgekit.kube.deploying import deploy_revision, install
from edgekit.kube.groups import list_groups, parse_group, show_group
from edgekit.kube.rendering import RenderSettings
from edgekit.rehearsal.nodes import FleetSpec
from tests.fixtures.kube import KubeHandle

pytestmark = [pytest.mark.kube, pytest.mark.slow]

IMAGE = "registry.local:5000/models/digits@sha256:" + "7a" * 32


def test_500_nodes_and_a_300_node_daemonset(kube_cluster_factory: Callable[..., KubeHandle]) -> None:
    handle = kube_cluster_factory()
    nodes = handle.add_nodes(FleetSpec.simple(500, "cameras=300,gateways=200", "arm64=0.7,amd64=0.3"))
    assert len(nodes) == 500
    client = handle.client()
    install(client, "edgekit")

    client.log.reset()
    groups = {g.group.name: g for g in list_groups(client)}
    assert len(client.log) == 2  # one list of nodes, one of pods: not one call per node
    assert (groups["cameras"].nodes, groups["cameras"].ready) == (300, 300)
    assert groups["cameras"].by_arch == {"amd64": 90, "arm64": 210}
    assert groups["gateways"].nodes == 200

    settings = RenderSettings(app="digits", image=IMAGE, group=parse_group("cameras"))
    client.log.reset()
    deploy_revision(client, settings)
    assert len(client.log) <= 2 + 2 * 5  # defaults + group check + dry run and apply of 5 objects
    cameras = [n for n in nodes if n.startswith("cameras-")]
    label_nodes(client, cameras, {rollout_label("digits"): "7a7a7a7a7a7a"}, workers=8)
    path = "/apis/apps/v1/namespaces/edgekit/daemonsets/digits-7a7a7a7a7a7a"
    deadline = time.monotonic() + 300
    while True:
        status = client.get(path).get("status", {})
        if status.get("numberReady") == 300:
            break
        assert time.monotonic() < deadline, f"DaemonSet not Ready: {status}"
        time.sleep(1)
    assert status["desiredNumberScheduled"] == 300 and status.get("numberMisscheduled", 0) == 0
    summary, _ = show_group(client, parse_group("cameras"), namespace="edgekit")
    assert summary.pods_ready == {"digits": {"7a7a7a7a7a7a": 300}}
    gateways, _ = show_group(client, parse_group("gateways"), namespace="edgekit")
    assert gateways.pods_ready == {}
