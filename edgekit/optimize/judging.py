"""Verdicts of the search: is a candidate inside the accuracy budget and faster, which one wins.

Pure: the figures come measured (``evaluating``, ``measuring``); these functions only decide.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from edgekit.optimize import fidelity as fid
from edgekit.optimize.results import CandidateResult
from edgekit.optimize.speedup import PairedRatio

__all__ = ["FASTER_MARGIN", "final_choice", "finalists", "judge_candidate", "kept_fp32_reason", "preferred_choice"]

# A candidate must beat FP32 by this margin in the final side-by-side timing: a 1-2 % "win" is
# within this machine's noise and not worth INT8's risk.
FASTER_MARGIN = 0.97


def _latency(result: CandidateResult) -> float:
    return result.latency_ratio or 9.0


def judge_candidate(
    metric: fid.Metric, budget: fid.Budget, score: float, fp32_score: float, latency_ratio: float | None,
    speed: PairedRatio | None = None,
) -> tuple[str, str]:
    """(verdict, reason) of one measured candidate: over budget, slower, or in budget
    (``latency_ratio`` None: not timed, a build for another platform). "slower" is the search's
    screen (not faster in a short paired timing, ``speed`` when given); the claim that the chosen
    build is faster is tested in the final timing (``final_choice``)."""
    if not budget.passes(metric, score, fp32_score):
        return "over budget", f"{metric.name} {score:.4g} vs FP32 {fp32_score:.4g} misses {budget.describe(metric)}"
    if latency_ratio is None:
        return "in budget", "latency not measured here"
    if latency_ratio >= 1.0:
        return "slower", f"{speed.describe() if speed else f'{latency_ratio:.2f}x'} FP32 latency"
    return "in budget", ""


def finalists(results: Iterable[CandidateResult]) -> list[CandidateResult]:
    """The three fastest in-budget candidates, fastest first: they are re-timed side by side."""
    return sorted((r for r in results if r.verdict == "in budget"), key=_latency)[:3]


def kept_fp32_reason(results: Sequence[CandidateResult], metric: fid.Metric, budget: fid.Budget) -> str:
    """Why FP32 stays when no candidate made it to the final timing."""
    over = [r for r in results if r.verdict == "over budget"]
    slower = [r for r in results if r.verdict == "slower"]
    if slower and not over:
        return "kept FP32: every candidate inside the budget was slower than FP32"
    if over and not slower:
        return f"kept FP32: no candidate met {budget.describe(metric)}"
    if over or slower:
        return f"kept FP32: candidates were either outside {budget.describe(metric)} or not faster than FP32"
    return "kept FP32: no candidate could be built"


def final_choice(
    timed: Sequence[CandidateResult], metric: fid.Metric, budget: fid.Budget, fp32_score: float
) -> tuple[CandidateResult | None, str]:
    """The winner of the final timing and why; None keeps FP32 unless the fastest is both shown
    faster (its paired interval, ``speedup``, lies wholly under 1.0) and clearly so (its ratio at most
    ``FASTER_MARGIN``). A candidate timed without pairing (``speed`` None) has only the margin."""
    winner = sorted(timed, key=_latency)[0]
    speed = winner.speed
    told = speed.describe() if speed is not None else f"{_latency(winner):.2f}x"
    if speed is not None and not speed.faster(1.0):
        return None, f"kept FP32: no in-budget candidate was shown faster than FP32 in the final timing (best {told})"
    if _latency(winner) > FASTER_MARGIN:
        return None, f"kept FP32: no in-budget candidate was clearly faster than FP32 in the final timing (best {told})"
    assert winner.fidelity is not None
    return winner, (
        f"fastest candidate inside {budget.describe(metric)}: "
        f"{told} FP32 latency, {metric.name} {winner.fidelity.score:.4g} "
        f"(FP32 {fp32_score:.4g})"
    )


def preferred_choice(
    results: Sequence[CandidateResult], metric: fid.Metric, budget: fid.Budget, fp32_score: float, platform: str
) -> tuple[CandidateResult | None, str]:
    """For a platform whose latency cannot be measured here: the first in-budget candidate in the
    order tried, which is its CPU family's preference (``platforms``), and why; None keeps FP32."""
    winner = next((r for r in results if r.verdict == "in budget"), None)
    if winner is None:
        return None, kept_fp32_reason(results, metric, budget)
    assert winner.fidelity is not None
    return winner, (
        f"the recipe {platform} prefers inside {budget.describe(metric)}: {metric.name} "
        f"{winner.fidelity.score:.4g} (FP32 {fp32_score:.4g}); latency not measured on {platform}; "
        "the device's probe checks it at load"
    )
