"""Get a model ready for quantization: fixed input shapes, opset ≥ 13, onnxruntime's
pre-processing (shape inference + graph cleanup), each step recorded for the report."""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import onnx
from onnx import version_converter

from edgekit.errors import InvalidModelError, QuantizationError, first_line
from edgekit.optimize.shapes import fix_input_shapes
from edgekit.optimize.subgraphs import fold_constant_ifs


@dataclass
class Prepared:
    path: Path
    steps: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


@contextlib.contextmanager
def quiet_onnxruntime_logs() -> Iterator[None]:
    """onnxruntime's quantization tools log warnings through the root logger; keep them out of
    the user's terminal (the report says what matters)."""
    import onnxruntime

    onnxruntime.set_default_logger_severity(3)  # its C++ warnings (unused initializers) too
    root = logging.getLogger()
    level = root.level
    # CRITICAL: quant_pre_process logs a whole traceback at ERROR when its optimization step
    # fails, and goes on without it.
    root.setLevel(logging.CRITICAL)
    try:
        # The calibrators also print progress to stdout, which would corrupt piped output.
        with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
            yield
    finally:
        root.setLevel(level)


@contextlib.contextmanager
def in_directory(path: Path) -> Iterator[None]:
    """quant_pre_process drops temporary files into the working directory: run it elsewhere."""
    old = os.getcwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(old)


def upgrade_opset(model: onnx.ModelProto, minimum: int = 13) -> tuple[onnx.ModelProto, str | None]:
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if current >= minimum:
        return model, None
    try:
        return version_converter.convert_version(model, minimum), f"opset {current} → {minimum} (per-channel needs 13)"
    except Exception as exc:
        raise QuantizationError(f"cannot convert opset {current} to {minimum}: {first_line(exc)}") from exc


def _rejected(model: onnx.ModelProto) -> str | None:
    """Why onnxruntime refuses to load ``model`` as the search will (fully optimized: its
    constant folding re-infers types inside subgraphs), or None."""
    from edgekit.optimize.sessions import make_session

    try:
        make_session(model.SerializeToString())
    except InvalidModelError as exc:
        return exc.one_line()
    return None


def pin_shapes(
    model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]
) -> tuple[onnx.ModelProto, dict[str, tuple[int, ...]], list[str]]:
    """``model`` with as many of ``shapes`` pinned as onnxruntime still accepts, the shapes
    pinned, and one warning per input left symbolic.

    Pinning is an optimization (symbolic shape inference, constant Ifs); some models with
    control flow stop type-checking when an input's shape is fixed (a branch's rank then
    contradicts the other's), and such an input keeps its symbolic shape.
    """
    fixed = fix_input_shapes(model, shapes)
    if not shapes or _rejected(fixed) is None or _rejected(model) is not None:
        return fixed, dict(shapes), []
    pinned: dict[str, tuple[int, ...]] = {}
    warnings: list[str] = []
    for name, shape in shapes.items():
        reason = _rejected(fix_input_shapes(model, {**pinned, name: shape}))
        if reason is None:
            pinned[name] = shape
        else:
            warnings.append(f"input {name!r} kept symbolic: pinned to {list(shape)}, {reason[:200]}")
    return fix_input_shapes(model, pinned), pinned, warnings


def prepare(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]], workdir: Path) -> Prepared:
    """Write ``workdir/prepared.onnx``: shapes fixed, opset upgraded, ``If`` nodes with a
    constant condition folded, pre-processed."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    steps: list[str] = []
    warnings: list[str] = []
    if shapes:
        model, pinned, warnings = pin_shapes(model, shapes)
        if pinned:
            steps.append("fixed input shapes " + ", ".join(f"{k}={list(v)}" for k, v in pinned.items()))
    model, note = upgrade_opset(model)
    if note:
        steps.append(note)
    model, notes = fold_constant_ifs(model)
    steps += notes
    src = workdir / "fixed.onnx"
    onnx.save(model, str(src))
    out = workdir / "prepared.onnx"
    scratch = Path(tempfile.mkdtemp(dir=workdir, prefix="pre-"))
    for skip_symbolic in (False, True):
        try:
            with in_directory(scratch), quiet_onnxruntime_logs():
                quant_pre_process(str(src), str(out), skip_symbolic_shape=skip_symbolic, auto_merge=True)
            steps.append(
                "onnxruntime pre-processing" + (" (symbolic shape inference skipped)" if skip_symbolic else "")
            )
            return Prepared(out, steps, warnings)
        except Exception as exc:
            warnings.append(
                f"pre-processing {'without' if skip_symbolic else 'with'} symbolic shape inference "
                f"failed: {first_line(exc, 200)}"
            )
    # Pre-processing is an optimization; the fixed model still quantizes.
    warnings.append("pre-processing skipped")
    return Prepared(src, steps, warnings)
