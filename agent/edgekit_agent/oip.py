"""Open Inference Protocol (KServe v2) request decoding and response encoding, pure functions.

Inference bodies are JSON, or JSON followed by raw little-endian tensors (the binary tensor data
extension): ``decode_infer_request`` checks every name, shape and datatype against the model's
inputs before any tensor is built (``decode_infer_header`` does it from the JSON part alone, so the
server reads a binary part only once its size is known to be right); ``encode_infer_response``
returns JSON or JSON plus raw tensors. Each malformed request raises ``InferenceRequestError`` with its HTTP status.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from edgekit_agent.errors import InferenceRequestError
from edgekit_agent.parsing import FlatData, load_request_json
from edgekit_agent.tensors import NUMPY_TO_OIP, OIP_TO_NUMPY, TensorInfo

HEADER_LENGTH = "Inference-Header-Content-Length"


def _bad(message: str, status: int = 400) -> InferenceRequestError:
    return InferenceRequestError(message, status=status)


# -- request decoding (pure) ----------------------------------------------------------------------
@dataclass(frozen=True)
class InferRequest:
    id: str | None
    feeds: dict[str, np.ndarray[Any, Any]]
    outputs: list[str]
    binary_outputs: set[str]


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                              for d in value):
        raise _bad(f"{where}.shape must be a list of non-negative integers, got {value!r}"[:300])
    return tuple(value)


def _check_fits(tensor: TensorInfo, shape: tuple[int, ...], datatype: str) -> None:
    expected = tensor.oip_datatype
    if datatype != expected:
        raise _bad(f"input {tensor.name!r} has datatype {datatype}, the model expects {expected}")
    if len(shape) != len(tensor.shape) or any(want not in (-1, got) for want, got in zip(tensor.shape, shape,
                                                                                        strict=True)):
        want_text = "[" + ", ".join("N" if d < 0 else str(d) for d in tensor.shape) + "]"
        raise _bad(f"input {tensor.name!r} has shape {list(shape)}, the model expects {want_text}")


@dataclass(frozen=True)
class BinaryInput:
    """An input whose bytes follow the JSON header: ``size`` bytes at ``offset`` of the binary part."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    size: int


@dataclass(frozen=True)
class InferHeader:
    """The JSON part of a request, checked; its binary inputs (exactly ``binary_bytes``) not read yet."""

    id: str | None
    feeds: dict[str, np.ndarray[Any, Any]]
    binary_inputs: list[BinaryInput]
    outputs: list[str]
    binary_outputs: set[str]

    @property
    def binary_bytes(self) -> int:
        return sum(b.size for b in self.binary_inputs)

    def complete(self, binary: bytes) -> InferRequest:
        """The request, with ``binary`` (``binary_bytes`` long) cut into its tensors without a copy."""
        if len(binary) != self.binary_bytes:
            raise _bad(f"the binary part has {len(binary)} bytes, the inputs declare {self.binary_bytes}")
        feeds = dict(self.feeds)
        for b in self.binary_inputs:
            arr = np.frombuffer(binary, dtype=b.dtype.newbyteorder("<"), count=math.prod(b.shape), offset=b.offset)
            feeds[b.name] = arr.astype(b.dtype, copy=False).reshape(b.shape)
        return InferRequest(self.id, feeds, self.outputs, self.binary_outputs)


def decode_infer_request(body: bytes, header_length: int | None,
                         inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], *,
                         max_depth: int = 32) -> InferRequest:
    """Parse and validate an OIP v2 inference request against the model's inputs and outputs."""
    if header_length is None:
        json_part, binary = body, b""
    else:
        if header_length < 0 or header_length > len(body):
            raise _bad(f"{HEADER_LENGTH} {header_length} is outside the body of {len(body)} bytes")
        json_part, binary = body[:header_length], body[header_length:]
    header = decode_infer_header(json_part, len(binary), inputs, outputs, max_depth=max_depth)
    return header.complete(binary)


