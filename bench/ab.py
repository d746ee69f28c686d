"""A/B of two checkouts of edgekit in one run: CLI start-up and fleet ingest, alternated.

    .venv/bin/python bench/ab.py BEFORE_TREE [AFTER_TREE] [--runs 15] [--devices 10000] [--messages 100000]

Meant for a change that must not cost speed (a refactor): make the "before" tree with
``git worktree add /tmp/before <commit>`` (or ``git archive``), and run this from the "after" one
(AFTER_TREE defaults to this checkout). Both trees run on this venv's interpreter with their own
code first on ``sys.path``, so only the code differs.

(a) start-up: wall and CPU time of ``edgekit --help``, ``edgekit push --help`` and
    ``edgekit rollout status --help``, the trees alternated run by run, bytecode cached for both.
(b) ingest: the ``FleetWatcher`` child of each tree's ``bench/telemetry.py`` drains the same
    queued stream from one mosquitto broker (see that file, figure (a)); trees alternate per round.

Medians are printed with the after/before ratio. The machine is shared: read ratios, not times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import telemetry as tel  # noqa: E402  (stream, broker and child helpers of this tree)

CLI_CASES = (("--help",), ("push", "--help"), ("rollout", "status", "--help"))


def _env(tree: Path, pycache: Path) -> dict[str, str]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'agent'}", PYTHONPYCACHEPREFIX=str(pycache))
    env.pop("PYTHONDONTWRITEBYTECODE", None)  # both trees run from cached bytecode, as an install does
    return env


def _cli_once(tree: Path, args: tuple[str, ...], pycache: Path) -> tuple[float, float]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    # cwd=tree: `python -m` puts the working folder first on sys.path
    subprocess.run([sys.executable, "-m", "edgekit", *args], env=_env(tree, pycache), cwd=tree, capture_output=True,
                   check=True)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def startup(trees: list[Path], runs: int, tmp: Path) -> list[tuple[str, list[float]]]:
    rows = []
    for args in CLI_CASES:
        walls: list[list[float]] = [[] for _ in trees]
        cpus: list[list[float]] = [[] for _ in trees]
        for i, tree in enumerate(trees):  # warm the bytecode caches
            _cli_once(tree, args, tmp / f"pyc{i}")
        for run in range(runs):
            order = list(enumerate(trees)) if run % 2 == 0 else list(enumerate(trees))[::-1]
            for i, tree in order:
                wall, cpu = _cli_once(tree, args, tmp / f"pyc{i}")
                walls[i].append(wall)
                cpus[i].append(cpu)
        rows.append((f"edgekit {' '.join(args)}",
                     [statistics.median(w) * 1e3 for w in walls] + [statistics.median(c) * 1e3 for c in cpus]))
    return rows


def _watch_child(tree: Path, **args: Any) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=f"{tree}{os.pathsep}{tree / 'agent'}")
    proc = subprocess.Popen([sys.executable, str(tree / "bench" / "telemetry.py"), "_watch", json.dumps(args)],
                            stdout=subprocess.PIPE, text=True, env=env, cwd=tree)
    return tel._result(proc)


def ingest(trees: list[Path], devices: int, messages: int, rounds: int, tmp: Path) -> tuple[list[float], list[float]]:
    broker = tel.start_broker(tmp / "broker")
    rates: list[list[float]] = [[] for _ in trees]
    cpus: list[list[float]] = [[] for _ in trees]
    try:
        count = max(messages, 2 * devices)
        stream = tel.health_stream(count, devices, time.time())
        for rnd in range(rounds):
            order = list(enumerate(trees)) if rnd % 2 == 0 else list(enumerate(trees))[::-1]
            for i, tree in order:
                cid = f"ab-{rnd}-{i}-{uuid.uuid4().hex[:6]}"
                _watch_child(tree, url=broker.url, client_id=cid, register=True)  # the persistent session
                pub = tel.RawPublisher(broker.port)
                pub.send(*stream)
                pub.close()
                res = _watch_child(tree, url=broker.url, client_id=cid, count=count)
                rates[i].append(res["applied"] / res["elapsed"])
                cpus[i].append(res["cpu"] / res["applied"] * 1e6)
    finally:
        broker.stop()
    return [statistics.median(r) for r in rates], [statistics.median(c) for c in cpus]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("before", type=Path)
    ap.add_argument("after", type=Path, nargs="?", default=HERE.parent)
    ap.add_argument("--runs", type=int, default=15, help="start-up runs per command and tree")
    ap.add_argument("--rounds", type=int, default=5, help="ingest rounds per tree")
    ap.add_argument("--devices", type=int, default=10_000)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--skip-ingest", action="store_true")
    a = ap.parse_args()
    trees = [a.before.resolve(), a.after.resolve()]
    for tree in trees:
        if not (tree / "edgekit" / "__init__.py").exists():
            sys.exit(f"{tree} is not an edgekit checkout")
    with tempfile.TemporaryDirectory() as tmp:
        print(f"before: {trees[0]}\nafter:  {trees[1]}\n")
        print(f"| command (median of {a.runs}) | before wall | after wall | ratio | before CPU | after CPU | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name, (bw, aw, bc, ac) in startup(trees, a.runs, Path(tmp)):
            print(f"| `{name}` | {bw:.0f} ms | {aw:.0f} ms | {aw / bw:.2f}x "
                  f"| {bc:.0f} ms | {ac:.0f} ms | {ac / bc:.2f}x |")
        if not a.skip_ingest:
            (br, ar), (bc, ac) = ingest(trees, a.devices, a.messages, a.rounds, Path(tmp))
            print(f"\n| ingest, {a.devices:,} devices, median of {a.rounds} | before | after | ratio |")
            print("|---|---|---|---|")
            print(f"| msg/s | {br:,.0f} | {ar:,.0f} | {ar / br:.2f}x |")
            print(f"| CPU µs per message | {bc:.2f} | {ac:.2f} | {ac / bc:.2f}x |")
        print(f"\nload average at the end: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
