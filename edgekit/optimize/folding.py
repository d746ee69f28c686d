"""Fold constant scale-and-shift ops after a Conv into the Conv's weights and bias.

Some exports keep an affine step after each convolution as separate ``Mul``/``Add`` nodes with a
constant operand (PP-OCRv4's backbone: a learnable scalar scale and bias after every Conv, 2 of
each per block). onnxruntime's optimizer leaves them (a scalar of shape ``[1]``), and a static
quantizer then puts a quantize/dequantize pair after each: two extra roundings per block that
carry no information. ``conv(x) * a + c`` is ``conv'(x)`` with ``W' = a W`` and ``b' = a b + c``,
exactly (up to float rounding), so folding them first removes those roundings and ops.

Pure: a model in, a model and the names of the nodes folded away out.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import numpy_helper

from edgekit.optimize.graphs import consumers, subgraph_reads

__all__ = ["fold_conv_affine"]


def _channel_constant(value: np.ndarray, channels: int) -> np.ndarray | None:
    """``value`` as one number per output channel when it broadcasts against a Conv output
    ``[N, C, ...]`` as a scalar or per channel; else None."""
    if value.size == 1:
        return np.full(channels, float(value.reshape(-1)[0]))
    squeezed = value.reshape(-1)
    if squeezed.size != channels:
        return None
    shape = list(value.shape)
    # per channel: [C,1,1] or [1,C,1,1] (the channel axis counted from the right, rank 4 output)
    if len(shape) >= 3 and shape[-3] == channels and all(d == 1 for d in shape[-2:]) and all(
        d == 1 for d in shape[:-3]
    ):
        return squeezed.astype(np.float64)
    return None


def fold_conv_affine(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """``model`` with every ``Mul``/``Add`` by a constant that alone follows a Conv folded into it
    (repeatedly: ``Conv→Mul→Add`` folds both), and the names of the nodes removed."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {i.name: i for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    hidden = subgraph_reads(graph)  # a control-flow body reads it: keep its name and values
    removed: list[str] = []
    changed = True
    while changed:
        changed = False
        read_by = consumers(graph)
        for conv in graph.node:
            if conv.op_type != "Conv" or conv.input[1] not in inits:
                continue
            after = read_by.get(conv.output[0], [])
            if len(after) != 1 or conv.output[0] in outputs or conv.output[0] in hidden:
                continue
            step = after[0]
            if step.op_type not in ("Mul", "Add") or len(step.input) != 2:
                continue
            const = next((i for i in step.input if i != conv.output[0]), None)
            if const is None or const not in inits or conv.output[0] not in step.input:
                continue
            weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            per_channel = _channel_constant(numpy_helper.to_array(inits[const]), weight.shape[0])
            if per_channel is None:
                continue
            bias = (
                numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                if len(conv.input) > 2 and conv.input[2]
                else np.zeros(weight.shape[0])
            )
            if step.op_type == "Mul":
                weight = weight * per_channel.reshape((-1,) + (1,) * (weight.ndim - 1))
                bias = bias * per_channel
            else:
                bias = bias + per_channel
            w_name, b_name = f"{conv.name}_folded_W", f"{conv.name}_folded_B"
            for name, arr in ((w_name, weight), (b_name, bias)):
                tensor = numpy_helper.from_array(arr.astype(np.float32), name)
                if name in inits:
                    inits[name].CopyFrom(tensor)
                else:
                    graph.initializer.append(tensor)
                    inits[name] = graph.initializer[-1]
            conv.input[1] = w_name
            if len(conv.input) > 2:
                conv.input[2] = b_name
            else:
                conv.input.append(b_name)
            conv.output[0] = step.output[0]
            graph.node.remove(step)
            removed.append(step.name or step.output[0])
            changed = True
            break
    used = {i for n in graph.node for i in n.input}
    kept = [i for i in graph.initializer if i.name in used or i.name in {g.name for g in graph.input}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    return out, removed