def decode_infer_header(json_part: bytes, binary_length: int,
                        inputs: Sequence[TensorInfo], outputs: Sequence[TensorInfo], *,
                        max_depth: int = 32) -> InferHeader:
    """Parse and validate a request's JSON part, knowing only how long its binary part is: a body
    whose binary inputs do not add up to ``binary_length`` is refused before that part is read."""
    req = load_request_json(json_part, max_depth=max_depth)
    if not isinstance(req, dict):
        raise _bad("request body must be a JSON object")
    raw_inputs = req.get("inputs")
    if not isinstance(raw_inputs, list) or not raw_inputs:
        raise _bad("request needs a non-empty 'inputs' list")
    by_name = {t.name: t for t in inputs}
    feeds: dict[str, np.ndarray[Any, Any]] = {}
    binaries: list[BinaryInput] = []
    offset = 0
    for i, item in enumerate(raw_inputs):
        where = f"inputs[{i}]"
        if not isinstance(item, dict):
            raise _bad(f"{where} must be an object")
        name = item.get("name")
        if not isinstance(name, str):
            raise _bad(f"{where}.name must be a string")
        if name not in by_name:
            raise _bad(f"unknown input {name!r}; the model's inputs are {sorted(by_name)}")
        if name in feeds or any(b.name == name for b in binaries):
            raise _bad(f"input {name!r} is given twice")
        datatype = item.get("datatype")
        if not isinstance(datatype, str) or datatype not in OIP_TO_NUMPY:
            raise _bad(f"{where}.datatype {datatype!r} is not one of {', '.join(OIP_TO_NUMPY)}")
        shape = _shape(item.get("shape"), where)
        tensor = by_name[name]
        _check_fits(tensor, shape, datatype)
        dtype = np.dtype(OIP_TO_NUMPY[datatype])
        count = math.prod(shape)
        params = item.get("parameters") or {}
        if not isinstance(params, dict):
            raise _bad(f"{where}.parameters must be an object")
        size = params.get("binary_data_size")
        if size is not None:
            if "data" in item:
                raise _bad(f"input {name!r} has both 'data' and binary_data_size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _bad(f"input {name!r}: binary_data_size must be a non-negative integer")
            if size != count * dtype.itemsize:
                raise _bad(f"input {name!r}: binary_data_size {size} does not match shape {list(shape)} of "
                           f"{datatype} ({count * dtype.itemsize} bytes)")
            if offset + size > binary_length:
                raise _bad(f"input {name!r}: body ends after {binary_length - offset} of {size} binary bytes")
            binaries.append(BinaryInput(name, dtype, shape, offset, size))
            offset += size
        else:
            if "data" not in item:
                raise _bad(f"input {name!r} has no 'data' (or parameters.binary_data_size)")
            data = item["data"]
            if isinstance(data, FlatData) and data.count != count:
                # counted in the text: a mismatch costs no conversion
                raise _bad(f"input {name!r}: data has {data.count} elements, shape {list(shape)} needs {count}")
            try:
                arr = data.to_array(dtype) if isinstance(data, FlatData) else np.asarray(data, dtype=dtype)
            except (ValueError, TypeError, OverflowError) as exc:
                raise _bad(f"input {name!r}: data is not a regular array of {datatype}: {exc}"[:300]) from exc
            if arr.size != count:
                raise _bad(f"input {name!r}: data has {arr.size} elements, shape {list(shape)} needs {count}")
            feeds[name] = arr.reshape(shape)
    if offset != binary_length:
        raise _bad(f"{binary_length - offset} unused bytes after the binary inputs")
    missing = sorted(set(by_name) - set(feeds) - {b.name for b in binaries})
    if missing:
        raise _bad(f"missing input(s) {missing}")
    out_names = [o.name for o in outputs]
    all_binary = _flag(req.get("parameters"), "binary_data_output")
    wanted: list[str] = []
    binary_out: set[str] = set()
    raw_outputs = req.get("outputs")
    if raw_outputs is not None:
        if not isinstance(raw_outputs, list):
            raise _bad("'outputs' must be a list")
        for j, o in enumerate(raw_outputs):
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise _bad(f"outputs[{j}] must be an object with a 'name'")
            if o["name"] not in out_names:
                raise _bad(f"unknown output {o['name']!r}; the model's outputs are {out_names}")
            wanted.append(o["name"])
            if all_binary or _flag(o.get("parameters"), "binary_data"):
                binary_out.add(o["name"])
    if not wanted:
        wanted = out_names
        if all_binary:
            binary_out = set(out_names)
    req_id = req.get("id")
    return InferHeader(str(req_id) if req_id is not None else None, feeds, binaries, wanted, binary_out)


def _flag(params: Any, key: str) -> bool:
    if params is None:
        return False
    if not isinstance(params, dict):
        raise _bad("'parameters' must be an object")
    value = params.get(key, False)
    if not isinstance(value, bool):
        raise _bad(f"parameter {key} must be true or false")
    return value


def encode_infer_response(model_name: str, model_version: str, req: InferRequest,
                          results: Sequence[np.ndarray[Any, Any]]) -> tuple[bytes, int | None]:
    """The response body and, when it carries binary outputs, the JSON header length."""
    outs: list[dict[str, Any]] = []
    blobs: list[bytes] = []
    for name, arr in zip(req.outputs, results, strict=True):
        arr = np.asarray(arr)
        entry: dict[str, Any] = {"name": name, "datatype": NUMPY_TO_OIP.get(arr.dtype, "BYTES"),
                                 "shape": list(arr.shape)}
        if name in req.binary_outputs:
            blob = np.ascontiguousarray(arr, dtype=arr.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(blob)}
            blobs.append(blob)
        else:
            entry["data"] = arr.ravel().tolist()
        outs.append(entry)
    doc: dict[str, Any] = {"model_name": model_name, "model_version": model_version, "outputs": outs}
    if req.id is not None:
        doc["id"] = req.id
    head = json.dumps(doc, separators=(",", ":")).encode()
    if not blobs:
        return head, None
    return head + b"".join(blobs), len(head)
