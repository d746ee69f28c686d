"""Build one quantized candidate from a prepared FP32 model with onnxruntime's quantizers.

Calibration ranges are computed once per calibration method and cached in the work directory,
so per-tensor, per-channel and mixed-precision variants of a recipe cost no extra calibration.
A recipe's techniques run around the quantizer: ``cle`` rewrites the FP32 model before it
(written once per work directory), ``bias-correction`` the quantized one after it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx

from edgekit.errors import QuantizationError, first_line
from edgekit.optimize.bias_correction import correct_biases
from edgekit.optimize.datasets import Dataset, Feed
from edgekit.optimize.equalizing import equalize
from edgekit.optimize.folding import fold_conv_affine
from edgekit.optimize.graphs import tail_nodes
from edgekit.optimize.preparing import quiet_onnxruntime_logs
from edgekit.optimize.recipes import Recipe


class _Reader:
    """onnxruntime CalibrationDataReader over a Dataset, one sample per batch."""

    def __init__(self, data: Dataset) -> None:
        self.data = data
        self._it = iter(data.batches(1))

    def get_next(self) -> Feed | None:
        return next(self._it, None)

    def __len__(self) -> int:
        return self.data.samples

    def rewind(self) -> None:
        self._it = iter(self.data.batches(1))

    def set_range(self, start_index: int, end_index: int) -> None:
        self._it = iter(self.data.select(start_index, end_index).batches(1))


def excluded_nodes(recipe: Recipe, model: onnx.ModelProto) -> list[str]:
    nodes = list(recipe.exclude)
    if recipe.keep_tail_fp32:
        nodes += tail_nodes(model.graph)
    if recipe.method == "dynamic":
        # The dynamic quantizer renames Gemm nodes to <name>_MatMul; exclude both names.
        nodes += [f"{n}_MatMul" for n in nodes]
    return list(dict.fromkeys(nodes))


def equalized_model(prepared: Path, workdir: Path) -> Path:
    """``prepared`` with constant scale/shift ops folded into its Convs and Conv pairs equalized
    (exact in FP32), written once to ``workdir``."""
    out = workdir / "equalized.onnx"
    if not out.exists():
        folded, _ = fold_conv_affine(onnx.load(str(prepared)))
        equalized, _ = equalize(folded)
        tmp = out.with_suffix(".tmp")
        onnx.save(equalized, str(tmp))
        tmp.replace(out)
    return out


def build_candidate(
    recipe: Recipe, prepared: Path, out: Path, calibration: Dataset, workdir: Path, stride: int | None = None
) -> Path:
    """Quantize ``prepared`` by ``recipe`` into ``out``, with the recipe's techniques around it."""
    source = equalized_model(prepared, workdir) if "cle" in recipe.techniques else prepared
    _quantize(recipe, source, out, calibration, workdir, stride)
    if "bias-correction" in recipe.techniques and recipe.method == "static":
        try:
            correct_biases(source, out, out, calibration)
        except Exception as exc:
            why = f"{type(exc).__name__}: {first_line(exc, 200)}"
            raise QuantizationError(f"{recipe.name}: bias correction: {why}") from exc
    return out


def _quantize(
    recipe: Recipe, prepared: Path, out: Path, calibration: Dataset, workdir: Path, stride: int | None = None
) -> Path:
    from onnxruntime.quantization import (
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_dynamic,
        quantize_static,
    )

    model = onnx.load(str(prepared))
    exclude = excluded_nodes(recipe, model)
    qtype = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    try:
        with quiet_onnxruntime_logs():
            if recipe.method == "dynamic":
                quantize_dynamic(
                    str(prepared),
                    str(out),
                    op_types_to_quantize=list(recipe.op_types) or None,
                    per_channel=recipe.per_channel,
                    reduce_range=recipe.reduce_range,
                    weight_type=qtype[recipe.weight_type],
                    nodes_to_exclude=exclude,
                )
            else:
                method = {
                    "minmax": CalibrationMethod.MinMax,
                    "minmax-ema": CalibrationMethod.MinMax,
                    "entropy": CalibrationMethod.Entropy,
                    "percentile": CalibrationMethod.Percentile,
                }[recipe.calibration]
                extra: dict[str, Any] = {}
                if stride:
                    extra["CalibStridedMinMax"] = stride  # despite the name: any calibrator, in strides
                if recipe.calibration == "percentile":
                    extra["CalibPercentile"] = recipe.percentile
                if recipe.calibration == "minmax-ema":
                    extra["CalibMovingAverage"] = True
                cache = workdir / f"calibration-{recipe.calibration_key}.json"
                quantize_static(
                    str(prepared),
                    str(out),
                    _Reader(calibration) if not cache.exists() else None,
                    quant_format=QuantFormat.QDQ if recipe.format == "qdq" else QuantFormat.QOperator,
                    op_types_to_quantize=list(recipe.op_types) or None,
                    per_channel=recipe.per_channel,
                    reduce_range=recipe.reduce_range,
                    activation_type=qtype[recipe.activation_type],
                    weight_type=qtype[recipe.weight_type],
                    nodes_to_exclude=exclude,
                    calibrate_method=method,
                    extra_options=extra,
                    calibration_cache_path=str(cache),
                )
    except Exception as exc:  # the quantizers raise anything from ValueError to IndexError
        raise QuantizationError(f"{recipe.name}: {type(exc).__name__}: {first_line(exc, 200)}") from exc
    if not out.exists():
        raise QuantizationError(f"{recipe.name}: the quantizer wrote no model")
    return out
