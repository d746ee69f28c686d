"""Input shapes: parse ``NAME=D1,D2,...``, find each input's batch axis, and pin a model's
symbolic dimensions."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING

import onnx

from edgekit.errors import ConfigError, DataError
from edgekit.optimize.inspecting import ModelInfo, TensorInfo, graph_inputs

if TYPE_CHECKING:
    from edgekit.optimize.datasets import Dataset  # datasets imports this module

Shapes = dict[str, tuple[int, ...]]
BatchAxes = dict[str, int | None]


def _fixed(d: object) -> bool:
    return isinstance(d, int) and d > 0


def batch_axes(inputs: Sequence[TensorInfo]) -> BatchAxes:
    """The axis each input's samples run along, or None for an input that cannot be batched.

    The batch dimension is the symbolic name most inputs carry on axis 0 (``batch``, ``N``); an
    input that carries it elsewhere (an RNN state ``[2,batch,H]``) is batched there. A scalar
    has no batch axis, nor has an input of fixed shape beside symbolic ones unless it leads with
    1. Where every input is fixed, axis 0 counts samples as it always did. An unknown rank is
    read from the data, batched on axis 0.
    """
    leading = Counter(i.shape[0] for i in inputs if i.shape and isinstance(i.shape[0], str))
    name = leading.most_common(1)[0][0] if leading else None
    all_fixed = all(i.shape is not None and all(_fixed(d) for d in i.shape) for i in inputs)
    axes: BatchAxes = {}
    for info in inputs:
        shape = info.shape
        if shape is None:
            axes[info.name] = 0
        elif not shape:
            axes[info.name] = None
        elif name is not None and name in shape:
            axes[info.name] = shape.index(name)
        elif not _fixed(shape[0]) or all_fixed or shape[0] == 1:
            axes[info.name] = 0
        else:
            axes[info.name] = None
    return axes


def parse_input_shapes(specs: Iterable[str]) -> Shapes:
    """``["x=1,3,640,640", "mask=1,640"]`` -> ``{"x": (1,3,640,640), "mask": (1,640)}``."""
    shapes: Shapes = {}
    for spec in specs:
        name, sep, dims = spec.partition("=")
        if not sep or not name.strip() or not dims.strip():
            raise ConfigError(f"expected NAME=D1,D2,... got {spec!r}", field="--input-shape")
        try:
            values = tuple(int(d) for d in dims.replace("x", ",").split(","))
        except ValueError as exc:
            raise ConfigError(f"dimensions must be integers in {spec!r}", field="--input-shape") from exc
        if any(v <= 0 for v in values):
            raise ConfigError(f"dimensions must be positive in {spec!r}", field="--input-shape")
        shapes[name.strip()] = values
    return shapes


def resolve_shape(
    info: TensorInfo, given: tuple[int, ...] | None, batch: int = 1, axis: int | None = 0
) -> tuple[int, ...]:
    """A concrete shape for an input: the given one (checked against fixed dims) or the model's
    own with its symbolic batch dimension (``axis``) read as the batch size."""
    if given is not None:
        if info.shape is not None:
            if len(given) != len(info.shape):
                raise DataError(
                    f"input {info.name!r} has rank {len(info.shape)} {info.shape_text()}, got shape {list(given)}"
                )
            for want, got in zip(info.shape, given, strict=True):
                if isinstance(want, int) and want > 0 and want != got:
                    raise DataError(f"input {info.name!r} needs {info.shape_text()}, got {list(given)}")
        return given
    if info.shape is None:
        raise DataError(f"input {info.name!r} has no known rank", hint=f"pass --input-shape {info.name}=D1,D2,...")
    dims: list[int] = []
    for i, d in enumerate(info.shape):
        if isinstance(d, int) and d > 0:
            dims.append(d)
        elif i == axis:
            dims.append(batch)
        else:
            raise DataError(
                f"input {info.name!r} has symbolic dimension {i} in {info.shape_text()}",
                hint=f"pass --input-shape {info.name}=D1,D2,...",
            )
    return tuple(dims)


def fix_input_shapes(model: onnx.ModelProto, shapes: Mapping[str, tuple[int, ...]]) -> onnx.ModelProto:
    """Return a copy whose graph inputs have the given static shapes (outputs' dims are cleared so
    shape inference recomputes them)."""
    fixed = onnx.ModelProto()
    fixed.CopyFrom(model)
    names = {v.name for v in graph_inputs(fixed)}
    unknown = set(shapes) - names
    if unknown:
        raise DataError(f"model has no input named {sorted(unknown)[0]!r}; inputs are {sorted(names)}")
    for value in fixed.graph.input:
        if value.name in shapes:
            dims = value.type.tensor_type.shape.dim
            want = shapes[value.name]
            del dims[:]
            for d in want:
                dims.add().dim_value = d
    for value in fixed.graph.output:
        for d in value.type.tensor_type.shape.dim:
            if d.HasField("dim_param") or d.dim_value <= 0:
                d.Clear()
    del fixed.graph.value_info[:]
    return fixed


def shapes_to_fix(info: ModelInfo, given: Shapes, sample: Dataset | None) -> Shapes:
    """Input shapes to pin: those given, else from the data; an input whose only symbolic dim is
    its batch axis keeps it (static quantization handles that), others are fixed whole."""
    shapes: Shapes = {}
    axes = batch_axes(info.inputs)
    for inp in info.inputs:
        if inp.name in given:
            shapes[inp.name] = given[inp.name]
            continue
        if inp.shape is None or not inp.symbolic:
            continue
        only_batch = all(_fixed(d) for i, d in enumerate(inp.shape) if i != axes[inp.name])
        if only_batch:
            continue
        if sample is None:
            raise DataError(
                f"input {inp.name!r} has symbolic dimensions {inp.shape_text()}",
                hint=f"pass --input-shape {inp.name}=D1,D2,... or calibration data",
            )
        shapes[inp.name] = sample.sample_shape(inp.name)
    return shapes
