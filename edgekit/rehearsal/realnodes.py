"""Real kubelets for the dev cluster: each with its own containerd 2.x, runc and a CNI bridge, on 127.0.0.1.

    nodes = RealNodes(cluster.workdir / "real-nodes")
    nodes.start(cluster, 2, pool="edge")     # names, labels and readiness like KWOK nodes
    nodes.stop()                             # leaves no process, mount, interface, cgroup or rule

What a node is made of (paths, ports, configs) is decided in :mod:`edgekit.rehearsal.nodeconfig`;
this module runs it. The kubelet runs in its own mount namespace with stand-ins bind-mounted over
the three host sysctls it would set, so the host keeps its values; its root dir is a shared mount,
so the volumes it mounts are seen by containerd. :func:`missing` lists what the machine lacks, one
line each. ``stop`` undoes everything from what the system shows (``/proc``, cgroupfs, ``ip``,
``iptables-save``), not only from what ``start`` remembered, so a crashed run is cleaned up too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import io
import json
import os
import platform
import re
import secrets
import shlex
import shutil
import signal
import subprocess
import tarfile
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from edgekit.errors import EdgekitError
from edgekit.rehearsal import gobuild
from edgekit.rehearsal.nodeconfig import (
    RUN_ROOT,
    SYSCTLS,
    NodePlan,
    cni_conflist,
    containerd_config,
    hosts_toml,
    kubelet_config,
)
from edgekit.rehearsal.nodes import device_labels
from edgekit.rehearsal.pki import write_kubeconfig
from edgekit.rehearsal.processes import ManagedProcess, ServiceError, free_port, pid_runs, stop_pid

if TYPE_CHECKING:
    from edgekit.rehearsal.cluster import Cluster

__all__ = ["RealNodes", "RealNodesUnavailable", "host_leftovers", "missing", "pause_image"]

RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
CGROUP_FS = Path("/sys/fs/cgroup")
_IP_FORWARD = Path("/proc/sys/net/ipv4/ip_forward")
_CONTROLLERS = ("cpu", "cpuacct", "cpuset", "memory", "pids")  # what the kubelet's cgroupfs manager needs


class RealNodesUnavailable(EdgekitError):
    """This machine lacks a kernel feature or tool that real nodes need."""

    exit_code = 76


def host_arch() -> str:
    machine = platform.machine()
    return {"x86_64": "amd64", "aarch64": "arm64"}.get(machine, machine)


def missing() -> list[str]:
    """What this machine lacks for real nodes, one line each (empty: all there)."""
    out: list[str] = []
    if os.geteuid() != 0:
        out.append("real nodes need root (mounts, cgroups, network interfaces)")
    if not os.access(RUNC, os.X_OK):
        out.append(f"runc is missing ({RUNC}; apt-get install runc)")
    for plugin in ("bridge", "host-local", "loopback"):
        if not os.access(f"{CNI_BIN}/{plugin}", os.X_OK):
            out.append(f"CNI plugin {plugin} is missing ({CNI_BIN}; apt-get install containernetworking-plugins)")
    for tool in ("iptables", "iptables-save", "ip", "unshare", "mount", "umount", "gcc"):
        if not shutil.which(tool):
            out.append(f"the {tool} command is missing")
    try:
        filesystems = Path("/proc/filesystems").read_text()
    except OSError:
        filesystems = ""
    if "overlay" not in filesystems:
        out.append("the kernel has no overlay filesystem (/proc/filesystems)")
    for controller in _CONTROLLERS:
        if not (CGROUP_FS / controller / "cgroup.procs").exists():
            out.append(f"no cgroup v1 {controller} hierarchy at {CGROUP_FS / controller} (only cgroup v1 is wired)")
    if not Path("/sys/class/net").is_dir() or not _IP_FORWARD.exists():
        out.append("no network sysfs/procfs (/sys/class/net, /proc/sys/net)")
    return out


# --- the pause image (sandbox), built from the kubernetes module's pause.c ---------------------
def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def pause_image(say: Callable[[str], None] = print) -> tuple[Path, str]:
    """An OCI archive of the pause image (``gcc -Os -static`` of upstream pause.c) and its name; cached."""
    comp = gobuild.NODE_COMPONENTS["kubelet"]
    env = dict(os.environ, GOTOOLCHAIN="local", GOFLAGS="-mod=readonly")
    info = subprocess.run([gobuild._go(), "mod", "download", "-json", comp.module], cwd=comp.module_dir,
                          env=env, capture_output=True, text=True, check=False)
    if info.returncode != 0:
        raise gobuild.GoBuildError(f"cannot fetch {comp.module}: {info.stderr.strip()[-300:]}")
    source = Path(json.loads(info.stdout)["Dir"]) / "build" / "pause" / "linux" / "pause.c"
    text = source.read_bytes()
    # The version upstream stamps in with -DVERSION (build/pause/Makefile, TAG ?= 3.10.2).
    match = re.search(r"^TAG \?= (\S+)", (source.parent.parent / "Makefile").read_text(), re.M)
    version = match.group(1) if match else comp.version
    name = f"edgekit.local/pause:{version}"
    out_dir = gobuild.cache_root() / f"pause-{version}"
    archive = out_dir / f"pause-{host_arch()}.oci.tar"
    stamp = out_dir / ".source-sha256"
    if archive.is_file() and stamp.is_file() and stamp.read_text().strip() == _sha(text):
        return archive, name
    out_dir.mkdir(parents=True, exist_ok=True)
    binary = out_dir / "pause"
    say(f"==> building the pause image {name} from {source.name}")
    subprocess.run(["gcc", "-Os", "-static", f"-DVERSION=v{version}", "-o", str(binary), str(source)],
                   check=True, capture_output=True)
    subprocess.run(["strip", str(binary)], check=False, capture_output=True)
    archive.write_bytes(_oci_archive(binary.read_bytes(), name, host_arch()))
    stamp.write_text(_sha(text) + "\n")
    return archive, name


def _tar(members: Sequence[tuple[str, bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, data, mode in members:
            info = tarfile.TarInfo(path)
            info.size, info.mode, info.mtime = len(data), mode, 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _oci_archive(pause: bytes, name: str, arch: str) -> bytes:
    """A one-layer OCI image layout as a tar, reproducible (fixed mtimes, sorted JSON)."""
    layer = _tar([("pause", pause, 0o755)])
    config = json.dumps({"architecture": arch, "os": "linux",
                         "config": {"Entrypoint": ["/pause"], "User": "65535:65535"},
                         "rootfs": {"type": "layers", "diff_ids": [_sha(layer)]}}, sort_keys=True).encode()
    manifest = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                           "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                                      "digest": _sha(config), "size": len(config)},
                           "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar",
                                       "digest": _sha(layer), "size": len(layer)}]}, sort_keys=True).encode()
    index = json.dumps({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json",
                        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                                       "digest": _sha(manifest), "size": len(manifest),
                                       "platform": {"architecture": arch, "os": "linux"},
                                       "annotations": {"io.containerd.image.name": name,
                                                       "org.opencontainers.image.ref.name": name.rpartition(":")[2]}}]},
                       sort_keys=True).encode()
    blobs = [(f"blobs/sha256/{_sha(b)[7:]}", b, 0o644) for b in (layer, config, manifest)]
    return _tar([("oci-layout", b'{"imageLayoutVersion":"1.0.0"}', 0o644), ("index.json", index, 0o644), *blobs])


# --- host state: what the system shows ---------------------------------------------------------
def _run(argv: Sequence[str], *, timeout: float = 30, check: bool = False) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=check)


def _mounts_under(*roots: Path) -> list[str]:
    prefixes = [str(r).rstrip("/") for r in roots]
    out = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        target = line.split()[1].replace("\\040", " ")
        if any(target == p or target.startswith(p + "/") for p in prefixes):
            out.append(target)
    return out


def _cgroup_dirs(root: str) -> list[Path]:
    """Every cgroup directory at or under ``root`` in every v1 hierarchy (deepest first)."""
    dirs: list[Path] = []
    with contextlib.suppress(OSError):
        for hierarchy in CGROUP_FS.iterdir():
            base = hierarchy / root.lstrip("/")
            if base.is_dir() and (hierarchy / "cgroup.procs").exists():
                dirs += [Path(d) for d, _, _ in os.walk(base)]
    return sorted(dirs, key=lambda p: len(p.parts), reverse=True)


def _cgroup_pids(root: str) -> set[int]:
    pids: set[int] = set()
    for d in _cgroup_dirs(root):
        with contextlib.suppress(OSError, ValueError):
            pids |= {int(p) for p in (d / "cgroup.procs").read_text().split()}
    return pids


# What a node runs outside its containers' cgroups (sh and unshare only until they exec the kubelet).
_NODE_PROGRAMS = frozenset({"kubelet", "containerd", "containerd-shim-runc-v2", "ctr", "crictl", "unshare", "sh"})


def _processes_mentioning(*needles: str) -> list[int]:
    """Pids of node programs whose command line contains one of ``needles`` (a node's socket or home)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            argv = (entry / "cmdline").read_bytes().split(b"\0")
            cmdline = b" ".join(argv).decode(errors="replace")
            if Path(argv[0].decode(errors="replace")).name in _NODE_PROGRAMS and any(n in cmdline for n in needles):
                out.append(int(entry.name))
    return out


def _links(bridge: str) -> list[str]:
    """The bridge itself (if present) and every interface enslaved to it."""
    names = []
    show = _run(["ip", "-o", "link", "show", "master", bridge])
    names += [m.group(1) for m in re.finditer(r"^\d+: ([^:@]+)", show.stdout, re.M)]
    if Path(f"/sys/class/net/{bridge}").exists():
        names.append(bridge)
    return names


def _iptables_rules(network: str) -> dict[str, list[str]]:
    """Per table, the ``-A ...`` rules the CNI plugins added for ``network`` (by the name in their comment)."""
    out: dict[str, list[str]] = {}
    dump = _run(["iptables-save"]).stdout
    table = ""
    for line in dump.splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif line.startswith("-A ") and (f'name: \\"{network}\\"' in line or f'name: "{network}"' in line):
            out.setdefault(table, []).append(line)
    return out


def host_leftovers(plans: Sequence[NodePlan]) -> list[str]:
    """What of ``plans`` is still on the host, read from the system; empty when all is gone."""
    out: list[str] = []
    for plan in plans:
        if pids := _processes_mentioning(str(plan.socket), str(plan.home)):
            out.append(f"{plan.name}: processes {pids}")
        if in_cgroup := _cgroup_pids(plan.cgroup_root):
            out.append(f"{plan.name}: processes in {plan.cgroup_root}: {sorted(in_cgroup)}")
        if dirs := _cgroup_dirs(plan.cgroup_root):
            out.append(f"{plan.name}: cgroups {[str(d) for d in dirs[:3]]}")
        if mounts := _mounts_under(plan.home, plan.run):  # containerd keeps its netns mounts under plan.run
            out.append(f"{plan.name}: mounts {mounts[:3]}")
        if links := _links(plan.bridge):
            out.append(f"{plan.name}: interfaces {links}")
        if rules := _iptables_rules(plan.network):
            out.append(f"{plan.name}: iptables rules {rules}")
        if plan.run.exists():
            out.append(f"{plan.name}: {plan.run} exists")
    return out


# --- the nodes ---------------------------------------------------------------------------------
class RealNodes:
    """The real nodes of one cluster; state in ``<workdir>/state.json`` so another process can stop them."""

    def __init__(self, workdir: Path | str) -> None:
        self.workdir = Path(workdir).resolve()
        self.plans: list[NodePlan] = []
        self.procs: dict[str, ManagedProcess] = {}
        self.pids: dict[str, int] = {}  # "containerd/<node>", "kubelet/<node>" when attached
        self.ready_seconds: dict[str, float] = {}

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.plans]

    # --- start ----------------------------------------------------------------------------------
    def start(self, cluster: Cluster, count: int, *, pool: str = "edge", zones: Sequence[str] = ("zone-a",),
              registries: Sequence[str] = (), timeout: float = 120.0,
              say: Callable[[str], None] = print) -> list[str]:
        """Start ``count`` nodes in group ``pool``; return their names once all are Ready and labelled."""
        if count <= 0:
            return []
        if lacking := missing():
            raise RealNodesUnavailable("real nodes cannot run here: " + "; ".join(lacking))
        bins = self._binaries(say)
        archive, sandbox_image = pause_image(say)
        t0 = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        try:
            with _host_lock():
                self._remember_ip_forward()
                taken = _subnets_in_use()
                for i in range(1, count + 1):
                    subnet = next(s for s in range(1, 255) if s not in taken)
                    taken.add(subnet)
                    name = f"{pool}-real-{i:02d}"
                    plan = NodePlan(name=name, pool=pool, arch=host_arch(), zone=zones[(i - 1) % len(zones)],
                                    token=secrets.token_hex(4), home=self.workdir / name, subnet=subnet,
                                    kubelet_port=free_port(), healthz_port=free_port())
                    plan.run.mkdir(parents=True)
                    (plan.run / "subnet").write_text(f"{subnet}\n")
                    self.plans.append(plan)
            self._write_state()
            with ThreadPoolExecutor(max_workers=count) as pool_:
                list(pool_.map(lambda p: self._start_node(p, cluster, bins, archive, sandbox_image, registries),
                               self.plans))
            self._write_state()
            self._wait_ready(cluster, t0, timeout)
        except BaseException as exc:
            try:
                self.stop()
            except ServiceError as cleanup:  # keep the first error; say what could not be cleaned up
                exc.add_note(str(cleanup))
            raise
        say(f"{count} real node(s) Ready in {time.monotonic() - t0:.1f}s: {', '.join(self.names)}")
        return self.names

    def _binaries(self, say: Callable[[str], None]) -> dict[str, str]:
        for comp in gobuild.NODE_COMPONENTS.values():
            if not comp.is_built():
                gobuild.build(comp, say=say)
        return {b: str(gobuild.binary(b)) for b in ("kubelet", "containerd", "ctr", "containerd-shim-runc-v2",
                                                    "crictl")}

    def _start_node(self, plan: NodePlan, cluster: Cluster, bins: dict[str, str], archive: Path,
                    sandbox_image: str, registries: Sequence[str]) -> None:
        logs = plan.home / "logs"
        for d in (logs, plan.cni_conf_dir, plan.registry_dir, plan.sysctl_dir, plan.kubelet_root):
            d.mkdir(parents=True, exist_ok=True)
        (plan.home / "containerd.toml").write_text(
            containerd_config(plan, runc=RUNC, cni_bin_dir=CNI_BIN, sandbox_image=sandbox_image))
        (plan.cni_conf_dir / "10-edgekit.conflist").write_text(json.dumps(cni_conflist(plan), indent=2))
        for registry in registries:
            self._trust(plan, registry)
        # containerd (the shims it starts find their binary next to it on PATH)
        env = dict(os.environ, PATH=f"{Path(bins['containerd-shim-runc-v2']).parent}:{os.environ.get('PATH', '')}")
        proc = ManagedProcess(f"containerd/{plan.name}", [bins["containerd"], "--config",
                              str(plan.home / "containerd.toml"), "--log-level", "warn"],
                              logs / "containerd.log", env=env, cwd=plan.home).start()
        self.procs[proc.name] = proc
        proc.wait_ready(lambda: _run([bins["ctr"], "--address", str(plan.socket), "version"], timeout=5)
                        .returncode == 0, timeout=60, interval=0.1)
        imported = _run([bins["ctr"], "--address", str(plan.socket), "-n", "k8s.io", "images", "import",
                         "--all-platforms", str(archive)], timeout=60)
        if imported.returncode != 0:
            raise ServiceError(f"{plan.name}: importing the pause image failed: {imported.stderr.strip()[-300:]}")
        # kubelet: identity from the dev CA, cgroup root, shared root dir, sysctl stand-ins
        cert = cluster.pki.client_cert(f"system:node:{plan.name}", ("system:nodes",))
        kubeconfig = write_kubeconfig(plan.home / "kubelet.kubeconfig", cluster.server, cluster.pki.ca_cert,
                                      user=f"system:node:{plan.name}", client_cert=cert)
        config = plan.home / "kubelet.yaml"
        config.write_text(yaml.safe_dump(kubelet_config(plan, client_ca=cluster.pki.ca_cert)))
        _make_cgroup(plan.cgroup_root)
        _run(["mount", "--bind", str(plan.kubelet_root), str(plan.kubelet_root)], check=True)
        _run(["mount", "--make-shared", str(plan.kubelet_root)], check=True)
        binds = []
        for key in SYSCTLS:
            stand_in = plan.sysctl_dir / key.replace("/", ".")
            stand_in.write_text(Path("/proc/sys", key).read_text())
            binds.append(f"mount --bind {stand_in} /proc/sys/{key}")
        script = " && ".join([*binds, 'exec "$@"'])
        argv = ["unshare", "--mount", "--propagation", "unchanged", "--", "/bin/sh", "-c", script, "kubelet",
                bins["kubelet"], f"--config={config}", f"--kubeconfig={kubeconfig}",
                f"--root-dir={plan.kubelet_root}", f"--cert-dir={plan.home / 'kubelet-pki'}",
                f"--hostname-override={plan.name}", "--node-ip=127.0.0.1", "--v=1"]  # see _wait_ready
        kubelet = ManagedProcess(f"kubelet/{plan.name}", argv, logs / "kubelet.log", cwd=plan.home).start()
        self.procs[kubelet.name] = kubelet

    def _wait_ready(self, cluster: Cluster, t0: float, timeout: float) -> None:
        client = cluster.client()
        pending = {p.name: p for p in self.plans}
        deadline = time.monotonic() + timeout
        while pending:
            for name, plan in list(pending.items()):
                kubelet = self.procs[f"kubelet/{name}"]
                if not kubelet.alive():
                    raise ServiceError(f"kubelet of {name} exited: {kubelet.log_tail(5)}")
                node = client.get_or_none(f"/api/v1/nodes/{name}")
                if node and not (node.get("status") or {}).get("addresses"):
                    # The kubelet refuses to publish a loopback node IP (it leaves the addresses
                    # alone then), yet every real node listens on 127.0.0.1 only: publish it for
                    # it, so `kubectl logs/exec` reach the kubelet at 127.0.0.1:<its port>.
                    client.request("PATCH", f"/api/v1/nodes/{name}/status", body={"status": {"addresses": [
                        {"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": name}]}},
                        content_type="application/merge-patch+json")
                if node and _ready(node):
                    self.ready_seconds[name] = time.monotonic() - t0
                    labels = device_labels(name, plan.pool, plan.arch, plan.zone)
                    client.request("PATCH", f"/api/v1/nodes/{name}", body={"metadata": {"labels": labels}},
                                   content_type="application/merge-patch+json")
                    del pending[name]
            if not pending:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"real nodes not Ready after {timeout:.0f}s: {sorted(pending)}; logs under "
                                   f"{self.workdir}/<node>/logs")
            time.sleep(0.2)

    def trust_registry(self, registry: str) -> None:
        """Let every node pull from ``registry`` (host:port) over plain http (read at each pull)."""
        for plan in self.plans:
            self._trust(plan, registry)

    @staticmethod
    def _trust(plan: NodePlan, registry: str) -> None:
        host_dir = plan.registry_dir / registry
        host_dir.mkdir(parents=True, exist_ok=True)
        (host_dir / "hosts.toml").write_text(hosts_toml(registry))

    # --- ip_forward: the bridge plugin turns it on; the last node down turns it back -------------
    @staticmethod
    def _remember_ip_forward() -> None:
        saved = RUN_ROOT / "ip_forward.saved"
        if not saved.exists():
            RUN_ROOT.mkdir(parents=True, exist_ok=True)
            saved.write_text(_IP_FORWARD.read_text())

    @staticmethod
    def _restore_ip_forward() -> None:
        saved = RUN_ROOT / "ip_forward.saved"
        if saved.exists() and not any(p.is_dir() for p in RUN_ROOT.iterdir()):
            _IP_FORWARD.write_text(saved.read_text())
            saved.unlink()
            with contextlib.suppress(OSError):
                RUN_ROOT.rmdir()

    # --- stop ------------------------------------------------------------------------------------
    def stop(self, timeout: float = 30.0) -> None:
        """Stop every node and remove all it made on the host; raises if something could not be removed."""
        if not self.plans:
            return
        with ThreadPoolExecutor(max_workers=len(self.plans)) as pool:
            list(pool.map(self._stop_node, self.plans))
        with _host_lock():
            self._restore_ip_forward()
        left = host_leftovers(self.plans)
        if not left:
            shutil.rmtree(self.workdir, ignore_errors=True)
        self.plans, self.procs, self.pids = [], {}, {}
        if left:
            raise ServiceError("real nodes left behind: " + "; ".join(left))

    def _stop_node(self, plan: NodePlan) -> None:
        crictl = gobuild.NODE_COMPONENTS["crictl"].out_dir / "crictl"
        self._stop_proc(f"kubelet/{plan.name}")
        # Through the CRI, so the CNI plugins remove the pod's veth, addresses and iptables rules.
        if plan.socket.exists() and crictl.exists():
            _run([str(crictl), f"--runtime-endpoint=unix://{plan.socket}", "--timeout=20s", "rmp", "--all",
                  "--force"], timeout=60)
        self._stop_proc(f"containerd/{plan.name}")
        deadline = time.monotonic() + 20
        while pids := set(_processes_mentioning(str(plan.socket), str(plan.home))) | _cgroup_pids(plan.cgroup_root):
            for pid in pids:  # shims and anything left in the node's containers
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, signal.SIGKILL)
            if time.monotonic() > deadline:
                break
            time.sleep(0.1)
        for target in sorted(_mounts_under(plan.home, plan.run), key=len, reverse=True):
            if _run(["umount", target]).returncode != 0:
                _run(["umount", "-l", target])
        for d in _cgroup_dirs(plan.cgroup_root):
            with contextlib.suppress(OSError):
                d.rmdir()
        for link in _links(plan.bridge):
            _run(["ip", "link", "delete", link])
        _remove_iptables_rules(plan.network)
        shutil.rmtree(plan.run, ignore_errors=True)

    def _stop_proc(self, key: str) -> None:
        if proc := self.procs.pop(key, None):
            proc.stop(timeout=15)
        if pid := self.pids.pop(key, None):
            component = key.split("/")[0]
            stop_pid(pid, str(gobuild.NODE_COMPONENTS[component].out_dir / component), timeout=15)

    # --- state -----------------------------------------------------------------------------------
    def detach(self) -> None:
        """Let the processes outlive this interpreter; :meth:`attach` finds them again."""
        for name, proc in self.procs.items():
            self.pids[name] = proc.detach()
        self.procs.clear()
        self._write_state()

    def _write_state(self) -> None:
        pids = dict(self.pids)
        pids.update({n: p.pid for n, p in self.procs.items()})
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.state_file.write_text(json.dumps({"nodes": [p.to_json() for p in self.plans], "pids": pids,
                                               "ready_seconds": self.ready_seconds}, indent=2))

    @classmethod
    def attach(cls, workdir: Path | str) -> RealNodes | None:
        nodes = cls(workdir)
        try:
            state = json.loads(nodes.state_file.read_text())
        except (OSError, ValueError):
            return None
        nodes.plans = [NodePlan.from_json(d) for d in state.get("nodes", [])]
        nodes.pids = {k: int(v) for k, v in state.get("pids", {}).items()}
        nodes.ready_seconds = {k: float(v) for k, v in state.get("ready_seconds", {}).items()}
        return nodes

    def status(self) -> dict[str, bool]:
        """Per process (``kubelet/<node>``, ``containerd/<node>``): running?"""
        out = {n: p.alive() for n, p in self.procs.items()}
        for key, pid in self.pids.items():
            component = key.split("/")[0]
            out[key] = pid_runs(pid, str(gobuild.NODE_COMPONENTS[component].out_dir / component))
        return out


