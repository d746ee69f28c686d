"""Rollout engine benchmark: a 500-node rollout with short bakes on a real control plane (KWOK nodes).

    .venv/bin/python bench/rollout.py                 # 500 nodes, waves 1,5%,25%,100%, bake 10s
    .venv/bin/python bench/rollout.py --nodes 200 --bake 5

Two rollouts of one app over the same 500 nodes, both driven by the real engine against the real
API server (etcd, kube-apiserver, controller-manager, scheduler, kwok):

1. healthy: every wave passes. Figures: wall time vs the sum of bake times (the overhead), split
   into the engine's own work (its API calls) and waiting for Kubernetes (DaemonSet pods Ready);
   API calls per node moved.
2. breach: the gate fails on the last wave (all 500 nodes moved). Figures: time from the verdict to
   every node relabelled back, and to the new DaemonSet removed.

Telemetry is synthetic (every device of a wave reports the new digest at once, healthy or, in the
breach run, with a 30% error rate), so the figures are the engine's and Kubernetes', not the
simulated devices'. Targets (issue 7): overhead ≤ 10% of the bakes, breach -> relabelled back
< 30 s, O(1) API calls per node moved.
"""

from __future__ import annotations

import argparse
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from edgekit.kube import apply_objects, install_objects
from edgekit.rehearsal.cluster import Cluster
from edgekit.rehearsal.nodes import FleetSpec
from edgekit.rollout import resource as r
from edgekit.rollout.engine import Engine, EngineOptions
from edgekit.rollout.gating import TelemetryFigures
from edgekit.rollout.kubecluster import KubeCluster
from edgekit.rollout.resource import EdgeRollout, ImageRef, RolloutSpec, revision_for
from edgekit.rollout.strategy import build_strategy

NAMESPACE = "edgekit"
APP = "bench"


def image(n: int) -> ImageRef:
    digest = "sha256:" + f"{n:x}" * 64
    digest = digest[:7 + 64]
    return ImageRef(f"registry.invalid/bench@{digest}", digest, revision_for(digest))


class SyntheticTelemetry:
    """Every device of a wave reports at once; ``breach_at`` devices or more -> 30% errors."""

    def __init__(self, breach_at: int | None = None) -> None:
        self.breach_at = breach_at
        self.started = time.time() - 3600

    def observing_since(self) -> float:
        return self.started

    def window(self, devices: Sequence[str], since: float, digest: str | None) -> TelemetryFigures:
        n = len(devices)
        bad = self.breach_at is not None and digest is not None and n >= self.breach_at
        return TelemetryFigures(expected=n, reported=n, on_digest=n, off_digest=0, inferences=100 * n,
                                errors=30 * n if bad else 0, error_rate=0.3 if bad else 0.0,
                                p50_ms=2.0, p95_ms=4.0, p99_ms=5.0, probe_failures=0)


class TimedCluster:
    """The engine's cluster port with the time of every call summed per method (engine thread only)."""

    def __init__(self, inner: KubeCluster) -> None:
        self.inner = inner
        self.seconds: Counter[str] = Counter()
        self.calls: Counter[str] = Counter()
        self.relabelled_at: list[float] = []     # wall time each relabel_nodes call returned
        self._engine_thread: int | None = None

    def __getattr__(self, name: str) -> Any:
        target = getattr(self.inner, name)
        if not callable(target):
            return target

        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return target(*args, **kwargs)
            finally:
                if threading.get_ident() == self._engine_thread:
                    self.seconds[name] += time.perf_counter() - t0
                    self.calls[name] += 1
                    if name == "relabel_nodes":
                        self.relabelled_at.append(time.time())
        return timed


