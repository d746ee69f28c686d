"""Quantization recipes: what a candidate is, and which ones ``--method auto`` tries, in order.

Pure data and decisions; building a recipe is ``building.build_candidate``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Method = Literal["dynamic", "static"]
Calibration = Literal["minmax", "minmax-ema", "entropy", "percentile"]
Technique = Literal["cle", "bias-correction"]
# Graph transformations beyond onnxruntime's quantizers, applied around them (see ``building``):
# "cle" folds constant scale/shift ops into the Convs before them (``folding``) and equalizes
# Conv pairs (``equalizing``) before calibration; "bias-correction" moves each quantized Conv's
# bias by the mean error its int8 weights add (``bias_correction``) after quantization.
TECHNIQUES: tuple[Technique, ...] = ("cle", "bias-correction")
TECHNIQUE_LABELS = {"cle": "CLE", "bias-correction": "bias-corrected"}


@dataclass(frozen=True)
class Recipe:
    method: Method
    format: Literal["qdq", "qoperator"] = "qdq"
    per_channel: bool = True
    calibration: Calibration = "minmax"
    activation_type: Literal["uint8", "int8"] = "uint8"
    weight_type: Literal["int8", "uint8"] = "int8"
    reduce_range: bool = False
    keep_tail_fp32: bool = True
    op_types: tuple[str, ...] = ()
    exclude: tuple[str, ...] = field(default=())
    note: str = ""
    percentile: float = 99.999
    techniques: tuple[Technique, ...] = ()

    @property
    def name(self) -> str:
        if self.method == "dynamic":
            base = f"dynamic {'/'.join(self.op_types) or 'all'} {'per-channel' if self.per_channel else 'per-tensor'}"
        else:
            act = "U8" if self.activation_type == "uint8" else "S8"
            cal = f"percentile {self.percentile:g}" if self.calibration == "percentile" else self.calibration
            base = f"static {self.format.upper()} {act}S8 {'per-channel' if self.per_channel else 'per-tensor'} {cal}"
            if self.reduce_range:
                base += " reduce-range"
        for technique in self.techniques:
            base += f" +{TECHNIQUE_LABELS[technique]}"
        if self.exclude:
            base += f" +{len(self.exclude)} FP32 nodes"
        return base

    @property
    def calibration_key(self) -> str:
        """Recipes with the same key share one calibration (an equalized model has other ranges)."""
        key = f"{self.calibration}-{self.percentile:g}" if self.calibration == "percentile" else self.calibration
        return key + "-cle" if "cle" in self.techniques else key

    def with_exclusions(self, nodes: tuple[str, ...], note: str) -> Recipe:
        return replace(self, exclude=tuple(dict.fromkeys(self.exclude + nodes)), note=note)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["name"] = self.name
        data["op_types"] = list(self.op_types)
        data["exclude"] = list(self.exclude)
        data["techniques"] = list(self.techniques)
        return data


def auto_recipes(
    *,
    has_matmul: bool,
    has_conv: bool,
    fmt: Literal["qdq", "qoperator"] = "qdq",
    per_channel: bool | None = None,
    activation_type: Literal["uint8", "int8"] = "uint8",
    reduce_range: bool | None = None,
    method: str = "auto",
    techniques: tuple[Technique, ...] | None = None,
) -> list[Recipe]:
    """Candidates in the order worth trying on a CPU: the usually-fastest recipe first, so a time
    budget cuts off the long shots rather than the likely winner.

    ``techniques`` None: static recipes as they are, plus two with techniques on conv nets after
    the MinMax ones (bias correction on MinMax, sharing its calibration; CLE and bias correction
    on percentile 99.99, the first histogram calibration); a tuple: applied to every static
    recipe, no extra ones."""
    recipes: list[Recipe] = []
    channels = [True, False] if per_channel is None else [per_channel]
    ranges = [False] if reduce_range is None else [reduce_range]
    if method in ("auto", "static"):
        # One MinMax calibration serves these three: cheap, and usually the fastest models.
        for pc in channels:
            for rr in ranges:
                recipes.append(Recipe("static", fmt, pc, "minmax", activation_type, "int8", rr))
        if reduce_range is None and has_conv:
            # Measured: reduce_range helps conv nets on CPUs without VNNI (less int16 saturation).
            recipes.append(Recipe("static", fmt, channels[0], "minmax", activation_type, "int8", True))
        if techniques is None and has_conv:
            # Costs a few seconds more than the MinMax recipe it corrects (no new calibration).
            recipes.append(Recipe("static", fmt, channels[0], "minmax", activation_type, "int8", ranges[0],
                                  techniques=("bias-correction",)))
            # The first histogram calibration, on the equalized model: measured on the PP-OCR
            # detector, it is the one recipe inside a text-mask IoU of 0.95 (docs/quantization.md).
            recipes.append(Recipe("static", fmt, channels[0], "percentile", activation_type, "int8", ranges[0],
                                  percentile=99.99, techniques=("cle", "bias-correction")))
        # Then calibrations that clip outliers (each its own pass): on the PP-OCR detector a 99.9th
        # percentile kept more of the text mask than MinMax or 99.999.
        histogram: tuple[tuple[Calibration, float], ...] = (
            ("percentile", 99.9),
            ("percentile", 99.99),
            ("minmax-ema", 99.999),
            ("entropy", 99.999),
            ("percentile", 99.999),
        )
        for cal, pct in histogram:
            for pc in channels:
                recipes.append(Recipe("static", fmt, pc, cal, activation_type, "int8", ranges[0], percentile=pct))
        if techniques:
            recipes = [replace(r, techniques=techniques) for r in recipes]
        recipes = list(dict.fromkeys(recipes))
    if method in ("auto", "dynamic") and (has_matmul or method == "dynamic"):
        # Dynamic quantization only for MatMul/Gemm: ConvInteger has no fast x86 kernel.
        for pc in channels:
            recipes.append(
                Recipe(
                    "dynamic",
                    "qoperator",
                    pc,
                    "minmax",
                    "uint8",
                    "int8",
                    False,
                    False,
                    op_types=("MatMul", "Gemm") if method == "auto" else (),
                )
            )
    return recipes
