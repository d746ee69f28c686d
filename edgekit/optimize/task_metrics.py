"""Task metrics for ``--metric MODULE:FUNCTION``: judge a model on what it is for, not on the
cosine of its raw outputs (a detector can keep cosine 0.998 and lose most detections).

Each takes the FP32 outputs and the candidate outputs of one eval batch (lists of arrays, in
the model's output order) and returns a score where higher is better.
"""

from __future__ import annotations

import numpy as np

TEXT_THRESHOLD = 0.3


def text_mask_iou(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """IoU of the text masks (probability > 0.3) of a DB text detector such as PP-OCR det."""
    a = reference[0] > TEXT_THRESHOLD
    b = candidate[0] > TEXT_THRESHOLD
    union = np.logical_or(a, b).sum()
    if union == 0:
        return 1.0
    return float(np.logical_and(a, b).sum() / union)


def ctc_decode(probs: np.ndarray, blank: int = 0) -> list[tuple[int, ...]]:
    """Greedy CTC decoding of [N, T, C] class scores into label sequences."""
    best = probs.argmax(-1)
    out = []
    for row in best:
        keep = np.concatenate([[True], row[1:] != row[:-1]]) & (row != blank)
        out.append(tuple(int(v) for v in row[keep]))
    return out


def ctc_agreement(reference: list[np.ndarray], candidate: list[np.ndarray]) -> float:
    """Share of text lines a CTC recognizer (PP-OCR rec) decodes to the same string as FP32."""
    ref, cand = ctc_decode(reference[0]), ctc_decode(candidate[0])
    return float(np.mean([r == c for r, c in zip(ref, cand, strict=True)]))
