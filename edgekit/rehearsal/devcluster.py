"""``edgekit dev cluster``: a control plane with KWOK nodes that outlives the command that started it.

State lives in ``$EDGEKIT_DEV_DIR`` (default ``~/.cache/edgekit/dev``): certificates, etcd data,
logs, ``kubeconfig`` and ``state.json`` (ports and process ids), so ``status`` and ``down`` from
another shell find the processes again. The ``kubeconfig`` there is the well-known one
(:func:`edgekit.kube.kubeconfigs.dev_cluster_kubeconfig`) that edgekit commands fall back to, so
``down`` removes it even when it keeps the data.

``--real-nodes N`` adds N real kubelets (:mod:`edgekit.rehearsal.realnodes`) to the first device
group, beside its KWOK nodes; their state is in ``<state dir>/real-nodes`` and ``down`` removes
them from the host first.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgekit.errors import ConfigError
from edgekit.kube.kubeconfigs import dev_cluster_dir
from edgekit.rehearsal.cluster import Cluster
from edgekit.rehearsal.nodes import FleetSpec
from edgekit.rehearsal.realnodes import RealNodes, RealNodesUnavailable, missing

__all__ = ["DevCluster", "dev_dir", "dev_kubeconfig", "down", "status", "up"]


def dev_dir() -> Path:
    return dev_cluster_dir()


def dev_kubeconfig(state_dir: Path | None = None) -> Path:
    """Kubeconfig of the running dev cluster (ConfigError when none runs)."""
    cluster = Cluster.attach(state_dir or dev_dir())
    if cluster is None or not cluster.status()["ready"]:
        raise ConfigError("no kubeconfig: pass --kubeconfig, set KUBECONFIG, or start `edgekit dev cluster up`",
                          field="kubeconfig")
    return cluster.kubeconfig


@dataclass(frozen=True)
class DevCluster:
    state_dir: Path
    kubeconfig: Path
    server: str
    already_running: bool
    start_seconds: float
    nodes: int
    nodes_seconds: float
    real_nodes: tuple[str, ...] = ()
    real_nodes_seconds: float = 0.0


def _real_nodes_dir(state_dir: Path) -> Path:
    return state_dir / "real-nodes"


def up(spec: FleetSpec | None, *, state_dir: Path | None = None, install: bool = True, real_nodes: int = 0,
       registries: tuple[str, ...] = (), say: Callable[[str], None] = print) -> DevCluster:
    """Start (or find running) the dev cluster, create ``spec``'s nodes, install edgekit's CRD/RBAC.

    ``real_nodes`` real kubelets join the first group of ``spec`` (``edge`` without one); they pull
    from ``registries`` (host:port) over plain http.
    """
    state_dir = state_dir or dev_dir()
    if real_nodes and (lacking := missing()):  # before anything starts
        raise RealNodesUnavailable("real nodes cannot run here: " + "; ".join(lacking))
    existing = Cluster.attach(state_dir)
    if existing is not None:
        if existing.status()["ready"]:
            return DevCluster(state_dir, existing.kubeconfig, existing.server, True, 0.0, 0, 0.0)
        _stop_real_nodes(state_dir)  # leftovers of a crashed run
        existing.stop()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    from edgekit.rehearsal import gobuild

    for comp in gobuild.COMPONENTS.values():
        if comp.name in ("etcd", "k8s", "kwok") and not comp.is_built():
            gobuild.build(comp, say=say)
    cluster = Cluster(state_dir)
    t0 = time.monotonic()
    cluster.start()
    real = RealNodes(_real_nodes_dir(state_dir))
    try:
        start_seconds = time.monotonic() - t0
        say(f"control plane up in {start_seconds:.1f}s at {cluster.server}")
        nodes, nodes_seconds = 0, 0.0
        if spec is not None and spec.total:
            t1 = time.monotonic()
            nodes = len(cluster.add_nodes(spec))
            nodes_seconds = time.monotonic() - t1
            say(f"{nodes} KWOK nodes Ready in {nodes_seconds:.1f}s")
        real_seconds = 0.0
        if real_nodes:
            t2 = time.monotonic()
            pool = next(iter(spec.pools), "edge") if spec is not None else "edge"
            real.start(cluster, real_nodes, pool=pool, zones=spec.zones if spec and spec.zones else ("zone-a",),
                       registries=registries, say=say)
            real_seconds = time.monotonic() - t2
        if install:
            from edgekit.kube.deploying import install as install_edgekit

            with cluster.client() as client:
                install_edgekit(client)
    except BaseException:
        try:
            real.stop()
        finally:
            cluster.stop()
        raise
    real.detach()
    cluster.detach()
    return DevCluster(state_dir, cluster.kubeconfig, cluster.server, False, start_seconds, nodes, nodes_seconds,
                      tuple(real.names), real_seconds)


def _stop_real_nodes(state_dir: Path) -> None:
    if (real := RealNodes.attach(_real_nodes_dir(state_dir))) is not None:
        real.stop()


def status(state_dir: Path | None = None) -> dict[str, Any] | None:
    cluster = Cluster.attach(state_dir or dev_dir())
    if cluster is None:
        return None
    info = cluster.status()
    if (real := RealNodes.attach(_real_nodes_dir(state_dir or dev_dir()))) is not None:
        info["real_nodes"] = real.names
        info["components"].update(real.status())
    if info["ready"]:
        with cluster.client() as client:
            nodes = client.list("/api/v1/nodes")
        info["nodes"] = len(nodes)
        info["nodes_ready"] = sum(
            any(c.get("type") == "Ready" and c.get("status") == "True"
                for c in (n.get("status") or {}).get("conditions") or []) for n in nodes)
    return info


def down(state_dir: Path | None = None, *, keep_data: bool = False) -> bool:
    """Stop the dev cluster's processes; returns False when none was running."""
    state_dir = state_dir or dev_dir()
    cluster = Cluster.attach(state_dir)
    if cluster is None:
        return False
    try:
        _stop_real_nodes(state_dir)  # first: the kubelets talk to the API server until they stop
    finally:
        cluster.stop()
    if keep_data:  # a stopped cluster's kubeconfig must not look like a running one's
        cluster.kubeconfig.unlink(missing_ok=True)
    else:
        shutil.rmtree(state_dir, ignore_errors=True)
    return True
