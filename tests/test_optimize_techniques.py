"""The techniques beyond onnxruntime's quantizers, each checked on small onnx.helper models run by
onnxruntime: folding and CLE leave FP32 outputs as they were, bias correction takes the weights'
mean error out on data it never saw, and auto tries them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgekit.errors import ConfigError
from edgekit.optimize.bias_correction import bias_plan, corrected_bias, weight_shift
from edgekit.optimize.building import build_candidate
from edgekit.optimize.datasets import Dataset
from edgekit.optimize.equalizing import equalization_pairs, equalize
from edgekit.optimize.folding import fold_conv_affine
from edgekit.optimize.recipes import Recipe, auto_recipes

RNG = np.random.default_rng(3)


def conv(name: str, x: str, y: str, w: np.ndarray, b: np.ndarray, group: int = 1) -> tuple[onnx.NodeProto, list]:
    k = w.shape[-1]
    node = helper.make_node("Conv", [x, f"{name}_w", f"{name}_b"], [y], name=name, group=group,
                            pads=[k // 2] * 4, kernel_shape=[k, k])
    return node, [numpy_helper.from_array(w.astype(np.float32), f"{name}_w"),
                  numpy_helper.from_array(b.astype(np.float32), f"{name}_b")]


def model(nodes: list[onnx.NodeProto], inits: list, channels: int, out_channels: int) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, channels, 12, 12])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, out_channels, 12, 12])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])


def outputs(m: onnx.ModelProto, xs: np.ndarray) -> np.ndarray:
    s = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
    return np.concatenate([s.run(None, {"x": x[None]})[0] for x in xs])


def uneven(shape: tuple[int, ...], axis: int) -> np.ndarray:
    """Weights whose channels along ``axis`` differ in range by up to 1000x, as CLE fixes."""
    spread = np.geomspace(0.01, 10, shape[axis])
    return RNG.standard_normal(shape) * np.expand_dims(spread, [i for i in range(len(shape)) if i != axis])


def chain(mid: str = "Relu") -> onnx.ModelProto:
    """Conv(3→8) → [mid] → depthwise Conv(8) → Conv(8→4) directly."""
    n1, i1 = conv("a", "x", "a_out", uneven((8, 3, 3, 3), 0), RNG.standard_normal(8))
    n2, i2 = conv("dw", "m_out", "dw_out", RNG.standard_normal((8, 1, 3, 3)), RNG.standard_normal(8), group=8)
    n3, i3 = conv("c", "dw_out", "y", RNG.standard_normal((4, 8, 1, 1)), RNG.standard_normal(4))
    middle = helper.make_node(mid, ["a_out"], ["m_out"], name="mid")
    return model([n1, middle, n2, n3], i1 + i2 + i3, 3, 4)


def test_cle_leaves_fp32_outputs_unchanged_and_matches_ranges() -> None:
    m = chain("Relu")
    xs = RNG.standard_normal((6, 3, 12, 12)).astype(np.float32)
    eq, pairs = equalize(m)
    assert pairs == ["a->dw", "dw->c"]
    ref, got = outputs(m, xs), outputs(eq, xs)
    assert np.abs(got - ref).max() <= 1e-5 * max(1.0, float(np.abs(ref).max()))

    def spread(m: onnx.ModelProto) -> float:
        """How far apart a's output channels are in weight range (largest / smallest)."""
        w = next(numpy_helper.to_array(i) for i in m.graph.initializer if i.name == "a_w")
        ranges = np.abs(w).reshape(8, -1).max(1)
        return float(ranges.max() / ranges.min())

    # a's channels spanned about 1000x in range: per-tensor activations after it lose the small ones
    assert spread(m) > 300
    assert spread(eq) < spread(m) / 10


def test_cle_leaves_pairs_across_a_non_homogeneous_activation_alone() -> None:
    # HardSigmoid(x / s) != HardSigmoid(x) / s: equalizing across it would change the model
    m = chain("HardSigmoid")
    assert [(a.name, b.name) for a, b in equalization_pairs(m)] == [("dw", "c")]
    xs = RNG.standard_normal((2, 3, 12, 12)).astype(np.float32)
    eq, _ = equalize(m)
    np.testing.assert_allclose(outputs(eq, xs), outputs(m, xs), rtol=1e-5, atol=1e-5)


def test_folding_a_scale_and_shift_into_the_conv_is_exact() -> None:
    n1, i1 = conv("a", "x", "a_out", RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4))
    mul = helper.make_node("Mul", ["a_out", "s"], ["m_out"], name="scale")
    add = helper.make_node("Add", ["c", "m_out"], ["y"], name="shift")  # the constant first, too
    consts = [numpy_helper.from_array(np.array([1.9], np.float32), "s"),
              numpy_helper.from_array(RNG.standard_normal((4, 1, 1)).astype(np.float32), "c")]
    m = model([n1, mul, add], i1 + consts, 3, 4)
    folded, removed = fold_conv_affine(m)
    assert removed == ["scale", "shift"]
    assert [n.op_type for n in folded.graph.node] == ["Conv"]
    xs = RNG.standard_normal((3, 3, 12, 12)).astype(np.float32)
    np.testing.assert_allclose(outputs(folded, xs), outputs(m, xs), rtol=1e-5, atol=1e-5)


