"""Golden probe: run the packaged probe inputs and compare with the packaged outputs.

This catches a model that loads but computes garbage on this device's hardware (a broken
accelerator kernel, a bad int8 path). ``probe.npz`` holds ``input/<name>`` and ``output/<name>``.
"""

from __future__ import annotations

import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgekit_agent.errors import ModelRejectedError
from edgekit_agent.runtime import Session


@dataclass(frozen=True)
class Probe:
    inputs: Mapping[str, np.ndarray[Any, Any]]
    outputs: Mapping[str, np.ndarray[Any, Any]]
    rtol: float
    atol: float


@dataclass(frozen=True)
class ProbeResult:
    ok: bool
    detail: str
    max_abs_err: float


def load_probe(path: Path, *, rtol: float, atol: float) -> Probe:
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: np.array(data[k]) for k in data.files}
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise ModelRejectedError(f"probe {path} cannot be read: {exc}") from exc
    inputs = {k.removeprefix("input/"): v for k, v in arrays.items() if k.startswith("input/")}
    outputs = {k.removeprefix("output/"): v for k, v in arrays.items() if k.startswith("output/")}
    if not inputs or not outputs:
        raise ModelRejectedError(f"probe {path} needs input/<name> and output/<name> arrays, "
                                 f"has {sorted(arrays)}")
    return Probe(inputs, outputs, rtol, atol)


def check_probe_fits(probe: Probe, session: Session) -> None:
    want_in = {t.name for t in session.inputs}
    want_out = {t.name for t in session.outputs}
    if set(probe.inputs) != want_in:
        raise ModelRejectedError(f"probe inputs {sorted(probe.inputs)} do not match model inputs {sorted(want_in)}")
    if not set(probe.outputs) <= want_out:
        raise ModelRejectedError(f"probe outputs {sorted(probe.outputs)} are not model outputs {sorted(want_out)}")


def run_probe(probe: Probe, session: Session) -> ProbeResult:
    """Run the probe; never raises (a crash of the model is a failed probe)."""
    names = list(probe.outputs)
    try:
        got = session.session.run(names, dict(probe.inputs))
    except Exception as exc:  # onnxruntime errors have no common base
        return ProbeResult(False, f"probe run failed: {str(exc).strip().splitlines()[0][:300]}", float("inf"))
    worst = 0.0
    for name, actual in zip(names, got, strict=True):
        expected = probe.outputs[name]
        actual = np.asarray(actual)
        if actual.shape != expected.shape:
            return ProbeResult(False, f"output {name} has shape {list(actual.shape)}, probe expects "
                                      f"{list(expected.shape)}", float("inf"))
        if expected.dtype.kind in "fc":
            diff = np.abs(actual.astype(np.float64) - expected.astype(np.float64))
            err = float(np.nanmax(diff)) if diff.size else 0.0
            if np.isnan(err):
                err = float("inf")
            worst = max(worst, err)
            if not np.allclose(actual, expected, rtol=probe.rtol, atol=probe.atol, equal_nan=True):
                return ProbeResult(False, f"output {name} differs from the golden probe: max abs error "
                                          f"{err:.3g} > tolerance (rtol {probe.rtol:g}, atol {probe.atol:g})", err)
        elif not np.array_equal(actual, expected):
            return ProbeResult(False, f"output {name} differs from the golden probe", float("inf"))
    return ProbeResult(True, f"{len(names)} output(s) within tolerance", worst)
