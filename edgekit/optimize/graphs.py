"""Small pure graph queries used to decide which nodes stay in FP32."""

from __future__ import annotations

from collections import defaultdict

import onnx

COMPUTE_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm"}


def producers(graph: onnx.GraphProto) -> dict[str, onnx.NodeProto]:
    return {out: node for node in graph.node for out in node.output}


def consumers(graph: onnx.GraphProto) -> dict[str, list[onnx.NodeProto]]:
    table: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            table[name].append(node)
    return table


def subgraph_reads(graph: onnx.GraphProto) -> set[str]:
    """Names the bodies of control-flow nodes (``If``, ``Loop``, ``Scan``) read, at any depth: a
    rewrite that renames or rescales such a tensor would change what the body sees."""
    names: set[str] = set()
    for node in graph.node:
        for attr in node.attribute:
            bodies = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for body in bodies:
                names.update(i for n in body.node for i in n.input)
                names |= subgraph_reads(body)
    return names


def tail_nodes(graph: onnx.GraphProto, compute_nodes: int = 0) -> list[str]:
    """Node names from the outputs back to the last compute op (Conv/MatMul/Gemm), which stays
    quantized; with ``compute_nodes`` = k, the walk also passes k compute ops (the model's head).

    Post-processing tails mix values of very different ranges (box pixels and scores) and
    quantizing them ruins task accuracy while cosine barely moves.
    """
    made_by = producers(graph)
    seen: set[str] = set()
    result: list[str] = []
    frontier = [(made_by[o.name], compute_nodes) for o in graph.output if o.name in made_by]
    while frontier:
        node, budget = frontier.pop()
        key = node.name or node.output[0]
        if key in seen:
            continue
        if node.op_type in COMPUTE_OPS:
            if budget <= 0:
                continue
            budget -= 1
        seen.add(key)
        result.append(key)
        for name in node.input:
            if name in made_by:
                frontier.append((made_by[name], budget))
    return result


def ensure_node_names(model: onnx.ModelProto) -> onnx.ModelProto:
    """Quantizers address nodes by name; give unnamed nodes stable names."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)
    return model
