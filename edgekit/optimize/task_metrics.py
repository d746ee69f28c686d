"""Task metrics: judge a model on what it is for, not on the cosine of its raw outputs (a detector
can keep cosine 0.998 and lose most detections).

Each compares the FP32 output with the candidate's: FP32's decoded result stands in for the
ground truth, so FP32 scores 1.0 against itself and a candidate scores how far its task result
agrees. Pure numpy; an output of the wrong shape raises ``ValueError``.

  detection-f1     YOLO-style heads [N, 4+C, A] or [N, A, 4+C] (boxes cx, cy, w, h, then one
                   score per class): decode (score > conf), class-wise NMS (IoU > nms), then match
                   candidate boxes to FP32 boxes of the same class at IoU ≥ iou; F1 over the set
  top1 / top5      FP32's top class is among the candidate's top k, per sample
  mask-iou         segmentation: argmax over the class axis, IoU per class over the set, mean over
                   classes present; a 1-channel map (or [N, H, W]) is thresholded instead (PP-OCR
                   det's text probability map)
  ctc-agreement    greedy CTC decoding of [N, T, C]: share of sequences decoded alike
  embedding-cosine cosine along the last axis, per vector, averaged

``text_mask_iou`` and ``ctc_agreement`` also keep the ``--metric MODULE:FUNCTION`` form (one eval
batch at a time, lists of outputs).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

Array = np.ndarray[Any, Any]
Settings = Mapping[str, float]

TEXT_THRESHOLD = 0.3
MAX_NMS_BOXES = 30000  # boxes over the confidence threshold considered per image, best first


# --- detection ------------------------------------------------------------------------------------
def detection_rows(out: Array) -> Array:
    """A YOLO-style head as [N, A, 4+C]: the shorter of its last two axes holds 4 box values and
    the class scores (84 for COCO), the longer one the anchors (8400 at 640x640)."""
    if out.ndim != 3 or min(out.shape[1:]) < 5:
        raise ValueError(f"detection-f1 needs an output [N,4+C,A] or [N,A,4+C] with C ≥ 1, got {list(out.shape)}")
    return out.transpose(0, 2, 1) if out.shape[1] <= out.shape[2] else out


def xyxy(boxes: Array) -> Array:
    cx, cy, w, h = boxes[:, 0], boxes[:, 1], boxes[:, 2], boxes[:, 3]
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)


def box_iou(a: Array, b: Array) -> Array:
    """IoU of every box in ``a`` [K,4] with every box in ``b`` [M,4], both x1,y1,x2,y2."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(rb - lt, 0, None).prod(-1)
    area_a = np.clip(a[:, 2:] - a[:, :2], 0, None).prod(-1)
    area_b = np.clip(b[:, 2:] - b[:, :2], 0, None).prod(-1)
    union = area_a[:, None] + area_b[None, :] - inter
    return np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)


def nms(boxes: Array, scores: Array, classes: Array, iou_threshold: float, max_keep: int | None = None) -> Array:
    """Indices kept by greedy class-wise non-maximum suppression, best score first; it stops at
    ``max_keep`` (the greedy order makes that the same as cutting the full result), which bounds
    the work when a broken candidate scores thousands of boxes over the threshold."""
    order = np.argsort(-scores, kind="stable")
    # Shifting each class to its own region makes one pass suppress only within a class.
    shifted = boxes + (classes.astype(np.float64) * (np.abs(boxes).max(initial=0.0) * 2 + 1))[:, None]
    x1, y1, x2, y2 = (shifted[:, i] for i in range(4))
    area = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    keep: list[int] = []
    while order.size and (max_keep is None or len(keep) < max_keep):
        best, rest = order[0], order[1:]
        keep.append(int(best))
        w = np.clip(np.minimum(x2[best], x2[rest]) - np.maximum(x1[best], x1[rest]), 0, None)
        h = np.clip(np.minimum(y2[best], y2[rest]) - np.maximum(y1[best], y1[rest]), 0, None)
        inter = w * h
        union = area[best] + area[rest] - inter
        iou = np.where(union > 0, inter / np.where(union > 0, union, 1), 0.0)
        order = rest[iou <= iou_threshold]
    return np.asarray(keep, dtype=np.int64)


