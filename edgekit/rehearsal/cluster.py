"""A real local Kubernetes control plane with KWOK nodes: etcd, kube-apiserver,
kube-controller-manager, kube-scheduler and kwok, all on 127.0.0.1 with free ports.

    with Cluster(tmp_path / "kube").start() as cluster:
        cluster.add_nodes(FleetSpec.simple(200, "cameras=150,gateways=50", "arm64=0.7,amd64=0.3"))
        client = cluster.client()                      # edgekit.kube.KubeClient, admin
        ...                                            # or: kubectl --kubeconfig cluster.kubeconfig

Binaries come from :mod:`edgekit.rehearsal.gobuild` (built once, cached). Each process runs in its own
process group with its log under ``<workdir>/logs``; :meth:`Cluster.stop` (also at interpreter exit)
stops them all. ``detach()`` lets them outlive this Python process (``edgekit dev cluster up``);
:meth:`Cluster.attach` finds them again from ``<workdir>/state.json``.

Identities (tokens in ``tokens.csv``, kubeconfigs in ``<workdir>``): ``admin`` (system:masters),
``nobody`` (authenticated, no RBAC: every request is forbidden). :meth:`kubeconfig_for` also makes
client-certificate kubeconfigs, including already-expired ones.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import ssl
import threading
import time
import urllib.request
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from edgekit.kube.client import KubeClient
from edgekit.rehearsal import gobuild
from edgekit.rehearsal.nodes import KWOK_ANNOTATION, FleetSpec, node_objects
from edgekit.rehearsal.pki import ClusterPKI, write_kubeconfig
from edgekit.rehearsal.processes import ManagedProcess, ServiceError, free_port, pid_runs, stop_pid

__all__ = ["Cluster", "ClusterOptions"]

_STAGES = Path(__file__).with_name("kwok_stages.yaml")
SERVICE_CIDR = "10.0.0.0/24"
POD_CIDR = "10.1.0.0/16"  # fake pod IPs written by kwok into pod status; nothing routes to them


@dataclass(frozen=True)
class ClusterOptions:
    """Tuning for 2 shared cores: controllers may burst, kwok heartbeats rarely."""

    kwok: bool = True
    controller_qps: int = 200
    controller_burst: int = 400
    node_lease_seconds: int = 120  # kwok renews each node's lease at 1/4 of this
    node_monitor_grace: str = "300s"  # > lease duration, or nodes flap NotReady
    kwok_parallelism: int = 16
    start_timeout: float = 120.0


class Cluster:
    """One control plane in ``workdir`` (certificates, data, logs, kubeconfigs, state.json)."""

    def __init__(self, workdir: Path | str, options: ClusterOptions | None = None) -> None:
        self.workdir = Path(workdir).resolve()
        self.options = options or ClusterOptions()
        self.pki = ClusterPKI(self.workdir / "pki")
        self.procs: dict[str, ManagedProcess] = {}
        self.ports: dict[str, int] = {}
        self.tokens: dict[str, str] = {}
        self.pids: dict[str, int] = {}  # when attached to processes started elsewhere
        self.started_at = 0.0
        self._lock = threading.Lock()

    # --- paths ------------------------------------------------------------------------------
    @property
    def kubeconfig(self) -> Path:
        """Admin kubeconfig (token of a ``system:masters`` user)."""
        return self.workdir / "kubeconfig"

    @property
    def state_file(self) -> Path:
        return self.workdir / "state.json"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.ports['apiserver']}"

    # --- lifecycle --------------------------------------------------------------------------
    def start(self, attempts: int = 3) -> Cluster:
        """Start every component and wait until the API answers ``/readyz``; stops all on failure.

        Ports are picked free just before use; when another process grabs one in between (busy
        shared machines), the whole start is retried with new ports, up to ``attempts`` times.
        """
        t0 = time.monotonic()
        bins = {b: str(gobuild.binary(b)) for b in
                ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler")}
        if self.options.kwok:
            bins["kwok"] = str(gobuild.binary("kwok"))
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.pki.exists():
            self.pki.create()
        for attempt in range(1, attempts + 1):
            try:
                self._start_once(bins)
                break
            except ServiceError:
                busy = any("address already in use" in p.read_text(errors="replace")
                           for p in self.logs.glob("*.log"))
                if not busy or attempt == attempts:
                    raise
                shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
                for log in self.logs.glob("*.log"):
                    log.rename(log.with_suffix(f".attempt{attempt}"))
        self.started_at = time.time()
        self.startup_seconds = time.monotonic() - t0
        self._write_state()
        return self

    def _start_once(self, bins: dict[str, str]) -> None:
        self.ports = {n: free_port() for n in ("etcd", "etcd-peer", "apiserver", "controller-manager",
                                               "scheduler")}
        self.tokens = {"admin": secrets.token_hex(16), "nobody": secrets.token_hex(16)}
        (self.workdir / "tokens.csv").write_text(
            f'{self.tokens["admin"]},admin,admin-uid,"system:masters"\n'
            f'{self.tokens["nobody"]},nobody,nobody-uid\n')
        write_kubeconfig(self.kubeconfig, self.server, self.pki.ca_cert, user="admin",
                         token=self.tokens["admin"])
        write_kubeconfig(self.workdir / "nobody.kubeconfig", self.server, self.pki.ca_cert, user="nobody",
                         token=self.tokens["nobody"])
        try:
            self._start_etcd(bins["etcd"])
            self._start_apiserver(bins["kube-apiserver"])
            self._start_controllers(bins["kube-controller-manager"], bins["kube-scheduler"])
            if self.options.kwok:
                self._start_kwok(bins["kwok"])
            for name in ("controller-manager", "scheduler"):
                port = self.ports[name]
                self.procs[name].wait_ready(lambda p=port: self._https_ok(p, "/healthz"),  # type: ignore[misc]
                                            timeout=self.options.start_timeout)
        except BaseException:
            self.stop()
            raise

    def _proc(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> ManagedProcess:
        proc = ManagedProcess(name, argv, self.logs / f"{name}.log", env=env, cwd=self.workdir).start()
        self.procs[name] = proc
        return proc

    def _start_etcd(self, binary: str) -> None:
        client = f"http://127.0.0.1:{self.ports['etcd']}"
        peer = f"http://127.0.0.1:{self.ports['etcd-peer']}"
        proc = self._proc("etcd", [
            binary, "--name=edgekit", f"--data-dir={self.workdir / 'etcd'}",
            f"--listen-client-urls={client}", f"--advertise-client-urls={client}",
            f"--listen-peer-urls={peer}", f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=edgekit={peer}", "--initial-cluster-state=new",
            "--unsafe-no-fsync", "--log-level=warn", "--quota-backend-bytes=4294967296",
        ])
        proc.wait_ready(lambda: _http_ok(f"{client}/health"), timeout=self.options.start_timeout)

    def _start_apiserver(self, binary: str) -> None:
        pki = self.pki
        proc = self._proc("kube-apiserver", [
            binary,
            f"--etcd-servers=http://127.0.0.1:{self.ports['etcd']}",
            "--bind-address=127.0.0.1", "--advertise-address=127.0.0.1",
            f"--secure-port={self.ports['apiserver']}",
            f"--tls-cert-file={pki.server_cert}", f"--tls-private-key-file={pki.server_key}",
            f"--client-ca-file={pki.ca_cert}",
            f"--token-auth-file={self.workdir / 'tokens.csv'}",
            # Node: real kubelets (system:node:<name>) read only what their own pods need.
            "--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction",
            # Real kubelets share 127.0.0.1 and differ by port; their names need not resolve.
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki.kubelet_client_cert}",
            f"--kubelet-client-key={pki.kubelet_client_key}",
            "--endpoint-reconciler-type=none",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-signing-key-file={pki.sa_key}",
            f"--service-account-key-file={pki.sa_pub}",
            "--disable-admission-plugins=ServiceAccount",
            "--enable-priority-and-fairness=false",
            "--allow-privileged=true", "--profiling=false", "--v=0",
        ])
        proc.wait_ready(lambda: self._https_ok(self.ports["apiserver"], "/readyz", token=self.tokens["admin"]),
                        timeout=self.options.start_timeout, interval=0.25)

    def _start_controllers(self, kcm: str, scheduler: str) -> None:
        opts = self.options
        allow = "--authorization-always-allow-paths=/healthz,/readyz,/livez,/metrics"
        self._proc("controller-manager", [
            kcm, f"--kubeconfig={self.kubeconfig}", "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['controller-manager']}", "--leader-elect=false", allow,
            f"--kube-api-qps={opts.controller_qps}", f"--kube-api-burst={opts.controller_burst}",
            f"--service-account-private-key-file={self.pki.sa_key}", f"--root-ca-file={self.pki.ca_cert}",
            "--use-service-account-credentials=false",
            f"--node-monitor-grace-period={opts.node_monitor_grace}",
            "--controllers=*,-nodeipam,-service-lb-controller,-persistentvolume-attach-detach-controller",
            "--concurrent-daemonset-syncs=4", "--profiling=false",
        ])
        config = self.workdir / "scheduler.yaml"
        config.write_text(yaml.safe_dump({
            "apiVersion": "kubescheduler.config.k8s.io/v1", "kind": "KubeSchedulerConfiguration",
            "clientConnection": {"kubeconfig": str(self.kubeconfig), "qps": opts.controller_qps,
                                 "burst": opts.controller_burst},
            "leaderElection": {"leaderElect": False},
            "enableProfiling": False,
        }))
        self._proc("scheduler", [
            scheduler, f"--config={config}", "--bind-address=127.0.0.1",
            f"--secure-port={self.ports['scheduler']}", allow,
        ])

    def _start_kwok(self, binary: str) -> None:
        opts = self.options
        conf = {
            "apiVersion": "config.kwok.x-k8s.io/v1alpha1", "kind": "KwokConfiguration",
            "options": {
                "cidr": POD_CIDR,
                "manageNodesWithAnnotationSelector": f"{KWOK_ANNOTATION}=fake",
                "nodeLeaseDurationSeconds": opts.node_lease_seconds,
                "podPlayStageParallelism": opts.kwok_parallelism,
                "nodePlayStageParallelism": opts.kwok_parallelism,
                "nodeLeaseParallelism": max(2, opts.kwok_parallelism // 2),
                "enableDebuggingHandlers": False,
            },
        }
        path = self.workdir / "kwok.yaml"
        path.write_text(yaml.safe_dump(conf) + "---\n" + _STAGES.read_text())
        home = self.workdir / "kwok-home"  # kwok also reads ~/.kwok/kwok.yaml: keep HOME clean
        home.mkdir(exist_ok=True)
        env = {k: v for k, v in os.environ.items() if not k.startswith("KUBE")}
        env["HOME"] = str(home)
        proc = self._proc("kwok", [binary, f"--kubeconfig={self.kubeconfig}", f"--config={path}"], env=env)
        time.sleep(0.3)
        if not proc.alive():
            raise ServiceError(f"kwok exited at start: {proc.log_tail(5)}")

    def stop(self) -> None:
        """Stop every component (kwok and controllers first, etcd last)."""
        for name in ("kwok", "scheduler", "controller-manager", "kube-apiserver", "etcd"):
            if proc := self.procs.pop(name, None):
                proc.stop(timeout=10)
        for name in ("kwok", "scheduler", "controller-manager", "kube-apiserver", "etcd"):
            if pid := self.pids.pop(name, None):
                stop_pid(pid, self._binary_path(name))
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()

    def detach(self) -> None:
        """Let the processes outlive this interpreter (no stop at exit); ``attach`` finds them."""
        for name, proc in self.procs.items():
            self.pids[name] = proc.detach()
        self.procs.clear()
        self._write_state()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- state for another process (edgekit dev cluster status/down) -------------------------
    def _binary_path(self, name: str) -> str:
        exe = {"scheduler": "kube-scheduler", "controller-manager": "kube-controller-manager"}.get(name, name)
        return str(gobuild.COMPONENTS[gobuild.BINARY_COMPONENT[exe].name].out_dir / exe)

    def _write_state(self) -> None:
        pids = dict(self.pids)
        pids.update({n: p.pid for n, p in self.procs.items()})
        self.state_file.write_text(json.dumps({
            "server": self.server, "kubeconfig": str(self.kubeconfig), "ports": self.ports,
            "pids": pids, "tokens": self.tokens, "started_at": self.started_at,
            "versions": {c.name: c.version for c in gobuild.COMPONENTS.values()},
        }, indent=2))
        self.state_file.chmod(0o600)

    @classmethod
    def attach(cls, workdir: Path | str) -> Cluster | None:
        """The cluster whose processes were started (and detached) in ``workdir``, if any."""
        cluster = cls(workdir)
        try:
            state = json.loads(cluster.state_file.read_text())
        except (OSError, ValueError):
            return None
        cluster.ports = {k: int(v) for k, v in state["ports"].items()}
        cluster.pids = {k: int(v) for k, v in state["pids"].items()}
        cluster.tokens = dict(state.get("tokens", {}))
        cluster.started_at = float(state.get("started_at", 0))
        return cluster

    def status(self) -> dict[str, Any]:
        """Which components run (by pid) and whether the API server answers."""
        running = {n: p.alive() for n, p in self.procs.items()}
        running.update({n: pid_runs(pid, self._binary_path(n)) for n, pid in self.pids.items()})
        ready = bool(self.ports) and self._https_ok(self.ports["apiserver"], "/readyz",
                                                    token=self.tokens.get("admin"))
        return {"server": self.server if self.ports else None, "kubeconfig": str(self.kubeconfig),
                "components": running, "ready": ready, "started_at": self.started_at}

    # --- clients and identities ------------------------------------------------------------
    def client(self, kubeconfig: Path | None = None) -> KubeClient:
        """An edgekit KubeClient (admin unless another kubeconfig is given)."""
        return KubeClient.from_kubeconfig(kubeconfig or self.kubeconfig)

    def api_client(self) -> Any:
        """A ``kubernetes.client.ApiClient`` for the typed Python APIs (admin)."""
        return self.client().api

    def kubeconfig_for(self, user: str, groups: tuple[str, ...] = (), *, expired: bool = False,
                       namespace: str | None = None) -> Path:
        """A client-certificate kubeconfig for ``user`` in ``groups`` (optionally already expired)."""
        cert = self.pki.client_cert(user, groups, expired=expired)
        suffix = "-expired" if expired else ""
        return write_kubeconfig(self.workdir / "users" / f"{user}{suffix}.kubeconfig", self.server,
                                self.pki.ca_cert, user=user, client_cert=cert, namespace=namespace)

    def kubeconfig_for_token(self, token: str, user: str, namespace: str | None = None) -> Path:
        """A kubeconfig for a bearer token (e.g. a ServiceAccount token from the TokenRequest API)."""
        return write_kubeconfig(self.workdir / "users" / f"{user}.kubeconfig", self.server,
                                self.pki.ca_cert, user=user, token=token, namespace=namespace)

    def service_account_kubeconfig(self, namespace: str, name: str, seconds: int = 3600) -> Path:
        """Kubeconfig of a ServiceAccount (bound token from the TokenRequest API)."""
        client = self.client()
        answer = client.request("POST", f"/api/v1/namespaces/{namespace}/serviceaccounts/{name}/token",
                                body={"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
                                      "spec": {"expirationSeconds": seconds}})
        return self.kubeconfig_for_token(answer["status"]["token"], f"sa-{namespace}-{name}", namespace)

    # --- fake nodes -------------------------------------------------------------------------
    def add_nodes(self, spec: FleetSpec | int, *, start: int = 1, wait_ready: bool = True,
                  timeout: float = 120.0, workers: int = 8) -> list[str]:
        """Create KWOK nodes (``spec`` or a count for the pool ``edge``); wait until kwok makes them Ready."""
        if isinstance(spec, int):
            spec = FleetSpec(pools={"edge": spec})
        objects = node_objects(spec, start=start)
        client = self.client()

        def create(obj: dict[str, Any]) -> None:
            client.request("POST", "/api/v1/nodes", body=obj)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            for future in [pool.submit(create, o) for o in objects]:
                future.result()
        node_names = [o["metadata"]["name"] for o in objects]
        if wait_ready:
            self.wait_nodes_ready(node_names, timeout=timeout)
        return node_names

    def wait_nodes_ready(self, node_names: Iterable[str], timeout: float = 120.0) -> None:
        wanted = set(node_names)
        client = self.client()
        deadline = time.monotonic() + timeout
        while True:
            ready = {n["metadata"]["name"] for n in client.list("/api/v1/nodes", label_selector="type=kwok")
                     if _node_ready(n)}
            missing = wanted - ready
            if not missing:
                return
            if time.monotonic() > deadline:
                raise ServiceError(f"{len(missing)} of {len(wanted)} KWOK nodes not Ready after {timeout:.0f}s "
                                   f"(e.g. {sorted(missing)[:3]}); kwok log {self.logs / 'kwok.log'}")
            time.sleep(0.5)

    def delete_nodes(self, label_selector: str = "type=kwok") -> None:
        """Delete KWOK nodes (all by default) with one collection DELETE."""
        self.client().request("DELETE", "/api/v1/nodes", query={"labelSelector": label_selector})

    # --- probes -----------------------------------------------------------------------------
    def _https_ok(self, port: int, path: str, token: str | None = None) -> bool:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert)) if port == self.ports.get(
            "apiserver") else ssl._create_unverified_context()  # controllers serve self-signed certs
        req = urllib.request.Request(f"https://127.0.0.1:{port}{path}")
        if token:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=2, context=ctx) as resp:
                return bool(resp.status == 200)
        except (OSError, ValueError):
            return False


def _http_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return bool(resp.status == 200)
    except (OSError, ValueError):
        return False


def _node_ready(node: dict[str, Any]) -> bool:
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (node.get("status") or {}).get("conditions") or [])
