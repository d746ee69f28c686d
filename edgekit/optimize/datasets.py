"""Calibration and evaluation data: ``.npz``/``.npy`` files keyed by input name, folders of
images with explicit preprocessing, or ``synthetic`` random data (loudly marked as such).

A ``Dataset`` holds the samples in one of two layouts, chosen from the model's inputs
(``shapes.batch_axes``):

- batched: one array per input whose batch axis (0, or the axis the model declares, as in an
  RNN state ``[2,batch,H]``) runs over samples; files are joined along it and ``batches(n)``
  cuts feeds of ``n`` samples;
- per file: when some input cannot be batched (a scalar such as a sample rate, a state of
  fixed shape), each file is one feed, kept as it is, and ``batches`` yields the files in turn.

Everything is checked against the model's inputs here, so a wrong name, rank, shape or dtype
fails before any quantization work starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit.errors import ConfigError, DataError
from edgekit.optimize.inspecting import TensorInfo
from edgekit.optimize.shapes import BatchAxes, batch_axes, resolve_shape

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff"}
Feed = dict[str, np.ndarray]


@dataclass(frozen=True)
class ImagePreprocessing:
    """How a folder of images becomes a model input (documented in ``edgekit quantize --help``).

    Pixels are read as RGB (or BGR/GRAY), resized to ``size`` (H, W; default: the model's fixed
    input size), converted to float: ``(pixel * scale - mean) / std`` per channel, then laid out
    as NCHW or NHWC.
    """

    size: tuple[int, int] | None = None
    layout: Literal["NCHW", "NHWC"] = "NCHW"
    color: Literal["RGB", "BGR", "GRAY"] = "RGB"
    scale: float = 1 / 255
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)


def _along(arr: np.ndarray, axis: int, part: slice) -> np.ndarray:
    index: list[slice] = [slice(None)] * arr.ndim
    index[axis] = part
    return arr[tuple(index)]


@dataclass(frozen=True)
class Dataset:
    """Samples for a model's inputs (see the module docs for the two layouts).

    ``arrays`` and ``axes`` hold batched samples (``axes`` lists only inputs not batched on
    axis 0); ``files``, when not empty, holds one feed per file and ``arrays`` is empty.
    """

    arrays: Mapping[str, np.ndarray]
    source: str
    synthetic: bool = False
    axes: Mapping[str, int] = field(default_factory=dict)
    files: tuple[Feed, ...] = ()

    @property
    def per_file(self) -> bool:
        return bool(self.files)

    def axis(self, name: str) -> int:
        return self.axes.get(name, 0)

    @property
    def samples(self) -> int:
        if self.files:
            return len(self.files)
        name, arr = next(iter(self.arrays.items()))
        return int(arr.shape[self.axis(name)])

    def select(self, start: int, stop: int | None = None) -> Dataset:
        """Samples ``start`` to ``stop`` (files, in the per-file layout)."""
        part = slice(start, stop)
        if self.files:
            return Dataset({}, self.source, self.synthetic, files=self.files[part])
        arrays = {k: _along(v, self.axis(k), part) for k, v in self.arrays.items()}
        return Dataset(arrays, self.source, self.synthetic, self.axes)

    def batches(self, size: int = 1) -> Iterator[Feed]:
        if self.files:
            yield from (dict(feed) for feed in self.files)
            return
        for start in range(0, self.samples, size):
            yield {k: _along(v, self.axis(k), slice(start, start + size)) for k, v in self.arrays.items()}

    def head(self, n: int) -> Dataset:
        return self.select(0, n)

    def split(self, first: int) -> tuple[Dataset, Dataset]:
        return self.select(0, first), self.select(first)

    def first(self) -> Feed:
        """One sample's feed (one file's, in the per-file layout)."""
        return next(self.head(1).batches(1))

    def sample_shape(self, name: str) -> tuple[int, ...]:
        """The shape of input ``name`` in one feed of ``first()``."""
        return tuple(int(d) for d in self.first()[name].shape)


def parse_floats(text: str, field: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}", field=field) from exc


def _without(shape: Sequence[object], axis: int | None) -> list[object]:
    return [d for i, d in enumerate(shape) if i != axis]


def _check(
    inputs: Sequence[TensorInfo],
    arrays: dict[str, np.ndarray],
    source: str,
    shapes: Mapping[str, tuple[int, ...]],
    axes: BatchAxes | None = None,
) -> dict[str, np.ndarray]:
    """One file's arrays checked against the model's inputs; a sample given without its batch
    axis gets one of size 1."""
    axes = axes if axes is not None else batch_axes(inputs)
    names = {i.name for i in inputs}
    missing = names - arrays.keys()
    extra = arrays.keys() - names
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing input(s) {sorted(missing)}")
        if extra:
            parts.append(f"unknown key(s) {sorted(extra)}")
        raise DataError(f"{source}: {'; '.join(parts)}; the model's inputs are {sorted(names)}")
    out: dict[str, np.ndarray] = {}
    counts = set()
    for info in inputs:
        arr = np.asarray(arrays[info.name])
        axis = axes.get(info.name, 0)
        if arr.dtype != np.dtype(info.dtype):
            raise DataError(f"{source}: input {info.name!r} is {arr.dtype}, the model wants {info.dtype}")
        rank = len(info.shape) if info.shape is not None else arr.ndim
        if axis is not None and arr.ndim == rank - 1:  # one sample without its batch axis
            arr = np.expand_dims(arr, axis)
        if arr.ndim != rank:
            raise DataError(
                f"{source}: input {info.name!r} has shape {list(arr.shape)}, "
                f"the model wants rank {rank} {info.shape_text()}"
            )
        want = shapes.get(info.name)
        if want is not None:
            if _without(arr.shape, axis) != _without(want, axis):
                raise DataError(
                    f"{source}: input {info.name!r} samples are {_without(arr.shape, axis)}, "
                    f"--input-shape says {_without(want, axis)}"
                )
        elif info.shape is not None:
            for i, (d, got) in enumerate(zip(info.shape, arr.shape, strict=True)):
                if i != axis and isinstance(d, int) and d > 0 and d != got:
                    raise DataError(
                        f"{source}: input {info.name!r} has shape {list(arr.shape)}, "
                        f"the model wants {info.shape_text()} (axis {i})"
                    )
        if axis is not None:
            counts.add(arr.shape[axis])
        out[info.name] = arr
    if len(counts) > 1:
        raise DataError(f"{source}: inputs have different sample counts {sorted(counts)}")
    if counts == {0}:
        raise DataError(f"{source}: no samples")
    return out


def _dataset(parts: Sequence[tuple[str, dict[str, np.ndarray]]], axes: BatchAxes, source: str) -> Dataset:
    """Checked files as one Dataset: joined along their batch axes when every input has one,
    else one feed per file (which must then agree in shape, as their outputs are compared
    side by side)."""
    if all(a is not None for a in axes.values()):
        try:
            merged = {name: np.concatenate([p[name] for _, p in parts], axis=axes[name] or 0) for name in parts[0][1]}
        except ValueError as exc:
            raise DataError(f"{source}: files hold samples of different shapes: {exc}") from exc
        return Dataset(merged, source, axes={k: a for k, a in axes.items() if a})
    first_name, first = parts[0]
    for name, part in parts[1:]:
        for key, arr in part.items():
            if arr.shape != first[key].shape:
                raise DataError(
                    f"{name}: input {key!r} has shape {list(arr.shape)} but {first_name} has "
                    f"{list(first[key].shape)}; samples kept per file must agree in shape",
                    hint="inputs without a batch axis are fed one file at a time",
                )
    return Dataset({}, source, files=tuple(p for _, p in parts))


def _read_array_file(path: Path, inputs: Sequence[TensorInfo]) -> dict[str, np.ndarray]:
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                return {k: data[k] for k in data.files}
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        raise DataError(f"cannot read {path}: {exc}") from exc
    if len(inputs) != 1:
        raise DataError(f"{path}: a .npy file fits only single-input models; use .npz keyed by input name")
    return {inputs[0].name: arr}


def _read_images(
    files: Sequence[Path], info: TensorInfo, prep: ImagePreprocessing, shape: tuple[int, ...] | None
) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if info.shape is None or len(info.shape) != 4:
        raise DataError(f"image folders need a 4-D image input; {info.name!r} is {info.shape_text()}")
    dims = shape or info.shape
    h_axis, w_axis, c_axis = (2, 3, 1) if prep.layout == "NCHW" else (1, 2, 3)
    size = prep.size
    if size is None:
        h, w = dims[h_axis], dims[w_axis]
        if not (isinstance(h, int) and h > 0 and isinstance(w, int) and w > 0):
            raise DataError(
                f"input {info.name!r} has a symbolic image size {info.shape_text()}",
                hint="pass --image-size HxW or --input-shape",
            )
        size = (h, w)
    channels = 1 if prep.color == "GRAY" else 3
    mean = np.asarray(prep.mean if len(prep.mean) > 1 else prep.mean * channels, np.float32)
    std = np.asarray(prep.std if len(prep.std) > 1 else prep.std * channels, np.float32)
    if mean.size != channels or std.size != channels:
        raise ConfigError(f"mean/std need 1 or {channels} values", field="--mean")
    images = []
    for f in files:
        try:
            with Image.open(f) as im:
                rgb = im.convert("L" if channels == 1 else "RGB").resize((size[1], size[0]), Image.Resampling.BILINEAR)
                arr = np.asarray(rgb, np.float32)
        except (UnidentifiedImageError, OSError) as exc:
            raise DataError(f"cannot read image {f}: {exc}") from exc
        if channels == 1:
            arr = arr[:, :, None]
        elif prep.color == "BGR":
            arr = arr[:, :, ::-1]
        arr = (arr * prep.scale - mean) / std
        images.append(arr.transpose(2, 0, 1) if prep.layout == "NCHW" else arr)
    batch = np.stack(images).astype(np.dtype(info.dtype))
    c = dims[c_axis]
    if isinstance(c, int) and c > 0 and c != batch.shape[c_axis]:
        raise DataError(
            f"input {info.name!r} wants {c} channels ({prep.layout}); images give {batch.shape[c_axis]}",
            hint="check --layout and --color",
        )
    return batch


def _random(info: TensorInfo, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(info.dtype)
    if dtype.kind == "f":
        return rng.random(shape, dtype=np.float32).astype(dtype)
    if dtype.kind in "iu":
        return np.asarray(rng.integers(0, 100, shape)).astype(dtype)
    if dtype.kind == "b":
        return np.asarray(rng.random(shape) > 0.5)
    raise DataError(f"cannot make synthetic data for input {info.name!r} of type {info.dtype}")


def synthetic(inputs: Sequence[TensorInfo], shapes: Mapping[str, tuple[int, ...]], samples: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    axes = batch_axes(inputs)
    one = {i.name: resolve_shape(i, shapes.get(i.name), 1, axes[i.name]) for i in inputs}
    if any(a is None for a in axes.values()):
        files = tuple({i.name: _random(i, one[i.name], rng) for i in inputs} for _ in range(samples))
        return Dataset({}, "synthetic", synthetic=True, files=files)
    arrays: dict[str, np.ndarray] = {}
    for info in inputs:
        full = list(one[info.name])
        full[axes[info.name] or 0] = samples
        arrays[info.name] = _random(info, tuple(full), rng)
    return Dataset(arrays, "synthetic", synthetic=True, axes={k: a for k, a in axes.items() if a})


def load_dataset(
    spec: str | os.PathLike[str],
    inputs: Sequence[TensorInfo],
    *,
    shapes: Mapping[str, tuple[int, ...]] | None = None,
    preprocessing: ImagePreprocessing | None = None,
    samples: int = 16,
    seed: int = 0,
    role: str = "data",
) -> Dataset:
    """Load ``spec`` (a path, or ``synthetic``) as samples for ``inputs``."""
    shapes = dict(shapes or {})
    if str(spec) == "synthetic":
        return synthetic(inputs, shapes, samples, seed)
    path = Path(spec)
    source = f"{role} {path}"
    axes = batch_axes(inputs)
    if not path.exists():
        raise DataError(f"{role} path not found: {path}")
    if path.is_file():
        if path.suffix in {".npz", ".npy"}:
            return _dataset([(source, _check(inputs, _read_array_file(path, inputs), source, shapes, axes))], axes,
                            str(path))
        if path.suffix.lower() in IMAGE_SUFFIXES and len(inputs) == 1:
            arr = _read_images([path], inputs[0], preprocessing or ImagePreprocessing(), shapes.get(inputs[0].name))
            return Dataset(_check(inputs, {inputs[0].name: arr}, source, shapes), str(path))
        raise DataError(f"{source}: unsupported file type {path.suffix!r} (use .npz, .npy, an image, or a folder)")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    arrays_files = [p for p in files if p.suffix in {".npz", ".npy"}]
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays_files:
        parts = [(f"{role} {p}", _check(inputs, _read_array_file(p, inputs), f"{role} {p}", shapes, axes))
                 for p in arrays_files]
        return _dataset(parts, axes, str(path))
    if image_files:
        if len(inputs) != 1:
            raise DataError(f"{source}: image folders fit only single-input models")
        arr = _read_images(image_files, inputs[0], preprocessing or ImagePreprocessing(), shapes.get(inputs[0].name))
        return Dataset(_check(inputs, {inputs[0].name: arr}, source, shapes), str(path))
    raise DataError(f"{source}: no .npz, .npy or image files found")


def load_labels(path: str | os.PathLike[str], expected: int) -> np.ndarray:
    """One integer class label per line (or a .npy array), as many as eval samples."""
    p = Path(path)
    try:
        if p.suffix == ".npy":
            labels = np.load(p, allow_pickle=False).reshape(-1)
        else:
            lines = [ln.strip() for ln in p.read_text(encoding="utf-8").splitlines() if ln.strip()]
            labels = np.asarray([int(v) for v in lines], dtype=np.int64)
    except FileNotFoundError as exc:
        raise DataError(f"labels file not found: {p}") from exc
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot read labels {p}: one integer label per line expected ({exc})") from exc
    if labels.shape[0] != expected:
        raise DataError(f"labels {p} has {labels.shape[0]} entries but the eval data has {expected} samples")
    return labels


def load_search_data(
    inputs: Sequence[TensorInfo],
    *,
    calibration: str | None,
    eval: str | None,
    labels: str | None,
    shapes: Mapping[str, tuple[int, ...]],
    preprocessing: ImagePreprocessing,
    seed: int,
    calibration_samples: int,
    eval_samples: int,
) -> tuple[Dataset, Dataset, np.ndarray | None, list[str]]:
    """(calibration data, eval data, eval labels, warnings) for a quantization search; without
    real data, synthetic data stands in and the warnings say so."""
    warnings: list[str] = []
    kw: dict[str, Any] = {"shapes": dict(shapes), "preprocessing": preprocessing, "seed": seed}
    if calibration is None:
        warnings.append(
            "no calibration data: calibrated on SYNTHETIC random data; accuracy was NOT "
            "measured against real data (pass --calibration and --eval)"
        )
        calib = load_dataset("synthetic", inputs, samples=16, role="calibration", **kw)
    else:
        calib = load_dataset(calibration, inputs, role="calibration", **kw)
        if calib.synthetic:
            warnings.append("calibration data is SYNTHETIC: accuracy was NOT measured against real data")
    if eval is not None:
        evals = load_dataset(eval, inputs, role="eval", **{**kw, "seed": seed + 1})
    elif not calib.synthetic and calib.samples >= 4:
        # Hold part of the calibration data apart so fidelity is not judged on what calibrated.
        cut = max(1, int(calib.samples * 0.7))
        calib, evals = calib.split(cut)
        warnings.append(f"no --eval data: held out {evals.samples} of the calibration samples for eval")
    else:
        evals = load_dataset("synthetic", inputs, samples=16, role="eval", **{**kw, "seed": seed + 1})
    calib = calib.head(calibration_samples)
    label_array = None
    if labels:
        label_array = load_labels(labels, evals.samples)
    if evals.samples > eval_samples:
        evals = evals.head(eval_samples)
        if label_array is not None:
            label_array = label_array[:eval_samples]
    return calib, evals, label_array, warnings
