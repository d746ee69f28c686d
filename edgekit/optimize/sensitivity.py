"""Which nodes hurt most when quantized: per-node error from onnxruntime's QDQ debugging tools.

For every quantized tensor we measure the signal-to-quantization-noise ratio (SQNR, dB) of its
own quantize/dequantize step and of the weights; a node's score is the worst SQNR among the
tensors it reads. Low SQNR = sensitive: those nodes are the first to keep in FP32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgekit.optimize.datasets import Dataset
from edgekit.optimize.graphs import COMPUTE_OPS
from edgekit.optimize.preparing import quiet_onnxruntime_logs


@dataclass(frozen=True)
class NodeError:
    node: str
    op_type: str
    sqnr_db: float


def rank_nodes(float_model: Path, qdq_model: Path, data: Dataset, workdir: Path, samples: int = 4) -> list[NodeError]:
    """Nodes of ``float_model`` ranked from most to least sensitive."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_activation_error,
        compute_weight_error,
        create_activation_matching,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    subset = Dataset({k: v[:samples] for k, v in data.arrays.items()}, data.source)

    class Reader:
        def __init__(self) -> None:
            self.it = iter(subset.batches(1))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

    aug_f, aug_q = workdir / "sens-float.onnx", workdir / "sens-qdq.onnx"
    with quiet_onnxruntime_logs():
        modify_model_output_intermediate_tensors(str(float_model), str(aug_f))
        modify_model_output_intermediate_tensors(str(qdq_model), str(aug_q))
        float_acts = collect_activations(str(aug_f), Reader())
        qdq_acts = collect_activations(str(aug_q), Reader())
        act_err = compute_activation_error(create_activation_matching(qdq_acts, float_acts))
        try:
            weight_err = compute_weight_error(create_weight_matching(str(float_model), str(qdq_model)))
        except Exception:  # weight matching fails on some graphs; activations still rank nodes
            weight_err = {}
    for p in (aug_f, aug_q):
        p.unlink(missing_ok=True)
    graph = onnx.load(str(float_model), load_external_data=False).graph
    ranked: list[NodeError] = []
    for node in graph.node:
        scores = [act_err[t]["qdq_err"] for t in node.input if t in act_err]
        scores += [weight_err[t] for t in node.input if t in weight_err]
        scores = [s for s in scores if math.isfinite(s)]
        if scores and (node.op_type in COMPUTE_OPS or node.op_type in _QUANTIZED_OPS):
            ranked.append(NodeError(node.name, node.op_type, min(scores)))
    ranked.sort(key=lambda n: n.sqnr_db)
    return ranked


_QUANTIZED_OPS = {
    "Add",
    "Mul",
    "Concat",
    "Sigmoid",
    "HardSigmoid",
    "Relu",
    "Clip",
    "AveragePool",
    "MaxPool",
    "GlobalAveragePool",
    "Resize",
    "Transpose",
    "Reshape",
    "Softmax",
    "LeakyRelu",
    "HardSwish",
    "Split",
    "Squeeze",
    "Unsqueeze",
    "Gather",
    "Pad",
    "Where",
    "InstanceNormalization",
    "LayerNormalization",
    "BatchNormalization",
}
