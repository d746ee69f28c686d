"""Calibration and evaluation data: ``.npz``/``.npy`` files keyed by input name, folders of
images with explicit preprocessing, or ``synthetic`` random data (loudly marked as such).

A ``Dataset`` holds one array per model input whose axis 0 runs over samples; ``batches(n)``
cuts it into feeds for onnxruntime. Everything is checked against the model's inputs here, so a
wrong name, shape or dtype fails before any quantization work starts.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from edgekit.errors import ConfigError, DataError
from edgekit.optimize.inspecting import TensorInfo
from edgekit.optimize.shapes import resolve_shape

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


@dataclass(frozen=True)
class Dataset:
    arrays: Mapping[str, np.ndarray]
    source: str
    synthetic: bool = False

    @property
    def samples(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def batches(self, size: int = 1) -> Iterator[Feed]:
        for start in range(0, self.samples, size):
            yield {name: arr[start : start + size] for name, arr in self.arrays.items()}

    def head(self, n: int) -> Dataset:
        return Dataset({k: v[:n] for k, v in self.arrays.items()}, self.source, self.synthetic)

    def split(self, first: int) -> tuple[Dataset, Dataset]:
        a = Dataset({k: v[:first] for k, v in self.arrays.items()}, self.source, self.synthetic)
        b = Dataset({k: v[first:] for k, v in self.arrays.items()}, self.source, self.synthetic)
        return a, b


def parse_floats(text: str, field: str) -> tuple[float, ...]:
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError as exc:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}", field=field) from exc


def _check(
    inputs: Sequence[TensorInfo], arrays: dict[str, np.ndarray], source: str, shapes: Mapping[str, tuple[int, ...]]
) -> dict[str, np.ndarray]:
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
        if arr.dtype != np.dtype(info.dtype):
            raise DataError(f"{source}: input {info.name!r} is {arr.dtype}, the model wants {info.dtype}")
        rank = len(info.shape) if info.shape is not None else arr.ndim
        if arr.ndim == rank - 1:  # one sample without its batch axis
            arr = arr[None]
        if arr.ndim != rank:
            raise DataError(
                f"{source}: input {info.name!r} has shape {list(arr.shape)}, "
                f"the model wants rank {rank} {info.shape_text()}"
            )
        want = shapes.get(info.name)
        if want is not None:
            if tuple(arr.shape[1:]) != tuple(want[1:]):
                raise DataError(
                    f"{source}: input {info.name!r} samples are {list(arr.shape[1:])}, "
                    f"--input-shape says {list(want[1:])}"
                )
        elif info.shape is not None:
            for axis, (d, got) in enumerate(zip(info.shape[1:], arr.shape[1:], strict=True), start=1):
                if isinstance(d, int) and d > 0 and d != got:
                    raise DataError(
                        f"{source}: input {info.name!r} has shape {list(arr.shape)}, "
                        f"the model wants {info.shape_text()} (axis {axis})"
                    )
        counts.add(arr.shape[0])
        out[info.name] = arr
    if len(counts) != 1:
        raise DataError(f"{source}: inputs have different sample counts {sorted(counts)}")
    if counts == {0}:
        raise DataError(f"{source}: no samples")
    return out


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


def synthetic(inputs: Sequence[TensorInfo], shapes: Mapping[str, tuple[int, ...]], samples: int, seed: int) -> Dataset:
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    for info in inputs:
        shape = resolve_shape(info, shapes.get(info.name))
        full = (samples, *shape[1:])
        dtype = np.dtype(info.dtype)
        if dtype.kind == "f":
            arrays[info.name] = rng.random(full, dtype=np.float32).astype(dtype)
        elif dtype.kind in "iu":
            arrays[info.name] = rng.integers(0, 100, full).astype(dtype)
        elif dtype.kind == "b":
            arrays[info.name] = rng.random(full) > 0.5
        else:
            raise DataError(f"cannot make synthetic data for input {info.name!r} of type {info.dtype}")
    return Dataset(arrays, "synthetic", synthetic=True)


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
    if not path.exists():
        raise DataError(f"{role} path not found: {path}")
    if path.is_file():
        if path.suffix in {".npz", ".npy"}:
            return Dataset(_check(inputs, _read_array_file(path, inputs), source, shapes), str(path))
        if path.suffix.lower() in IMAGE_SUFFIXES and len(inputs) == 1:
            arr = _read_images([path], inputs[0], preprocessing or ImagePreprocessing(), shapes.get(inputs[0].name))
            return Dataset(_check(inputs, {inputs[0].name: arr}, source, shapes), str(path))
        raise DataError(f"{source}: unsupported file type {path.suffix!r} (use .npz, .npy, an image, or a folder)")
    files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
    arrays_files = [p for p in files if p.suffix in {".npz", ".npy"}]
    image_files = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    if arrays_files:
        parts = [_check(inputs, _read_array_file(p, inputs), f"{role} {p}", shapes) for p in arrays_files]
        try:
            merged = {name: np.concatenate([part[name] for part in parts]) for name in parts[0]}
        except ValueError as exc:
            raise DataError(f"{source}: files hold samples of different shapes: {exc}") from exc
        return Dataset(merged, str(path))
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
    calib = Dataset({k: v[:calibration_samples] for k, v in calib.arrays.items()}, calib.source, calib.synthetic)
    label_array = None
    if labels:
        label_array = load_labels(labels, evals.samples)
    if evals.samples > eval_samples:
        evals = Dataset({k: v[:eval_samples] for k, v in evals.arrays.items()}, evals.source, evals.synthetic)
        if label_array is not None:
            label_array = label_array[:eval_samples]
    return calib, evals, label_array, warnings
