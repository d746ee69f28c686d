"""``inspect_model``: what a data scientist and a device need to know about an ONNX file."""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper

from edgekit.optimize.loading import external_data_files, load_model

Dim = int | str | None

QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}
QOPERATOR_OPS = {
    "QLinearConv",
    "QLinearMatMul",
    "QLinearAdd",
    "QLinearMul",
    "QLinearConcat",
    "QLinearGlobalAveragePool",
    "QLinearAveragePool",
    "QLinearSigmoid",
    "QLinearLeakyRelu",
    "QGemm",
    "QLinearSoftmax",
    "QAttention",
}
DYNAMIC_OPS = {"MatMulInteger", "ConvInteger", "DynamicQuantizeLinear", "DynamicQuantizeMatMul"}


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str
    shape: tuple[Dim, ...] | None

    @property
    def symbolic(self) -> bool:
        return self.shape is None or any(not isinstance(d, int) or d <= 0 for d in self.shape)

    def shape_text(self) -> str:
        if self.shape is None:
            return "?"
        return "[" + ",".join("?" if d is None else str(d) for d in self.shape) + "]"


@dataclass(frozen=True)
class ModelInfo:
    path: str
    size_bytes: int
    ir_version: int
    opset: int
    opsets: dict[str, int]
    producer: str
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    parameters: int
    initializer_bytes: int
    external_data: tuple[str, ...]
    nodes: int
    op_histogram: dict[str, int] = field(default_factory=dict)
    quantization: str = "none"  # none | qdq | qoperator | dynamic | mixed
    metadata: dict[str, str] = field(default_factory=dict)  # the model's metadata_props
    output_ops: dict[str, str] = field(default_factory=dict)  # output name -> op that produces it

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["inputs"] = [dict(asdict(t), shape=list(t.shape) if t.shape is not None else None) for t in self.inputs]
        data["outputs"] = [dict(asdict(t), shape=list(t.shape) if t.shape is not None else None) for t in self.outputs]
        data["external_data"] = list(self.external_data)
        return data


def dtype_name(elem_type: int) -> str:
    try:
        return str(np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)))
    except (KeyError, TypeError, ValueError):
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def tensor_info(value: onnx.ValueInfoProto) -> TensorInfo:
    ttype = value.type.tensor_type
    shape: tuple[Dim, ...] | None = None
    if ttype.HasField("shape"):
        dims: list[Dim] = []
        for d in ttype.shape.dim:
            if d.HasField("dim_value"):
                dims.append(int(d.dim_value))
            elif d.HasField("dim_param"):
                dims.append(d.dim_param)
            else:
                dims.append(None)
        shape = tuple(dims)
    return TensorInfo(value.name, dtype_name(ttype.elem_type), shape)


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Real inputs (older exporters also list initializers as graph inputs)."""
    inits = {t.name for t in model.graph.initializer}
    return [v for v in model.graph.input if v.name not in inits]


def quantization_state(ops: Counter[str]) -> str:
    kinds = [
        name
        for name, opset in (("qdq", QDQ_OPS), ("qoperator", QOPERATOR_OPS), ("dynamic", DYNAMIC_OPS))
        if any(ops.get(op) for op in opset)
    ]
    if not kinds:
        return "none"
    if len(kinds) == 1:
        return kinds[0]
    if kinds == ["qdq", "qoperator"] or "dynamic" in kinds:
        return "mixed"
    return "mixed"


def _count_ops(graph: onnx.GraphProto, ops: Counter[str]) -> int:
    count = 0
    for node in graph.node:
        key = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        ops[key] += 1
        count += 1
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                count += _count_ops(attr.g, ops)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    count += _count_ops(g, ops)
    return count


def inspect_model(path: str | os.PathLike[str], model: onnx.ModelProto | None = None) -> ModelInfo:
    p = Path(path)
    model = model if model is not None else load_model(p, load_external=False)
    ops: Counter[str] = Counter()
    nodes = _count_ops(model.graph, ops)
    params = 0
    init_bytes = 0
    # Some exporters (Paddle) store weights as Constant nodes rather than initializers.
    constants = [a.t for n in model.graph.node if n.op_type == "Constant" for a in n.attribute if a.name == "value"]
    for t in [*model.graph.initializer, *constants]:
        n = int(np.prod(t.dims)) if len(t.dims) else 1
        params += n
        with contextlib.suppress(KeyError, TypeError, ValueError):
            init_bytes += n * np.dtype(helper.tensor_dtype_to_np_dtype(t.data_type)).itemsize
    ext = tuple(external_data_files(model))
    size = p.stat().st_size + sum((p.parent / e).stat().st_size for e in ext if (p.parent / e).exists())
    opsets = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    producer = " ".join(x for x in (model.producer_name, model.producer_version) if x)
    outputs = {o.name for o in model.graph.output}
    return ModelInfo(
        path=str(p),
        size_bytes=size,
        ir_version=int(model.ir_version),
        opset=opsets.get("ai.onnx", 0),
        opsets=opsets,
        producer=producer,
        inputs=tuple(tensor_info(v) for v in graph_inputs(model)),
        outputs=tuple(tensor_info(v) for v in model.graph.output),
        parameters=params,
        initializer_bytes=init_bytes,
        external_data=ext,
        nodes=nodes,
        op_histogram=dict(ops.most_common()),
        quantization=quantization_state(ops),
        metadata={p.key: p.value for p in model.metadata_props},
        output_ops={name: n.op_type for n in model.graph.node for name in n.output if name in outputs},
    )