def test_a_tensor_a_control_flow_body_reads_is_neither_folded_nor_rescaled() -> None:
    n1, i1 = conv("a", "x", "a_out", RNG.standard_normal((4, 3, 3, 3)), RNG.standard_normal(4))
    mul = helper.make_node("Mul", ["a_out", "s"], ["y"], name="scale")
    branch = helper.make_graph([helper.make_node("Identity", ["a_out"], ["z"])], "b", [],
                               [helper.make_tensor_value_info("z", TensorProto.FLOAT, None)])
    cond = helper.make_node("If", ["flag"], ["picked"], name="if", then_branch=branch, else_branch=branch)
    consts = [numpy_helper.from_array(np.array([1.9], np.float32), "s"),
              numpy_helper.from_array(np.array(True), "flag")]
    m = model([n1, mul, cond], i1 + consts, 3, 4)
    m.graph.output.append(helper.make_tensor_value_info("picked", TensorProto.FLOAT, None))
    folded, removed = fold_conv_affine(m)
    assert removed == [] and [n.op_type for n in folded.graph.node] == ["Conv", "Mul", "If"]
    n2, i2 = conv("b", "a_out", "y2", RNG.standard_normal((4, 4, 1, 1)), RNG.standard_normal(4))
    m.graph.node.append(n2)
    m.graph.initializer.extend(i2)
    m.graph.node.remove(mul)
    assert equalization_pairs(m) == []


def test_weight_shift_per_group_and_corrected_bias() -> None:
    fp32 = np.zeros((4, 2, 1, 1))
    quantized = fp32.copy()
    quantized[0, 1] = 0.5  # output 0 reads input 1 (group 0) half a unit too strongly
    quantized[3, 0] = -1.0  # output 3 reads input 2 (group 1, its first channel)
    means = np.array([10.0, 2.0, 3.0, 7.0])
    np.testing.assert_allclose(weight_shift(fp32, quantized, means, group=2), [1.0, 0, 0, -3.0])
    np.testing.assert_array_equal(corrected_bias(np.array([100, 5], np.int32), np.array([0.5, 0.1]),
                                                 np.array([1.0, -0.2])), [98, 7])


def test_bias_correction_reduces_the_mean_error_on_held_out_data(tmp_path: Path) -> None:
    # Weights with one large tap per output channel: int8's step (max/127) then rounds the many
    # small ones all the same way, a mean shift on inputs whose mean is far from 0.
    w = np.full((6, 8, 3, 3), 0.0035) * RNG.choice([1.0, 0.6], (6, 8, 3, 3))
    w[:, 0, 1, 1] = 1.0
    n1, i1 = conv("a", "x", "y", w, np.zeros(6))
    fp32 = tmp_path / "fp32.onnx"
    onnx.save(model([n1], i1, 8, 6), str(fp32))
    data = (np.abs(RNG.standard_normal((40, 8, 12, 12))) + 2.0).astype(np.float32)
    calib, held_out = Dataset({"x": data[:16]}, "calib"), data[16:]
    plain = build_candidate(Recipe("static"), fp32, tmp_path / "plain.onnx", calib, tmp_path)
    fixed = build_candidate(Recipe("static", techniques=("bias-correction",)), fp32, tmp_path / "bc.onnx", calib,
                            tmp_path)
    assert [s.node for s in bias_plan(onnx.load(str(plain)), onnx.load(str(fp32)))] == ["a"]
    ref = outputs(onnx.load(str(fp32)), held_out)

    def mean_error(path: Path) -> float:
        return float(np.abs((outputs(onnx.load(str(path)), held_out) - ref).mean(axis=(0, 2, 3))).mean())

    before, after = mean_error(plain), mean_error(fixed)
    assert before > 0.02  # the shift is there to correct
    assert after < before / 3, (before, after)


def test_auto_tries_the_techniques_and_they_can_be_forced_or_left_out() -> None:
    default = auto_recipes(has_matmul=False, has_conv=True)
    named = [r.name for r in default]
    assert "static QDQ U8S8 per-channel minmax +bias-corrected" in named
    # the first histogram calibration, so a time budget does not cut it off first
    first_histogram = next(i for i, r in enumerate(default) if r.calibration != "minmax")
    assert named[first_histogram] == "static QDQ U8S8 per-channel percentile 99.99 +CLE +bias-corrected"
    assert not any(r.techniques for r in auto_recipes(has_matmul=True, has_conv=False))
    assert not any(r.techniques for r in auto_recipes(has_matmul=False, has_conv=True, techniques=()))
    forced = auto_recipes(has_matmul=True, has_conv=True, techniques=("cle",))
    assert all(r.techniques == ("cle",) for r in forced if r.method == "static")
    assert all(not r.techniques for r in forced if r.method == "dynamic")
    # an equalized model calibrates apart from the plain one
    assert Recipe("static", techniques=("cle",)).calibration_key != Recipe("static").calibration_key
    assert Recipe("static", techniques=("bias-correction",)).calibration_key == Recipe("static").calibration_key


def test_technique_option_parsing() -> None:
    from edgekit.cli.optimize import parse_techniques

    assert parse_techniques(()) is None
    assert parse_techniques(("none",)) == ()
    assert parse_techniques(("cle", "bias-correction", "cle")) == ("cle", "bias-correction")
    with pytest.raises(ConfigError, match="--technique"):
        parse_techniques(("none", "cle"))
