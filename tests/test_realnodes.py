"""Real kubelets in the dev cluster: they join a group beside KWOK nodes, run pods for real, and
``down`` leaves nothing on the host (checked from /proc, ip, iptables-save and cgroupfs)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest

from edgekit.kube.client import KubeClient
from edgekit.rehearsal import gobuild
from edgekit.rehearsal.nodeconfig import NodePlan, cni_conflist, containerd_config, kubelet_config
from edgekit.rehearsal.realnodes import _oci_archive, host_arch, pause_image
from tests.fixtures.realnodes import need_real_nodes

ROOT = Path(__file__).resolve().parents[1]
NODE_PROGRAMS = {"kubelet", "containerd", "containerd-shim-runc-v2", "pause", "unshare"}


def _plan(token: str, subnet: int, home: Path) -> NodePlan:
    return NodePlan(name=f"n-{token}", pool="edge", arch="amd64", zone="zone-a", token=token, home=home,
                    subnet=subnet, kubelet_port=10250 + subnet, healthz_port=10350 + subnet)


def test_two_nodes_share_nothing_on_the_host_and_touch_no_default_path(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 100)
    a, b = _plan("0a0a0a0a", 1, deep / "a"), _plan("0b0b0b0b", 2, deep / "b")
    owned = lambda p: {p.bridge, p.cgroup_root, p.network, p.pod_cidr, str(p.run), str(p.socket)}  # noqa: E731
    assert not owned(a) & owned(b)
    assert len(a.bridge) <= 15
    for plan in (a, b):
        text = containerd_config(plan, runc="/usr/sbin/runc", cni_bin_dir="/usr/lib/cni", sandbox_image="x/pause:1")
        conf = tomllib.loads(text)
        assert conf["plugins"]["io.containerd.cri.v1.runtime"]["restrict_oom_score_adj"] is True
        for default in ("/var/lib/containerd", "/run/containerd", "/etc/cni", "/opt/cni", "/opt/containerd",
                        "/var/run/nri", "/var/lib/kubelet", "/var/log/pods"):
            assert default not in text + json.dumps(kubelet_config(plan, client_ca=tmp_path / "ca.crt"))
        assert cni_conflist(plan)["plugins"][0]["ipam"]["ranges"] == [[{"subnet": plan.pod_cidr}]]
        # Unix socket paths must fit sun_path (108 bytes), however deep the state dir is.
        assert len(str(plan.run / "s") + "/" + "f" * 64) < 108
        assert len(str(plan.kubelet_root / "plugins_registry" / "some.csi.driver.example.com-reg.sock")) < 108


def test_kubelet_is_pinned_like_the_control_plane() -> None:
    """Same k8s.io/kubernetes and the same staging replaces: version skew is impossible and the Go
    build cache of the control plane serves the kubelet build."""
    def replaces(component: gobuild.Component) -> list[str]:
        text = (component.module_dir / "go.mod").read_text()
        return re.findall(r"^\s*(k8s\.io/\S+ => \S+ \S+)$", text, re.M)

    control_plane, kubelet = gobuild.COMPONENTS["k8s"], gobuild.NODE_COMPONENTS["kubelet"]
    assert kubelet.version == control_plane.version
    assert replaces(kubelet) == replaces(control_plane) and replaces(kubelet)


def test_pause_image_archive_is_reproducible_and_self_consistent() -> None:
    import hashlib
    import io
    import tarfile

    first, second = _oci_archive(b"\x7fELF...", "edgekit.local/pause:9", "amd64"), _oci_archive(
        b"\x7fELF...", "edgekit.local/pause:9", "amd64")
    assert first == second
    with tarfile.open(fileobj=io.BytesIO(first)) as tar:
        files = {m.name: tar.extractfile(m).read() for m in tar.getmembers()}  # type: ignore[union-attr]
    index = json.loads(files["index.json"])
    manifest_digest = index["manifests"][0]["digest"]
    manifest = json.loads(files[f"blobs/sha256/{manifest_digest[7:]}"])
    for blob in [manifest["config"], *manifest["layers"], index["manifests"][0]]:
        data = files[f"blobs/sha256/{blob['digest'][7:]}"]
        assert "sha256:" + hashlib.sha256(data).hexdigest() == blob["digest"] and len(data) == blob["size"]


def test_up_says_what_is_missing_before_starting_anything(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from edgekit.rehearsal import devcluster, realnodes

    monkeypatch.setattr(realnodes, "CGROUP_FS", tmp_path / "no-cgroups")
    monkeypatch.setattr(realnodes, "RUNC", str(tmp_path / "no-runc"))
    with pytest.raises(realnodes.RealNodesUnavailable) as err:
        devcluster.up(None, state_dir=tmp_path / "dev", real_nodes=1, say=lambda m: None)
    assert "runc is missing" in str(err.value) and "no cgroup v1 memory hierarchy" in str(err.value)
    assert err.value.exit_code == 76 and not (tmp_path / "dev").exists()


# --- real nodes ------------------------------------------------------------------------------------
def _host_snapshot() -> dict[str, Any]:
    """What real nodes could leave on the host, read from the system itself."""
    procs = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                argv0 = (entry / "cmdline").read_bytes().split(b"\0")[0].decode()
            except OSError:
                continue
            if Path(argv0).name in NODE_PROGRAMS:
                procs.add(f"{entry.name} {argv0}")
    mounts = {line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()}
    links = set(re.findall(r"^\d+: ([^:@]+)", subprocess.run(["ip", "-o", "link"], capture_output=True,
                                                                text=True, check=True).stdout, re.M))
    # Rules and user-defined chains. A built-in table the bridge plugin's NAT rule brought into being
    # stays (empty, policy ACCEPT): iptables has no command to remove a table.
    builtin = (":PREROUTING ", ":INPUT ", ":FORWARD ", ":OUTPUT ", ":POSTROUTING ")
    rules = {re.sub(r" \[\d+:\d+\]$", "", line) for line in subprocess.run(
        ["iptables-save"], capture_output=True, text=True, check=True).stdout.splitlines()
        if line.startswith(("-A ", ":")) and not line.startswith(builtin)}
    cgroups = {str(d) for h in Path("/sys/fs/cgroup").iterdir() if h.is_dir()
               for d in h.iterdir() if d.is_dir() and d.name.startswith(("edgekit-", "kubepods"))}
    netns = set(os.listdir("/run/netns")) if Path("/run/netns").is_dir() else set()
    return {"processes": procs, "mounts": mounts, "links": links, "iptables": rules, "cgroups": cgroups,
            "netns": netns, "ip_forward": Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            "sysctls": _sysctls()}


def _sysctls() -> dict[str, str]:
    """The host sysctls a kubelet sets at start (it must set only its stand-ins)."""
    return {k: Path("/proc/sys", k).read_text().strip()
            for k in ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")}


def _left_behind(before: dict[str, Any], after: dict[str, Any], state_dir: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key in ("processes", "links", "iptables", "cgroups", "netns"):
        if new := after[key] - before[key]:
            out[key] = sorted(new)
    # Only mounts real nodes could make (other work on a shared machine mounts elsewhere, e.g. under /tmp).
    ours = (str(state_dir), "/run/", "/var/lib/kubelet", "/var/lib/containerd")
    if new := {m for m in after["mounts"] - before["mounts"] if m.startswith(ours)}:
        out["mounts"] = sorted(new)
    if after["ip_forward"] != before["ip_forward"]:
        out["ip_forward"] = (before["ip_forward"], after["ip_forward"])
    if after["sysctls"] != before["sysctls"]:
        out["sysctls"] = (before["sysctls"], after["sysctls"])
    return out


def _edgekit(*args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(ROOT / "agent")]))
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=env,
                          timeout=600, check=False)


def _daemonset(name: str, group: str, image: str) -> dict[str, Any]:
    """The pause binary as the workload, non-root, read-only root, nothing extra."""
    labels = {"app": name}
    return {"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": {"name": name},
            "spec": {"selector": {"matchLabels": labels}, "template": {"metadata": {"labels": labels}, "spec": {
                "nodeSelector": {"edgekit.io/group": group},
                "containers": [{"name": "pause", "image": image, "command": ["/pause"],
                                "securityContext": {"runAsNonRoot": True, "runAsUser": 65535,
                                                    "allowPrivilegeEscalation": False,
                                                    "readOnlyRootFilesystem": True,
                                                    "capabilities": {"drop": ["ALL"]},
                                                    "seccompProfile": {"type": "RuntimeDefault"}}}]}}}}


def _wait_running(client: KubeClient, namespace: str, nodes: set[str], timeout: float = 120) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        pods = {p["spec"].get("nodeName"): p for p in client.list(f"/api/v1/namespaces/{namespace}/pods")}
        running = {n: p for n, p in pods.items() if n in nodes and p["status"].get("phase") == "Running"
                   and all(c.get("ready") for c in p["status"].get("containerStatuses") or [{}])}
        if set(running) == nodes:
            return running
        assert time.monotonic() < deadline, f"pods not Running on {sorted(nodes - set(running))}: " + str(
            {n: p["status"].get("containerStatuses") for n, p in pods.items() if n in nodes})
        time.sleep(0.2)


@pytest.mark.real
@pytest.mark.kube
@pytest.mark.registry
def test_dev_cluster_real_nodes_run_a_daemonset_beside_kwok_and_down_leaves_nothing(
        tmp_path: Path, registry: Any) -> None:
    need_real_nodes()
    archive, name = pause_image(say=lambda m: None)
    image = f"{registry.host}/edgekit/pause:{name.rpartition(':')[2]}"
    subprocess.run(["skopeo", "copy", "--quiet", "--dest-tls-verify=false",
                    f"oci-archive:{archive}:{name.rpartition(':')[2]}", f"docker://{image}"], check=True,
                   capture_output=True, timeout=120)
    state_dir = tmp_path / "dev"
    before = _host_snapshot()
    up = _edgekit("dev", "cluster", "up", "--nodes", "20", "--pools", "grp=20", "--arch", "amd64=1",
                  "--real-nodes", "2", "--registry", registry.host, "--no-install", "--state-dir", str(state_dir))
    try:
        assert up.returncode == 0, up.stderr
        client = KubeClient.from_kubeconfig(state_dir / "kubeconfig")
        group = client.list("/api/v1/nodes", label_selector="edgekit.io/group=grp")
        real = {n["metadata"]["name"]: n for n in group if "kwok.x-k8s.io/node" not in n["metadata"]["annotations"]}
        kwok = [n for n in group if n["metadata"]["name"] not in real]
        assert sorted(real) == ["grp-real-01", "grp-real-02"] and len(kwok) == 20
        # The running kubelets set kernel.panic=10 in their stand-ins, and only there.
        assert (state_dir / "real-nodes" / "grp-real-01" / "sysctl" / "kernel.panic").read_text().strip() == "10"
        assert _sysctls() == before["sysctls"]
        fake_labels = {k: v for k, v in kwok[0]["metadata"]["labels"].items() if k != "type"}
        for node in real.values():
            labels = node["metadata"]["labels"]
            assert set(fake_labels) <= set(labels)
            assert {k: labels[k] for k in fake_labels if k not in (
                "kubernetes.io/hostname", "topology.kubernetes.io/zone", "kubernetes.io/arch",
                "beta.kubernetes.io/arch")} == {k: v for k, v in fake_labels.items() if k not in (
                    "kubernetes.io/hostname", "topology.kubernetes.io/zone", "kubernetes.io/arch",
                    "beta.kubernetes.io/arch")}
            assert labels["kubernetes.io/arch"] == host_arch() == node["status"]["nodeInfo"]["architecture"]
            assert node["status"]["nodeInfo"]["kubeletVersion"] == gobuild.NODE_COMPONENTS["kubelet"].version
            assert node["status"]["nodeInfo"]["containerRuntimeVersion"].startswith("containerd://2.")

        # A DaemonSet pulled through the registry's hosts.toml (plain http), Running on both real nodes,
        # with the same image also mounted as an image volume.
        daemonset = _daemonset("tiny", "grp", image)
        spec = daemonset["spec"]["template"]["spec"]
        spec["volumes"] = [{"name": "image", "image": {"reference": image, "pullPolicy": "IfNotPresent"}}]
        spec["containers"][0]["volumeMounts"] = [{"name": "image", "mountPath": "/image", "readOnly": True}]
        client.request("POST", "/apis/apps/v1/namespaces/default/daemonsets", body=daemonset)
        pods = _wait_running(client, "default", set(real))
        for node_name, pod in pods.items():
            subnet = next(p for p in json.loads((state_dir / "real-nodes" / "state.json").read_text())["nodes"]
                          if p["name"] == node_name)["subnet"]
            assert pod["status"]["podIP"].startswith(f"10.244.{subnet}.")  # an address from the node's CNI bridge
        kubectl = [str(gobuild.binary("kubectl")), f"--kubeconfig={state_dir / 'kubeconfig'}"]
        pod_name = pods["grp-real-01"]["metadata"]["name"]
        # exec through the kubelet; the binary run comes from the image volume (KEP-4639) of the pod.
        exec_ = subprocess.run([*kubectl, "exec", pod_name, "--", "/image/pause", "-v"], capture_output=True,
                               text=True, timeout=60)
        assert exec_.returncode == 0 and "pause.c v3." in exec_.stdout, exec_.stderr
        logs = subprocess.run([*kubectl, "logs", pod_name], capture_output=True, text=True, timeout=60)
        assert logs.returncode == 0, logs.stderr
        client.close()
    finally:
        down = _edgekit("dev", "cluster", "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stderr
    assert _left_behind(before, _host_snapshot(), state_dir) == {}


@pytest.mark.real
@pytest.mark.kube
def test_real_nodes_fixture_joins_a_kwok_group(kube_cluster_factory: Any, real_nodes_factory: Any) -> None:
    handle = kube_cluster_factory()
    handle.add_nodes(3, pools="mixed=3")
    nodes = real_nodes_factory(handle, 1, pool="mixed")
    _, name = pause_image(say=lambda m: None)
    client = handle.client()
    daemonset = _daemonset("local", "mixed", name)
    daemonset["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"] = "Never"  # imported at start
    client.request("POST", "/apis/apps/v1/namespaces/default/daemonsets", body=daemonset)
    _wait_running(client, "default", set(nodes.names))
    group = client.list("/api/v1/nodes", label_selector="edgekit.io/group=mixed")
    assert len(group) == 4
