"""Tensor descriptions and the Open Inference Protocol's datatypes: numpy only, no onnxruntime, so
the JSON parser process (``parser_process.py``) can decode requests without loading the runtime."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

# Open Inference Protocol datatype <-> numpy dtype (BYTES is not served: no string models here).
OIP_TO_NUMPY: dict[str, Any] = {
    "BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
    "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64,
    "FP16": np.float16, "FP32": np.float32, "FP64": np.float64,
}
NUMPY_TO_OIP: dict[Any, str] = {np.dtype(v): k for k, v in OIP_TO_NUMPY.items()}


@dataclass(frozen=True)
class TensorInfo:
    """A model input or output as the session sees it; symbolic dims are ``-1``."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]

    @property
    def oip_datatype(self) -> str:
        return NUMPY_TO_OIP.get(self.dtype, "BYTES")


__all__ = ["NUMPY_TO_OIP", "OIP_TO_NUMPY", "TensorInfo"]
