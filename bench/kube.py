"""Benchmarks of the Kubernetes side (issue 6), on the real local control plane.

    .venv/bin/python bench/kube.py                  # warm starts, 500 nodes, 300-node DaemonSet, API calls
    .venv/bin/python bench/kube.py --cold           # also a cold build of all Go programs (10+ min)
    .venv/bin/python bench/kube.py --real           # only the real-node figures (f)-(j), as root

(a) build: the last recorded build of each Go component (or, with --cold, a fresh build into a
    scratch cache: empty Go build cache, module cache kept) and what a cached "build" costs.
(b) start: control plane from scratch (new certificates, empty etcd) with cached binaries, until
    kube-apiserver /readyz and the controllers' /healthz answer; median of --starts runs; stop time.
(c) nodes: create --nodes KWOK nodes (POSTs, 8 in flight) and wait until all are Ready.
(d) DaemonSet: render --apply one revision for a --ds-nodes group, relabel its nodes, time until
    every pod is Ready.
(e) API requests edgekit makes for `groups list`, `groups show` and `render --apply` on a small fleet
    and on the full one: the counts must not grow with the number of nodes.

With --real, instead: the edgekit-agent image as a real container on a real kubelet (bench/kube_real.py):
(f) relabel to pod Ready with the model image already pulled, image volume and init container;
(g) cold pull of a 10 MB model; (h) agent container start to Ready; (i) agent container memory vs a
bare onnxruntime process loading the same model; (j) agent image size per platform. --rounds each.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from rich.console import Console  # noqa: E402
from rich.table import Table  # noqa: E402

from edgekit.kube import label_nodes, rollout_label  # noqa: E402
from edgekit.kube.deploying import deploy_revision, install  # noqa: E402
from edgekit.kube.groups import list_groups, parse_group, show_group  # noqa: E402
from edgekit.kube.rendering import RenderSettings  # noqa: E402
from edgekit.rehearsal import gobuild  # noqa: E402
from edgekit.rehearsal.cluster import Cluster  # noqa: E402
from edgekit.rehearsal.nodes import FleetSpec  # noqa: E402

console = Console(width=max(120, Console().width))
IMAGE = "registry.local:5000/models/digits@sha256:" + "b3" * 32


def bench_build(cold: bool) -> Table:
    table = Table(title="(a) Go builds", title_justify="left")
    for col in ("component", "version", "binaries", "build s", "source", "cached check s"):
        table.add_column(col, justify="right" if col.endswith(" s") else "left")
    for comp in (gobuild.COMPONENTS[n] for n in ("etcd", "k8s", "kwok")):
        t0 = time.monotonic()
        gobuild.build(comp, say=lambda m: None)
        cached = time.monotonic() - t0
        if cold:
            with tempfile.TemporaryDirectory() as scratch:
                env = dict(os.environ, EDGEKIT_CACHE_DIR=f"{scratch}/cache", GOCACHE=f"{scratch}/gocache")
                t1 = time.monotonic()
                subprocess.run([sys.executable, "-m", "edgekit.rehearsal.gobuild", comp.name], env=env,
                               check=True, stdout=subprocess.DEVNULL)
                seconds, source = time.monotonic() - t1, "measured now (cold Go cache)"
        else:
            record = gobuild.build_record(comp) or {}
            seconds = float(record["seconds"]) if "seconds" in record else float("nan")  # type: ignore[arg-type]
            source = f"recorded {record.get('built_at', '?')}" if record else "not recorded"
        size = sum((comp.out_dir / b).stat().st_size for b in comp.binaries) / 2**20
        table.add_row(comp.name, comp.version, f"{len(comp.binaries)} ({size:.0f} MB)", f"{seconds:.0f}",
                      source, f"{cached:.2f}")
    return table


def bench_start(runs: int, workdir: Path) -> tuple[Table, float]:
    starts, stops = [], []
    for i in range(runs):
        cluster = Cluster(workdir / f"start-{i}")
        t0 = time.monotonic()
        cluster.start()
        starts.append(time.monotonic() - t0)
        t1 = time.monotonic()
        cluster.stop()
        stops.append(time.monotonic() - t1)
    table = Table(title="(b) control plane start (binaries cached)", title_justify="left")
    for col in ("runs", "start median s", "start min s", "start max s", "stop median s", "vs 60 s target"):
        table.add_column(col, justify="right")
    med = statistics.median(starts)
    table.add_row(str(runs), f"{med:.1f}", f"{min(starts):.1f}", f"{max(starts):.1f}",
                  f"{statistics.median(stops):.1f}", f"{med / 60:.2f}x")
    return table, med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=500)
    parser.add_argument("--ds-nodes", type=int, default=300)
    parser.add_argument("--small", type=int, default=20, help="nodes of the small fleet for API counts")
    parser.add_argument("--starts", type=int, default=3)
    parser.add_argument("--cold", action="store_true", help="also measure a cold build (slow)")
    parser.add_argument("--real", action="store_true", help="only the real-node figures (needs root)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of each real-node figure")
    args = parser.parse_args()
    if args.real:
        from bench.kube_real import run

        run(args.rounds, console)
        return
    if args.ds_nodes > args.nodes - args.small:
        parser.error("--ds-nodes must leave room for --small nodes")

    console.print(bench_build(args.cold))
    with tempfile.TemporaryDirectory(prefix="edgekit-bench-kube-") as tmp:
        workdir = Path(tmp)
        table, _ = bench_start(args.starts, workdir)
        console.print(table)

        with Cluster(workdir / "fleet").start() as cluster:
            client = cluster.client()
            install(client)
            # small fleet first: API requests for groups/render at small scale
            cluster.add_nodes(FleetSpec(pools={"small": args.small}))
            small_group = parse_group("small")
            settings_small = RenderSettings(app="bench", image=IMAGE, group=small_group)
            calls: dict[str, list[int]] = {}

            def count(label: str, fn: object) -> None:
                client.log.reset()
                fn()  # type: ignore[operator]
                calls.setdefault(label, []).append(len(client.log))

            count("groups list", lambda: list_groups(client))
            count("groups show", lambda: show_group(client, small_group))
            count("render --apply (first)", lambda: deploy_revision(client, settings_small))
            count("render --apply (again)", lambda: deploy_revision(client, settings_small))

            # (c) the big fleet
            rest = args.nodes - args.small
            spec = FleetSpec.simple(rest, f"cameras={args.ds_nodes},gateways={rest - args.ds_nodes}",
                                    "arm64=0.7,amd64=0.3")
            t0 = time.monotonic()
            names = cluster.add_nodes(spec, wait_ready=False)
            created = time.monotonic() - t0
            cluster.wait_nodes_ready(names, timeout=300)
            ready = time.monotonic() - t0

            # (e) at full scale: same operations on the (now much bigger) small group's cluster
            settings_small_big = RenderSettings(app="bench2", image=IMAGE, group=small_group)
            count("groups list", lambda: list_groups(client))
            count("groups show", lambda: show_group(client, small_group))
            count("render --apply (first)", lambda: deploy_revision(client, settings_small_big))
            count("render --apply (again)", lambda: deploy_revision(client, settings_small_big))
            cam = parse_group("cameras")
            count("groups show (DaemonSet group)", lambda: show_group(client, cam))

            # (d) DaemonSet across the camera group
            settings = RenderSettings(app="digits", image=IMAGE, group=cam)
            client.log.reset()
            t1 = time.monotonic()
            deploy_revision(client, settings)
            apply_s = time.monotonic() - t1
            apply_calls = len(client.log)
            cams = [n for n in names if n.startswith("cameras-")]
            t2 = time.monotonic()
            label_nodes(client, cams, {rollout_label("digits"): "b3b3b3b3b3b3"}, workers=8)
            labelled = time.monotonic() - t2
            path = "/apis/apps/v1/namespaces/edgekit/daemonsets/digits-b3b3b3b3b3b3"
            while client.get(path).get("status", {}).get("numberReady") != len(cams):
                if time.monotonic() - t2 > 600:
                    raise SystemExit("DaemonSet not Ready after 600 s")
                time.sleep(0.25)
            ds_ready = time.monotonic() - t2

        nodes_table = Table(title=f"(c) {rest} KWOK nodes (+{args.small} before)", title_justify="left")
        for col in ("nodes", "created s", "all Ready s", "nodes/s", "vs 60 s target"):
            nodes_table.add_column(col, justify="right")
        nodes_table.add_row(str(rest), f"{created:.1f}", f"{ready:.1f}", f"{rest / ready:.0f}", f"{ready / 60:.2f}x")
        console.print(nodes_table)

        ds_table = Table(title=f"(d) DaemonSet over a {len(cams)}-node group", title_justify="left")
        for col in ("render --apply s", "its API calls", "relabel s (PATCH/node)", "all pods Ready s",
                    "vs 120 s target"):
            ds_table.add_column(col, justify="right")
        ds_table.add_row(f"{apply_s:.2f}", str(apply_calls), f"{labelled:.1f}", f"{ds_ready:.1f}",
                         f"{ds_ready / 120:.2f}x")
        console.print(ds_table)

        calls_table = Table(title="(e) API requests edgekit makes", title_justify="left")
        for col in ("operation", f"{args.small} nodes", f"{args.nodes} nodes", "ratio", "per node at full scale"):
            calls_table.add_column(col, justify="right" if col != "operation" else "left")
        for label, values in calls.items():
            if len(values) == 2:
                calls_table.add_row(label, str(values[0]), str(values[1]), f"{values[1] / values[0]:.2f}",
                                    f"{values[1] / args.nodes:.4f}")
            else:
                calls_table.add_row(label, "-", str(values[0]), "-", f"{values[0] / args.ds_nodes:.4f}")
        console.print(calls_table)


if __name__ == "__main__":
    main()
