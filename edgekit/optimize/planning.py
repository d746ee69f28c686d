"""Which candidates the search tries, in which order, and with how much calibration data.

Pure decisions from what the model holds and what was measured so far; the search in
``quantizing`` runs them. The recipes themselves and their order are ``recipes.auto_recipes``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
import onnx

from edgekit.errors import QuantizationError
from edgekit.optimize.graphs import COMPUTE_OPS
from edgekit.optimize.recipes import Recipe, Technique, auto_recipes
from edgekit.optimize.results import CandidateResult
from edgekit.optimize.subgraphs import KeptSubgraph

__all__ = [
    "CALIBRATION_MEMORY",
    "MIN_STEP_SECONDS",
    "activation_bytes",
    "calibration_plan",
    "escalation_base",
    "escalation_ends",
    "escalation_rounds",
    "mixed_precision_reserve",
    "nothing_to_quantize",
    "ranking_samples",
    "search_recipes",
]

# A step with less time than this left is not started.
MIN_STEP_SECONDS = 10.0

# onnxruntime's calibrators keep every intermediate tensor of every calibration sample in memory
# (histogram methods twice over): bound what one calibration may hold.
CALIBRATION_MEMORY = 3 * 2**30


def search_recipes(
    ops: Mapping[str, int],
    *,
    method: Literal["auto", "dynamic", "static"],
    fmt: Literal["qdq", "qoperator"],
    per_channel: bool | None,
    activation_type: Literal["uint8", "int8"],
    reduce_range: bool | None,
    exclude_nodes: tuple[str, ...],
    techniques: tuple[Technique, ...] | None = None,
) -> list[Recipe]:
    """The recipes to try on a model with op histogram ``ops``, in order, with the nodes the user
    keeps in FP32; none at all is an error."""
    recipes = auto_recipes(
        has_matmul=any(ops.get(o) for o in ("MatMul", "Gemm")),
        has_conv=any(ops.get(o) for o in ("Conv", "ConvTranspose")),
        fmt=fmt,
        per_channel=per_channel,
        activation_type=activation_type,
        reduce_range=reduce_range,
        method=method,
        techniques=techniques,
    )
    if exclude_nodes:
        recipes = [r.with_exclusions(exclude_nodes, "--exclude-nodes") for r in recipes]
    if not recipes:
        raise QuantizationError(
            f"no {method} recipe applies to this model (no MatMul/Gemm to quantize dynamically)",
            hint="use --method static",
        )
    return recipes


def nothing_to_quantize(graph: onnx.GraphProto, kept: Sequence[KeptSubgraph]) -> str | None:
    """Why no recipe can help, when every compute op sits in a control-flow body that stays
    FP32 (a model whose whole network hangs on an ``If`` over its sample rate); else None."""
    if any(node.op_type in COMPUTE_OPS for node in graph.node):
        return None
    inside = sum(len(k.compute_inside) for k in kept)
    if not inside:
        return None
    where = ", ".join(f"{k.op_type} {k.node!r}" for k in kept if k.compute_inside)
    return (
        f"kept FP32: all {inside} compute ops are inside control flow left in FP32 ({where}), "
        "nothing else to quantize"
    )


def mixed_precision_reserve(budget_time: float | None, mixed_precision: bool) -> float:
    """Seconds of the time budget the first pass leaves for mixed precision, which needs a recipe
    to start from: a third of it."""
    return budget_time / 3 if budget_time and mixed_precision else 0.0


def activation_bytes(model: onnx.ModelProto) -> int:
    """Bytes of all intermediate tensors for one sample, from the shapes inference recorded."""
    total = 0
    for value in model.graph.value_info:
        dims = value.type.tensor_type.shape.dim
        if dims and all(d.HasField("dim_value") for d in dims):
            total += int(np.prod([d.dim_value for d in dims])) * 4
    return total


def calibration_plan(recipe: Recipe, available: int, per_sample: int) -> tuple[int, int | None]:
    """(samples, stride): calibrate on ``samples`` in strides of ``stride`` samples, each stride's
    ranges merged into the last, so memory stays bounded however many samples there are."""
    if recipe.method == "dynamic" or per_sample == 0:
        return available, None
    factor = 1 if recipe.calibration == "minmax" else 3
    stride = max(1, min(available, CALIBRATION_MEMORY // (per_sample * factor)))
    if stride >= available:
        return available, None
    return (available // stride) * stride, stride


def ranking_samples(per_sample: int) -> int:
    """Calibration samples the per-node error ranking runs on (it holds two models' activations)."""
    return max(1, min(4, CALIBRATION_MEMORY // max(1, 2 * per_sample)))


def escalation_base(
    results: Sequence[CandidateResult], higher_is_better: bool, *, timed: bool = True
) -> CandidateResult | None:
    """The candidate mixed precision starts from: the most faithful static one that was faster
    than FP32 (``timed=False``, a build for another platform: the most faithful static one), or None."""
    tried = [
        r
        for r in results
        if r.fidelity is not None
        and r.recipe.method == "static"
        and r.path is not None
        and (not timed or (r.latency_ratio is not None and r.latency_ratio < 1.0))
    ]
    if not tried:
        return None
    return max(tried, key=lambda r: r.fidelity.score if higher_is_better else -r.fidelity.score)  # type: ignore[union-attr]


def escalation_rounds(head: tuple[str, ...], ranked: Sequence[str]) -> list[tuple[tuple[str, ...], str]]:
    """(nodes kept in FP32, note) per round: first the model's head (the last compute ops and
    everything after them) as one subgraph, then the nodes that add the most error (``ranked``,
    worst first), doubling each round."""
    rounds = [(head, "the head (last 3 compute ops and after) kept in FP32")]
    k = 1
    while k <= len(ranked):
        rounds.append((tuple(ranked[:k]), f"{k} nodes adding the most error kept in FP32"))
        k *= 2
    return rounds


def escalation_ends(result: CandidateResult, nodes: tuple[str, ...], head: tuple[str, ...]) -> bool:
    """Whether mixed precision stops after this round: the budget holds, or keeping more in FP32
    would only get slower (the head round aside, which is a different cut, not a bigger one)."""
    if result.verdict == "in budget":
        return True
    return result.latency_ratio is not None and result.latency_ratio >= 1.0 and nodes != head
