"""``quantize --platform``: a candidate set per CPU family, this host's build timed, another
platform's checked for fidelity only; the builds go to ``package --platform OS/ARCH=FILE``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from edgekit_agent.oci import current_platform

from edgekit.errors import ConfigError
from edgekit.optimize import fidelity as fid
from edgekit.optimize.judging import judge_candidate, preferred_choice
from edgekit.optimize.platforms import ARM64, X86, X86_VNNI, build_path, family_for, parse_target_platforms
from edgekit.optimize.recipes import Recipe
from edgekit.optimize.results import CandidateResult
from tests.test_images_build import invoke as invoke_images
from tests.test_optimize_cli import assert_error, invoke


# --- pure decisions --------------------------------------------------------------------------------
def test_families_and_build_paths() -> None:
    vnni, plain = frozenset({"avx2", "avx512_vnni"}), frozenset({"avx2"})
    assert family_for("linux/amd64", host_platform="linux/amd64", host_flags=vnni) == X86_VNNI
    assert family_for("linux/amd64", host_platform="linux/amd64", host_flags=plain) == X86
    # another amd64 CPU than this one: no VNNI assumed
    assert family_for("linux/amd64", host_platform="linux/arm64", host_flags=vnni) == X86
    assert family_for("linux/arm64", host_platform="linux/amd64", host_flags=vnni) == ARM64
    assert ARM64.activation_types == ("int8",) and ARM64.reduce_range is False
    assert X86.activation_types == ("uint8",) and X86.reduce_range is None
    with pytest.raises(ConfigError, match="linux/s390x"):
        family_for("linux/s390x", host_platform="linux/amd64", host_flags=plain)
    assert build_path(Path("o/d.onnx"), "linux/arm64") == Path("o/d.linux-arm64.onnx")
    assert parse_target_platforms("linux/amd64, linux/arm64,linux/amd64") == ("linux/amd64", "linux/arm64")
    for bad in ("", "arm64", "linux/amd64,/x"):
        with pytest.raises(ConfigError):
            parse_target_platforms(bad)


def test_untimed_candidates_are_judged_on_fidelity_and_the_first_preferred_wins() -> None:
    metric, budget = fid.parse_metric("top1"), fid.parse_budget("1%", fid.parse_metric("top1"))
    assert judge_candidate(metric, budget, 0.995, 1.0, None)[0] == "in budget"
    assert judge_candidate(metric, budget, 0.95, 1.0, None)[0] == "over budget"
    def fidelity(score: float) -> fid.Fidelity:
        return fid.Fidelity(metric="top1", score=score, reference=1.0, cosine=1.0, max_abs=0.0, top1=score)

    first = CandidateResult(Recipe("static", activation_type="int8"), verdict="over budget",
                            fidelity=fidelity(0.9))
    second = CandidateResult(Recipe("static", activation_type="int8", calibration="entropy"), verdict="in budget",
                             fidelity=fidelity(0.995))
    third = CandidateResult(Recipe("static", activation_type="int8", calibration="minmax-ema"), verdict="in budget",
                            fidelity=fidelity(1.0))
    winner, reason = preferred_choice([first, second, third], metric, budget, 1.0, "linux/arm64")
    assert winner is second and "latency not measured on linux/arm64" in reason
    assert preferred_choice([first], metric, budget, 1.0, "linux/arm64")[0] is None


# --- end to end on the digits model ----------------------------------------------------------------
@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory, digits_dir: Path) -> dict[str, Path]:
    out = tmp_path_factory.mktemp("platforms") / "digits.onnx"
    result = invoke("quantize", digits_dir / "digits.onnx", "-o", out, "--calibration", digits_dir / "calib.npz",
                    "--eval", digits_dir / "eval.npz", "--labels", digits_dir / "eval_labels.txt",
                    "--max-drop", "1%", "--method", "static", "--per-channel", "--budget-time", "20s",
                    "--platform", "linux/amd64,linux/arm64", "--output", "json")
    assert result.exit_code == 0, result.stderr
    reports = json.loads(result.stdout)
    assert sorted(reports) == ["linux/amd64", "linux/arm64"]
    return {plat: Path(r["output"]) for plat, r in reports.items()}


def _report(model: Path) -> dict:
    return json.loads(model.with_name(model.name + ".report.json").read_text())


def test_foreign_platform_is_checked_not_timed(builds: dict[str, Path], digits_dir: Path) -> None:
    assert builds["linux/arm64"].name == "digits.linux-arm64.onnx"
    arm = _report(builds["linux/arm64"])
    assert arm["platform"] == "linux/arm64" and arm["timed_on"] is None
    assert arm["baseline"]["latency_p50_ms"] is None
    tried = [c for c in arm["candidates"] if c["verdict"] != "skipped"]
    assert tried and all(c["settings"]["activation_type"] == "int8" and not c["settings"]["reduce_range"]
                         for c in tried)
    assert all(c["latency_ratio"] is None for c in arm["candidates"])
    assert arm["result"]["settings"]["activation_type"] == "int8"
    assert "latency not measured on linux/arm64" in arm["reason"]
    # its fidelity, checked again independently: top-1 on the labelled eval split within 1 point of FP32
    with np.load(digits_dir / "eval.npz") as data:
        x = np.asarray(data[data.files[0]], dtype=np.float32)
    labels = np.array([int(v) for v in (digits_dir / "eval_labels.txt").read_text().split()])

    def accuracy(path: Path) -> float:
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        return float(np.mean(sess.run(None, {"input": x})[0].argmax(-1) == labels))

    assert accuracy(digits_dir / "digits.onnx") - accuracy(builds["linux/arm64"]) <= 0.01 + 1e-9


def test_host_platform_is_timed_as_today(builds: dict[str, Path]) -> None:
    if current_platform() != "linux/amd64":
        pytest.skip("the timed build is this host's; these tests expect an amd64 host")
    amd = _report(builds["linux/amd64"])
    assert amd["platform"] == "linux/amd64" and amd["timed_on"] == "linux/amd64"
    assert amd["baseline"]["latency_p50_ms"] > 0
    chosen = amd["result"]
    assert chosen is None or chosen["latency_ratio"] is not None


def test_the_builds_package_as_a_layer_each(builds: dict[str, Path], tmp_path: Path) -> None:
    flag = ",".join(f"{plat}={path}" for plat, path in builds.items())
    result = invoke_images("package", "--name", "digits", "--version", "3.0", "--platform", flag,
                           "-o", tmp_path / "layout", "--output", "json")
    assert result.exit_code == 0, result.stderr
    image = json.loads(result.stdout)
    assert len({layer["digest"] for layer in image["layers"].values()}) == 2


def test_platform_refuses_a_pinned_activation_type(digits_dir: Path, tmp_path: Path) -> None:
    args = ("quantize", digits_dir / "digits.onnx", "-o", tmp_path / "q.onnx", "--calibration",
            digits_dir / "calib.npz")
    assert_error(invoke(*args, "--platform", "linux/arm64", "--activation-type", "uint8"), 2, "--platform picks")
    assert_error(invoke(*args, "--platform", "linux/riscv64"), 2, "linux/riscv64")
    assert not list(tmp_path.iterdir())
