"""Evaluating one candidate: build its recipe, score it against FP32 on the eval data, time it.

The build runs in a guarded subprocess (memory and time limits, ``guarding``); a candidate that
fails in any way gets the verdict ``failed`` or ``skipped`` and the search goes on.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import DataError, QuantizationError, first_line
from edgekit.optimize import fidelity as fid
from edgekit.optimize.building import build_candidate
from edgekit.optimize.datasets import Dataset
from edgekit.optimize.guarding import SearchTimeout, run_limited
from edgekit.optimize.judging import judge_candidate
from edgekit.optimize.measuring import model_outputs, time_pair
from edgekit.optimize.results import CandidateResult

__all__ = ["SearchContext", "evaluate_candidate"]


@dataclass
class SearchContext:
    """What every candidate is built from and measured against: the prepared FP32 model, its data
    and its own figures."""

    prepared: Path
    work: Path
    calib: Dataset
    evals: Dataset
    labels: np.ndarray | None
    metric: fid.Metric
    budget: fid.Budget
    reference: list[list[np.ndarray]]
    fp32: fid.Fidelity
    feed: dict[str, np.ndarray]
    batch: int
    stride: int | None = None


def evaluate_candidate(
    result: CandidateResult, ctx: SearchContext, out: Path, *, threads: int, timeout: float | None,
    timed: bool = True,
) -> None:
    """Build ``result.recipe`` into ``out`` and record its size, fidelity, latency and verdict on ``result``.
    ``timed=False``: a build for another platform, judged on fidelity only (this CPU's timing says
    nothing about that one's)."""
    recipe = result.recipe
    try:
        path = run_limited(
            recipe.name, build_candidate, recipe, ctx.prepared, out, ctx.calib, ctx.work, ctx.stride, timeout=timeout
        )
        result.path, result.size_bytes = path, path.stat().st_size
        outputs = model_outputs(path, ctx.evals, ctx.batch, threads)
        result.fidelity = fid.evaluate(ctx.metric, ctx.reference, outputs, ctx.labels)
        if timed:
            # The first timing only warms up; the second is the one that counts.
            time_pair(ctx.prepared, path, ctx.feed, threads, seconds=1.0)
            _base_ms, cand_ms, speed = time_pair(ctx.prepared, path, ctx.feed, threads, seconds=1.0)
            result.latency_ms, result.latency_ratio, result.speed = cand_ms, speed.ratio, speed
        result.verdict, result.reason = judge_candidate(
            ctx.metric, ctx.budget, result.fidelity.score, ctx.fp32.score, result.latency_ratio, result.speed
        )
    except SearchTimeout:
        result.verdict, result.reason = "skipped", "stopped at the time budget"
    except (QuantizationError, DataError) as exc:
        result.verdict, result.reason = "failed", exc.one_line()
    except Exception as exc:  # a broken candidate must not end the search
        result.verdict, result.reason = "failed", f"{type(exc).__name__}: {first_line(exc, 200)}"