def run_rollout(cluster: TimedCluster, client: Any, telemetry: SyntheticTelemetry, target: ImageRef,
                waves: str, bake: float) -> tuple[EdgeRollout, dict[str, Any]]:
    strategy = build_strategy(waves=waves, bake=f"{bake}s", wave_timeout="300s", baseline="1s",
                              max_error_rate="1%")
    engine = Engine(cluster, telemetry, options=EngineOptions(lease_s=15, tick_s=0.1))  # type: ignore[arg-type]
    ro = engine.prepare(namespace=NAMESPACE, app=APP, group="fleet", image=target, strategy=strategy)
    engine.create(ro)
    cluster._engine_thread = threading.get_ident()   # from here on: the run, timed
    cluster.seconds.clear()
    cluster.calls.clear()
    cluster.relabelled_at.clear()
    calls_before = len(client.log)
    log_start = len(client.log.calls)
    t0 = time.time()
    done = engine.run(NAMESPACE, ro.name)
    wall = time.time() - t0
    calls = client.log.calls[log_start:]
    return done, {"wall": wall, "api_calls": len(client.log) - calls_before, "calls": calls,
                  "engine_seconds": dict(cluster.seconds), "engine_calls": dict(cluster.calls),
                  "relabelled_at": list(cluster.relabelled_at)}


