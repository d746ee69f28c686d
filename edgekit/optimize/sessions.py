"""onnxruntime sessions: one place that sets threads and spinning and translates ORT errors."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnxruntime as ort

from edgekit.errors import DataError, InvalidModelError, first_line

ort.set_default_logger_severity(3)


def make_session(
    model: str | os.PathLike[str] | bytes,
    *,
    threads: int = 1,
    spinning: bool | None = None,
    optimization: str = "all",
    optimized_path: str | None = None,
) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (1 inter-op thread, sequential execution)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    opts.graph_optimization_level = {
        "none": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
        "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
        "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }[optimization]
    if optimized_path:
        opts.optimized_model_filepath = optimized_path
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own untyped exceptions
        where = "model" if isinstance(model, bytes) else Path(model).name
        raise InvalidModelError(f"onnxruntime cannot load {where}: {first_line(exc, 300)}") from exc


def run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    try:
        return [np.asarray(o) for o in session.run(None, feed)]
    except Exception as exc:
        raise DataError(f"inference failed: {first_line(exc, 300)}") from exc
