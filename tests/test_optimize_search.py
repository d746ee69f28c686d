"""The pure decisions of the quantization search: which candidates, in which order, which one wins."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import DataError
from edgekit.optimize import fidelity as fid
from edgekit.optimize.datasets import Dataset
from edgekit.optimize.inspecting import ModelInfo, TensorInfo
from edgekit.optimize.judging import FASTER_MARGIN, final_choice, finalists, judge_candidate, kept_fp32_reason
from edgekit.optimize.planning import (
    CALIBRATION_MEMORY,
    calibration_plan,
    escalation_base,
    escalation_ends,
    escalation_rounds,
    mixed_precision_reserve,
    ranking_samples,
    search_recipes,
)
from edgekit.optimize.recipes import Recipe, auto_recipes
from edgekit.optimize.results import CandidateResult
from edgekit.optimize.shapes import shapes_to_fix
from edgekit.optimize.speedup import ratio_interval

COSINE = fid.parse_metric("cosine")
FLOOR = fid.parse_budget("0.99", COSINE)
STATIC = Recipe("static")


def result(verdict: str, ratio: float | None, score: float | None = None, recipe: Recipe = STATIC,
           built: bool = True) -> CandidateResult:
    fidelity = None if score is None else fid.Fidelity("cosine", score, 1.0, score, 0.0, None)
    return CandidateResult(recipe, verdict=verdict, latency_ratio=ratio, fidelity=fidelity,
                           path=Path("candidate.onnx") if built else None)


def auto_search(ops: dict[str, int], exclude_nodes: tuple[str, ...] = ()) -> list[Recipe]:
    return search_recipes(ops, method="auto", fmt="qdq", per_channel=None, activation_type="uint8",
                          reduce_range=None, exclude_nodes=exclude_nodes)


def test_search_recipes_follow_auto_order_and_carry_user_exclusions() -> None:
    plain = auto_search({"Conv": 4, "MatMul": 1})
    assert plain == auto_recipes(has_matmul=True, has_conv=True)
    assert auto_search({"Conv": 4}) == auto_recipes(has_matmul=False, has_conv=True)
    assert auto_search({"Gemm": 1}) == auto_recipes(has_matmul=True, has_conv=False)
    kept = auto_search({"Conv": 4, "MatMul": 1}, exclude_nodes=("head",))
    assert [r.name for r in kept] == [r.name + " +1 FP32 nodes" for r in plain]
    assert {r.note for r in kept} == {"--exclude-nodes"}


def test_calibration_plan_bounds_memory_by_strides() -> None:
    assert calibration_plan(Recipe("dynamic"), 100, 10**9) == (100, None)
    assert calibration_plan(STATIC, 100, 0) == (100, None)
    assert calibration_plan(STATIC, 100, 1000) == (100, None)  # everything fits
    per_sample = CALIBRATION_MEMORY // 30
    assert calibration_plan(STATIC, 100, per_sample) == (90, 30)  # whole strides only
    assert calibration_plan(Recipe("static", calibration="entropy"), 100, per_sample) == (100, 10)  # histograms: 3x
    assert calibration_plan(STATIC, 100, CALIBRATION_MEMORY * 2) == (100, 1)


def test_time_reserve_and_ranking_samples() -> None:
    assert mixed_precision_reserve(480.0, True) == 160.0
    assert mixed_precision_reserve(480.0, False) == 0.0
    assert mixed_precision_reserve(None, True) == 0.0
    assert ranking_samples(0) == 4
    assert ranking_samples(CALIBRATION_MEMORY // 4) == 2
    assert ranking_samples(CALIBRATION_MEMORY) == 1


def test_escalation_starts_from_the_most_faithful_faster_static_candidate() -> None:
    dynamic = result("in budget", 0.5, 0.999, recipe=Recipe("dynamic"))
    slower = result("slower", 1.1, 0.999)
    unbuilt = result("failed", 0.5, 0.999, built=False)
    weak, strong = result("over budget", 0.6, 0.95), result("over budget", 0.8, 0.98)
    assert escalation_base([dynamic, slower, unbuilt, weak, strong], higher_is_better=True) is strong
    assert escalation_base([dynamic, slower, unbuilt, weak, strong], higher_is_better=False) is weak
    assert escalation_base([dynamic, slower, unbuilt], higher_is_better=True) is None


def test_escalation_rounds_head_first_then_doubling() -> None:
    head = ("tail1", "tail2")
    rounds = escalation_rounds(head, ["a", "b", "c", "d", "e"])
    assert [nodes for nodes, _ in rounds] == [head, ("a",), ("a", "b"), ("a", "b", "c", "d")]
    assert rounds[0][1] == "the head (last 3 compute ops and after) kept in FP32"
    assert rounds[2][1] == "2 nodes adding the most error kept in FP32"
    assert escalation_rounds(head, []) == [(head, rounds[0][1])]


def test_escalation_ends_in_budget_or_when_more_fp32_only_gets_slower() -> None:
    head = ("t",)
    assert escalation_ends(result("in budget", 0.7), ("a",), head)
    assert escalation_ends(result("slower", 1.0), ("a",), head)
    assert not escalation_ends(result("slower", 1.2), head, head)  # the head is another cut, not a bigger one
    assert not escalation_ends(result("over budget", 0.7), ("a",), head)
    assert not escalation_ends(result("failed", None), ("a",), head)


def test_judge_candidate() -> None:
    assert judge_candidate(COSINE, FLOOR, 0.98, 1.0, 0.5) == (
        "over budget", "cosine 0.98 vs FP32 1 misses cosine ≥ 0.99")
    assert judge_candidate(COSINE, FLOOR, 0.995, 1.0, 1.0) == ("slower", "1.00x FP32 latency")
    assert judge_candidate(COSINE, FLOOR, 0.995, 1.0, 0.6) == ("in budget", "")
    slow = ratio_interval([1.1] * 10 + [1.2] * 10)
    assert judge_candidate(COSINE, FLOOR, 0.995, 1.0, slow.ratio, slow) == (
        "slower", "1.15x (95% CI 1.10-1.20x, sign test, 20 paired rounds) FP32 latency")


def test_finalists_are_the_three_fastest_in_budget() -> None:
    rs = [result("in budget", r) for r in (0.9, 0.5, 0.7, 0.6)] + [result("over budget", 0.1)]
    assert [r.latency_ratio for r in finalists(rs)] == [0.5, 0.6, 0.7]
    assert finalists([result("slower", 1.2)]) == []


@pytest.mark.parametrize(("verdicts", "reason"), [
    (["slower", "failed"], "kept FP32: every candidate inside the budget was slower than FP32"),
    (["over budget", "skipped"], "kept FP32: no candidate met cosine ≥ 0.99"),
    (["over budget", "slower"], "kept FP32: candidates were either outside cosine ≥ 0.99 or not faster than FP32"),
    (["failed", "skipped"], "kept FP32: no candidate could be built"),
])
def test_kept_fp32_reason(verdicts: list[str], reason: str) -> None:
    assert kept_fp32_reason([result(v, None) for v in verdicts], COSINE, FLOOR) == reason


def test_final_choice_needs_a_clear_win() -> None:
    fast, faster = result("in budget", 0.8, 0.995), result("in budget", 0.6, 0.993)
    winner, reason = final_choice([fast, faster], COSINE, FLOOR, 1.0)
    assert winner is faster
    assert reason == "fastest candidate inside cosine ≥ 0.99: 0.60x FP32 latency, cosine 0.993 (FP32 1)"
    assert fast.verdict == faster.verdict == "in budget"  # verdicts are the caller's to record
    noise = result("in budget", FASTER_MARGIN + 0.01, 0.995)
    assert final_choice([noise], COSINE, FLOOR, 1.0) == (
        None, "kept FP32: no in-budget candidate was clearly faster than FP32 in the final timing (best 0.98x)")
    assert final_choice([result("in budget", FASTER_MARGIN, 0.995)], COSINE, FLOOR, 1.0)[0] is not None


def _timed(ratios: list[float], score: float = 0.995) -> CandidateResult:
    r = result("in budget", None, score)
    r.speed = ratio_interval(ratios)
    r.latency_ratio = r.speed.ratio
    return r


def test_final_choice_claims_faster_only_when_the_paired_test_shows_it() -> None:
    rng = random.Random(5)
    # a median of 0.90x, but rounds spread from 0.5x to 1.3x: 30 rounds do not show it under 1.0
    wide = _timed([0.9] + [rng.uniform(0.5, 1.3) for _ in range(29)])
    winner, reason = final_choice([wide], COSINE, FLOOR, 1.0)
    assert wide.speed is not None and wide.speed.high is not None and wide.speed.high >= 1.0
    assert winner is None and reason.startswith("kept FP32: no in-budget candidate was shown faster than FP32")
    assert "95% CI" in reason and "sign test, 30 paired rounds" in reason
    # the same median with tight rounds is shown, and the reason states the test
    tight = _timed([rng.uniform(0.85, 0.95) for _ in range(30)])
    winner, reason = final_choice([tight], COSINE, FLOOR, 1.0)
    assert winner is tight and tight.speed is not None and tight.speed.faster()
    assert "x (95% CI 0.8" in reason and "sign test, 30 paired rounds) FP32 latency" in reason
    # shown faster, but by less than the margin: not worth INT8's risk
    marginal = _timed([rng.uniform(0.975, 0.985) for _ in range(200)])
    assert marginal.speed is not None and marginal.speed.faster()
    assert final_choice([marginal], COSINE, FLOOR, 1.0)[0] is None


def test_shapes_to_fix() -> None:
    inputs = (TensorInfo("batch_only", "float32", ("N", 3, 8, 8)), TensorInfo("image", "float32", (1, 3, "h", "w")),
              TensorInfo("fixed", "float32", (1, 4)))
    info = ModelInfo("m.onnx", 1, 8, 13, {}, "", inputs, (), 0, 0, (), 0)
    data = Dataset({"batch_only": np.zeros((2, 3, 8, 8)), "image": np.zeros((2, 3, 16, 24)),
                    "fixed": np.zeros((2, 4))}, "test")
    assert shapes_to_fix(info, {}, data) == {"image": (1, 3, 16, 24)}
    assert shapes_to_fix(info, {"batch_only": (4, 3, 8, 8)}, data) == {"batch_only": (4, 3, 8, 8),
                                                                     "image": (1, 3, 16, 24)}
    with pytest.raises(DataError, match="'image' has symbolic dimensions") as err:
        shapes_to_fix(info, {}, None)
    assert err.value.hint == "pass --input-shape image=D1,D2,... or calibration data"