def wave_rows(ro: EdgeRollout) -> list[dict[str, float]]:
    rows = []
    for w in ro.status.waves:
        if w.moved_at is None:
            continue
        rows.append({"index": w.index + 1, "nodes": len(w.nodes),
                     "to_ready": (w.ready_at or w.moved_at) - w.moved_at,
                     "ready_to_verdict": (w.verdict_at or w.ready_at or 0) - (w.ready_at or w.moved_at)})
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--bake", type=float, default=10.0, help="seconds per wave")
    parser.add_argument("--waves", default="1,5%,25%,100%")
    parser.add_argument("--workers", type=int, default=32, help="concurrent label patches")
    args = parser.parse_args(argv)
    con = Console()
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-rollout-") as tmp:
        cluster = Cluster(Path(tmp) / "kube").start()
        try:
            con.print(f"control plane up; creating {args.nodes} KWOK nodes")
            cluster.add_nodes(FleetSpec(pools={"fleet": args.nodes}))
            client = cluster.client()
            apply_objects(client, install_objects(NAMESPACE))
            port = TimedCluster(KubeCluster(client, render_options={"mqtt_auth": "none"}, workers=args.workers))
            nodes = list(port.inner.group_nodes("fleet"))
            v0, v1, v2 = image(1), image(2), image(3)
            spec = RolloutSpec(APP, "fleet", v0, build_strategy())
            port.inner.ensure_daemonset(NAMESPACE, spec, v0)
            port.inner.relabel_nodes(APP, dict.fromkeys(nodes, v0.revision))
            con.print("initial revision on every node; healthy rollout…")

            healthy, h = run_rollout(port, client, SyntheticTelemetry(), v1, args.waves, args.bake)
            assert healthy.status.phase == r.SUCCEEDED, healthy.status.message
            waves = len(healthy.status.waves)
            bakes = waves * args.bake
            rows = wave_rows(healthy)
            engine_work = sum(h["engine_seconds"].values())
            relabel = h["engine_seconds"].get("relabel_nodes", 0.0)
            # Kubernetes' part: from the end of a wave's relabelling to its pods all Ready.
            k8s_only = sum((w.ready_at or 0.0) - done_at for w, done_at in
                           zip(healthy.status.waves, h["relabelled_at"], strict=False))
            moved = sum(len(w.nodes) for w in healthy.status.waves)
            by_kind = Counter(f"{m} {'/'.join(p.split('/')[:4] if p.startswith('/api/') else p.split('/')[:5])}"
                              for m, p in h["calls"])

            con.print("breach rollout…")
            last_size = len(healthy.status.waves[-1].nodes)
            breach, b = run_rollout(port, client, SyntheticTelemetry(breach_at=last_size), v2, args.waves,
                                    args.bake)
            assert breach.status.phase == r.ROLLED_BACK, breach.status.message
            failed = next(w for w in breach.status.waves if w.phase == r.W_FAILED)
            decided = failed.verdict_at or 0.0
            relabelled = breach.status.event_time(r.EV_RELABELLED) or 0.0
            finished = breach.status.event_time(r.EV_FINISHED) or 0.0
            moved_back = len(breach.status.moved_nodes)
        finally:
            cluster.stop()

    table = Table(title=f"rollout engine: {args.nodes} nodes, waves {args.waves}, bake {args.bake:g}s",
                  title_justify="left")
    table.add_column("figure")
    table.add_column("value", justify="right")
    table.add_column("target", justify="right")
    overhead = h["wall"] - bakes
    table.add_row("healthy rollout, wall time", f"{h['wall']:.1f} s", "")
    table.add_row("sum of bake times", f"{bakes:.1f} s", "")
    engine_path = overhead - k8s_only
    table.add_row("overhead (wall - bakes)", f"{overhead:.1f} s = {overhead / bakes:.1%} of bakes", "≤ 10%")
    table.add_row("  waiting for pods Ready (Kubernetes: relabelled -> Ready)",
                  f"{k8s_only:.1f} s = {k8s_only / bakes:.1%} of bakes", "")
    table.add_row("  the engine (overhead - Kubernetes)", f"{engine_path:.1f} s = {engine_path / bakes:.1%} of bakes",
                  "≤ 10%")
    table.add_row("    of which relabelling", f"{relabel:.2f} s", "")
    table.add_row("engine API time, incl. during bakes", f"{engine_work:.2f} s", "")
    table.add_row("nodes moved", f"{moved}", "")
    table.add_row("API calls (healthy rollout)", f"{h['api_calls']}", "")
    table.add_row("API calls per node moved", f"{h['api_calls'] / moved:.2f}", "O(1)")
    patches = by_kind_count(h["calls"], "PATCH", "/api/v1/nodes/")
    table.add_row("  label patches per node moved", f"{patches / moved:.2f}", "1")
    table.add_row("breach: nodes moved then rolled back", f"{moved_back}", "")
    table.add_row("breach verdict -> all nodes relabelled back", f"{relabelled - decided:.1f} s", "< 30 s")
    table.add_row("breach verdict -> new DaemonSet removed (RolledBack)", f"{finished - decided:.1f} s", "")
    table.add_row("API calls per node (breach rollout, forth and back)", f"{b['api_calls'] / moved_back:.2f}", "O(1)")
    con.print(table)
    per_wave = Table(title="healthy rollout per wave", title_justify="left")
    for col in ("wave", "nodes", "moved -> pods Ready", "Ready -> verdict (bake + gate)"):
        per_wave.add_column(col, justify="right")
    for row in rows:
        per_wave.add_row(str(row["index"]), str(row["nodes"]), f"{row['to_ready']:.2f} s",
                         f"{row['ready_to_verdict']:.2f} s")
    con.print(per_wave)
    work = Table(title="engine's own work in the healthy rollout, by port call", title_justify="left")
    for col in ("call", "count", "seconds"):
        work.add_column(col, justify="right" if col != "call" else "left")
    for name, seconds in sorted(h["engine_seconds"].items(), key=lambda kv: -kv[1]):
        work.add_row(name, str(h["engine_calls"].get(name, 0)), f"{seconds:.2f}")
    con.print(work)
    calls = Table(title="API calls of the healthy rollout by kind", title_justify="left")
    calls.add_column("request")
    calls.add_column("count", justify="right")
    for kind, count in by_kind.most_common(12):
        calls.add_row(kind, str(count))
    con.print(calls)
    return 0


def by_kind_count(calls: list[tuple[str, str]], method: str, prefix: str) -> int:
    return sum(1 for m, p in calls if m == method and p.startswith(prefix))


if __name__ == "__main__":
    raise SystemExit(main())
