"""Benchmark model images: package time, push/pull throughput against ``skopeo copy``, verify time.

For each model size (synthetic ONNX models whose weights are one float32 initializer), in one
run on this machine, against real local ``docker-registry`` processes:

- package: ``edgekit package`` in process (median of the repetitions);
- push: a layout folder to an empty registry (a fresh one per run, so nothing is deduplicated or
  mounted), ``edgekit push`` as a CLI process and ``skopeo copy --all oci:… docker://…``;
- pull: the same image from the registry to a new layout folder, ``edgekit pull`` vs
  ``skopeo copy --all docker://… oci:…``;
- verify: ``edgekit verify`` (CLI) and the library call, on a signed image.

Runs alternate between the tools; throughput = image bytes / wall time, and a ratio is
edgekit's throughput over skopeo's (>1 means edgekit is faster). "edgekit CLI" is the
``edgekit`` process end to end (including Python start-up and imports); "library" is the same
push/pull called in process, i.e. the transfer itself.

    python bench/images.py [--sizes 10,200] [--reps 3]
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit_agent.oci import Reference, parse_reference  # noqa: E402

from edgekit.image.building import PackageSettings, package  # noqa: E402
from edgekit.image.pushing import pull_image, push_layout  # noqa: E402
from edgekit.image.signing import load_private_key, sign_image, verify_image, write_keypair  # noqa: E402
from edgekit.rehearsal.registry import DockerRegistry  # noqa: E402

TOOLS = ("edgekit", "library", "skopeo")
EDGEKIT = [str(ROOT / ".venv" / "bin" / "edgekit")] if (ROOT / ".venv" / "bin" / "edgekit").exists() else \
    [sys.executable, "-m", "edgekit.cli"]


def synthetic_model(path: Path, megabytes: int) -> Path:
    rows = 1024
    columns = max(1, megabytes * 1_000_000 // (rows * 4))
    weight = np.random.default_rng(megabytes).standard_normal((rows, columns), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "bench",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", rows])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", columns])],
        [numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def run(argv: list[str]) -> None:
    subprocess.run(argv, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def image_bytes(layout: Path) -> int:
    return sum(p.stat().st_size for p in (layout / "blobs" / "sha256").iterdir())


def measure_push(layout: Path, work: Path, reps: int) -> dict[str, float]:
    """Median seconds to push ``layout`` to an empty registry (a fresh one per run)."""
    times: dict[str, list[float]] = {"edgekit": [], "library": [], "skopeo": []}

    def once(tool: str, target: str) -> None:
        if tool == "edgekit":
            run([*EDGEKIT, "push", str(layout), target])
        elif tool == "library":
            push_layout(layout, parse_reference(target))
        else:
            run(["skopeo", "copy", "--all", "--dest-tls-verify=false", f"oci:{layout}:1.0", f"docker://{target}"])

    for rep in range(reps):
        for tool in TOOLS if rep % 2 == 0 else TOOLS[::-1]:
            folder = work / f"reg-push-{rep}-{tool}"
            with DockerRegistry(folder) as reg:
                times[tool].append(timed(lambda: once(tool, f"{reg.host}/bench/model:1.0")))  # noqa: B023
            shutil.rmtree(folder)
    return {tool: statistics.median(values) for tool, values in times.items()}


def measure_pull(ref: Reference, work: Path, reps: int) -> dict[str, float]:
    """Median seconds to pull ``ref`` (all platforms) into a new layout folder."""
    times: dict[str, list[float]] = {"edgekit": [], "library": [], "skopeo": []}

    def once(tool: str, dest: Path) -> None:
        if tool == "edgekit":
            run([*EDGEKIT, "pull", str(ref), "-o", str(dest)])
        elif tool == "library":
            pull_image(ref, dest)
        else:
            run(["skopeo", "copy", "--all", "--src-tls-verify=false", f"docker://{ref}", f"oci:{dest}:1.0"])

    for rep in range(reps):
        for tool in TOOLS if rep % 2 == 0 else TOOLS[::-1]:
            dest = work / f"pulled-{rep}-{tool}"
            times[tool].append(timed(lambda: once(tool, dest)))  # noqa: B023
            shutil.rmtree(dest)
    return {tool: statistics.median(values) for tool, values in times.items()}


def bench_size(mb: int, work: Path, reps: int, key: Path, pub: Path, con: Console) -> list[tuple[str, ...]]:
    model = synthetic_model(work / f"m{mb}.onnx", mb)
    settings = PackageSettings(name=f"bench{mb}", version="1.0", created="2026-01-01T00:00:00Z")
    layout = work / f"layout-{mb}"
    pack = statistics.median(timed(lambda: package(model, settings, layout, force=True)) for _ in range(reps))
    size_mb = image_bytes(layout) / 1e6
    con.print(f"[dim]{mb} MB model: image {size_mb:.1f} MB, package {pack:.2f} s[/]")
    rate = model.stat().st_size / 1e6 / pack
    rows: list[tuple[str, ...]] = [(f"package {mb} MB", "", f"{pack:.2f} s ({rate:.0f} MB/s)", "", "", "")]
    push = measure_push(layout, work, reps)
    with DockerRegistry(work / f"reg-pull-{mb}") as reg:
        ref = parse_reference(f"{reg.host}/bench/m{mb}:1.0")
        push_layout(layout, ref)
        sign_image(ref, load_private_key(key, b"bench"))
        pull = measure_pull(ref, work, reps)
        verify_cli = statistics.median(
            timed(lambda: run([*EDGEKIT, "verify", str(ref), "--key", str(pub)])) for _ in range(reps))
        verify_lib = statistics.median(timed(lambda: verify_image(str(ref), pub)) for _ in range(reps))
    for op, t in (("push", push), ("pull", pull)):
        rows.append((f"{op} {mb} MB", f"{t['edgekit']:.2f} s ({size_mb / t['edgekit']:.0f} MB/s)",
                     f"{t['library']:.2f} s ({size_mb / t['library']:.0f} MB/s)",
                     f"{t['skopeo']:.2f} s ({size_mb / t['skopeo']:.0f} MB/s)",
                     f"{t['skopeo'] / t['edgekit']:.2f}x", f"{t['skopeo'] / t['library']:.2f}x"))
    rows.append((f"verify {mb} MB", f"{verify_cli:.2f} s", f"{verify_lib * 1000:.0f} ms", "", "", ""))
    shutil.rmtree(layout)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10,200", help="model sizes in MB, comma-separated")
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    con = Console(width=140)
    work = Path(tempfile.mkdtemp(prefix="edgekit-bench-images-"))
    rows: list[tuple[str, ...]] = []
    try:
        key, pub = write_keypair(work / "bench", b"bench")
        for mb in (int(s) for s in args.sizes.split(",")):
            rows += bench_size(mb, work, args.reps, key, pub, con)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    table = Table(title=f"model images: edgekit vs skopeo copy (median of {args.reps}, same run)")
    for col in ("operation", "edgekit CLI", "edgekit library", "skopeo copy", "CLI/skopeo", "library/skopeo"):
        table.add_column(col, justify="left" if col == "operation" else "right", no_wrap=True)
    for row in rows:
        table.add_row(*row)
    con.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