def _ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])


@contextlib.contextmanager
def _host_lock() -> Iterator[None]:
    """Serialises subnet choice and the ip_forward bookkeeping between dev clusters on one host."""
    RUN_ROOT.mkdir(parents=True, exist_ok=True)
    lock = gobuild.cache_root() / ".real-nodes.lock"
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _subnets_in_use() -> set[int]:
    """Third octets of 10.244.X.0/24 taken by other real nodes or by any route on the host."""
    used = set()
    for subnet_file in RUN_ROOT.glob("*/subnet"):
        with contextlib.suppress(OSError, ValueError):
            used.add(int(subnet_file.read_text()))
    used |= {int(m) for m in re.findall(r"\b10\.244\.(\d+)\.", _run(["ip", "-4", "route"]).stdout)}
    return used


def _make_cgroup(root: str) -> None:
    """Create the kubelet's ``cgroupRoot`` in every v1 hierarchy (the kubelet insists it exists)."""
    for hierarchy in CGROUP_FS.iterdir():
        if not (hierarchy / "cgroup.procs").exists() or hierarchy.is_symlink():
            continue
        path = hierarchy / root.lstrip("/")
        path.mkdir(exist_ok=True)
        if (hierarchy / "cpuset.cpus").exists():  # a new cpuset is empty until told otherwise
            for key in ("cpuset.cpus", "cpuset.mems"):
                (path / key).write_text((hierarchy / key).read_text())


def _remove_iptables_rules(network: str) -> None:
    """Delete the rules the CNI plugins added for ``network`` and the chains they jump to."""
    for table, rules in _iptables_rules(network).items():
        chains = set()
        for rule in rules:
            if m := re.search(r" -j (CNI-[\w-]+)", rule):
                chains.add(m.group(1))
            argv = ["iptables", "-t", table, "-D", *shlex.split(rule[3:])]
            _run(argv)
        for chain in chains:
            _run(["iptables", "-t", table, "-F", chain])
            _run(["iptables", "-t", table, "-X", chain])


