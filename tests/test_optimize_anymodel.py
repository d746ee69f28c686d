"""``quantize`` on a model shaped like a streaming audio model: an audio chunk ``[batch,seq]``, an
RNN state ``[2,batch,H]`` batched on axis 1, a rank-0 int64 sample rate, and ``If`` subgraphs
(one with a constant condition, one hinging on the sample rate). Built with onnx.helper; run by
the real onnxruntime and its quantizers."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli import cli
from edgekit.errors import DataError
from edgekit.optimize.building import build_candidate
from edgekit.optimize.datasets import load_dataset, synthetic
from edgekit.optimize.inspecting import TensorInfo, inspect_model
from edgekit.optimize.preparing import pin_shapes, prepare
from edgekit.optimize.recipes import Recipe
from edgekit.optimize.shapes import batch_axes, fix_input_shapes, shapes_to_fix
from edgekit.optimize.subgraphs import fold_constant_ifs, kept_subgraphs, unvarying_scalars

SEQ, H, CHANNELS = 256, 64, 16
AUDIO = TensorInfo("audio", "float32", ("batch", SEQ))
STATE = TensorInfo("state", "float32", (2, "batch", H))
SR = TensorInfo("sr", "int64", ())


def _branch(name: str, nodes: list[onnx.NodeProto], out: str) -> onnx.GraphProto:
    return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(out, TensorProto.FLOAT, None)])


def build_streaming_model(path: Path, *, with_sr: bool = True) -> Path:
    """audio → Conv (inside If(sr == 16000): stride 4, else the same halved) → MatMul projection
    (inside If(2 > 1), a constant condition) + MatMul of the state → tanh → new state and a
    speech probability."""
    rng = np.random.default_rng(0)
    init = [
        numpy_helper.from_array((rng.standard_normal((CHANNELS, 1, 9)) * 0.3).astype(np.float32), "conv_w"),
        numpy_helper.from_array((rng.standard_normal((CHANNELS * SEQ // 4, H)) * 0.05).astype(np.float32), "proj_w"),
        numpy_helper.from_array((rng.standard_normal((H, H)) * 0.1).astype(np.float32), "state_w"),
        numpy_helper.from_array((rng.standard_normal((H, 1)) * 0.2).astype(np.float32), "head_w"),
        numpy_helper.from_array(np.array(16000, np.int64), "sr16k"),
        numpy_helper.from_array(np.array(1, np.int64), "one"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array([0], np.int64), "axis0"),
        numpy_helper.from_array(np.float32(0.5), "half"),
    ]
    conv = {"strides": [4], "pads": [4, 4]}
    rate_then = _branch("rate_then", [helper.make_node("Conv", ["a3", "conv_w"], ["t_out"], **conv)], "t_out")
    rate_else = _branch(
        "rate_else",
        [
            helper.make_node("Conv", ["a3", "conv_w"], ["e_c"], **conv),
            helper.make_node("Mul", ["e_c", "half"], ["e_out"]),
        ],
        "e_out",
    )
    proj_then = _branch("proj_then", [helper.make_node("MatMul", ["flat", "proj_w"], ["p_then"])], "p_then")
    proj_else = _branch(
        "proj_else",
        [
            helper.make_node("MatMul", ["flat", "proj_w"], ["p_mm"]),
            helper.make_node("Mul", ["p_mm", "half"], ["p_else"]),
        ],
        "p_else",
    )
    if with_sr:
        rate = [
            helper.make_node("Equal", ["sr", "sr16k"], ["is16k"]),
            helper.make_node(
                "If", ["is16k"], ["feat"], then_branch=rate_then, else_branch=rate_else, name="rate_switch"
            ),
        ]
    else:
        rate = [helper.make_node("Conv", ["a3", "conv_w"], ["feat"], name="conv", **conv)]
    nodes = [
        helper.make_node("Unsqueeze", ["audio", "axis1"], ["a3"]),
        *rate,
        helper.make_node("Relu", ["feat"], ["feat_r"]),
        helper.make_node("Flatten", ["feat_r"], ["flat"], axis=1),
        helper.make_node("Constant", [], ["two"], value=numpy_helper.from_array(np.array(2, np.int64))),
        helper.make_node("Greater", ["two", "one"], ["use_proj"]),
        helper.make_node(
            "If", ["use_proj"], ["proj"], then_branch=proj_then, else_branch=proj_else, name="proj_switch"
        ),
        helper.make_node("Gather", ["state", "axis0"], ["s0"], axis=0),
        helper.make_node("Squeeze", ["s0", "axis0"], ["s0b"]),
        helper.make_node("MatMul", ["s0b", "state_w"], ["rec"], name="recurrent"),
        helper.make_node("Add", ["proj", "rec"], ["pre"]),
        helper.make_node("Tanh", ["pre"], ["hnew"]),
        helper.make_node("Unsqueeze", ["hnew", "axis0"], ["h1"]),
        helper.make_node("Concat", ["h1", "h1"], ["state_out"], axis=0),
        helper.make_node("MatMul", ["hnew", "head_w"], ["logit"], name="head"),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    inputs = [
        helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", SEQ]),
        helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "batch", H]),
    ]
    if with_sr:
        inputs.append(helper.make_tensor_value_info("sr", TensorProto.INT64, []))
    outputs = [
        helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1]),
        helper.make_tensor_value_info("state_out", TensorProto.FLOAT, [2, "batch", H]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "vad", inputs, outputs, init), opset_imports=[helper.make_opsetid("", 17)]
    )
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_samples(folder: Path, count: int, *, seed: int = 1, with_sr: bool = True) -> Path:
    """One chunk per file, as a streaming app records them: audio [1,SEQ], state [2,1,H], sr."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        arrays = {
            "audio": rng.standard_normal((1, SEQ)).astype(np.float32),
            "state": (rng.standard_normal((2, 1, H)) * 0.5).astype(np.float32),
        }
        if with_sr:
            arrays["sr"] = np.array(16000, np.int64)
        np.savez(folder / f"{i:03d}.npz", **arrays)  # type: ignore[arg-type]
    return folder


