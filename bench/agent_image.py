"""Benchmark the edgekit-agent image built here: size per platform and build time cold and warm.

- size: read from the OCI layout's blobs by this script (not from what the build recorded):
  compressed = manifest + config + gzip layers (what a node pulls), unpacked = the layers gunzipped;
- build time: wall time of ``agentbuilding.build`` as this script measures it,
  ``--warm``: the image cache removed, the Debian rootfs kept (pip and buildah run again),
  ``--cold``: the rootfs caches removed too (mmdebstrap runs again);
  each run is kept in ``~/.cache/edgekit/agent-image-bench.json`` so the table shows the last cold
  and warm time measured, with the index digest each build gave (equal digests = reproducible).

    python bench/agent_image.py            # sizes of the current image (built if missing) + kept times
    python bench/agent_image.py --warm     # rebuild without the image cache, time it, compare digests
    python bench/agent_image.py --cold     # rebuild from nothing (two mmdebstrap runs, qemu for arm64)
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import sys
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.rehearsal.agentbuilding import BuiltImage, build, build_plan  # noqa: E402
from edgekit.rehearsal.agentimage import Platform  # noqa: E402
from edgekit.settings import cache_dir  # noqa: E402

BUDGET_MB = 250.0


def sizes(built: BuiltImage, platform: Platform) -> tuple[int, int, int]:
    """(compressed bytes, unpacked bytes, layers) of one platform's image, from the blobs."""
    blobs = built.layout / "blobs" / "sha256"
    index = json.loads((built.layout / "index.json").read_text())
    (entry,) = [m for m in index["manifests"]
                if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == built.plan.tag(platform)]
    manifest_path = blobs / entry["digest"].split(":")[1]
    manifest = json.loads(manifest_path.read_text())
    compressed = manifest_path.stat().st_size + (blobs / manifest["config"]["digest"].split(":")[1]).stat().st_size
    unpacked = 0
    for layer in manifest["layers"]:
        path = blobs / layer["digest"].split(":")[1]
        compressed += path.stat().st_size
        with gzip.open(path) as handle:
            while chunk := handle.read(1 << 20):
                unpacked += len(chunk)
    return compressed, unpacked, len(manifest["layers"])


def history_path() -> Path:
    return cache_dir() / "agent-image-bench.json"


def timed_build(kind: str, say: Any) -> tuple[BuiltImage, dict[str, Any]]:
    image_plan = build_plan()
    shutil.rmtree(cache_dir() / image_plan.dir_name, ignore_errors=True)
    if kind == "cold":
        for rootfs in image_plan.rootfs:
            shutil.rmtree(cache_dir() / rootfs.dir_name, ignore_errors=True)
    start = time.monotonic()
    built = build(say=say)
    seconds = time.monotonic() - start
    run = {"kind": kind, "seconds": round(seconds, 1), "key": image_plan.key, "index_digest": built.index_digest,
           "per_platform": {i["platform"]: i["seconds"] for i in built.record["images"]},
           "rootfs": built.record.get("rootfs_seconds", {}),
           "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    runs = _history()
    runs.append(run)
    history_path().write_text(json.dumps(runs, indent=1) + "\n")
    return built, run


def _history() -> list[dict[str, Any]]:
    try:
        data = json.loads(history_path().read_text())
    except (OSError, ValueError):
        return []
    return data if isinstance(data, list) else []


def _made_rootfs(record: dict[str, Any]) -> bool:
    """Whether that build ran mmdebstrap (a cached rootfs takes well under a second to find)."""
    return all(float(s) > 5 for s in record.get("rootfs_seconds", {}).values()) and bool(record.get("rootfs_seconds"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--warm", action="store_true", help="rebuild with the image cache removed, rootfs kept")
    group.add_argument("--cold", action="store_true", help="rebuild with the rootfs caches removed too")
    args = parser.parse_args()
    con = Console(stderr=True)
    digest_before = None
    if args.warm or args.cold:
        image_plan = build_plan()
        record = cache_dir() / image_plan.dir_name / "build.json"
        if record.is_file():
            digest_before = json.loads(record.read_text()).get("index_digest")
        built, _ = timed_build("cold" if args.cold else "warm", say=lambda m: con.print(m, markup=False))
    else:
        built = build(say=lambda m: con.print(m, markup=False))
    runs = [r for r in _history() if r.get("key") == built.plan.key]
    last = {kind: next((r for r in reversed(runs) if r["kind"] == kind), None) for kind in ("cold", "warm")}
    if last["cold"] is None and _made_rootfs(built.record):
        # The build in the cache made its rootfs too (scripts/build-agent-image on an empty cache): its
        # own timings are the cold figures until this script measures one.
        last["cold"] = {"kind": "cold", "seconds": built.record["seconds"], "index_digest": built.index_digest,
                        "per_platform": {i["platform"]: i["seconds"] for i in built.record["images"]},
                        "rootfs": built.record["rootfs_seconds"], "at": built.record["built_at"] + " by the build"}

    table = Table(title=f"edgekit-agent {built.plan.version} image ({built.plan.release}), index {built.index_digest}")
    for col in ("platform", "compressed MB", "unpacked MB", "layers", "rootfs (cold) s", "image (cold) s",
                "image (warm) s"):
        table.add_column(col, justify="left" if col == "platform" else "right")
    over = []
    for platform in built.plan.platforms:
        compressed, unpacked, layers = sizes(built, platform)
        if compressed / 1e6 > BUDGET_MB:
            over.append(str(platform))
        cold, warm = last["cold"], last["warm"]
        table.add_row(str(platform), f"{compressed / 1e6:.1f}", f"{unpacked / 1e6:.1f}", str(layers),
                      f"{cold['rootfs'].get(platform.arch, 0):.0f}" if cold else "-",
                      f"{cold['per_platform'].get(str(platform), 0):.0f}" if cold else "-",
                      f"{warm['per_platform'].get(str(platform), 0):.0f}" if warm else "-")
    out = Console(width=120)
    out.print(table)
    for kind, run in last.items():
        if run:
            out.print(f"{kind} build (measured {run['at']}): {run['seconds']:.0f} s in all, "
                      f"index {run['index_digest']}")
        else:
            out.print(f"{kind} build: not measured for these sources (python bench/agent_image.py --{kind})")
    digests = {r["index_digest"] for r in runs}
    if digest_before:  # the build this run replaced (it may be one of the runs above)
        digests.add(digest_before)
    if len(digests) > 1:
        out.print(f"NOT reproducible: builds of the same sources gave {len(digests)} digests: {sorted(digests)}")
    elif len(runs) > 1 or (runs and digest_before):
        out.print(f"reproducible: {len(runs)} timed builds of these sources"
                  + (" and the build this one replaced" if digest_before else "") + " gave one digest")
    if over:
        out.print(f"over the {BUDGET_MB:.0f} MB budget: {', '.join(over)}")
    return 1 if over or len(digests) > 1 else 0


if __name__ == "__main__":
    sys.exit(main())
