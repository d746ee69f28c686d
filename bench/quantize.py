"""Benchmark ``edgekit quantize --method auto`` on the example digits CNN and the PP-OCR models.

For each model: the recipe auto picked (or FP32 kept), INT8 vs FP32 latency at 1 and 2 threads
(ratio, timed interleaved in this run), size ratio, fidelity under the task metric, and how long
the search took.

    python bench/quantize.py [--models digits,det,rec,cls] [--budget-time 10m] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgekit.cli.optimize import parse_duration  # noqa: E402
from edgekit.optimize.benchmarking import bench_models  # noqa: E402
from edgekit.optimize.quantizing import QuantizeSettings, quantize  # noqa: E402
from models.ppocr.make_data import make as make_ocr_data  # noqa: E402


def ocr_models() -> Path:
    import rapidocr_onnxruntime

    return Path(rapidocr_onnxruntime.__file__).parent / "models"


def cases(data: Path) -> dict[str, tuple[Path, QuantizeSettings, dict[str, tuple[int, ...]]]]:
    digits = ROOT / "models" / "digits"
    ocr = ocr_models()
    metric = "edgekit.optimize.task_metrics:"
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
                metric=metric + "text_mask_iou",
                max_drop="0.95",
            ),
            {"x": (1, 3, 640, 640)},
        ),
        "rec": (
            ocr / "ch_PP-OCRv4_rec_infer.onnx",
            QuantizeSettings(
                calibration=str(data / "rec-calib.npz"),
                eval=str(data / "rec-eval.npz"),
                metric=metric + "ctc_agreement",
                max_drop="0.95",
            ),
            {"x": (1, 3, 48, 320)},
        ),
        "cls": (
            ocr / "ch_ppocr_mobile_v2.0_cls_infer.onnx",
            QuantizeSettings(
                calibration=str(data / "cls-calib.npz"), eval=str(data / "cls-eval.npz"), metric="top1", max_drop="1%"
            ),
            {"x": (1, 3, 48, 192)},
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,det,rec,cls")
    parser.add_argument("--budget-time", default="10m")
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
    for col in ("model", "FP32 size", "picked", "size", "lat 1t", "lat 2t", "fidelity (metric)", "auto took"):
        table.add_column(col, justify="left" if col in ("model", "picked", "fidelity (metric)") else "right")
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
        lat = {}
        for threads in (1, 2):
            stats = bench_models(
                [str(model), str(out)], runs=args.runs, warmup=10, threads=threads, shapes=shapes, data=settings.eval
            )
            lat[threads] = stats[1].p50_ms / stats[0].p50_ms
        size_ratio = out.stat().st_size / model.stat().st_size
        if chosen and chosen.fidelity:
            fidelity = (
                f"{chosen.fidelity.score:.3f} vs {chosen.fidelity.reference:.3f} ({report.metric.split(':')[-1]})"
            )
        else:
            best = max(
                (c for c in report.candidates if c.fidelity),
                default=None,
                key=lambda c: c.fidelity.score if c.fidelity else 0.0,
            )
            fidelity = (
                f"FP32 kept (best candidate {best.fidelity.score:.3f})" if best and best.fidelity else "FP32 kept"
            )
            notes.append(f"{name}: {report.reason}")
        picked = chosen.recipe.name if chosen else "FP32"
        table.add_row(
            name,
            f"{model.stat().st_size / 2**20:.1f} MB",
            picked,
            f"{size_ratio:.2f}x",
            f"{lat[1]:.2f}x",
            f"{lat[2]:.2f}x",
            fidelity,
            f"{took:.0f} s",
        )
        rows.append(
            {
                "model": name,
                "picked": picked,
                "size_ratio": size_ratio,
                "latency_ratio_1t": lat[1],
                "latency_ratio_2t": lat[2],
                "fidelity": chosen.fidelity.to_dict() if chosen and chosen.fidelity else None,
                "reason": report.reason,
                "seconds": took,
            }
        )
    con.print(table)
    for note in notes:
        con.print(f"  {note}")
    (out_dir / "bench-quantize.json").write_text(json.dumps(rows, indent=2))
    con.print(f"models and JSON in {out_dir}")


if __name__ == "__main__":
    main()
