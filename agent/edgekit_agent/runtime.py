"""The onnxruntime adapter: execution provider choice, session creation, ONNX type tables.

Providers are chosen from what this onnxruntime build reports (``get_available_providers``), in
the order asked for (settings, else the build's own priority order), with the CPU provider always
last as the fallback. A session that fails to build with an accelerator is rebuilt on CPU alone.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnxruntime as ort

from edgekit_agent.errors import ModelRejectedError
from edgekit_agent.tensors import TensorInfo

log = logging.getLogger("edgekit_agent")

CPU = "CPUExecutionProvider"
# Providers that are present in a build but do not run a model locally.
_NOT_LOCAL = {"AzureExecutionProvider"}

# ONNX tensor type string -> numpy dtype.
ONNX_TO_NUMPY: dict[str, Any] = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int8)": np.int8, "tensor(int16)": np.int16, "tensor(int32)": np.int32, "tensor(int64)": np.int64,
    "tensor(uint8)": np.uint8, "tensor(uint16)": np.uint16, "tensor(uint32)": np.uint32,
    "tensor(uint64)": np.uint64, "tensor(bool)": np.bool_, "tensor(string)": np.object_,
}
def choose_providers(preferred: Sequence[str], available: Sequence[str] | None = None) -> list[str]:
    """The providers to ask for, in order: ``preferred`` (or all local ones) that exist, then CPU."""
    have = list(ort.get_available_providers() if available is None else available)
    wanted = list(preferred) if preferred else [p for p in have if p not in _NOT_LOCAL]
    chosen = []
    for name in wanted:
        if name in have and name not in chosen and name != CPU:
            chosen.append(name)
        elif name not in have:
            log.info("execution provider %s is not available on this device; skipping", name)
    chosen.append(CPU)
    return chosen


def _tensor_infos(args: Sequence[Any]) -> tuple[TensorInfo, ...]:
    out = []
    for a in args:
        dtype = np.dtype(ONNX_TO_NUMPY.get(a.type, np.object_))
        shape = tuple(d if isinstance(d, int) and d >= 0 else -1 for d in (a.shape or []))
        out.append(TensorInfo(a.name, dtype, shape))
    return tuple(out)


@dataclass(frozen=True)
class Session:
    """An onnxruntime session plus its I/O description. Safe to share between agent cores:
    ``InferenceSession.run`` may be called from several threads at once."""

    session: ort.InferenceSession
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    providers: tuple[str, ...]

    @property
    def output_names(self) -> list[str]:
        return [o.name for o in self.outputs]


def create_session(model_path: str, *, providers: Sequence[str] = (), intra_op_threads: int = 0,
                   spinning: bool = False) -> Session:
    """Build a session, preferring ``providers``; fall back to CPU only if an accelerator fails.

    Without ``spinning``, onnxruntime's idle pool threads sleep instead of busy-waiting for the next
    run: on a device whose cores the agent shares with applications (and, under abuse, with its own
    request handling) a spinning pool burns a core between requests and steals it from the rest."""
    opts = ort.SessionOptions()
    if intra_op_threads:
        opts.intra_op_num_threads = intra_op_threads
    opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "1" if spinning else "0")
    opts.log_severity_level = 3
    chosen = choose_providers(providers)
    try:
        try:
            sess = ort.InferenceSession(model_path, sess_options=opts, providers=chosen)
        except Exception as exc:  # onnxruntime raises several unrelated types
            if chosen == [CPU]:
                raise
            log.warning("session with %s failed (%s); falling back to %s", chosen, _first_line(exc), CPU)
            sess = ort.InferenceSession(model_path, sess_options=opts, providers=[CPU])
    except Exception as exc:
        raise ModelRejectedError(f"onnxruntime cannot load {model_path}: {_first_line(exc)}") from exc
    return Session(sess, _tensor_infos(sess.get_inputs()), _tensor_infos(sess.get_outputs()),
                   tuple(sess.get_providers()))


def version_tuple(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        if not digits:
            break
        parts.append(int(digits))
    return tuple(parts)


def check_runtime_version(minimum: str) -> None:
    if version_tuple(ort.__version__) < version_tuple(minimum):
        raise ModelRejectedError(f"model needs onnxruntime >= {minimum}, this device has {ort.__version__}",
                                 hint="upgrade the agent image")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__
