"""Which metric judges a model when the user names none, and when the one they named can lie.

Decided from what the model declares, in this order:
1. a ``task`` entry in the ONNX metadata_props (``detect``, ``segment``, ``classify``, ``ocr-rec``…);
2. true labels (``--labels``): ``accuracy``;
3. the outputs' shapes and the ops producing them:
   - [N, 4+C, A] or [N, A, 4+C] with A a multiple of 21 (a YOLO grid over strides 8, 16 and 32,
     e.g. 8400 at 640x640), or ``[N, 4+C, anchors]`` with a symbolic anchor count: ``detection-f1``;
   - [N, C, H, W] with a spatial map (H, W symbolic or ≥ 8): ``mask-iou`` (PP-OCR det's text map);
   - [N, T, C] out of a Softmax, or with a character dictionary in the metadata: ``ctc-agreement``
     (PP-OCR rec);
   - [N, D] or [N, T, D] named like an embedding (embed, feature, pooler, hidden): ``embedding-cosine``;
   - [N, C]: ``top1`` (``max-abs`` when C is 1: one score per sample);
4. otherwise ``cosine``.
Pure: reads ``TensorInfo`` and metadata, never the model file.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from edgekit.optimize.inspecting import Dim, TensorInfo

__all__ = ["MetricChoice", "choose_metric", "generic_metric_warning", "head_metric"]

YOLO_GRID = 21  # anchors per (input / 32)² cell area over strides 8, 16, 32: 16 + 4 + 1
MIN_MAP_SIDE = 8
EMBEDDING_WORDS = ("embed", "feature", "pooler", "hidden", "vector")
DICTIONARY_KEYS = ("character", "characters", "vocab", "dictionary", "charset")

TASK_VALUES = {
    "detection-f1": ("detect", "detection", "object-detection", "object_detection"),
    "mask-iou": ("segment", "segmentation", "semantic-segmentation", "text-detection", "ocr-det", "ocr_det"),
    "ctc-agreement": ("ocr-rec", "ocr_rec", "text-recognition", "ctc", "speech-recognition"),
    "top1": ("classify", "classification", "image-classification", "text-classification"),
    "embedding-cosine": ("embedding", "embed", "feature-extraction", "sentence-similarity"),
}


@dataclass(frozen=True)
class MetricChoice:
    spec: str  # what --metric would say, e.g. "detection-f1:output=1"
    reason: str


def _fixed(d: Dim) -> int | None:
    return d if isinstance(d, int) and d > 0 else None


def _spec(name: str, index: int) -> str:
    return name if index == 0 else f"{name}:output={index}"


def _detection(shape: tuple[Dim, ...]) -> str | None:
    """Why this looks like a YOLO-style head, or None."""
    if len(shape) != 3:
        return None
    a, b = _fixed(shape[1]), _fixed(shape[2])
    if a and b:
        short, long = min(a, b), max(a, b)
        if short >= 5 and long > short and long % YOLO_GRID == 0:
            return f"{short} = 4 box values + {short - 4} class scores over {long} anchors (a YOLO grid)"
        return None
    if a and a >= 5 and b is None:
        return f"{a} = 4 box values + {a - 4} class scores over a symbolic anchor count"
    return None


def _spatial(shape: tuple[Dim, ...]) -> bool:
    return len(shape) == 4 and all(_fixed(d) is None or d >= MIN_MAP_SIDE for d in shape[2:])  # type: ignore[operator]


def _shape_text(t: TensorInfo) -> str:
    return f"output {t.name!r} {t.shape_text()}"


def head_metric(outputs: Sequence[TensorInfo], output_ops: Mapping[str, str]) -> MetricChoice | None:
    """A detection or segmentation head among the outputs: the metric that judges it."""
    for i, t in enumerate(outputs):
        if t.shape is None:
            continue
        why = _detection(t.shape)
        if why:
            return MetricChoice(_spec("detection-f1", i), f"{_shape_text(t)} looks like a detection head: {why}")
    for i, t in enumerate(outputs):
        if t.shape is not None and _spatial(t.shape):
            channels = _fixed(t.shape[1])
            kind = (
                "a 1-channel probability map, thresholded"
                if channels == 1
                else f"{channels or 'C'} class maps, argmax per pixel"
            )
            return MetricChoice(
                _spec("mask-iou", i),
                f"{_shape_text(t)} looks like a segmentation map ({kind}; "
                f"{output_ops.get(t.name, 'unknown op')} output)",
            )
    return None


def _from_metadata(metadata: Mapping[str, str], has_labels: bool) -> MetricChoice | None:
    task = next((v.strip().lower() for k, v in metadata.items() if k.strip().lower() == "task"), None)
    if task is None:
        return None
    for name, values in TASK_VALUES.items():
        if task in values:
            if name == "top1" and has_labels:
                return MetricChoice("accuracy", f"the model's metadata says task={task!r} and labels were given")
            return MetricChoice(name, f"the model's metadata says task={task!r}")
    return None


def choose_metric(
    has_labels: bool, outputs: Sequence[TensorInfo], metadata: Mapping[str, str], output_ops: Mapping[str, str]
) -> MetricChoice:
    """The metric auto uses when ``--metric`` is not given, and why (see module docs)."""
    declared = _from_metadata(metadata, has_labels)
    if declared is not None:
        return declared
    if has_labels:
        return MetricChoice("accuracy", "true labels were given (--labels)")
    head = head_metric(outputs, output_ops)
    if head is not None:
        return head
    dictionary = next((k for k in metadata if k.strip().lower() in DICTIONARY_KEYS), None)
    for i, t in enumerate(outputs):
        shape = t.shape
        if shape is None or len(shape) != 3:
            continue
        op = output_ops.get(t.name, "")
        if op == "Softmax" or dictionary:
            evidence = [f"{op} output"] if op else []
            evidence += [f"a {dictionary!r} dictionary in the metadata"] if dictionary else []
            return MetricChoice(
                _spec("ctc-agreement", i),
                f"{_shape_text(t)} is a sequence [N,T,C] of class scores ({'; '.join(evidence)}): CTC decoding",
            )
    first = outputs[0] if outputs else None
    if first is not None and first.shape is not None and len(first.shape) in (2, 3):
        if any(word in first.name.lower() for word in EMBEDDING_WORDS):
            return MetricChoice("embedding-cosine", f"{_shape_text(first)} is named like an embedding")
        if len(first.shape) == 2 and first.shape[1] != 1:
            return MetricChoice("top1", f"{_shape_text(first)} holds class scores [N,C]")
        if len(first.shape) == 2:  # one column (a VAD's speech probability): top-1 would always agree
            return MetricChoice("max-abs", f"{_shape_text(first)} is one score per sample: its largest change")
    return MetricChoice("cosine", "no output looks like class scores, detections, masks or sequences")


def generic_metric_warning(
    metric: str, outputs: Sequence[TensorInfo], output_ops: Mapping[str, str]
) -> str | None:
    """A warning when a raw-output metric judges a detection or segmentation head."""
    if metric not in ("cosine", "max-abs"):
        return None
    head = head_metric(outputs, output_ops)
    if head is None:
        return None
    return (
        f"{metric} compares raw outputs, and {head.reason}: raw outputs can stay close while decoded "
        f"results change; judge it with --metric {head.spec}"
    )