@dataclass(frozen=True)
class Detections:
    boxes: Array  # [K, 4] x1, y1, x2, y2
    scores: Array  # [K]
    classes: Array  # [K]


def decode(rows: Array, conf: float, nms_iou: float, max_det: int) -> Detections:
    """One image's [A, 4+C] rows into the detections left after the threshold and NMS."""
    scores_all = rows[:, 4:].astype(np.float64)
    classes = scores_all.argmax(1)
    scores = scores_all[np.arange(rows.shape[0]), classes]
    idx = np.flatnonzero(scores > conf)
    idx = idx[np.argsort(-scores[idx], kind="stable")[:MAX_NMS_BOXES]]
    boxes = xyxy(rows[idx, :4].astype(np.float64))
    kept = nms(boxes, scores[idx], classes[idx], nms_iou, max_det)
    return Detections(boxes[kept], scores[idx][kept], classes[idx][kept])


def matches(reference: Detections, candidate: Detections, iou_threshold: float) -> int:
    """Candidate detections that find an unmatched FP32 detection of their class at IoU ≥ the
    threshold, greedily in the candidate's score order."""
    if not len(reference.scores) or not len(candidate.scores):
        return 0
    iou = box_iou(candidate.boxes, reference.boxes)
    iou[candidate.classes[:, None] != reference.classes[None, :]] = -1.0
    taken = np.zeros(len(reference.scores), dtype=bool)
    found = 0
    for i in np.argsort(-candidate.scores, kind="stable"):
        row = np.where(taken, -1.0, iou[i])
        j = int(row.argmax())
        if row[j] >= iou_threshold:
            taken[j] = True
            found += 1
    return found


def detection_f1(reference: Array, candidate: Array, settings: Settings) -> float:
    """F1 of the candidate's detections against FP32's, pooled over all images (1.0 when neither
    detects anything)."""
    ref_rows, cand_rows = detection_rows(reference), detection_rows(candidate)
    conf, nms_iou, iou = settings["conf"], settings["nms"], settings["iou"]
    max_det = int(settings["max_det"])
    true_pos = total = 0
    for r, c in zip(ref_rows, cand_rows, strict=True):
        ref_det, cand_det = decode(r, conf, nms_iou, max_det), decode(c, conf, nms_iou, max_det)
        true_pos += matches(ref_det, cand_det, iou)
        total += len(ref_det.scores) + len(cand_det.scores)
    return 1.0 if total == 0 else 2 * true_pos / total


# --- classification, segmentation, sequences, embeddings -----------------------------------------
def topk_agreement(reference: Array, candidate: Array, settings: Settings) -> float:
    """Share of samples (and positions, for [N, T, C]) where FP32's top class is among the
    candidate's top k."""
    if reference.ndim < 2:
        raise ValueError(f"top-k needs an output with a class axis, got shape {list(reference.shape)}")
    k = int(settings["k"])
    classes = reference.shape[-1]
    ref = reference.reshape(-1, classes).argmax(1)
    cand = candidate.reshape(-1, classes)
    top = np.argpartition(-cand, min(k, classes) - 1, axis=1)[:, :k] if k < classes else np.argsort(-cand, 1)
    return float((top == ref[:, None]).any(1).mean())


def threshold_iou(reference: Array, candidate: Array, threshold: float) -> float:
    a, b = reference > threshold, candidate > threshold
    union = int(np.logical_or(a, b).sum())
    return 1.0 if union == 0 else float(np.logical_and(a, b).sum() / union)


