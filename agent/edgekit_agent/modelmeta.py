"""Model folder metadata (``edgekit.json``, schema 1) and the check a device runs before loading.

A model folder (what an image volume mounts at ``/model`` and what ``edgekit-agent fetch``
writes) holds ``model.onnx``, ``edgekit.json`` and ``probe.npz``. ``edgekit.json`` records the
sha256 and size of the model and the probe, the model's inputs and outputs, and what the
packager measured. ``verify_model_dir`` is the gate: nothing reaches onnxruntime unless the
files hash to what the metadata says.

Only the standard library is used here, so the check runs on any device.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from edgekit_agent import safejson
from edgekit_agent.errors import ModelIntegrityError, ModelMetadataError

__all__ = [
    "DTYPES",
    "METADATA_FILE",
    "MODEL_FILE",
    "PRECISIONS",
    "PROBE_FILE",
    "SCHEMA_VERSION",
    "FileRef",
    "ModelMetadata",
    "ProbeRef",
    "RuntimeRequirements",
    "TensorSpec",
    "file_sha256",
    "load_metadata",
    "parse_metadata",
    "verify_model_dir",
]

SCHEMA_VERSION = 1
METADATA_FILE = "edgekit.json"
MODEL_FILE = "model.onnx"
PROBE_FILE = "probe.npz"
PRECISIONS = ("fp32", "int8", "mixed")
# numpy dtype names of the ONNX tensor element types onnxruntime serves.
DTYPES = frozenset({
    "float32", "float16", "float64", "bfloat16",
    "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
    "bool", "string",
})

_CHUNK = 1 << 20


@dataclass(frozen=True)
class TensorSpec:
    """One model input or output: name, numpy dtype name, shape with symbolic dims as strings."""

    name: str
    dtype: str
    shape: tuple[int | str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


@dataclass(frozen=True)
class FileRef:
    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class ProbeRef:
    """The golden probe file and the tolerance its outputs must be reproduced with."""

    path: str
    sha256: str
    rtol: float
    atol: float
    size: int | None = None  # absent in images packaged before it was recorded

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "sha256": self.sha256, "rtol": self.rtol, "atol": self.atol}
        if self.size is not None:
            out["size"] = self.size
        return out


@dataclass(frozen=True)
class RuntimeRequirements:
    min_onnxruntime: str = "1.18"
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)

    def to_dict(self) -> dict[str, Any]:
        return {"min_onnxruntime": self.min_onnxruntime,
                "execution_providers": list(self.execution_providers)}


@dataclass(frozen=True)
class ModelMetadata:
    """The contents of ``edgekit.json``."""

    name: str
    version: str
    model: FileRef
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    ir_version: int
    precision: str
    probe: ProbeRef
    created: str
    runtime: RuntimeRequirements = field(default_factory=RuntimeRequirements)
    quantization: Mapping[str, Any] | None = None
    source: str | None = None
    schema: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema": self.schema,
            "name": self.name,
            "version": self.version,
            "model": self.model.to_dict(),
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "opset": self.opset,
            "ir_version": self.ir_version,
            "precision": self.precision,
            "quantization": dict(self.quantization) if self.quantization is not None else None,
            "probe": self.probe.to_dict(),
            "runtime": self.runtime.to_dict(),
            "created": self.created,
            "source": self.source,
        }

    def to_json(self) -> str:
        """Stable text (fixed key order, two-space indent, final newline): same metadata, same bytes."""
        return json.dumps(self.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n"


# --- parsing -------------------------------------------------------------------------------------
def _fail(where: str, what: str) -> ModelMetadataError:
    return ModelMetadataError(f"{METADATA_FILE}: {where}: {what}")


def _get(data: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in data:
        raise _fail(f"{where}{key}", "missing")
    return data[key]


def _str(data: Mapping[str, Any], key: str, where: str = "", *, optional: bool = False) -> Any:
    if optional and data.get(key) is None:
        return None
    value = _get(data, key, where)
    if not isinstance(value, str) or not value:
        raise _fail(f"{where}{key}", f"expected a non-empty string, got {value!r}")
    return value


def _int(data: Mapping[str, Any], key: str, where: str = "", *, minimum: int = 0) -> int:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise _fail(f"{where}{key}", f"expected an integer >= {minimum}, got {value!r}")
    return value


def _float(data: Mapping[str, Any], key: str, where: str) -> float:
    value = _get(data, key, where)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value < 0:
        raise _fail(f"{where}{key}", f"expected a finite number >= 0, got {value!r}")
    return float(value)


def _mapping(data: Mapping[str, Any], key: str, where: str = "") -> Mapping[str, Any]:
    value = _get(data, key, where)
    if not isinstance(value, Mapping):
        raise _fail(f"{where}{key}", "expected an object")
    return value


def _sha256(data: Mapping[str, Any], where: str) -> str:
    value = _str(data, "sha256", where)
    if len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
        raise _fail(f"{where}sha256", "expected 64 lowercase hex digits")
    return str(value)


def _relpath(data: Mapping[str, Any], where: str) -> str:
    value = _str(data, "path", where)
    pure = PurePosixPath(value)
    if pure.is_absolute() or ".." in pure.parts or "\\" in value or len(pure.parts) != 1:
        raise _fail(f"{where}path", f"must be a plain file name inside the model folder, got {value!r}")
    return str(value)


def _tensors(data: Mapping[str, Any], key: str) -> tuple[TensorSpec, ...]:
    value = _get(data, key, "")
    if not isinstance(value, Sequence) or isinstance(value, str | bytes) or not value:
        raise _fail(key, "expected a non-empty list")
    specs = []
    for i, item in enumerate(value):
        where = f"{key}[{i}]."
        if not isinstance(item, Mapping):
            raise _fail(f"{key}[{i}]", "expected an object")
        dtype = _str(item, "dtype", where)
        if dtype not in DTYPES:
            raise _fail(f"{where}dtype", f"unknown dtype {dtype!r}")
        shape = _get(item, "shape", where)
        if not isinstance(shape, Sequence) or isinstance(shape, str | bytes):
            raise _fail(f"{where}shape", "expected a list")
        dims: list[int | str] = []
        for dim in shape:
            if isinstance(dim, bool) or not isinstance(dim, int | str) or (isinstance(dim, int) and dim < 0):
                raise _fail(f"{where}shape", f"a dimension must be an int >= 0 or a symbol, got {dim!r}")
            dims.append(dim)
        specs.append(TensorSpec(name=str(_str(item, "name", where)), dtype=dtype, shape=tuple(dims)))
    return tuple(specs)


def parse_metadata(data: Mapping[str, Any]) -> ModelMetadata:
    """Build ``ModelMetadata`` from the decoded JSON; raise ``ModelMetadataError`` naming the bad field."""
    if not isinstance(data, Mapping):
        raise ModelMetadataError(f"{METADATA_FILE}: expected a JSON object")
    schema = _int(data, "schema", minimum=1)
    if schema != SCHEMA_VERSION:
        raise ModelMetadataError(f"{METADATA_FILE}: schema {schema} is not supported (this agent reads "
                                 f"schema {SCHEMA_VERSION})", hint="upgrade edgekit-agent")
    model = _mapping(data, "model")
    probe = _mapping(data, "probe")
    runtime_raw = data.get("runtime") or {}
    if not isinstance(runtime_raw, Mapping):
        raise _fail("runtime", "expected an object")
    providers = runtime_raw.get("execution_providers", ["CPUExecutionProvider"])
    if (not isinstance(providers, Sequence) or isinstance(providers, str)
            or not all(isinstance(p, str) for p in providers)):
        raise _fail("runtime.execution_providers", "expected a list of strings")
    min_ort = runtime_raw.get("min_onnxruntime", "1.18")
    if not isinstance(min_ort, str):
        raise _fail("runtime.min_onnxruntime", "expected a version string")
    precision = _str(data, "precision")
    if precision not in PRECISIONS:
        raise _fail("precision", f"expected one of {', '.join(PRECISIONS)}, got {precision!r}")
    quantization = data.get("quantization")
    if quantization is not None and not isinstance(quantization, Mapping):
        raise _fail("quantization", "expected an object or null")
    return ModelMetadata(
        schema=schema,
        name=_str(data, "name"),
        version=_str(data, "version"),
        model=FileRef(path=_relpath(model, "model."), sha256=_sha256(model, "model."),
                      size=_int(model, "size", "model.")),
        inputs=_tensors(data, "inputs"),
        outputs=_tensors(data, "outputs"),
        opset=_int(data, "opset", minimum=1),
        ir_version=_int(data, "ir_version", minimum=1),
        precision=precision,
        quantization=dict(quantization) if quantization is not None else None,
        probe=ProbeRef(path=_relpath(probe, "probe."), sha256=_sha256(probe, "probe."),
                       rtol=_float(probe, "rtol", "probe."), atol=_float(probe, "atol", "probe."),
                       size=_int(probe, "size", "probe.") if probe.get("size") is not None else None),
        runtime=RuntimeRequirements(min_onnxruntime=min_ort, execution_providers=tuple(providers)),
        created=_str(data, "created"),
        source=_str(data, "source", optional=True),
    )


def load_metadata(path: str | os.PathLike[str]) -> ModelMetadata:
    """Read and parse ``edgekit.json`` (``path`` is the file or the model folder)."""
    p = Path(path)
    if p.is_dir():
        p = p / METADATA_FILE
    try:
        raw = p.read_bytes()
    except FileNotFoundError as exc:
        raise ModelMetadataError(f"{p} does not exist",
                                 hint="is this a model folder made by `edgekit package`?") from exc
    except OSError as exc:
        raise ModelMetadataError(f"cannot read {p}: {exc.strerror}") from exc
    try:
        data = safejson.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ModelMetadataError(f"{p} is not valid JSON: {exc}") from exc
    return parse_metadata(data)


# --- verification --------------------------------------------------------------------------------
def file_sha256(path: str | os.PathLike[str]) -> tuple[str, int]:
    """The sha256 hex digest and size of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    size = 0
    with open(path, "rb") as fh:
        while chunk := fh.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _check_file(root: Path, rel: str, sha256: str, size: int | None, what: str) -> None:
    target = root / rel
    try:
        resolved = target.resolve(strict=True)
    except (FileNotFoundError, RuntimeError) as exc:
        raise ModelIntegrityError(f"{what} {target} is missing") from exc
    if resolved.parent != root.resolve() or not resolved.is_file():
        raise ModelIntegrityError(f"{what} {target} is not a regular file inside the model folder")
    try:
        actual, actual_size = file_sha256(resolved)
    except OSError as exc:
        raise ModelIntegrityError(f"cannot read {what} {target}: {exc.strerror}") from exc
    if size is not None and actual_size != size:
        raise ModelIntegrityError(f"{what} {target} has {actual_size} bytes, {METADATA_FILE} says {size}")
    if actual != sha256:
        raise ModelIntegrityError(f"{what} {target} has sha256 {actual[:16]}…, {METADATA_FILE} says "
                                  f"{sha256[:16]}…", hint="the model folder was modified or corrupted")


def verify_model_dir(path: str | os.PathLike[str]) -> ModelMetadata:
    """Check a model folder: metadata parses, model and probe hash to what it records.

    Raises ``ModelMetadataError`` (bad or missing metadata) or ``ModelIntegrityError`` (a file is
    missing or differs). Returns the metadata when everything matches.
    """
    root = Path(path)
    if not root.is_dir():
        raise ModelMetadataError(f"model folder {root} does not exist")
    meta = load_metadata(root / METADATA_FILE)
    _check_file(root, meta.model.path, meta.model.sha256, meta.model.size, "model")
    _check_file(root, meta.probe.path, meta.probe.sha256, meta.probe.size, "probe")
    return meta
