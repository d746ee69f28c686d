"""Running models on eval data with onnxruntime: their outputs, and latency timed against FP32.

Timings interleave the runs of the models compared, so a slow patch of the machine hits them alike.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import onnx

from edgekit.optimize.benchmarking import summarize, time_interleaved
from edgekit.optimize.datasets import Dataset
from edgekit.optimize.sessions import make_session, run
from edgekit.optimize.speedup import PairedRatio, paired_ratio

__all__ = ["eval_batch_size", "model_outputs", "time_pair", "time_side_by_side", "timing_feed"]


def eval_batch_size(model: onnx.ModelProto, data: Dataset | None = None) -> int:
    """Samples per eval run: the model's fixed batch, 32 where it is symbolic, and 1 for data
    batched on another axis than 0 (outputs are joined on axis 0, so every run must give
    outputs of one shape)."""
    if data is not None and (data.axes or data.per_file):
        return 1
    for value in model.graph.input:
        dims = value.type.tensor_type.shape.dim
        if dims and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            return 32
        if dims and dims[0].dim_value > 1:
            return int(dims[0].dim_value)
    return 1


def model_outputs(path: Path | str, data: Dataset, batch: int, threads: int) -> list[list[np.ndarray]]:
    session = make_session(path, threads=threads)
    # Scalar outputs get an axis so that batches join into one array per output.
    return [[np.atleast_1d(o) for o in run(session, feed)] for feed in data.batches(batch)]


def timing_feed(data: Dataset) -> dict[str, np.ndarray]:
    return data.first()


def time_pair(
    base: Path, cand: Path, feed: dict[str, np.ndarray], threads: int, seconds: float = 1.5
) -> tuple[float, float, PairedRatio]:
    """p50 milliseconds of ``base`` and ``cand``, run interleaved for about ``seconds``, and the
    paired ratio of ``cand`` to ``base`` (``speedup``)."""
    s_base, s_cand = make_session(base, threads=threads), make_session(cand, threads=threads)
    t0 = time.perf_counter()
    run(s_base, feed)
    run(s_cand, feed)
    once = max((time.perf_counter() - t0) / 2, 1e-6)
    runs = int(min(max(seconds / once, 20), 1000))
    samples = time_interleaved([lambda: run(s_base, feed), lambda: run(s_cand, feed)], runs=runs, warmup=min(10, runs))
    return summarize(samples[0], 1).p50_ms, summarize(samples[1], 1).p50_ms, paired_ratio(samples[0], samples[1])


def time_side_by_side(
    base: Path, candidates: Sequence[Path], feed: dict[str, np.ndarray], threads: int, seconds: float = 3.0
) -> tuple[float, list[float], list[PairedRatio]]:
    """p50 milliseconds of ``base`` and of each candidate, all run interleaved for about ``seconds``,
    and each candidate's paired ratio to ``base`` (``speedup``): a run pairs with the base's run at the
    same place of the same block, a few runs apart."""
    sessions = [make_session(base, threads=threads)]
    sessions += [make_session(path, threads=threads) for path in candidates]
    calls: list[Callable[[], object]] = [functools.partial(run, s, feed) for s in sessions]
    samples = time_interleaved(calls, runs=_runs_for(calls, seconds), warmup=10)
    speeds = [paired_ratio(samples[0], smp) for smp in samples[1:]]
    return summarize(samples[0], 1).p50_ms, [summarize(smp, 1).p50_ms for smp in samples[1:]], speeds


def _runs_for(calls: Sequence[Callable[[], object]], seconds: float) -> int:
    t0 = time.perf_counter()
    for c in calls:
        c()
    once = max((time.perf_counter() - t0) / len(calls), 1e-6)
    return int(min(max(seconds / (once * len(calls)), 20), 2000))