def mask_iou(reference: Array, candidate: Array, settings: Settings) -> float:
    """Mean IoU over the classes either side predicts, pooled over the set; 1-channel maps and
    [N, H, W] outputs are thresholded into one foreground class."""
    axis = int(settings["axis"])
    if reference.ndim < 3:
        raise ValueError(f"mask-iou needs an output [N,C,H,W] or [N,H,W], got shape {list(reference.shape)}")
    if reference.ndim == 3 or reference.shape[axis] == 1:
        return threshold_iou(reference, candidate, settings["threshold"])
    classes = reference.shape[axis]
    a, b = reference.argmax(axis).ravel(), candidate.argmax(axis).ravel()
    confusion = np.bincount(a * classes + b, minlength=classes * classes).reshape(classes, classes)
    inter = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - inter
    present = union > 0
    return float((inter[present] / union[present]).mean()) if present.any() else 1.0


def ctc_decode(probs: Array, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, C] class scores into label sequences."""
    best = probs.argmax(-1)
    out = []
    for row in best:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != blank)
        out.append(tuple(int(v) for v in row[keep]))
    return out


def ctc_sequence_agreement(reference: Array, candidate: Array, settings: Settings) -> float:
    if reference.ndim != 3:
        raise ValueError(f"ctc-agreement needs an output [N,T,C], got shape {list(reference.shape)}")
    blank = int(settings["blank"])
    ref, cand = ctc_decode(reference, blank), ctc_decode(candidate, blank)
    return float(np.mean([r == c for r, c in zip(ref, cand, strict=True)]))


def embedding_cosine(reference: Array, candidate: Array, settings: Settings) -> float:
    if reference.ndim < 2:
        raise ValueError(f"embedding-cosine needs an output [N,...,D], got shape {list(reference.shape)}")
    a = reference.reshape(-1, reference.shape[-1]).astype(np.float64)
    b = candidate.reshape(-1, candidate.shape[-1]).astype(np.float64)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    same_zero = (den == 0) & (np.abs(a - b).max(1) == 0)
    cos = np.where(den > 0, (a * b).sum(1) / np.where(den > 0, den, 1), np.where(same_zero, 1.0, 0.0))
    return float(cos.mean())


# --- the registry the --metric option reads -----------------------------------------------------
@dataclass(frozen=True)
class TaskMetric:
    name: str
    score: Callable[[Array, Array, Settings], float]
    defaults: Mapping[str, float]  # every setting it takes; ``output`` (which output) is common
    budget: str  # default --max-drop
    summary: str


TASK_METRICS: dict[str, TaskMetric] = {
    m.name: m
    for m in (
        TaskMetric(
            "detection-f1", detection_f1, {"conf": 0.25, "nms": 0.45, "iou": 0.5, "max_det": 300, "output": 0},
            "0.95", "F1 of decoded, NMS-filtered detections against FP32's (YOLO-style heads)",
        ),
        TaskMetric("top5", topk_agreement, {"k": 5, "output": 0}, "1%", "FP32's top class among the top k"),
        TaskMetric(
            "mask-iou", mask_iou, {"threshold": TEXT_THRESHOLD, "axis": 1, "output": 0}, "0.95",
            "mean IoU of segmentation masks against FP32's (argmax, or threshold for 1 channel)",
        ),
        TaskMetric(
            "ctc-agreement", ctc_sequence_agreement, {"blank": 0, "output": 0}, "0.95",
            "share of CTC-decoded sequences equal to FP32's",
        ),
        TaskMetric(
            "embedding-cosine", embedding_cosine, {"output": 0}, "0.99",
            "mean cosine of embedding vectors (last axis) against FP32's",
        ),
    )
}
INTEGER_SETTINGS = frozenset({"max_det", "output", "k", "blank", "axis"})
UNIT_SETTINGS = frozenset({"conf", "nms", "iou", "threshold"})  # must lie in [0, 1]


# --- the MODULE:FUNCTION forms, one eval batch at a time -----------------------------------------
def text_mask_iou(reference: list[Array], candidate: list[Array]) -> float:
    """IoU of the text masks (probability > 0.3) of a DB text detector such as PP-OCR det."""
    return threshold_iou(reference[0], candidate[0], TEXT_THRESHOLD)


def ctc_agreement(reference: list[Array], candidate: list[Array]) -> float:
    """Share of text lines a CTC recognizer (PP-OCR rec) decodes to the same string as FP32."""
    return ctc_sequence_agreement(reference[0], candidate[0], {"blank": 0})
