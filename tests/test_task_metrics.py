"""The built-in task metrics on hand-built outputs whose right answer is known, their settings,
and the metric auto picks from a model's outputs and metadata."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from edgekit.errors import ConfigError, DataError
from edgekit.optimize import fidelity as fid
from edgekit.optimize.inspecting import TensorInfo, inspect_model
from edgekit.optimize.metric_choice import choose_metric, generic_metric_warning
from edgekit.optimize.task_metrics import TASK_METRICS, decode, detection_f1, mask_iou, nms, topk_agreement

DET = dict(TASK_METRICS["detection-f1"].defaults)
CLASSES = 3
ANCHORS = 84

# Four boxes (cx, cy, w, h), far apart, with their class and score.
BOXES = [((20, 20, 10, 10), 0, 0.9), ((60, 20, 10, 10), 1, 0.8), ((20, 60, 10, 10), 2, 0.7), ((60, 60, 10, 10), 0, 0.6)]


def head(boxes: list[tuple[tuple[float, float, float, float], int, float]]) -> np.ndarray:
    """A YOLO-style [1, 4+C, A] output: the given boxes at the first anchors, nothing elsewhere."""
    out = np.zeros((1, 4 + CLASSES, ANCHORS), np.float32)
    for a, (box, cls, score) in enumerate(boxes):
        out[0, :4, a] = box
        out[0, 4 + cls, a] = score
    return out


def shifted(index: int, dx: float, **changes: object) -> list[tuple[tuple[float, float, float, float], int, float]]:
    boxes = list(BOXES)
    (cx, cy, w, h), cls, score = boxes[index]
    boxes[index] = ((cx + dx, cy, w, h), int(changes.get("cls", cls)), float(changes.get("score", score)))  # type: ignore[arg-type]
    return boxes


# --- detection-f1 -------------------------------------------------------------------------------------
def test_detection_f1_is_one_against_itself_and_drops_by_one_box() -> None:
    ref = head(BOXES)
    assert detection_f1(ref, ref, DET) == 1.0
    # One box moved by its own width: IoU 0, so 3 of 4 match; F1 = 2*3 / (4 + 4).
    assert detection_f1(ref, head(shifted(1, 10)), DET) == pytest.approx(0.75)
    # Moved by 2 of 10 px: IoU 80/120 = 0.667 still matches at iou=0.5, not at iou=0.7.
    assert detection_f1(ref, head(shifted(1, 2)), DET) == 1.0
    assert detection_f1(ref, head(shifted(1, 2)), {**DET, "iou": 0.7}) == pytest.approx(0.75)


def test_detection_f1_same_for_both_layouts() -> None:
    ref, cand = head(BOXES), head(shifted(2, 10))
    channels_first = detection_f1(ref, cand, DET)
    channels_last = detection_f1(ref.transpose(0, 2, 1), cand.transpose(0, 2, 1), DET)
    assert channels_first == channels_last == pytest.approx(0.75)


def test_detection_f1_counts_classes_and_confidence() -> None:
    ref = head(BOXES)
    # Right place, wrong class: no match.
    assert detection_f1(ref, head(shifted(0, 0, cls=1)), DET) == pytest.approx(0.75)
    # A score under conf=0.25 drops the box: 3 matches, 4 + 3 detections.
    low = head(shifted(3, 0, score=0.2))
    assert detection_f1(ref, low, DET) == pytest.approx(6 / 7)
    assert detection_f1(ref, low, {**DET, "conf": 0.1}) == 1.0
    # Nothing detected on either side agrees fully; one side empty agrees not at all.
    empty = np.zeros_like(ref)
    assert detection_f1(empty, empty, DET) == 1.0
    assert detection_f1(ref, empty, DET) == 0.0


def test_detection_nms_suppresses_within_a_class_only() -> None:
    twin_same = head([*BOXES, ((21, 20, 10, 10), 0, 0.5)])  # overlaps box 0 (IoU 0.82), same class
    twin_other = head([*BOXES, ((21, 20, 10, 10), 1, 0.5)])  # same place, another class
    rows = lambda out: out[0].T  # noqa: E731
    assert len(decode(rows(twin_same), 0.25, 0.45, 300).scores) == 4
    assert len(decode(rows(twin_other), 0.25, 0.45, 300).scores) == 5
    assert len(decode(rows(twin_same), 0.25, 0.9, 300).scores) == 5  # nms IoU above their overlap
    assert len(decode(rows(twin_same), 0.25, 0.45, 2).scores) == 2  # max_det
    # The candidate's extra box of another class has no FP32 partner: 4 matches, 4 + 5 detections.
    assert detection_f1(head(BOXES), twin_other, DET) == pytest.approx(8 / 9)


def test_detection_f1_pools_over_images() -> None:
    ref = np.concatenate([head(BOXES), head(BOXES)])
    cand = np.concatenate([head(BOXES), head(shifted(0, 10))])
    assert detection_f1(ref, cand, DET) == pytest.approx(2 * 7 / 16)


def test_detection_f1_refuses_other_shapes() -> None:
    with pytest.raises(ValueError, match=r"\[N,4\+C,A\]"):
        detection_f1(np.zeros((2, 10)), np.zeros((2, 10)), DET)


# --- top5, mask-iou, ctc-agreement, embedding-cosine ------------------------------------------------
def test_top5_agreement() -> None:
    ref = np.array([[0, 0, 0, 9, 0, 0, 0, 0], [5, 0, 0, 0, 0, 0, 0, 0]], np.float32)
    cand = np.array([[8, 7, 6, 5, 0, 0, 0, 0], [0, 1, 2, 3, 4, 5, 6, 7]], np.float32)  # class 3 is 4th; 0 last
    assert topk_agreement(ref, cand, {"k": 5}) == 0.5
    assert topk_agreement(ref, cand, {"k": 3}) == 0.0
    assert topk_agreement(ref, cand, {"k": 8}) == 1.0


def test_mask_iou_thresholded_and_argmax() -> None:
    ref = np.zeros((1, 1, 32, 32), np.float32)
    ref[0, 0, 5:15, 5:15] = 0.9  # a 10x10 text region
    cand = np.zeros_like(ref)
    cand[0, 0, 5:15, 6:16] = 0.9  # moved one column: 90 shared of 110
    settings = dict(TASK_METRICS["mask-iou"].defaults)
    assert mask_iou(ref, cand, settings) == pytest.approx(90 / 110)
    assert mask_iou(ref, cand * 0.3, settings) == 0.0  # under the 0.3 threshold
    assert mask_iou(ref, cand * 0.3, {**settings, "threshold": 0.2}) == pytest.approx(90 / 110)
    # Three classes as logits [N, C, H, W]; the candidate turns 4 of class 1's 8 pixels to class 2.
    labels_ref = np.zeros((1, 4, 4), np.int64)
    labels_ref[0, :2, :] = 1
    labels_cand = labels_ref.copy()
    labels_cand[0, 0, :] = 2
    onehot = lambda lab: np.eye(3, dtype=np.float32)[lab].transpose(0, 3, 1, 2)  # noqa: E731
    # class 0: 8/8; class 1: 4/8; class 2: 0/4 -> mean 0.5
    assert mask_iou(onehot(labels_ref), onehot(labels_cand), settings) == pytest.approx((1 + 0.5 + 0) / 3)


def test_ctc_and_embedding_metrics_by_name() -> None:
    steps = np.eye(4, dtype=np.float32)[[[1, 1, 0, 2], [1, 3, 2, 2]]]  # "12" and "132"
    other = np.eye(4, dtype=np.float32)[[[1, 1, 0, 2], [1, 1, 2, 3]]]  # "12" and "123"
    ctc = fid.evaluate(fid.parse_metric("ctc-agreement"), [[steps]], [[other]], None)
    assert (ctc.score, ctc.reference) == (0.5, 1.0)
    # With blank=3, the second line reads "12" in both.
    assert fid.evaluate(fid.parse_metric("ctc-agreement:blank=3"), [[steps]], [[other]], None).score == 1.0
    emb = np.array([[1, 0], [0, 1]], np.float32)
    turned = np.array([[1, 0], [1, 0]], np.float32)  # second vector at 90 degrees
    assert fid.evaluate(fid.parse_metric("embedding-cosine"), [[emb]], [[turned]], None).score == 0.5


# --- names and settings -----------------------------------------------------------------------------
def test_parse_task_metric_settings() -> None:
    m = fid.parse_metric("detection-f1:conf=0.3, iou=0.6")
    assert m.options == {"conf": 0.3, "nms": 0.45, "iou": 0.6, "max_det": 300, "output": 0}
    assert m.higher_is_better and fid.default_budget(m) == "0.95"
    assert fid.parse_metric("top5").options == {"k": 5, "output": 0}
    for bad, needle in (
        ("detection-f1:conf=2", "between 0 and 1"),
        ("detection-f1:nmsx=0.4", "takes conf="),
        ("detection-f1:conf", "takes conf="),
        ("mask-iou:threshold=high", "must be a number"),
        ("top5:k=0", "at least 1"),
        ("ctc-agreement:blank=1.5", "whole number"),
    ):
        with pytest.raises(ConfigError, match=needle):
            fid.parse_metric(bad)
    with pytest.raises(ConfigError, match="between 0 and 1"):
        fid.parse_budget("1.5", fid.parse_metric("mask-iou"))


def test_task_metric_on_the_output_it_names() -> None:
    ref = [np.zeros((1, 5), np.float32), head(BOXES)]
    cand = [np.zeros((1, 5), np.float32), head(shifted(0, 10))]
    assert fid.evaluate(fid.parse_metric("detection-f1:output=1"), [ref], [cand], None).score == pytest.approx(0.75)
    with pytest.raises(DataError, match=r"detection-f1 needs"):
        fid.evaluate(fid.parse_metric("detection-f1"), [ref], [cand], None)
    with pytest.raises(ConfigError, match="2 output"):
        fid.evaluate(fid.parse_metric("detection-f1:output=2"), [ref], [cand], None)


# --- what auto picks ----------------------------------------------------------------------------------
def out(name: str, *shape: int | str | None) -> TensorInfo:
    return TensorInfo(name, "float32", tuple(shape))


@pytest.mark.parametrize(
    ("outputs", "ops", "metadata", "labels", "expected", "why"),
    [
        ([out("output0", 1, 84, 8400)], {}, {}, False, "detection-f1", "80 class scores over 8400 anchors"),
        ([out("output0", 1, 8400, 84)], {}, {}, False, "detection-f1", "YOLO grid"),
        ([out("output0", "batch", 84, "anchors")], {}, {}, False, "detection-f1", "symbolic anchor count"),
        ([out("protos", 1, 32), out("boxes", 1, 7, 2100)], {}, {}, False, "detection-f1:output=1", "'boxes'"),
        # PP-OCR det: a 1-channel sigmoid map with symbolic sizes
        ([out("sigmoid_0.tmp_0", "n", 1, "h", "w")], {"sigmoid_0.tmp_0": "Sigmoid"}, {}, False, "mask-iou",
         "1-channel probability map"),
        ([out("seg", 1, 21, 64, 64)], {}, {}, False, "mask-iou", "21 class maps"),
        # PP-OCR rec: [N, T, 6625] out of a Softmax, with its character dictionary in the metadata
        ([out("softmax_11.tmp_0", "n", "t", 6625)], {"softmax_11.tmp_0": "Softmax"}, {"character": "a\nb"}, False,
         "ctc-agreement", "Softmax output; a 'character' dictionary in the metadata"),
        ([out("probs", 1, 40, 6625)], {"probs": "Softmax"}, {}, False, "ctc-agreement", "Softmax"),
        ([out("logits", "N", 10)], {"logits": "Gemm"}, {}, True, "accuracy", "labels"),
        ([out("logits", "N", 10)], {"logits": "Gemm"}, {}, False, "top1", "class scores"),
        # one score per sample (a VAD's speech probability): top-1 of one column always agrees
        ([out("output", "batch", 1)], {"output": "Sigmoid"}, {}, False, "max-abs", "one score per sample"),
        ([out("sentence_embedding", 1, 384)], {}, {}, False, "embedding-cosine", "embedding"),
        ([out("last_hidden_state", 1, "seq", 768)], {}, {}, False, "embedding-cosine", "embedding"),
        ([out("y", 1, 2, 3)], {}, {}, False, "cosine", "no output looks like"),
        ([out("y", 1, 2, 3)], {}, {"task": "detect"}, False, "detection-f1", "task='detect'"),
        ([out("y", 1, 10)], {}, {"task": "classify"}, True, "accuracy", "task='classify'"),
    ],
)
def test_auto_picks_the_task_metric(
    outputs: list[TensorInfo], ops: dict[str, str], metadata: dict[str, str], labels: bool, expected: str, why: str
) -> None:
    choice = choose_metric(labels, outputs, metadata, ops)
    assert choice.spec == expected
    assert why in choice.reason
    fid.parse_metric(choice.spec)  # auto only names metrics --metric accepts


def test_generic_metric_on_a_detection_head_warns() -> None:
    outputs = [out("output0", 1, 84, 8400)]
    for generic in ("cosine", "max-abs"):
        warning = generic_metric_warning(generic, outputs, {})
        assert warning is not None and "--metric detection-f1" in warning and generic in warning
    assert "--metric mask-iou" in str(generic_metric_warning("cosine", [out("m", 1, 1, 640, 640)], {}))
    assert generic_metric_warning("detection-f1", outputs, {}) is None
    assert generic_metric_warning("cosine", [out("logits", 1, 10)], {}) is None


def test_nms_stopping_at_max_keep_equals_cutting_the_full_result() -> None:
    rng = np.random.default_rng(1)
    centers = rng.random((500, 2)) * 100
    boxes = np.concatenate([centers - 6, centers + 6], axis=1)
    scores, classes = rng.random(500), rng.integers(0, 3, 500)
    full = nms(boxes, scores, classes, 0.45)
    assert 20 < len(full) < 500  # some suppressed, enough kept to cut
    np.testing.assert_array_equal(nms(boxes, scores, classes, 0.45, max_keep=20), full[:20])


def test_auto_picks_the_task_metric_of_the_real_models(ppocr_models: dict[str, Path], digits_model: Path) -> None:
    picks = {}
    for key, path in ppocr_models.items():
        info = inspect_model(path)
        picks[key] = choose_metric(False, info.outputs, info.metadata, info.output_ops).spec
    digits = inspect_model(digits_model)
    picks["digits"] = choose_metric(True, digits.outputs, digits.metadata, digits.output_ops).spec
    assert picks == {"det": "mask-iou", "rec": "ctc-agreement", "cls": "top1", "digits": "accuracy"}
