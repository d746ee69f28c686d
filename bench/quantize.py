"""Benchmark ``edgekit quantize --method auto`` on the example digits CNN and the PP-OCR models.

For each model: the metric auto chose itself (no ``--metric``), the recipe it picked (or FP32
kept), INT8 vs FP32 latency at 1 and 2 threads (the median of per-run ratios, runs paired as
timed interleaved in this run, with the sign test's 95% interval), size
ratio, the task score judged here on the eval data with this file's own code (not the report's
figure) against the budget and latency target of issue 15's "Done when", and how long the
search took. The load average before and after is printed: the machine may be shared.

    python bench/quantize.py [--models digits,det,rec,cls] [--budget-time 8m] [--out DIR]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.cli.optimize import parse_duration  # noqa: E402
from edgekit.optimize.benchmarking import bench_side_by_side  # noqa: E402
from edgekit.optimize.quantizing import QuantizeSettings, quantize  # noqa: E402
from models.ppocr.make_data import make as make_ocr_data  # noqa: E402


def ocr_models() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models"


def cases(data: Path) -> dict[str, tuple[Path, QuantizeSettings, dict[str, tuple[int, ...]]]]:
    digits = ROOT / "models" / "digits"
    ocr = ocr_models()
    return {
        "digits": (
            digits / "digits.onnx",
            QuantizeSettings(
                calibration=str(digits / "calib.npz"),
                eval=str(digits / "eval.npz"),
                labels=str(digits / "eval_labels.txt"),
                max_drop="1%",
            ),
            {},
        ),
        "det": (
            ocr / "ch_PP-OCRv4_det_infer.onnx",
            QuantizeSettings(
                calibration=str(data / "det-calib.npz"),
                eval=str(data / "det-eval.npz"),
                max_drop="0.95",
            ),
            {"x": (1, 3, 640, 640)},
        ),
        "rec": (
            ocr / "ch_PP-OCRv4_rec_infer.onnx",
            QuantizeSettings(
                calibration=str(data / "rec-calib.npz"),
                eval=str(data / "rec-eval.npz"),
                max_drop="0.95",
            ),
            {"x": (1, 3, 48, 320)},
        ),
        "cls": (
            ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            QuantizeSettings(
                calibration=str(data / "cls-calib.npz"), eval=str(data / "cls-eval.npz"), max_drop="1%"
            ),
            {"x": (1, 3, 48, 192)},
        ),
    }


# Issue 15's "Done when": (the task score judged here, its limit, the latency ratio at 1 thread).
TARGETS = {"digits": ("accuracy ≥ FP32's - 1 point", 0.70), "det": ("text-mask IoU ≥ 0.95", 0.85),
           "rec": ("CTC strings ≥ 0.95 as FP32's", 0.75), "cls": ("top-1 agreement ≥ 0.99", 1.0)}


def outputs(model: Path, x: np.ndarray) -> np.ndarray:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    session = ort.InferenceSession(str(model), opts, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return np.concatenate([session.run(None, {name: x[i : i + 1]})[0] for i in range(len(x))])


def judged(name: str, fp32: Path, int8: Path, settings: QuantizeSettings) -> tuple[float, float, bool]:
    """(score of the written model, its limit, inside?): the task score on the eval data, computed
    here with numpy from both models' raw outputs, apart from edgekit's metrics."""
    assert settings.eval is not None
    with np.load(settings.eval) as data:
        x = data[data.files[0]]
    ref, cand = outputs(fp32, x), outputs(int8, x)
    if name == "det":  # DB text map: probability > 0.3
        a, b = ref > 0.3, cand > 0.3
        score = float((a & b).sum() / max(int((a | b).sum()), 1))
        return score, 0.95, score >= 0.95
    if name == "rec":  # greedy CTC: argmax per step, repeats collapsed, blank 0 dropped

        def text(row: np.ndarray) -> list[int]:
            return [int(c) for c, _ in itertools.groupby(row.argmax(-1)) if c != 0]

        score = float(np.mean([text(r) == text(c) for r, c in zip(ref, cand, strict=True)]))
        return score, 0.95, score >= 0.95
    if name == "digits":  # accuracy against the true labels, within 1 point of FP32's
        assert settings.labels is not None
        labels = np.loadtxt(settings.labels, dtype=np.int64)
        fp32_acc = float((ref.argmax(-1) == labels).mean())
        score = float((cand.argmax(-1) == labels).mean())
        return score, fp32_acc - 0.01, score >= fp32_acc - 0.01 - 1e-9
    score = float((ref.argmax(-1) == cand.argmax(-1)).mean())
    return score, 0.99, score >= 0.99


def loadavg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,det,rec,cls")
    parser.add_argument("--budget-time", default="8m", help="auto's own default: the whole run stays under 10 min")
    parser.add_argument("--runs", type=int, default=100)
    parser.add_argument("--out", type=Path, default=None, help="Keep the quantized models here.")
    args = parser.parse_args()
    out_dir = args.out or Path(tempfile.mkdtemp(prefix="edgekit-bench-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    data = out_dir / "ppocr-data"
    if not (data / "det-eval.npz").exists():
        make_ocr_data(data)
    con = Console(width=200)
    table = Table(title="edgekit quantize --method auto (ratios: INT8 / FP32, timed interleaved in this run)")
    cols = ("model", "metric auto chose", "picked", "size", "lat 1t", "lat 2t", "judged here", "target", "met",
            "auto took")
    for col in cols:
        table.add_column(col, justify="right" if col in ("size", "lat 1t", "lat 2t", "auto took") else "left")
    con.print(f"load average {loadavg()} (1, 5, 15 min) at the start")
    rows = []
    notes: list[str] = []
    for name in args.models.split(","):
        model, settings, shapes = cases(data)[name]
        settings = QuantizeSettings(
            **{**settings.__dict__, "budget_time": parse_duration(args.budget_time), "input_shapes": shapes}
        )
        out = out_dir / f"{name}.int8.onnx"
        con.print(f"… quantizing {name} ({model.name})")
        t0 = time.monotonic()
        report = quantize(model, out, settings)
        took = time.monotonic() - t0
        chosen = report.chosen_result
        lat, intervals = {}, {}
        for threads in (1, 2):
            _stats, speeds = bench_side_by_side(
                [str(model), str(out)], runs=args.runs, warmup=10, threads=threads, shapes=shapes, data=settings.eval
            )
            # the median of the per-run ratios to FP32 (runs paired as interleaved), with its sign-test interval
            speed = speeds[1]
            assert speed is not None and speed.ratio is not None
            lat[threads], intervals[threads] = speed.ratio, speed.to_dict()
        size_ratio = out.stat().st_size / model.stat().st_size
        score, limit, inside = judged(name, model, out, settings)
        goal, max_ratio = TARGETS[name]
        met = inside and lat[1] <= max_ratio and took < 600
        if not chosen:
            notes.append(f"{name}: {report.reason}")
        picked = chosen.recipe.name if chosen else "FP32"
        table.add_row(
            name,
            report.metric,
            picked,
            f"{size_ratio:.2f}x",
            f"{lat[1]:.2f}x ({intervals[1]['ci_low']:.2f}-{intervals[1]['ci_high']:.2f})",
            f"{lat[2]:.2f}x ({intervals[2]['ci_low']:.2f}-{intervals[2]['ci_high']:.2f})",
            f"{score:.4f} (limit {limit:.4f})",
            f"{goal}, ≤ {max_ratio:.2f}x, < 10 min",
            "yes" if met else "NO",
            f"{took:.0f} s",
        )
        rows.append(
            {
                "model": name,
                "metric": report.metric,
                "metric_reason": report.metric_reason,
                "picked": picked,
                "size_ratio": size_ratio,
                "latency_ratio_1t": lat[1],
                "latency_ratio_2t": lat[2],
                "latency_interval_1t": intervals[1],
                "latency_interval_2t": intervals[2],
                "judged": score,
                "limit": limit,
                "report_fidelity": chosen.fidelity.to_dict() if chosen and chosen.fidelity else None,
                "reason": report.reason,
                "seconds": took,
                "met": met,
            }
        )
    con.print(table)
    con.print(f"load average {loadavg()} (1, 5, 15 min) at the end")
    for note in notes:
        con.print(f"  {note}")
    (out_dir / "bench-quantize.json").write_text(json.dumps(rows, indent=2))
    con.print(f"models and JSON in {out_dir}")


if __name__ == "__main__":
    main()
