"""Control flow (``If``, ``Loop``, ``Scan``) before quantization.

onnxruntime's quantizers (1.32) do not quantize inside subgraphs in static QDQ mode, and they
cannot quantize weights held as Constant nodes inside a branch. So:

- an ``If`` whose condition is constant (computed from initializers, Constants and the shapes
  of inputs whose dims are fixed, as ``prepare`` pins them from the data) is folded: the branch
  it always takes is inlined into the main graph, where it is quantized like the rest. That
  changes no result for any input the prepared model accepts;
- every other control-flow node stays as it is, its body in FP32, and ``kept_subgraphs`` says
  which nodes, what compute they hold and what they depend on, for the report.

A condition that depends on a graph input is not folded even when every sample holds the same
value (a sample rate of 16000 in each file): the model must still answer other inputs as
before.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgekit.optimize.graphs import COMPUTE_OPS, producers

__all__ = ["CONTROL_FLOW_OPS", "KeptSubgraph", "fold_constant_ifs", "kept_subgraphs", "unvarying_scalars"]

CONTROL_FLOW_OPS = {"If", "Loop", "Scan"}
# Ops whose value is not a function of their inputs: never evaluated ahead of time.
_RANDOM_OPS = {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Multinomial", "Bernoulli"}


@dataclass(frozen=True)
class KeptSubgraph:
    """A control-flow node left as it is: its body runs in FP32."""

    node: str
    op_type: str
    nodes_inside: int
    compute_inside: tuple[str, ...]  # op types of the compute ops in its bodies
    depends_on: tuple[str, ...]  # graph inputs its condition (If) or trip count/inputs depend on
    same_in_data: tuple[str, ...] = ()  # "sr=16000": inputs it depends on that never vary in the data

    @property
    def reason(self) -> str:
        what = "its condition" if self.op_type == "If" else "its body"
        if self.depends_on:
            why = f"{what} depends on input(s) {', '.join(repr(n) for n in self.depends_on)}"
        else:
            why = f"{what} is not constant"
        if self.same_in_data:
            why += (
                f" ({', '.join(self.same_in_data)} in every sample: not folded, as the model must still"
                " answer other values; an export for that value would fold it)"
            )
        return f"{why}; onnxruntime's quantizers leave subgraph bodies in FP32"

    def line(self) -> str:
        inside = f"{self.nodes_inside} nodes inside"
        if self.compute_inside:
            inside += f", {len(self.compute_inside)} compute ({', '.join(sorted(set(self.compute_inside)))})"
        return f"{self.op_type} {self.node!r} ({inside}): {self.reason}"

    def to_dict(self) -> dict[str, object]:
        return {
            "node": self.node,
            "op_type": self.op_type,
            "nodes_inside": self.nodes_inside,
            "compute_inside": list(self.compute_inside),
            "depends_on": list(self.depends_on),
            "same_in_data": list(self.same_in_data),
            "reason": self.reason,
        }


def _bodies(node: onnx.NodeProto) -> list[onnx.GraphProto]:
    graphs: list[onnx.GraphProto] = []
    for attr in node.attribute:
        if attr.type == onnx.AttributeProto.GRAPH:
            graphs.append(attr.g)
        elif attr.type == onnx.AttributeProto.GRAPHS:
            graphs.extend(attr.graphs)
    return graphs


def _walk(graph: onnx.GraphProto) -> list[onnx.NodeProto]:
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        nodes.append(node)
        for body in _bodies(node):
            nodes.extend(_walk(body))
    return nodes


def _input_shapes(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Values that the fixed dims of graph inputs decide: ``Shape`` nodes over them, and
    ``Gather`` of a constant index from such a shape (``Shape(x)[1]``, which exporters emit),
    when every dim they select is fixed. A model's input shapes are pinned before quantization,
    so these are constants."""
    dims: dict[str, list[int | None]] = {}
    for value in graph.input:
        tensor = value.type.tensor_type
        if tensor.HasField("shape"):
            dims[value.name] = [
                d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in tensor.shape.dim
            ]
    fixed: dict[str, np.ndarray] = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value":
                    fixed[node.output[0]] = numpy_helper.to_array(attr.t)
    shapes: dict[str, list[int | None]] = {}
    values: dict[str, np.ndarray] = {}
    for node in graph.node:
        out_shape: tuple[int, ...] | None = None  # of the value, when not 1-D
        if node.op_type == "Shape" and node.input[0] in dims:
            attrs = {a.name: a.i for a in node.attribute}
            whole = dims[node.input[0]]
            selected = whole[slice(attrs.get("start", 0), attrs.get("end", len(whole)))]
            shapes[node.output[0]] = selected
        elif node.op_type == "Gather" and node.input[0] in shapes and node.input[1] in fixed:
            index = fixed[node.input[1]].astype(np.int64)
            try:
                selected = [shapes[node.input[0]][int(i)] for i in index.reshape(-1)]
            except IndexError:
                continue
            out_shape = index.shape
        else:
            continue
        if all(d is not None for d in selected):
            value = np.asarray(selected, np.int64)
            values[node.output[0]] = value.reshape(out_shape) if out_shape is not None else value
    return values


