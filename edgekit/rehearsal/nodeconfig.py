"""What one real node of the dev cluster is made of: names, paths, ports and the configuration files
of its containerd, CNI network and kubelet. Pure: :mod:`edgekit.rehearsal.realnodes` does the I/O.

Several kubelets share one host, so everything a node owns on the host is unique to it: a
containerd with its own root, state and sockets; a CNI bridge with its own subnet and IPAM data;
a kubelet root dir, ports and ``cgroupRoot``. The host-level names (bridge, cgroup, run dir) carry
a random ``token`` so that two dev clusters on one machine never share one.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["RUN_ROOT", "SYSCTLS", "NodePlan", "cni_conflist", "containerd_config", "hosts_toml",
           "kubelet_config"]

# Host-level run directories (sockets, containerd state, netns mounts, kubelet root): short,
# because a unix socket path must fit in 108 bytes and the shims put a 64-hex name under it.
RUN_ROOT = Path("/run/edgekit-nodes")
# The host sysctls the kubelet sets at start; it gets bind-mounted stand-ins so the host keeps its own.
SYSCTLS = ("kernel/panic", "kernel/panic_on_oops", "vm/overcommit_memory")


@dataclass(frozen=True)
class NodePlan:
    """One real node: its Kubernetes identity and everything it owns on the host."""

    name: str
    pool: str
    arch: str
    zone: str
    token: str  # 8 hex digits, unique on the host
    home: Path  # persistent files: configs, kubelet root, containerd root, logs
    subnet: int  # the node's pods get 10.244.<subnet>.0/24
    kubelet_port: int
    healthz_port: int

    @property
    def run(self) -> Path:
        return RUN_ROOT / self.token

    @property
    def socket(self) -> Path:
        return self.run / "containerd.sock"

    @property
    def bridge(self) -> str:
        return f"ekb{self.token}"  # interface names are at most 15 bytes

    @property
    def network(self) -> str:
        """CNI network name; the CNI plugins put it in the comment of every iptables rule they add."""
        return f"edgekit-{self.token}"

    @property
    def cgroup_root(self) -> str:
        return f"/edgekit-{self.token}"

    @property
    def pod_cidr(self) -> str:
        return f"10.244.{self.subnet}.0/24"

    @property
    def kubelet_root(self) -> Path:
        return self.run / "kubelet"  # the kubelet puts unix sockets in it: keep its path short

    @property
    def cni_conf_dir(self) -> Path:
        return self.home / "cni" / "net.d"

    @property
    def registry_dir(self) -> Path:
        return self.home / "certs.d"

    @property
    def sysctl_dir(self) -> Path:
        return self.home / "sysctl"

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "pool": self.pool, "arch": self.arch, "zone": self.zone, "token": self.token,
                "home": str(self.home), "subnet": self.subnet, "kubelet_port": self.kubelet_port,
                "healthz_port": self.healthz_port}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodePlan:
        return cls(name=str(data["name"]), pool=str(data["pool"]), arch=str(data["arch"]), zone=str(data["zone"]),
                   token=str(data["token"]), home=Path(data["home"]), subnet=int(data["subnet"]),
                   kubelet_port=int(data["kubelet_port"]), healthz_port=int(data["healthz_port"]))


def _q(value: object) -> str:
    return json.dumps(str(value))  # a TOML basic string is a JSON string


def containerd_config(plan: NodePlan, *, runc: str, cni_bin_dir: str, sandbox_image: str) -> str:
    """containerd 2.x configuration (version 4) for ``plan``: nothing at containerd's default paths."""
    home, run = plan.home / "containerd", plan.run
    return f"""version = 4
root = {_q(home / "root")}
state = {_q(run / "state")}
imports = []

[plugins."io.containerd.server.v1.grpc"]
  address = {_q(plan.socket)}
[plugins."io.containerd.server.v1.ttrpc"]
  address = {_q(run / "containerd.sock.ttrpc")}

[plugins."io.containerd.cri.v1.images"]
  snapshotter = "overlayfs"
  [plugins."io.containerd.cri.v1.images".pinned_images]
    sandbox = {_q(sandbox_image)}
  [plugins."io.containerd.cri.v1.images".registry]
    config_path = {_q(plan.registry_dir)}

[plugins."io.containerd.cri.v1.runtime"]
  # The host lacks CAP_SYS_RESOURCE: without this every sandbox fails to start.
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  cdi_spec_dirs = []
  [plugins."io.containerd.cri.v1.runtime".containerd]
    default_runtime_name = "runc"
    [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc.options]
        BinaryName = {_q(runc)}
        Root = {_q(run / "runc")}
        SystemdCgroup = false
  [plugins."io.containerd.cri.v1.runtime".cni]
    bin_dirs = [{_q(cni_bin_dir)}]
    conf_dir = {_q(plan.cni_conf_dir)}
    max_conf_num = 1

[plugins."io.containerd.grpc.v1.cri"]
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"

[plugins."io.containerd.internal.v1.opt"]
  path = {_q(home / "opt")}
[plugins."io.containerd.nri.v1.nri"]
  disable = true
[plugins."io.containerd.shim.v1.manager"]
  socket_dir = {_q(run / "s")}
"""


def cni_conflist(plan: NodePlan) -> dict[str, Any]:
    """A bridge network with host-local IPAM in the node's own data dir, plus loopback."""
    return {
        "cniVersion": "1.0.0",
        "name": plan.network,
        "plugins": [
            {"type": "bridge", "bridge": plan.bridge, "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "dataDir": str(plan.home / "cni" / "ipam"),
                      "ranges": [[{"subnet": plan.pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}]}},
            {"type": "loopback"},
        ],
    }


def hosts_toml(registry: str) -> str:
    """containerd registry host config: pull ``registry`` (host:port) over plain http."""
    return (f'server = "http://{registry}"\n\n'
            f'[host."http://{registry}"]\n  capabilities = ["pull", "resolve"]\n  skip_verify = true\n')


def kubelet_config(plan: NodePlan, *, client_ca: Path) -> dict[str, Any]:
    """KubeletConfiguration: 127.0.0.1 only, cgroupfs under the node's own root, no host paths."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "address": "127.0.0.1", "port": plan.kubelet_port, "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1", "healthzPort": plan.healthz_port,
        # The API server authenticates with its kubelet client certificate (signed by the dev CA).
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False},
                           "x509": {"clientCAFile": str(client_ca)}},
        "authorization": {"mode": "AlwaysAllow"},
        "containerRuntimeEndpoint": f"unix://{plan.socket}",
        "cgroupDriver": "cgroupfs", "cgroupRoot": plan.cgroup_root, "cgroupsPerQOS": True,
        "failCgroupV1": False,  # this host has cgroup v1 (hybrid); kubelet 1.36 refuses it otherwise
        "failSwapOn": False,
        "podLogsDir": str(plan.home / "pod-logs"),
        "volumePluginDir": str(plan.home / "volume-plugins"),
        "registerNode": True,
        "rotateCertificates": False, "serverTLSBootstrap": False,
        "serializeImagePulls": False,
        "makeIPTablesUtilChains": False,  # the host's iptables stay as they were
        "localStorageCapacityIsolation": False,
        # A busy shared disk must not make the kubelet evict the pods under test.
        "evictionHard": {"memory.available": "1Mi", "nodefs.available": "1%", "imagefs.available": "1%"},
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "nodeStatusUpdateFrequency": "5s",
        "maxPods": 20,
    }