@pytest.fixture(scope="module")
def streaming(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("streaming")
    return {
        "model": build_streaming_model(root / "vad.onnx"),
        "calib": write_samples(root / "calib", 48, seed=1),
        "eval": write_samples(root / "eval", 8, seed=2),
    }


def run_model(path: Path, folder: Path) -> list[list[np.ndarray]]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return [session.run(None, dict(np.load(f))) for f in sorted(folder.glob("*.npz"))]


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


# --- which axis is the batch --------------------------------------------------------------------
def test_batch_axes_follow_the_batch_name_the_model_declares() -> None:
    assert batch_axes([AUDIO, STATE, SR]) == {"audio": 0, "state": 1, "sr": None}
    # Fixed-shape inputs beside symbolic ones: a leading 1 is a batch of one, anything else is not.
    fixed_state = TensorInfo("state", "float32", (2, 1, H))
    assert batch_axes([AUDIO, fixed_state]) == {"audio": 0, "state": None}
    assert batch_axes([AUDIO, TensorInfo("x", "float32", (1, 8))]) == {"audio": 0, "x": 0}
    # A model fixed throughout counts samples on axis 0, as it always did.
    assert batch_axes([TensorInfo("x", "float32", (1, 3, 8, 8))]) == {"x": 0}
    assert batch_axes([TensorInfo("x", "float32", None)]) == {"x": 0}
    # Another name on axis 0 than the batch's: axis 0 stays the batch (symbolic leading dim).
    assert batch_axes([AUDIO, TensorInfo("seq_first", "float32", ("time", "batch", 4))]) == {"audio": 0, "seq_first": 1}


# --- loading samples ----------------------------------------------------------------------------
def test_a_scalar_input_keeps_samples_per_file(streaming: dict[str, Path]) -> None:
    data = load_dataset(streaming["calib"], [AUDIO, STATE, SR])
    assert data.per_file and data.samples == 48 and not data.arrays
    feeds = list(data.batches(32))  # the batch size does not join files
    assert len(feeds) == 48
    assert feeds[0]["sr"].shape == () and feeds[0]["state"].shape == (2, 1, H) and feeds[0]["audio"].shape == (1, SEQ)
    first, rest = data.split(44)
    assert first.samples == 44 and rest.samples == 4
    assert np.array_equal(rest.first()["audio"], np.load(streaming["calib"] / "044.npz")["audio"])
    assert data.sample_shape("state") == (2, 1, H)


def test_a_state_batched_on_axis_1_is_joined_on_axis_1(tmp_path: Path) -> None:
    folder = write_samples(tmp_path / "s", 5, with_sr=False)
    data = load_dataset(folder, [AUDIO, STATE])
    assert not data.per_file and data.samples == 5
    assert data.arrays["state"].shape == (2, 5, H) and data.arrays["audio"].shape == (5, SEQ)
    batches = list(data.batches(2))
    assert [b["state"].shape for b in batches] == [(2, 2, H), (2, 2, H), (2, 1, H)]
    assert np.array_equal(batches[2]["state"], np.load(folder / "004.npz")["state"])
    assert data.sample_shape("state") == (2, 1, H)
    assert data.head(3).arrays["state"].shape == (2, 3, H)


def test_samples_without_their_batch_axis_get_one(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "one.npz", audio=np.zeros(SEQ, np.float32), state=np.zeros((2, H), np.float32), sr=np.int64(8000)
    )
    data = load_dataset(tmp_path / "one.npz", [AUDIO, STATE, SR])
    feed = data.first()
    assert feed["audio"].shape == (1, SEQ) and feed["state"].shape == (2, 1, H) and feed["sr"].shape == ()


def test_files_kept_apart_must_agree_in_shape(tmp_path: Path) -> None:
    np.savez(
        tmp_path / "a.npz", audio=np.zeros((1, SEQ), np.float32), state=np.zeros((2, 1, H), np.float32), sr=np.int64(1)
    )
    np.savez(
        tmp_path / "b.npz", audio=np.zeros((2, SEQ), np.float32), state=np.zeros((2, 2, H), np.float32), sr=np.int64(1)
    )
    with pytest.raises(DataError, match=r"'audio' has shape \[2, 256\].*samples kept per file must agree"):
        load_dataset(tmp_path, [AUDIO, STATE, SR])


@pytest.mark.parametrize(
    "arrays, needle",
    [
        (
            {"audio": np.zeros((1, SEQ), np.float32), "state": np.zeros((2, 3, H), np.float32)},
            "different sample counts [1, 3]",
        ),
        ({"audio": np.zeros((1, SEQ), np.float32), "state": np.zeros((2, 1, 8), np.float32)}, "(axis 2)"),
        ({"audio": np.zeros((1, SEQ), np.float32), "state": np.zeros((H,), np.float32)}, "wants rank 3"),
    ],
)
def test_state_samples_that_do_not_fit(tmp_path: Path, arrays: dict[str, np.ndarray], needle: str) -> None:
    np.savez(tmp_path / "x.npz", sr=np.int64(16000), **arrays)  # type: ignore[arg-type]
    with pytest.raises(DataError) as err:
        load_dataset(tmp_path / "x.npz", [AUDIO, STATE, SR])
    assert needle in str(err.value), err.value


def test_synthetic_data_for_a_scalar_and_a_state() -> None:
    data = synthetic([AUDIO, STATE, SR], {}, samples=3, seed=0)
    assert data.per_file and data.samples == 3
    assert data.first()["sr"].shape == () and data.first()["state"].shape == (2, 1, H)
    batched = synthetic([AUDIO, STATE], {}, samples=3, seed=0)
    assert batched.arrays["state"].shape == (2, 3, H)


def test_only_the_batch_axis_stays_symbolic(streaming: dict[str, Path]) -> None:
    info = inspect_model(streaming["model"])
    data = load_dataset(streaming["calib"], info.inputs)
    assert shapes_to_fix(info, {}, data) == {}
    seq_symbolic = TensorInfo("audio", "float32", ("batch", "seq"))
    info2 = type(info)(**{**info.__dict__, "inputs": (seq_symbolic, STATE, SR)})
    assert shapes_to_fix(info2, {}, data) == {"audio": (1, SEQ)}


# --- control flow -------------------------------------------------------------------------------
def test_an_if_with_a_constant_condition_is_folded_and_the_other_reported(streaming: dict[str, Path]) -> None:
    model = onnx.load(str(streaming["model"]))
    folded, notes = fold_constant_ifs(model)
    onnx.checker.check_model(folded)
    assert notes == ["folded If 'proj_switch': its condition is always True, so its then branch (1 node) was inlined"]
    assert [n.op_type for n in folded.graph.node].count("If") == 1
    kept = kept_subgraphs(folded)
    assert [(k.node, k.op_type, k.depends_on, k.compute_inside) for k in kept] == [
        ("rate_switch", "If", ("sr",), ("Conv", "Conv"))
    ]
    assert "depends on input(s) 'sr'" in kept[0].line()
    # Folding changes no result (to rounding: onnxruntime fuses the inlined MatMul with its Add).
    feed = dict(np.load(streaming["eval"] / "000.npz"))
    for sr in (16000, 8000):
        feed["sr"] = np.array(sr, np.int64)
        before = ort.InferenceSession(model.SerializeToString()).run(None, feed)
        after = ort.InferenceSession(folded.SerializeToString()).run(None, feed)
        for a, b in zip(before, after, strict=True):
            assert np.allclose(a, b, rtol=1e-5, atol=1e-6)


def test_a_static_candidate_runs_and_stays_close_with_the_if_body_in_fp32(
    streaming: dict[str, Path], tmp_path: Path
) -> None:
    info = inspect_model(streaming["model"])
    prepared = prepare(onnx.load(str(streaming["model"])), {}, tmp_path)
    calib = load_dataset(streaming["calib"], info.inputs)
    recipe = Recipe(method="static", per_channel=True)
    out = build_candidate(recipe, prepared.path, tmp_path / "int8.onnx", calib, tmp_path)
    quantized = onnx.load(str(out))
    ops = [n.op_type for n in quantized.graph.node]
    assert "QuantizeLinear" in ops and "If" in ops
    body_ops = [n.op_type for n in quantized.graph.node if n.op_type == "If" for a in n.attribute for n in a.g.node]
    assert "Conv" in body_ops and "QuantizeLinear" not in body_ops and "DequantizeLinear" not in body_ops
    ref, got = run_model(streaming["model"], streaming["eval"]), run_model(out, streaming["eval"])
    prob_err = np.array([abs(float(r[0][0, 0]) - float(g[0][0, 0])) for r, g in zip(ref, got, strict=True)])
    state_err = max(float(np.abs(r[1] - g[1]).max()) for r, g in zip(ref, got, strict=True))
    # Most samples are within INT8 rounding; a value beyond the calibrated range is clipped.
    assert np.median(prob_err) < 0.01 and prob_err.max() < 0.1 and state_err < 0.1, (prob_err, state_err)


def test_inputs_that_never_vary_in_the_data() -> None:
    feeds = [
        {"sr": np.array(16000, np.int64), "gain": np.array([0.5], np.float32), "x": np.zeros((1, 4), np.float32)},
        {"sr": np.array(16000, np.int64), "gain": np.array([0.7], np.float32), "x": np.zeros((1, 4), np.float32)},
    ]
    assert unvarying_scalars(feeds, ["sr", "gain", "x", "absent"]) == {"sr": "16000"}
    assert unvarying_scalars(feeds[:1], ["gain"]) == {"gain": "0.5"}


# --- the command --------------------------------------------------------------------------------
def test_quantize_auto_on_a_streaming_model(streaming: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "vad.int8.onnx"
    result = invoke(
        "quantize",
        streaming["model"],
        "-o",
        out,
        "--method",
        "auto",
        "--calibration",
        streaming["calib"],
        "--eval",
        streaming["eval"],
        "--metric",
        "max-abs",
        "--max-drop",
        "0.05",
        "--budget-time",
        "30s",
        "--quiet",
    )
    assert result.exit_code == 0, result.stderr
    assert "Traceback" not in result.stderr
    kept_lines = [ln for ln in result.stderr.splitlines() if ln.startswith("kept in FP32:")]
    assert len(kept_lines) == 1, result.stderr
    assert "If 'rate_switch'" in kept_lines[0] and "depends on input(s) 'sr' (sr=16000 in every sample" in kept_lines[0]
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["calibration"]["samples"] == 48 and report["eval"]["samples"] == 8
    assert [(k["node"], k["same_in_data"]) for k in report["fp32_subgraphs"]] == [("rate_switch", ["sr=16000"])]
    assert any(s.startswith("folded If 'proj_switch'") for s in report["steps"])
    built = [c for c in report["candidates"] if c["fidelity"] is not None]
    assert built, report["candidates"]
    # The written model, whichever it is, answers like FP32 on every eval file, within the budget
    # (our own check, not the report's figure).
    for ref, got in zip(
        run_model(streaming["model"], streaming["eval"]), run_model(out, streaming["eval"]), strict=True
    ):
        for r, g in zip(ref, got, strict=True):
            assert np.allclose(r, g, atol=0.05, rtol=0)
    if report["chosen"] == "fp32":
        assert report["reason"].startswith("kept FP32: ")
    else:
        assert report["precision"] in ("int8", "mixed")


def _one_error(result: Result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edgekit: error: ") and needle in lines[0], result.stderr


def test_a_sample_missing_an_input_is_one_line(streaming: dict[str, Path], tmp_path: Path) -> None:
    bad = write_samples(tmp_path / "bad", 2, with_sr=False)
    result = invoke("quantize", streaming["model"], "-o", tmp_path / "o.onnx", "--calibration", bad, "--quiet")
    _one_error(result, 14, "missing input(s) ['sr']")


def test_a_state_of_the_wrong_rank_is_one_line(streaming: dict[str, Path], tmp_path: Path) -> None:
    bad = tmp_path / "bad"
    bad.mkdir()
    np.savez(bad / "a.npz", audio=np.zeros((1, SEQ), np.float32), state=np.zeros((H,), np.float32), sr=np.int64(16000))
    result = invoke("quantize", streaming["model"], "-o", tmp_path / "o.onnx", "--calibration", bad, "--quiet")
    _one_error(result, 14, "input 'state' has shape [64], the model wants rank 3 [2,batch,64]")


def test_a_model_the_search_cannot_handle_is_one_line(tmp_path: Path) -> None:
    """A model whose output length depends on the data (NonZero): eval batches give outputs of
    different shapes, which cannot be compared side by side."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    zero = numpy_helper.from_array(np.float32(0), "zero")
    graph = helper.make_graph(
        [
            helper.make_node("MatMul", ["x", "w"], ["y"]),
            helper.make_node("Greater", ["y", "zero"], ["positive"]),
            helper.make_node("NonZero", ["positive"], ["where"]),
        ],
        "nonzero",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("where", TensorProto.INT64, [2, "K"])],
        [w, zero],
    )
    model = tmp_path / "nz.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    rng = np.random.default_rng(1)
    np.savez(tmp_path / "calib.npz", x=rng.standard_normal((8, 8)).astype(np.float32))
    np.savez(tmp_path / "eval.npz", x=rng.standard_normal((70, 8)).astype(np.float32))
    result = invoke(
        "quantize",
        model,
        "-o",
        tmp_path / "o.onnx",
        "--calibration",
        tmp_path / "calib.npz",
        "--eval",
        tmp_path / "eval.npz",
        "--quiet",
    )
    _one_error(result, 17, "while measuring the FP32 baseline: ValueError")


def test_bench_feeds_one_file_of_a_model_without_a_batch_axis(streaming: dict[str, Path]) -> None:
    result = invoke("bench", streaming["model"], "--runs", "20", "--data", streaming["eval"], "--output", "json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["results"][0]["runs"] == 20
    result = invoke("bench", streaming["model"], "--runs", "20", "--data", streaming["eval"], "--batch", "4")
    _one_error(result, 14, "--batch 4: the model takes its samples one file at a time")


def _shape_switch_model(seq: int | str) -> onnx.ModelProto:
    """y = x @ w when x has 256 samples per row, else (x @ w) * 0.5: the condition reads the
    input's shape, the way exported streaming models pick a path for their chunk size."""
    w = numpy_helper.from_array(np.eye(256, 8, dtype=np.float32), "w")
    half = numpy_helper.from_array(np.float32(0.5), "half")
    then_g = _branch("t", [helper.make_node("MatMul", ["x", "w"], ["t_out"])], "t_out")
    else_g = _branch(
        "e",
        [helper.make_node("MatMul", ["x", "w"], ["e_mm"]), helper.make_node("Mul", ["e_mm", "half"], ["e_out"])],
        "e_out",
    )
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
        helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
        helper.make_node("Constant", [], ["chunk"], value=numpy_helper.from_array(np.array(256, np.int64))),
        helper.make_node("Equal", ["width", "chunk"], ["is_chunk"]),
        helper.make_node("If", ["is_chunk"], ["y"], then_branch=then_g, else_branch=else_g, name="chunk_switch"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [w, half],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_an_if_on_a_fixed_input_dim_is_folded_once_shapes_are_pinned() -> None:
    fixed, notes = fold_constant_ifs(_shape_switch_model(256))
    assert notes == ["folded If 'chunk_switch': its condition is always True, so its then branch (1 node) was inlined"]
    assert "If" not in [n.op_type for n in fixed.graph.node]
    x = np.random.default_rng(0).standard_normal((3, 256)).astype(np.float32)
    assert np.allclose(ort.InferenceSession(fixed.SerializeToString()).run(None, {"x": x})[0], x[:, :8])
    # A symbolic width decides nothing until the data pins it (prepare does, from the samples).
    dynamic = _shape_switch_model("seq")
    same, notes = fold_constant_ifs(dynamic)
    assert notes == [] and [k.depends_on for k in kept_subgraphs(same)] == [("x",)]
    pinned, notes = fold_constant_ifs(fix_input_shapes(dynamic, {"x": (1, 128)}))
    assert kept_subgraphs(pinned) == []
    assert notes == [
        "folded If 'chunk_switch': its condition is always False, so its else branch (2 nodes) was inlined"
    ]


def test_a_loop_is_reported_with_what_it_holds() -> None:
    w = numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]), helper.make_node("MatMul", ["h_in", "w"], ["h_out"])],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("h_out", TensorProto.FLOAT, None),
        ],
    )
    graph = helper.make_graph(
        [helper.make_node("Loop", ["steps", "", "h"], ["h_final"], body=body, name="decode")],
        "g",
        [
            helper.make_tensor_value_info("steps", TensorProto.INT64, []),
            helper.make_tensor_value_info("h", TensorProto.FLOAT, ["batch", 4]),
        ],
        [helper.make_tensor_value_info("h_final", TensorProto.FLOAT, ["batch", 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    kept = kept_subgraphs(fold_constant_ifs(model)[0])
    assert [(k.node, k.op_type, k.nodes_inside, k.compute_inside, k.depends_on) for k in kept] == [
        ("decode", "Loop", 2, ("MatMul",), ("h", "steps"))
    ]
    assert kept[0].line().startswith("Loop 'decode' (2 nodes inside, 1 compute (MatMul)): its body depends on input(s)")


def test_a_model_whose_compute_all_hangs_on_an_input_if_keeps_fp32_and_says_so(tmp_path: Path) -> None:
    """The whole network inside an If over the sample rate (as a real VAD exports it): no recipe
    can reach it, so auto says so instead of timing candidates that cannot differ."""
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((8, 8)).astype(np.float32), "w")
    rate = numpy_helper.from_array(np.array(16000, np.int64), "rate")
    half = numpy_helper.from_array(np.float32(0.5), "half")
    then_g = _branch("t", [helper.make_node("MatMul", ["x", "w"], ["t_out"])], "t_out")
    else_g = _branch(
        "e",
        [helper.make_node("MatMul", ["x", "w"], ["e_mm"]), helper.make_node("Mul", ["e_mm", "half"], ["e_out"])],
        "e_out",
    )
    graph = helper.make_graph(
        [
            helper.make_node("Equal", ["sr", "rate"], ["is16k"]),
            helper.make_node("If", ["is16k"], ["y"], then_branch=then_g, else_branch=else_g, name="net"),
        ],
        "g",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8]),
            helper.make_tensor_value_info("sr", TensorProto.INT64, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        [w, rate, half],
    )
    model = tmp_path / "net.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        np.savez(data / f"{i}.npz", x=np.full((1, 8), i, np.float32), sr=np.int64(16000))
    out = tmp_path / "out.onnx"
    result = invoke("quantize", model, "-o", out, "--calibration", data, "--quiet")
    assert result.exit_code == 0, result.stderr
    report = json.loads(Path(f"{out}.report.json").read_text())
    assert report["chosen"] == "fp32" and report["candidates"] == []
    assert report["reason"] == (
        "kept FP32: all 2 compute ops are inside control flow left in FP32 (If 'net'), nothing else to quantize"
    )
    assert out.read_bytes() == model.read_bytes()


def test_shapes_that_onnxruntime_refuses_once_pinned_stay_symbolic() -> None:
    """The branch not taken reshapes x to Shape(x)[:width] and feeds an LSTM: with x's width
    unknown its rank is unknown and the model loads; pinned, onnxruntime folds the shape and
    refuses the LSTM's rank (what the Silero VAD export does with its chunk length)."""
    hidden = 2
    inits = [
        numpy_helper.from_array(np.ones((1, 4 * hidden, 4), np.float32), "lw"),
        numpy_helper.from_array(np.ones((1, 4 * hidden, hidden), np.float32), "lr"),
        numpy_helper.from_array(np.array([0], np.int64), "zero"),
    ]
    then_g = _branch("t", [helper.make_node("Identity", ["x"], ["t_out"])], "t_out")
    else_g = _branch(
        "e",
        [
            helper.make_node("Unsqueeze", ["width", "zero"], ["end"]),
            helper.make_node("Slice", ["shape", "zero", "end"], ["target"]),
            helper.make_node("Reshape", ["x", "target"], ["r"]),
            helper.make_node("LSTM", ["r", "lw", "lr"], ["e_out"], hidden_size=hidden),
        ],
        "e_out",
    )
    graph = helper.make_graph(
        [
            helper.make_node("Shape", ["x"], ["shape"]),
            helper.make_node("Constant", [], ["one"], value=numpy_helper.from_array(np.array(1, np.int64))),
            helper.make_node("Gather", ["shape", "one"], ["width"], axis=0),
            helper.make_node("Constant", [], ["chunk"], value=numpy_helper.from_array(np.array(4, np.int64))),
            helper.make_node("Equal", ["width", "chunk"], ["is_chunk"]),
            helper.make_node("If", ["is_chunk"], ["y"], then_branch=then_g, else_branch=else_g),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", "seq"])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.ones((1, 4), np.float32)
    assert np.array_equal(ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0], x)
    kept, pinned, warnings = pin_shapes(model, {"x": (1, 4)})
    assert pinned == {} and kept.graph.input[0].type.tensor_type.shape.dim[1].dim_param == "seq"
    assert len(warnings) == 1 and warnings[0].startswith("input 'x' kept symbolic: pinned to [1, 4], ")
    assert "First input tensor must have rank 3" in warnings[0]
