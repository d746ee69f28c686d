"""Bias correction: take out the per-channel mean shift that int8 weights add to each Conv.

Rounding a layer's weights to int8 moves the mean of each of its output channels: the error is
``(W_q - W) x``, and its mean ``(W_q - W) E[x]`` is not zero, since ``E[x]`` is not (after a
ReLU or HardSwish it is mostly positive). For each quantized Conv of a QDQ model this measures
``E[x]``, the mean of each input channel as the quantized model sees it on calibration data, and
moves the Conv's int32 bias by ``-(W_q - W) E[x]`` (summed over the kernel, per group), so the
layer's output mean matches what its FP32 weights give on the same input. Each layer is corrected
for its own error only: correcting layer outputs against FP32's end to end instead would count the
error inherited from earlier layers once per layer (measured: it destroyed the PP-OCR detector's
text mask).

``bias_plan`` and ``weight_shift`` decide (pure); ``correct_biases`` runs the quantized model.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.optimize.datasets import Dataset
from edgekit.optimize.graphs import producers
from edgekit.optimize.sessions import make_session, run

__all__ = ["BiasSite", "bias_plan", "channel_means", "correct_biases", "corrected_bias", "weight_shift"]

# Calibration samples the input means are taken over: a mean per channel over every position of
# every sample, so a few images already give thousands of values per channel.
SAMPLES = 8


@dataclass(frozen=True)
class BiasSite:
    """A quantized Conv whose bias can move: the tensor it reads, its FP32 weight (an initializer
    of the FP32 model), the DequantizeLinear inputs of its int8 weight and of its int32 bias, and
    its group count."""

    node: str
    input: str
    weight: str
    weight_q: tuple[str, str, str]
    bias: str
    bias_scale: str
    group: int


def bias_plan(quantized: onnx.ModelProto, fp32: onnx.ModelProto) -> list[BiasSite]:
    """The Convs of a QDQ model whose weight and bias are both quantized (DequantizeLinear of
    initializers) and whose FP32 weight is found in ``fp32`` under the same node name."""
    graph = quantized.graph
    made_by = producers(graph)
    inits = {i.name for i in graph.initializer}
    fp32_weights = {
        n.name: n.input[1]
        for n in fp32.graph.node
        if n.op_type == "Conv" and len(n.input) > 1
    }
    fp32_inits = {i.name for i in fp32.graph.initializer}
    sites = []
    for node in graph.node:
        if node.op_type != "Conv" or len(node.input) < 3 or fp32_weights.get(node.name) not in fp32_inits:
            continue
        weight, bias = made_by.get(node.input[1]), made_by.get(node.input[2])
        if not (_dq_of_initializers(weight, inits) and _dq_of_initializers(bias, inits)):
            continue
        assert weight is not None and bias is not None
        group = next((a.i for a in node.attribute if a.name == "group"), 1)
        w_zp = weight.input[2] if len(weight.input) > 2 else ""
        sites.append(BiasSite(
            node.name, node.input[0], fp32_weights[node.name], (weight.input[0], weight.input[1], w_zp),
            bias.input[0], bias.input[1], int(group),
        ))
    return sites


def _dq_of_initializers(node: onnx.NodeProto | None, inits: set[str]) -> bool:
    return (
        node is not None
        and node.op_type == "DequantizeLinear"
        and all(name in inits for name in node.input[:2])
    )


def channel_means(outputs: Iterable[np.ndarray]) -> np.ndarray:
    """Mean of each channel (axis 1) over every sample and position."""
    total: np.ndarray | None = None
    count = 0
    for out in outputs:
        arr = np.asarray(out, np.float64)
        part = arr.sum(axis=tuple(i for i in range(arr.ndim) if i != 1))
        total = part if total is None else total + part
        count += int(arr.size // arr.shape[1])
    if total is None or count == 0:
        raise ValueError("no outputs to average")
    return total / count


def dequantized(values: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None) -> np.ndarray:
    """A per-channel (axis 0) or per-tensor DequantizeLinear of a weight."""
    shape = (-1,) + (1,) * (values.ndim - 1) if np.ndim(scale) else ()
    zp = np.zeros_like(scale) if zero_point is None else zero_point.astype(np.float64)
    return (values.astype(np.float64) - np.reshape(zp, shape)) * np.reshape(scale, shape)


def weight_shift(fp32: np.ndarray, quantized: np.ndarray, input_means: np.ndarray, group: int = 1) -> np.ndarray:
    """Per output channel, the mean output error ``(W_q - W) E[x]`` of a Conv with weights
    ``[O, C/group, k...]`` on inputs whose channels have means ``input_means`` (positions away
    from the padded border)."""
    error = (quantized.astype(np.float64) - fp32.astype(np.float64)).reshape(fp32.shape[0], fp32.shape[1], -1).sum(-1)
    out_per_group = fp32.shape[0] // group
    shift = np.empty(fp32.shape[0])
    for g in range(group):
        rows = slice(g * out_per_group, (g + 1) * out_per_group)
        means = input_means[g * fp32.shape[1] : (g + 1) * fp32.shape[1]]
        shift[rows] = error[rows] @ means
    return shift


def corrected_bias(bias_q: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The int32 bias whose dequantized value is the old one minus ``shift`` (per channel)."""
    scale = np.broadcast_to(np.asarray(scale, np.float64), bias_q.shape)
    new = np.round(bias_q.astype(np.float64) - np.asarray(shift, np.float64) / np.where(scale == 0, 1, scale))
    info = np.iinfo(np.int32)
    return np.clip(new, info.min, info.max).astype(np.int32)


