"""``edgekit inspect|bench|quantize`` on real models: results, reports, and every bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import TensorProto, helper, numpy_helper

from edgekit.cli import cli


def invoke(*args: str | Path) -> Result:
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def assert_error(result: Result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.stdout, result.stderr)
    errors = [ln for ln in result.stderr.strip().splitlines() if not ln.startswith("… ")]  # progress lines
    assert len(errors) == 1, result.stderr
    assert errors[0].startswith("edgekit: error: ") and needle in errors[0], errors[0]


@pytest.fixture(scope="session")
def digits_int8(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("q") / "digits.int8.onnx"
    result = invoke(
        "quantize",
        digits_dir / "digits.onnx",
        "-o",
        out,
        "--calibration",
        digits_dir / "calib.npz",
        "--eval",
        digits_dir / "eval.npz",
        "--labels",
        digits_dir / "eval_labels.txt",
        "--max-drop",
        "1%",
    )
    assert result.exit_code == 0, result.stderr
    return out, json.loads(Path(str(out) + ".report.json").read_text())


# --- inspect ---------------------------------------------------------------------------------------
def test_inspect_json(digits_model: Path) -> None:
    result = invoke("inspect", digits_model, "--output", "json")
    assert result.exit_code == 0
    info = json.loads(result.stdout)
    assert info["inputs"] == [{"name": "input", "dtype": "float32", "shape": ["N", 1, 8, 8]}]
    assert info["outputs"][0]["name"] == "logits" and info["opset"] == 17
    assert info["op_histogram"]["Conv"] == 3 and info["quantization"] == "none"
    assert info["parameters"] == 93962 and info["size_bytes"] == digits_model.stat().st_size


def test_inspect_table_shows_symbolic_dims_of_ppocr(ppocr_models: dict[str, Path]) -> None:
    result = invoke("inspect", ppocr_models["det"])
    assert result.exit_code == 0
    assert "p2o.DynamicDimension.1" in result.stdout and "\x1b[" not in result.stdout
    rec = invoke("inspect", ppocr_models["rec"])
    assert "metadata: character (" in rec.stdout and " lines)" in rec.stdout
    info = json.loads(invoke("inspect", ppocr_models["rec"], "-O", "json").stdout)
    assert info["output_ops"] == {"softmax_11.tmp_0": "Softmax"} and "character" in info["metadata"]


def test_inspect_sees_quantized_models(digits_int8: tuple[Path, dict]) -> None:
    info = json.loads(invoke("inspect", digits_int8[0], "-O", "json").stdout)
    assert info["quantization"] == "qdq" and info["op_histogram"]["QuantizeLinear"] > 0


def test_inspect_external_data(tmp_path: Path) -> None:
    weights = numpy_helper.from_array(np.ones((256, 256), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 256])],
        [weights],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(tmp_path / "m.onnx"), save_as_external_data=True, location="m.data", size_threshold=0)
    info = json.loads(invoke("inspect", tmp_path / "m.onnx", "-O", "json").stdout)
    assert info["external_data"] == ["m.data"] and info["size_bytes"] > 256 * 256 * 4
    (tmp_path / "m.data").unlink()
    assert_error(invoke("inspect", tmp_path / "m.onnx"), 13, "external data that is missing: m.data")


# --- bench -------------------------------------------------------------------------------------------
def test_bench_side_by_side(digits_model: Path, digits_int8: tuple[Path, dict]) -> None:
    result = invoke("bench", digits_model, digits_int8[0], "--runs", "30", "--warmup", "3", "-O", "json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    first, second = data["results"]
    assert first["ratio_p50"] == 1.0 and second["ratio_p50"] > 0
    # the second against the first, paired run by run: 30 runs give the sign test's ranks 10 and 21
    assert first["vs_first"] is None and first["verdict"] == "reference"
    paired = second["vs_first"]
    assert paired["rounds"] == 30 and paired["test"] == "sign test on paired per-round ratios"
    assert paired["ci_low"] <= paired["ratio"] <= paired["ci_high"]
    assert second["verdict"] == ("faster" if paired["ci_high"] < 1 else "slower" if paired["ci_low"] > 1
                                 else "no difference shown")
    assert first["runs"] == 30 and first["p50_ms"] <= first["p95_ms"] <= first["p99_ms"] <= first["max_ms"]


def test_bench_with_input_shape_and_batch(ppocr_models: dict[str, Path]) -> None:
    result = invoke(
        "bench",
        ppocr_models["cls"],
        "--input-shape",
        "x=4,3,48,192",
        "--runs",
        "5",
        "--warmup",
        "1",
        "--threads",
        "2",
        "-O",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    row = json.loads(result.stdout)["results"][0]
    assert row["batch"] == 1 and row["throughput"] > 0
    table = invoke("bench", ppocr_models["cls"], "--input-shape", "x=1,3,48,192", "--runs", "3")
    assert "p50 ms" in table.stdout and "\x1b[" not in table.stdout


def test_bench_needs_shapes_for_symbolic_image_dims(ppocr_models: dict[str, Path]) -> None:
    assert_error(invoke("bench", ppocr_models["det"], "--runs", "1"), 14, "--input-shape x=")


# --- quantize: results ---------------------------------------------------------------------------
def test_quantize_digits_meets_the_targets(digits_int8: tuple[Path, dict], digits_dir: Path) -> None:
    out, report = digits_int8
    assert report["chosen"] != "fp32" and report["precision"] == "int8"
    result = report["result"]
    # Accuracy against the true labels drops at most 1 point; the file is at most 0.35x.
    assert result["fidelity"]["score"] >= result["fidelity"]["fp32"] - 0.01
    assert out.stat().st_size <= 0.35 * (digits_dir / "digits.onnx").stat().st_size
    # The search only returns a model that beat FP32 in its own side-by-side timing.
    assert result["latency_ratio"] < 1.0
    assert report["metric"] == "accuracy" and report["eval"]["samples"] == 397
    verdicts = {c["verdict"] for c in report["candidates"]}
    assert "chosen" in verdicts and len(report["candidates"]) >= 4
    # The written model really is the reported one and predicts like FP32.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    x = np.load(digits_dir / "eval.npz")["input"]
    labels = np.loadtxt(digits_dir / "eval_labels.txt", dtype=int)
    acc = float((sess.run(None, {"input": x})[0].argmax(1) == labels).mean())
    assert acc == pytest.approx(result["fidelity"]["score"])


def test_quantize_with_synthetic_data_warns_loudly(tmp_path: Path, digits_model: Path) -> None:
    out = tmp_path / "q.onnx"
    result = invoke(
        "quantize",
        digits_model,
        "-o",
        out,
        "--calibration",
        "synthetic",
        "--metric",
        "cosine",
        "--max-drop",
        "0.9",
        "--per-channel",
        "--no-reduce-range",
        "--method",
        "static",
    )
    assert result.exit_code == 0, result.stderr
    assert "SYNTHETIC" in result.stderr
    report = json.loads((tmp_path / "q.onnx.report.json").read_text())
    assert report["calibration"]["synthetic"] and report["eval"]["synthetic"]
    assert any("SYNTHETIC" in w for w in report["warnings"])


def user_metric_negative_max_abs(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    return -float(np.abs(reference[0] - candidate[0]).max())


def test_quantize_with_a_user_metric_and_impossible_budget_keeps_fp32(tmp_path: Path, digits_dir: Path) -> None:
    out = tmp_path / "q.onnx"
    # No INT8 model reproduces FP32 logits within 1e-9: the search must keep FP32 and say why.
    result = invoke(
        "quantize",
        digits_dir / "digits.onnx",
        "-o",
        out,
        "--calibration",
        digits_dir / "calib.npz",
        "--metric",
        f"{__name__}:user_metric_negative_max_abs",
        "--max-drop",
        "0.000000001%",
        "--no-mixed-precision",
        "--per-channel",
        "--method",
        "static",
        "-O",
        "json",
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["chosen"] == "fp32" and "kept FP32" in report["reason"]
    assert out.read_bytes() == (digits_dir / "digits.onnx").read_bytes()
    assert report["eval"]["samples"] > 0 and any("held out" in w for w in report["warnings"])


def test_quantize_output_is_plain_when_piped(tmp_path: Path, digits_dir: Path) -> None:
    result = invoke(
        "quantize",
        digits_dir / "digits.onnx",
        "-o",
        tmp_path / "q.onnx",
        "--calibration",
        digits_dir / "calib.npz",
        "--method",
        "static",
        "--per-channel",
        "--no-reduce-range",
        "--budget-time",
        "60s",
    )
    assert result.exit_code == 0, result.stderr
    assert "\x1b[" not in result.stdout + result.stderr
    assert "candidate 1/" in result.stderr and "report:" in result.stdout


# --- quantize: bad input ---------------------------------------------------------------------------
@pytest.fixture()
def bad_files(tmp_path: Path, digits_model: Path) -> dict[str, Path]:
    text = tmp_path / "notes.onnx"
    text.write_text("this is not a model\n")
    truncated = tmp_path / "truncated.onnx"
    truncated.write_bytes(digits_model.read_bytes()[: digits_model.stat().st_size // 2])
    np.savez(tmp_path / "wrong-name.npz", image=np.zeros((4, 1, 8, 8), np.float32))
    np.savez(tmp_path / "wrong-shape.npz", input=np.zeros((4, 1, 6, 6), np.float32))
    np.savez(tmp_path / "wrong-dtype.npz", input=np.zeros((4, 1, 8, 8), np.int64))
    (tmp_path / "labels-short.txt").write_text("1\n2\n")
    return {"text": text, "truncated": truncated, "dir": tmp_path}


@pytest.mark.parametrize(
    ("case", "code", "needle"),
    [
        ("missing", 11, "model file not found"),
        ("text", 12, "not a valid ONNX model"),
        ("truncated", 12, "not a valid ONNX model"),
        ("wrong-name", 14, "missing input(s) ['input']"),
        ("wrong-shape", 14, "the model wants"),
        ("wrong-dtype", 14, "is int64, the model wants float32"),
        ("labels", 14, "has 2 entries but the eval data has 397"),
        ("metric", 2, "unknown metric 'f1'"),
        ("budget", 2, "cannot parse budget"),
        ("unwritable", 16, "does not exist"),
        ("proc", 16, "cannot write /proc/edgekit-out.onnx"),  # os.access says yes (as root); creating fails
        ("overwrite", 16, "would overwrite the input model"),
        ("threads", 2, "--threads"),
        ("budget-time", 2, "--budget-time"),
    ],
)
def test_quantize_bad_input(case: str, code: int, needle: str, bad_files: dict[str, Path], digits_dir: Path) -> None:
    d = bad_files["dir"]
    model = digits_dir / "digits.onnx"
    out = d / "out.onnx"
    args: list[str | Path] = ["quantize", model, "-o", out, "--calibration", digits_dir / "calib.npz"]
    if case == "missing":
        args[1] = d / "absent.onnx"
    elif case in ("text", "truncated"):
        args[1] = bad_files[case]
    elif case.startswith("wrong-"):
        args[-1] = d / f"{case}.npz"
    elif case == "labels":
        args += ["--eval", digits_dir / "eval.npz", "--labels", d / "labels-short.txt"]
    elif case == "metric":
        args += ["--metric", "f1"]
    elif case == "budget":
        args += ["--max-drop", "lots"]
    elif case == "unwritable":
        args[3] = d / "no" / "such" / "dir" / "out.onnx"
    elif case == "proc":
        args[3] = Path("/proc/edgekit-out.onnx")
    elif case == "overwrite":
        copy = d / "model.onnx"
        shutil.copy(model, copy)
        args[1] = args[3] = copy
    elif case == "threads":
        args += ["--threads", "0"]
    elif case == "budget-time":
        args += ["--budget-time", "soon"]
    result = invoke(*args)
    if case == "threads":  # click's own range check: usage error, exit 2
        assert result.exit_code == 2 and needle in result.stderr
    else:
        assert_error(result, code, needle)
        assert "candidate" not in result.stderr  # refused before the search
    assert not out.exists() and not Path(str(out) + ".report.json").exists()
    assert not list(d.glob(".out.onnx.*"))  # no temp file left behind


# --- quantize: the task metric ---------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_detector(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A YOLO-style head [1, 4+3, 336]: a 1x1 Conv over a 12x28 image, boxes and class scores out
    of a Sigmoid (boxes scaled to pixels), with its calibration and eval data beside it."""
    folder = tmp_path_factory.mktemp("tiny-detector")
    rng = np.random.default_rng(3)
    scale = np.array([28, 12, 8, 8, 1, 1, 1], np.float32).reshape(1, 7, 1)
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["images", "w"], ["feat"], name="conv"),
            helper.make_node("Reshape", ["feat", "shape"], ["flat"], name="flatten"),
            helper.make_node("Sigmoid", ["flat"], ["sig"], name="sigmoid"),
            helper.make_node("Mul", ["sig", "scale"], ["output0"], name="scale_boxes"),
        ],
        "tiny-detector",
        [helper.make_tensor_value_info("images", TensorProto.FLOAT, [1, 3, 12, 28])],
        [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 7, 336])],
        [
            numpy_helper.from_array(rng.standard_normal((7, 3, 1, 1)).astype(np.float32), "w"),
            numpy_helper.from_array(np.array([1, 7, 336], np.int64), "shape"),
            numpy_helper.from_array(scale, "scale"),
        ],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8),
              str(folder / "det.onnx"))
    np.savez(folder / "calib.npz", images=rng.random((16, 3, 12, 28), dtype=np.float32))
    np.savez(folder / "eval.npz", images=rng.random((16, 3, 12, 28), dtype=np.float32))
    return folder / "det.onnx"