def _constant_nodes(graph: onnx.GraphProto) -> tuple[set[str], list[onnx.NodeProto], dict[str, np.ndarray]]:
    """Values known ahead (shapes of pinned inputs), and the nodes that compute constants from
    them, initializers and Constants alone (graph nodes are in topological order, as ONNX
    requires)."""
    shapes = _input_shapes(graph)
    known = ({t.name for t in graph.initializer} - {v.name for v in graph.input}) | set(shapes)
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if _bodies(node) or node.op_type in _RANDOM_OPS or node.domain not in ("", "ai.onnx"):
            continue
        if node.output and node.output[0] in shapes:
            continue
        if all(not name or name in known for name in node.input):
            nodes.append(node)
            known.update(o for o in node.output if o)
    return known, nodes, shapes


def _evaluate(
    model: onnx.ModelProto, nodes: list[onnx.NodeProto], given: Mapping[str, np.ndarray], name: str
) -> np.ndarray | None:
    """The value of constant tensor ``name``, computed by onnx's reference evaluator on the
    nodes it depends on (``given``: values known ahead); None when that fails."""
    from onnx.reference import ReferenceEvaluator

    made_by = {o: n for n in nodes for o in n.output}
    inits = {t.name: t for t in model.graph.initializer}
    inits.update({k: numpy_helper.from_array(v, k) for k, v in given.items()})
    needed: list[onnx.NodeProto] = []
    used_inits: dict[str, onnx.TensorProto] = {}
    seen: set[str] = set()
    stack = [name]
    while stack:
        tensor = stack.pop()
        if tensor in seen or not tensor:
            continue
        seen.add(tensor)
        if tensor in made_by:
            node = made_by[tensor]
            if node not in needed:
                needed.append(node)
            stack.extend(node.input)
        elif tensor in inits:
            used_inits[tensor] = inits[tensor]
    order = {id(n): i for i, n in enumerate(nodes)}
    needed.sort(key=lambda n: order[id(n)])
    graph = helper.make_graph(
        needed,
        "condition",
        [],
        [helper.make_tensor_value_info(name, onnx.TensorProto.UNDEFINED, None)],
        list(used_inits.values()),
    )
    probe = helper.make_model(graph, opset_imports=list(model.opset_import), ir_version=model.ir_version)
    try:
        values: Any = ReferenceEvaluator(probe).run(None, {})  # a list when outputs are not named
        return np.asarray(values[0])
    except Exception:  # whatever the evaluator cannot run simply stays unfolded
        return None


def _renamed_body(body: onnx.GraphProto, rename: Mapping[str, str]) -> None:
    """Rename, in place, the uses of renamed tensors inside nested bodies (their outer scope)."""
    for node in body.node:
        for i, name in enumerate(node.input):
            if name in rename:
                node.input[i] = rename[name]
        for nested in _bodies(node):
            _renamed_body(nested, rename)


