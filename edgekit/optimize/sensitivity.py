"""Which nodes hurt most when quantized: per-node error from onnxruntime's QDQ debugging tools.

For each compute node (Conv, MatMul, Gemm) we compare the quantized model's tensors with the FP32
model's (signal-to-quantization-noise ratio, dB) and score the node by how much SQNR it loses
from its inputs (activations and weights) to its output: the nodes that add the most error are
the first to keep in FP32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from edgekit.optimize.datasets import Dataset
from edgekit.optimize.graphs import COMPUTE_OPS, consumers
from edgekit.optimize.preparing import quiet_onnxruntime_logs

_FOLDED = {"Relu", "Clip", "LeakyRelu", "BatchNormalization", "HardSwish", "Sigmoid"}
CLEAN_DB = 100.0  # SQNR we credit to exact inputs (the graph's own inputs)


@dataclass(frozen=True)
class NodeError:
    node: str
    op_type: str
    sqnr_db: float  # output vs FP32, in the quantized model
    added_db: float  # how much worse the output is than the node's inputs


def rank_nodes(float_model: Path, qdq_model: Path, data: Dataset, workdir: Path, samples: int = 4) -> list[NodeError]:
    """Nodes of ``float_model`` ranked from most to least sensitive."""
    from onnxruntime.quantization.qdq_loss_debug import (
        collect_activations,
        compute_signal_to_quantization_noice_ratio,
        compute_weight_error,
        create_weight_matching,
        modify_model_output_intermediate_tensors,
    )

    subset = data.head(samples)

    class Reader:
        """A CalibrationDataReader (collect_activations iterates it)."""

        def __init__(self) -> None:
            self.it = iter(subset.batches(1))

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.it, None)

        def __iter__(self) -> Reader:
            return self

        def __next__(self) -> dict[str, np.ndarray]:
            return next(self.it)

    aug_f, aug_q = workdir / "sens-float.onnx", workdir / "sens-qdq.onnx"
    with quiet_onnxruntime_logs():
        # Only the tensors around compute ops: saving every tensor costs several GB on a detector.
        kinds = sorted(COMPUTE_OPS | _FOLDED)
        modify_model_output_intermediate_tensors(str(float_model), str(aug_f), op_types_for_saving=kinds)
        modify_model_output_intermediate_tensors(
            str(qdq_model), str(aug_q), op_types_for_saving=[*kinds, "DequantizeLinear"]
        )
        float_acts = collect_activations(str(aug_f), Reader())
        qdq_acts = collect_activations(str(aug_q), Reader())
        # Tensors of the same name in both models: the quantized model's value carries all error
        # accumulated up to that point (inputs, weights and the node's own arithmetic).
        # The dequantized copy is preferred: where the quantizer folded a Relu into its producer, the
        # raw tensor is the pre-activation value and only the dequantized one matches FP32's meaning.
        act_err = {}
        for name, values in float_acts.items():
            quantized = qdq_acts.get(f"{name}_DequantizeLinear_Output", qdq_acts.get(name))
            if quantized is not None:
                act_err[name] = {"xmodel_err": compute_signal_to_quantization_noice_ratio(values, quantized)}
        try:
            weight_err = compute_weight_error(create_weight_matching(str(float_model), str(qdq_model)))
        except Exception:  # weight matching fails on some graphs; activations still rank nodes
            weight_err = {}
    for p in (aug_f, aug_q):
        p.unlink(missing_ok=True)
    graph = onnx.load(str(float_model), load_external_data=False).graph
    ranked: list[NodeError] = []
    users = consumers(graph)
    for node in graph.node:
        if node.op_type not in COMPUTE_OPS or not node.output:
            continue
        # The quantizer folds a following Relu/Clip into the node, whose output then carries the
        # activation's name: follow such single-consumer chains to the measured tensor.
        out = node.output[0]
        while out not in act_err and len(users.get(out, [])) == 1 and users[out][0].op_type in _FOLDED:
            out = users[out][0].output[0]
        if out not in act_err:
            continue
        out_db = act_err[out].get("xmodel_err", math.inf)
        ins = [act_err[t].get("xmodel_err", math.inf) for t in node.input if t in act_err]
        ins += [weight_err[t] for t in node.input if t in weight_err]
        in_db = min([v for v in ins if math.isfinite(v)] or [CLEAN_DB])
        if math.isfinite(out_db):
            # What this node adds: the drop in agreement with FP32 from its inputs to its output.
            ranked.append(NodeError(node.name, node.op_type, out_db, max(0.0, min(in_db, CLEAN_DB) - out_db)))
    ranked.sort(key=lambda n: (-n.added_db, n.sqnr_db))
    return ranked