def _with_outputs(model: onnx.ModelProto, names: Sequence[str]) -> bytes:
    extra = onnx.ModelProto()
    extra.CopyFrom(model)
    present = {o.name for o in extra.graph.output} | {i.name for i in extra.graph.input}
    for name in names:
        if name not in present:
            extra.graph.output.append(onnx.ValueInfoProto(name=name))
            present.add(name)
    return extra.SerializeToString()


def _means(model: bytes, names: Sequence[str], data: Dataset, threads: int) -> dict[str, np.ndarray]:
    session = make_session(model, threads=threads)
    index = {o.name: i for i, o in enumerate(session.get_outputs())}
    inputs = {i.name for i in session.get_inputs()}
    parts: dict[str, list[np.ndarray]] = {n: [] for n in names}
    for feed in data.batches(1):
        outs = run(session, feed)
        for name in names:
            # one mean per sample keeps memory to a vector per channel
            parts[name].append(channel_means([feed[name] if name in inputs else outs[index[name]]]))
    return {n: np.mean(v, axis=0) for n, v in parts.items()}


def correct_biases(
    reference: Path, quantized: Path, out: Path, data: Dataset, *, samples: int = SAMPLES, threads: int = 1
) -> list[str]:
    """Write ``quantized`` (QDQ, built from the FP32 model ``reference``) with the bias of each
    quantized Conv corrected for its weights' rounding to ``out``; returns the Convs corrected."""
    model = onnx.load(str(quantized))
    fp32 = onnx.load(str(reference))
    sites = bias_plan(model, fp32)
    if sites:
        names = list(dict.fromkeys(s.input for s in sites))
        means = _means(_with_outputs(model, names), names, data.head(samples), threads)
        inits = {i.name: i for i in model.graph.initializer}
        fp32_inits = {i.name: i for i in fp32.graph.initializer}

        def array(name: str) -> np.ndarray:
            return numpy_helper.to_array(inits[name])

        for site in sites:
            values, scale, zp = site.weight_q
            w_q = dequantized(array(values), array(scale), array(zp) if zp else None)
            shift = weight_shift(numpy_helper.to_array(fp32_inits[site.weight]), w_q, means[site.input], site.group)
            fixed = corrected_bias(array(site.bias), array(site.bias_scale), shift)
            inits[site.bias].CopyFrom(numpy_helper.from_array(fixed, site.bias))
    onnx.save(model, str(out))
    return [s.node for s in sites]