def _inline(node: onnx.NodeProto, branch: onnx.GraphProto) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """The nodes and initializers that replace ``node`` by ``branch``: the branch's own tensors
    are prefixed with the If's name so they cannot clash with the main graph's."""
    prefix = f"{node.name or node.output[0]}/"
    own = {o for n in branch.node for o in n.output if o} | {t.name for t in branch.initializer}
    rename = {name: prefix + name for name in own}
    nodes: list[onnx.NodeProto] = []
    for inner in branch.node:
        copy = onnx.NodeProto()
        copy.CopyFrom(inner)
        copy.name = prefix + (inner.name or inner.output[0])
        for i, name in enumerate(copy.input):
            copy.input[i] = rename.get(name, name)
        for i, name in enumerate(copy.output):
            copy.output[i] = rename.get(name, name)
        for nested in _bodies(copy):
            _renamed_body(nested, rename)
        nodes.append(copy)
    inits = []
    for t in branch.initializer:
        copy_t = onnx.TensorProto()
        copy_t.CopyFrom(t)
        copy_t.name = rename[t.name]
        inits.append(copy_t)
    for value, out in zip(branch.output, node.output, strict=True):
        nodes.append(helper.make_node("Identity", [rename.get(value.name, value.name)], [out], name=f"{prefix}{out}"))
    return nodes, inits


def fold_constant_ifs(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """A copy of ``model`` with every main-graph ``If`` whose condition is constant replaced by
    the branch it takes, and one note per folded node."""
    folded = onnx.ModelProto()
    folded.CopyFrom(model)
    graph = folded.graph
    notes: list[str] = []
    while True:  # an inlined branch may hold an If that is constant in turn
        known, const_nodes, given = _constant_nodes(graph)
        target = next((n for n in graph.node if n.op_type == "If" and n.input[0] in known), None)
        value = _evaluate(folded, const_nodes, given, target.input[0]) if target is not None else None
        if target is None or value is None or value.size != 1:
            return folded, notes
        taken = bool(value.reshape(-1)[0])
        branch = next(a.g for a in target.attribute if a.name == ("then_branch" if taken else "else_branch"))
        nodes, inits = _inline(target, branch)
        position = list(graph.node).index(target)
        kept = list(graph.node)
        del graph.node[:]
        graph.node.extend(kept[:position] + nodes + kept[position + 1 :])
        graph.initializer.extend(inits)
        count = f"{len(branch.node)} node{'' if len(branch.node) == 1 else 's'}"
        notes.append(
            f"folded If {target.name!r}: its condition is always {taken}, "
            f"so its {'then' if taken else 'else'} branch ({count}) was inlined"
        )


def _inputs_behind(graph: onnx.GraphProto, tensors: list[str]) -> tuple[str, ...]:
    """The graph inputs that ``tensors`` are computed from."""
    made_by = producers(graph)
    inputs = {v.name for v in graph.input} - {t.name for t in graph.initializer}
    found: list[str] = []
    seen: set[str] = set()
    stack = list(tensors)
    while stack:
        name = stack.pop()
        if name in seen or not name:
            continue
        seen.add(name)
        if name in inputs:
            found.append(name)
        elif name in made_by:
            stack.extend(made_by[name].input)
    return tuple(sorted(found))


def kept_subgraphs(model: onnx.ModelProto) -> list[KeptSubgraph]:
    """The main graph's control-flow nodes (after folding): each one's body stays FP32."""
    kept = []
    for node in model.graph.node:
        bodies = _bodies(node)
        if not bodies:
            continue
        inside = [n for body in bodies for n in _walk(body)]
        # An If hinges on its condition; a Loop on its trip count and condition; a Scan on its inputs.
        hinge = [node.input[0]] if node.op_type == "If" else [n for n in node.input if n]
        kept.append(
            KeptSubgraph(
                node=node.name or node.output[0],
                op_type=node.op_type,
                nodes_inside=len(inside),
                compute_inside=tuple(n.op_type for n in inside if n.op_type in COMPUTE_OPS),
                depends_on=_inputs_behind(model.graph, hinge),
            )
        )
    return kept


def unvarying_scalars(feeds: Iterable[Mapping[str, np.ndarray]], names: Iterable[str]) -> dict[str, str]:
    """``{name: value}`` for the single-value inputs among ``names`` that hold the same value in
    every feed (a sample rate of 16000 in each file)."""
    wanted = set(names)
    seen: dict[str, np.ndarray] = {}
    varying: set[str] = set()
    for feed in feeds:
        for name in wanted - varying:
            value = feed.get(name)
            if value is None or value.size != 1:
                varying.add(name)
            elif name not in seen:
                seen[name] = value
            elif not np.array_equal(seen[name], value):
                varying.add(name)
    return {name: str(seen[name].reshape(-1)[0]) for name in sorted(seen) if name not in varying}
