"""Load ONNX models, turning every way a file can be wrong into one clear error."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from edgekit.errors import InvalidModelError, MissingExternalDataError, ModelNotFoundError, first_line


def check_path(path: str | os.PathLike[str]) -> Path:
    p = Path(path)
    if not p.exists():
        raise ModelNotFoundError(f"model file not found: {p}")
    if p.is_dir():
        raise InvalidModelError(f"{p} is a directory, not an ONNX file")
    if p.stat().st_size == 0:
        raise InvalidModelError(f"{p} is empty")
    return p


def external_data_files(model: onnx.ModelProto) -> list[str]:
    """Names of the external data files the model's initializers refer to."""
    names: set[str] = set()
    for tensor in _all_initializers(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for entry in tensor.external_data:
                if entry.key == "location":
                    names.add(entry.value)
    return sorted(names)


def _all_initializers(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    tensors = list(model.graph.initializer)
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                tensors.append(attr.t)
    return tensors


def load_model(path: str | os.PathLike[str], *, load_external: bool = True) -> onnx.ModelProto:
    """Parse and check a model; external data is verified to exist (and loaded when asked)."""
    p = check_path(path)
    try:
        model = onnx.load(str(p), load_external_data=False)
    except (DecodeError, RuntimeError, ValueError) as exc:
        raise InvalidModelError(
            f"{p} is not a valid ONNX model (truncated or another format): "
            f"{first_line(exc) if str(exc) else type(exc).__name__}"
        ) from exc
    if not model.graph.node and not model.graph.output:
        raise InvalidModelError(f"{p} is not a valid ONNX model (no graph found)")
    missing = [name for name in external_data_files(model) if not (p.parent / name).is_file()]
    if missing:
        raise MissingExternalDataError(
            f"{p} refers to external data that is missing: {', '.join(missing)}",
            hint="keep the .data file(s) next to the model",
        )
    if load_external and external_data_files(model):
        try:
            onnx.load_external_data_for_model(model, str(p.parent))
        except (OSError, ValueError) as exc:
            raise MissingExternalDataError(f"cannot read external data of {p}: {exc}") from exc
    try:
        onnx.checker.check_model(model if not external_data_files(model) else str(p))
    except onnx.checker.ValidationError as exc:
        raise InvalidModelError(f"{p} fails the ONNX checker: {first_line(exc)}") from exc
    return model
