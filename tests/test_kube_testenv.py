"""The test/dev control plane itself: cached builds, `edgekit dev cluster up|status|down`, no orphans."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from edgekit.kube.install import install_objects
from edgekit.rehearsal import gobuild
from edgekit.rehearsal.cluster import Cluster
from tests.fixtures.kube import cluster_workdir

pytestmark = pytest.mark.kube
ROOT = Path(__file__).resolve().parents[1]


def edgekit(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-c", "from edgekit.cli import main; main()", *args]
    return subprocess.run(argv, capture_output=True, text=True, env=env, timeout=300, cwd=ROOT)


def json_out(result: subprocess.CompletedProcess[str]) -> Any:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return json.loads(result.stdout)


def test_build_script_reuses_the_cached_binaries() -> None:
    out = subprocess.run([str(ROOT / "scripts" / "build-go-tools"), "etcd", "k8s", "kwok"], capture_output=True,
                         text=True, timeout=120, check=True).stdout
    assert out.count("cached in") == 3
    for comp in ("etcd", "k8s", "kwok"):
        c = gobuild.COMPONENTS[comp]
        assert c.out_dir.name == f"{comp}-{c.version}" and c.is_built()
    assert gobuild.COMPONENTS["k8s"].version == "v1.36.3"
    version = subprocess.run([str(gobuild.binary("kube-apiserver")), "--version"], capture_output=True,
                             text=True, check=True).stdout
    assert version.strip() == "Kubernetes v1.36.3"  # not v0.0.0-master: the version ldflags took


def test_dev_cluster_up_status_down() -> None:
    tmp_path = cluster_workdir("dev")
    env = {k: v for k, v in os.environ.items() if k != "KUBECONFIG"}
    env["EDGEKIT_DEV_DIR"] = str(tmp_path / "dev")
    up = edgekit("dev", "cluster", "up", "--nodes", "6", "--pools", "cams=4,gw=2", "--arch", "arm64=1", env=env)
    try:
        assert up.returncode == 0, up.stderr
        assert up.stdout.strip() == f"export KUBECONFIG={tmp_path / 'dev' / 'kubeconfig'}"
        assert "6 KWOK nodes Ready" in up.stderr
        status = json_out(edgekit("dev", "cluster", "status", "--output", "json", env=env))
        assert status["ready"] and status["nodes"] == status["nodes_ready"] == 6
        assert all(status["components"].values()) and len(status["components"]) == 5
        again = edgekit("dev", "cluster", "up", env=env)
        assert again.returncode == 0 and "already running" in again.stderr
        groups = json_out(edgekit("groups", "list", "--kubeconfig", status["kubeconfig"], "-O", "json", env=env))
        assert {g["name"]: g["nodes"] for g in groups} == {"cams": 4, "gw": 2}
        installed = edgekit("install", "--kubeconfig", status["kubeconfig"], env=env)
        assert installed.stdout.count("unchanged") == len(install_objects())
        pids = json.loads((tmp_path / "dev" / "state.json").read_text())["pids"]
    finally:
        down = edgekit("dev", "cluster", "down", env=env)
    assert down.returncode == 0 and "stopped" in down.stderr
    for pid in pids.values():
        assert not Path(f"/proc/{pid}").exists() or b"zombie" in Path(f"/proc/{pid}/status").read_bytes().lower()
    gone = edgekit("dev", "cluster", "status", env=env)
    assert gone.returncode == 1 and "no dev cluster" in gone.stdout
    shutil.rmtree(tmp_path, ignore_errors=True)


def test_cluster_stop_leaves_no_process() -> None:
    workdir = cluster_workdir("stop")
    cluster = Cluster(workdir).start()
    pids = [p.pid for p in cluster.procs.values()]
    assert len(pids) == 5
    cluster.stop()
    shutil.rmtree(workdir)
    for pid in pids:
        assert not Path(f"/proc/{pid}").exists()


def test_start_retries_when_a_port_is_taken(monkeypatch: pytest.MonkeyPatch) -> None:
    import socket

    import edgekit.rehearsal.cluster as cluster_module

    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    taken = blocker.getsockname()[1]
    real = cluster_module.free_port
    calls = iter([taken])
    monkeypatch.setattr(cluster_module, "free_port", lambda: next(calls, None) or real())
    workdir = cluster_workdir("retry")
    cluster = Cluster(workdir, cluster_module.ClusterOptions(kwok=False))
    try:
        cluster.start()
        assert cluster.ports["etcd"] != taken
        assert list((workdir / "logs").glob("etcd.attempt1"))
    finally:
        cluster.stop()
        blocker.close()
        shutil.rmtree(workdir, ignore_errors=True)
