"""Input shapes: parse ``NAME=D1,D2,...`` and pin a model's symbolic dimensions."""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import onnx

from edgekit.errors import ConfigError, DataError
from edgekit.optimize.inspecting import TensorInfo, graph_inputs

Shapes = dict[str, tuple[int, ...]]


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


def resolve_shape(info: TensorInfo, given: tuple[int, ...] | None, batch: int = 1) -> tuple[int, ...]:
    """A concrete shape for an input: the given one (checked against fixed dims) or the model's
    own with a symbolic leading dimension read as the batch size."""
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
        elif i == 0:
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
