"""Latency benchmarks. Several models are measured interleaved, in small blocks, so that a noisy
shared machine slows them alike and their ratios stay meaningful."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgekit.errors import DataError
from edgekit.optimize.datasets import Dataset, Feed, load_dataset, synthetic
from edgekit.optimize.inspecting import inspect_model
from edgekit.optimize.sessions import make_session, run
from edgekit.optimize.shapes import batch_axes, resolve_shape
from edgekit.optimize.speedup import PairedRatio, paired_ratio


@dataclass(frozen=True)
class LatencyStats:
    runs: int
    batch: int
    mean_ms: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    min_ms: float
    max_ms: float
    throughput: float  # samples per second

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(samples_s: Sequence[float], batch: int) -> LatencyStats:
    arr = np.asarray(samples_s, dtype=np.float64) * 1e3
    p50, p95, p99 = np.percentile(arr, [50, 95, 99])
    return LatencyStats(
        runs=len(arr),
        batch=batch,
        mean_ms=float(arr.mean()),
        p50_ms=float(p50),
        p95_ms=float(p95),
        p99_ms=float(p99),
        min_ms=float(arr.min()),
        max_ms=float(arr.max()),
        throughput=float(batch * 1e3 / arr.mean()) if arr.mean() > 0 else 0.0,
    )


def time_interleaved(
    calls: Sequence[Callable[[], object]],
    *,
    runs: int,
    warmup: int,
    block: int = 10,
    max_seconds: float | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> list[list[float]]:
    """Time each call ``runs`` times, alternating between them in blocks of ``block`` runs."""
    for call in calls:
        for _ in range(warmup):
            call()
    samples: list[list[float]] = [[] for _ in calls]
    clock = time.perf_counter
    start = clock()
    done = 0
    while done < runs:
        n = min(block, runs - done)
        for i, call in enumerate(calls):
            out = samples[i]
            for _ in range(n):
                t0 = clock()
                call()
                out.append(clock() - t0)
        done += n
        if on_progress:
            on_progress(done)
        if max_seconds is not None and clock() - start > max_seconds and done >= 5:
            break
    return samples


def bench_feed(
    path: str | os.PathLike[str], *, shapes: Mapping[str, tuple[int, ...]], batch: int, data: str | None, seed: int = 0
) -> Feed:
    """One input feed for benchmarking: the first ``batch`` samples of ``data`` or random values."""
    info = inspect_model(path)
    axes = batch_axes(info.inputs)
    fixed = {i.name: resolve_shape(i, shapes.get(i.name), batch, axes[i.name]) for i in info.inputs}
    if data:
        ds = load_dataset(data, info.inputs, shapes=fixed, role="bench data")
    else:
        ds = synthetic(info.inputs, fixed, samples=batch, seed=seed)
    if ds.per_file:  # inputs without a batch axis: one file is one feed, used as it is
        feed = ds.first()
        counts = {feed[k].shape[a] for k, a in axes.items() if a is not None}
        if counts and counts != {batch}:
            raise DataError(
                f"--batch {batch}: the model takes its samples one file at a time, and {ds.source} holds "
                f"batches of {sorted(counts)[0]}",
                hint="save files with that many samples, or leave --batch at its default",
            )
        return feed
    if ds.samples < batch:
        reps = -(-batch // ds.samples)
        ds = Dataset({k: np.concatenate([v] * reps, axis=ds.axis(k)) for k, v in ds.arrays.items()}, ds.source,
                     axes=ds.axes)
    return next(ds.batches(batch))


def bench_side_by_side(
    paths: Sequence[str | os.PathLike[str]],
    *,
    runs: int = 200,
    warmup: int = 20,
    threads: int = 1,
    batch: int = 1,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    data: str | None = None,
    spinning: bool | None = None,
    on_progress: Callable[[int], None] | None = None,
) -> tuple[list[LatencyStats], list[PairedRatio | None]]:
    """Benchmark models side by side on the same inputs (taken from the first model's inputs): each
    one's latency, and its paired ratio to the first (``speedup``; None for the first)."""
    shapes = dict(shapes or {})
    feed = bench_feed(paths[0], shapes=shapes, batch=batch, data=data)
    sessions = [make_session(p, threads=threads, spinning=spinning) for p in paths]
    calls = [(lambda s=s: run(s, feed)) for s in sessions]
    samples = time_interleaved(calls, runs=runs, warmup=warmup, on_progress=on_progress)
    speeds: list[PairedRatio | None] = [None, *(paired_ratio(samples[0], s) for s in samples[1:])]
    return [summarize(s, batch) for s in samples], speeds