def quantize_detector(model: Path, out: Path, *extra: str) -> tuple[Result, dict]:
    result = invoke(
        "quantize", model, "-o", out, "--calibration", model.parent / "calib.npz", "--eval",
        model.parent / "eval.npz", "--method", "static", "--per-channel", "--no-reduce-range",
        "--no-mixed-precision", "--budget-time", "5s", *extra,
    )
    assert result.exit_code == 0, result.stderr
    return result, json.loads(Path(str(out) + ".report.json").read_text())


def test_quantize_picks_detection_f1_for_a_detection_head(tiny_detector: Path, tmp_path: Path) -> None:
    result, report = quantize_detector(tiny_detector, tmp_path / "det.int8.onnx")
    assert report["metric"] == "detection-f1"
    assert report["metric_settings"] == {"conf": 0.25, "nms": 0.45, "iou": 0.5, "max_det": 300, "output": 0}
    assert "looks like a detection head" in report["metric_reason"] and "3 class scores" in report["metric_reason"]
    assert "metric: detection-f1 (conf=0.25" in " ".join(result.stdout.split())
    assert report["candidates"][0]["fidelity"]["metric"] == "detection-f1"


def test_quantize_cosine_on_a_detection_head_warns_and_shows_one_cosine_column(
    tiny_detector: Path, tmp_path: Path
) -> None:
    result, report = quantize_detector(tiny_detector, tmp_path / "det.int8.onnx", "--metric", "cosine")
    assert report["metric"] == "cosine" and report["metric_reason"] == "given with --metric"
    assert any("--metric detection-f1" in w for w in report["warnings"])
    assert "judge it with --metric detection-f1" in " ".join(result.stderr.split())
    header = next(ln for ln in result.stdout.splitlines() if "candidate" in ln and "verdict" in ln)
    assert header.count("cosine") == 1, header


def test_quantize_detection_f1_settings_reach_the_report(tiny_detector: Path, tmp_path: Path) -> None:
    _, report = quantize_detector(
        tiny_detector, tmp_path / "det.int8.onnx", "--metric", "detection-f1:conf=0.5,iou=0.6"
    )
    assert report["metric_settings"]["conf"] == 0.5 and report["metric_settings"]["iou"] == 0.6
    assert report["budget"] == "detection-f1 ≥ 0.95"
    bad = invoke("quantize", tiny_detector, "-o", tmp_path / "x.onnx", "--metric", "detection-f1:conf=7")
    assert_error(bad, 2, "detection-f1: conf must be between 0 and 1")
