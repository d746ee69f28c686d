"""``quantize --method auto`` on real pretrained models (PP-OCR from rapidocr-onnxruntime): it never
returns a model slower than FP32, and what it writes is what it reports."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from edgekit.cli import cli
from models.ppocr.make_data import make as make_ocr_data

pytestmark = pytest.mark.slow

CASES = {
    # model key: (input shape, the metric auto must pick, budget, search time cap)
    "cls": ("x=1,3,48,192", "top1", "1%", "60s"),
    "rec": ("x=1,3,48,320", "ctc-agreement", "0.95", "90s"),
    "det": ("x=1,3,640,640", "mask-iou", "0.95", "90s"),
}


def judged(key: str, ref: np.ndarray, cand: np.ndarray) -> float:
    """The task score of the written model against FP32, computed here apart from edgekit's code."""
    if key == "det":  # text mask: probability > 0.3
        a, b = ref > 0.3, cand > 0.3
        return float((a & b).sum() / max(int((a | b).sum()), 1))
    if key == "rec":  # greedy CTC: collapse repeats, drop blank 0
        def text(row: np.ndarray) -> list[int]:
            return [int(c) for c, _ in itertools.groupby(row.argmax(-1)) if c != 0]
        return float(np.mean([text(r) == text(c) for r, c in zip(ref, cand, strict=True)]))
    return float((ref.argmax(-1) == cand.argmax(-1)).mean())


@pytest.fixture(scope="session")
def ocr_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ppocr-data")
    make_ocr_data(out, det=(6, 4), rec=(16, 12))
    return out


@pytest.mark.parametrize("key", sorted(CASES))
def test_auto_never_returns_a_slower_model(
    key: str, ppocr_models: dict[str, Path], ocr_data: Path, tmp_path: Path
) -> None:
    shape, metric, budget, cap = CASES[key]
    model = ppocr_models[key]
    out = tmp_path / f"{key}.int8.onnx"
    result = CliRunner().invoke(
        cli,
        [
            "quantize",
            str(model),
            "-o",
            str(out),
            "--calibration",
            str(ocr_data / f"{key}-calib.npz"),
            "--eval",
            str(ocr_data / f"{key}-eval.npz"),
            "--max-drop",
            budget,
            "--input-shape",
            shape,
            "--budget-time",
            cap,
            "-O",
            "json",
        ],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["metric"] == metric, report["metric_reason"]  # chosen without --metric
    assert report["metric_reason"]
    assert report["steps"][0].startswith("fixed input shapes x=")
    assert "opset 1" in " ".join(report["steps"])  # PP-OCR ships opset 11/12: upgraded for per-channel
    tried = [c for c in report["candidates"] if c["verdict"] not in ("skipped",)]
    assert tried, report
    if report["chosen"] == "fp32":
        assert out.read_bytes() == model.read_bytes()
        assert report["reason"].startswith("kept FP32")
    else:
        chosen = report["result"]
        assert chosen["verdict"] == "chosen" and chosen["latency_ratio"] < 1.0
        assert report["precision"] in ("int8", "mixed")
        # What was written is the reported candidate: same fidelity on the eval data.
        x = np.load(ocr_data / f"{key}-eval.npz")["x"]
        ref = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        cand = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
        a = [ref.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]
        b = [cand.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))]
        assert np.allclose(np.concatenate(a).shape, np.concatenate(b).shape)
        # Judged on its task, independently, the written model is inside the budget.
        limit = 0.99 if budget == "1%" else float(budget)
        assert judged(key, np.concatenate(a), np.concatenate(b)) >= limit - 1e-9
    # Every candidate that was built and judged in budget was faster than FP32 when judged.
    for c in report["candidates"]:
        if c["verdict"] in ("in budget", "chosen"):
            assert c["latency_ratio"] < 1.0
