"""The demo behind ``scripts/demo``: the journey of the bundled example model.

python -m edgekit.demo [--workdir DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
from pathlib import Path

from rich.console import Console
from rich.rule import Rule

ROOT = Path(__file__).resolve().parents[1]
DIGITS = ROOT / "models" / "digits"


def edgekit(*args: str | Path) -> None:
    cmd = [sys.executable, "-m", "edgekit", *(str(a) for a in args)]
    Console().print(f"[bold cyan]$ edgekit {' '.join(str(a) for a in args)}[/]")
    subprocess.run(cmd, check=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the edgekit demo on the bundled digits model.")
    parser.add_argument("--workdir", type=Path, default=ROOT / ".edgekit" / "demo")
    args = parser.parse_args()
    work: Path = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    con = Console()
    con.print(Rule("1. the model"))
    model = work / "digits.onnx"
    shutil.copy(DIGITS / "digits.onnx", model)
    edgekit("inspect", model)
    con.print(Rule("2. quantize under a 1-point accuracy budget"))
    edgekit(
        "quantize",
        model,
        "-o",
        work / "digits.int8.onnx",
        "--calibration",
        DIGITS / "calib.npz",
        "--eval",
        DIGITS / "eval.npz",
        "--labels",
        DIGITS / "eval_labels.txt",
        "--max-drop",
        "1%",
    )
    con.print(Rule("3. FP32 vs INT8, side by side"))
    edgekit("bench", model, work / "digits.int8.onnx", "--runs", "300")
    con.print(f"\nDone. Files are in {work}. Next: edgekit package, edgekit push (see README.md).")


if __name__ == "__main__":
    main()
