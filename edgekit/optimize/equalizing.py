"""Cross-layer equalization: rescale the channels between two Convs so their weight ranges match.

Per-channel int8 weights give each output channel of a Conv its own scale, but the next Conv
reads all those channels through one weight tensor whose input channels can differ in range by
orders of magnitude (and a depthwise Conv quantizes each of them on its own few weights). For a
Conv ``A`` feeding a Conv ``B`` directly or through a ReLU, ``B(relu(A(x)))`` is unchanged when
output channel ``i`` of ``A`` is divided by ``s_i > 0`` and input channel ``i`` of ``B``
multiplied by it, since ``relu(x / s) = relu(x) / s``. With ``s_i = sqrt(r_A,i / r_B,i)`` (the
channel's largest absolute weight in ``A`` and in ``B``) both ranges become ``sqrt(r_A,i r_B,i)``
(Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias Correction", 2019).

Only pairs where this is exact are touched: HardSwish, HardSigmoid, Sigmoid or an affine step in
between are not positively homogeneous, so their pairs are left alone (PP-OCRv4's backbone has
HardSwish after most Convs; see docs/quantization.md for which pairs it equalizes).

Pure: a model in, the equalized model and the pairs equalized out.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.optimize.graphs import consumers, subgraph_reads

__all__ = ["equalization_pairs", "equalization_scales", "equalize"]

# Activations f with f(x / s) = f(x) / s for s > 0: equalizing across them is exact.
HOMOGENEOUS = {"Relu"}


def equalization_scales(out_ranges: np.ndarray, in_ranges: np.ndarray) -> np.ndarray:
    """``s_i = sqrt(r_A,i / r_B,i)``; 1 where either range is 0 (a dead channel stays as it is)."""
    ok = (out_ranges > 0) & (in_ranges > 0)
    return np.where(ok, np.sqrt(np.where(ok, out_ranges, 1.0) / np.where(ok, in_ranges, 1.0)), 1.0)


def _group(node: onnx.NodeProto) -> int:
    return next((int(a.i) for a in node.attribute if a.name == "group"), 1)


def equalization_pairs(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, onnx.NodeProto]]:
    """(A, B): a Conv whose only reader is Conv ``B`` (directly or through a ReLU read by ``B``
    alone), ``B`` ungrouped or depthwise (its input channel ``i`` is then one weight slice), both
    with initializer weights. ``A`` may be grouped: its output channel ``i`` is its weights' row
    ``i`` and bias ``i`` either way."""
    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    hidden = subgraph_reads(graph)  # a control-flow body reads it: it must keep its values
    read_by = consumers(graph)
    pairs = []
    for a in graph.node:
        if a.op_type != "Conv" or a.input[1] not in inits or a.output[0] in outputs or a.output[0] in hidden:
            continue
        nxt = read_by.get(a.output[0], [])
        if len(nxt) == 1 and nxt[0].op_type in HOMOGENEOUS and not {nxt[0].output[0]} & (outputs | hidden):
            nxt = read_by.get(nxt[0].output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != "Conv" or nxt[0].input[1] not in inits:
            continue
        b = nxt[0]
        if b.input[0] == a.output[0] or any(p.op_type in HOMOGENEOUS and p.output[0] == b.input[0]
                                              for p in read_by.get(a.output[0], [])):
            channels = inits[a.input[1]].dims[0]
            w_b = inits[b.input[1]].dims
            depthwise = _group(b) == channels and w_b[1] == 1
            if _group(b) == 1 or depthwise:
                pairs.append((a, b))
    return pairs


def equalize(model: onnx.ModelProto, rounds: int = 3) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with every pair of ``equalization_pairs`` equalized (``rounds`` times, as a
    Conv can be the ``B`` of one pair and the ``A`` of the next), and ``"A->B"`` per pair."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    shared = _shared_initializers(graph)
    pairs = [(a, b) for a, b in equalization_pairs(out) if not ({*a.input[1:], *b.input[1:2]} & shared)]
    for _ in range(rounds):
        for a, b in pairs:
            w_a = numpy_helper.to_array(inits[a.input[1]]).astype(np.float64)
            w_b = numpy_helper.to_array(inits[b.input[1]]).astype(np.float64)
            depthwise = _group(b) != 1
            r_a = np.abs(w_a).reshape(w_a.shape[0], -1).max(axis=1)
            r_b = np.abs(w_b).reshape(w_b.shape[0], -1).max(axis=1) if depthwise else \
                np.abs(np.moveaxis(w_b, 1, 0)).reshape(w_b.shape[1], -1).max(axis=1)
            s = equalization_scales(r_a, r_b)
            w_a = w_a / s.reshape((-1,) + (1,) * (w_a.ndim - 1))
            if depthwise:
                w_b = w_b * s.reshape((-1,) + (1,) * (w_b.ndim - 1))
            else:
                w_b = w_b * s.reshape((1, -1) + (1,) * (w_b.ndim - 2))
            _put(inits, a.input[1], w_a)
            _put(inits, b.input[1], w_b)
            if len(a.input) > 2 and a.input[2]:
                _put(inits, a.input[2], numpy_helper.to_array(inits[a.input[2]]).astype(np.float64) / s)
    return out, [f"{a.name}->{b.name}" for a, b in pairs]


def _put(inits: dict[str, onnx.TensorProto], name: str, value: np.ndarray) -> None:
    inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))


def _shared_initializers(graph: onnx.GraphProto) -> set[str]:
    """Initializers read by more than one node: rescaling them for one pair would change another."""
    seen: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            seen[name] = seen.get(name, 0) + 1
    return {name for name, count in seen.items() if count > 1}
