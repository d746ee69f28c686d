"""How far a candidate model's outputs agree with a reference's: the metrics ``edgekit quantize``
judges a candidate with, and the device's shadow evaluation uses too (one implementation, here,
because the agent cannot import edgekit).

  top1      argmax agreement on the first output, counted per sample (row)
  cosine    cosine similarity per sample, the worst output counts
  MODULE:FUNCTION  ``function(reference: list[ndarray], candidate: list[ndarray]) -> float``,
            higher is better

Pure numpy; a malformed output raises ``ValueError``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

Outputs = Sequence[np.ndarray[Any, Any]]  # one array per model output, axis 0 over samples
UserMetric = Callable[[list[np.ndarray[Any, Any]], list[np.ndarray[Any, Any]]], float]

BUILTIN_AGREEMENT = ("top1", "cosine")


def argmax_classes(out: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    """The top class per sample (and per position, for [N, T, C] outputs)."""
    if out.ndim < 2:
        raise ValueError(f"top-1 needs an output with a class axis, got shape {list(out.shape)}")
    top: np.ndarray[Any, Any] = (out.reshape(out.shape[0], -1, out.shape[-1]).argmax(-1) if out.ndim > 2
                                 else out.argmax(-1))
    return top


def top1_matches(reference: Outputs, candidate: Outputs) -> tuple[int, int]:
    """(samples whose top class agrees, samples) on the first output."""
    a, b = argmax_classes(np.asarray(reference[0])), argmax_classes(np.asarray(candidate[0]))
    if a.shape != b.shape:
        raise ValueError(f"outputs differ in shape: {list(a.shape)} vs {list(b.shape)}")
    same = (a == b).reshape(a.shape[0], -1).all(axis=1)
    return int(same.sum()), int(same.shape[0])


def top1(reference: Outputs, candidate: Outputs) -> float:
    """Share of top classes that agree (every position of every sample counts)."""
    a, b = argmax_classes(np.asarray(reference[0])), argmax_classes(np.asarray(candidate[0]))
    return float((a == b).mean())


def cosine_per_sample(reference: Outputs, candidate: Outputs) -> np.ndarray[Any, Any]:
    """Cosine similarity of each sample, the worst output counting; two all-zero rows agree."""
    worst: np.ndarray[Any, Any] | None = None
    for ref, cand in zip(reference, candidate, strict=True):
        ref, cand = np.asarray(ref), np.asarray(cand)
        if ref.shape != cand.shape:
            raise ValueError(f"outputs differ in shape: {list(ref.shape)} vs {list(cand.shape)}")
        a = ref.reshape(ref.shape[0], -1).astype(np.float64)
        b = cand.reshape(cand.shape[0], -1).astype(np.float64)
        num = (a * b).sum(1)
        den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
        both_zero = den == 0
        cos = np.where(both_zero, np.where(np.abs(a - b).max(1) == 0, 1.0, 0.0), num / np.where(both_zero, 1, den))
        worst = cos if worst is None else np.minimum(worst, cos)
    return worst if worst is not None else np.ones(0)


def cosine(reference: Outputs, candidate: Outputs) -> float:
    """Mean cosine per sample of each output; the worst output's mean counts."""
    worst = 1.0
    for ref, cand in zip(reference, candidate, strict=True):
        worst = min(worst, float(cosine_per_sample([ref], [cand]).mean()))
    return worst


def load_user_metric(name: str) -> UserMetric:
    """``module:function`` -> the function. ``ValueError`` when it cannot be imported or called."""
    module, _, func = name.partition(":")
    if not module or not func:
        raise ValueError(f"{name!r} is not MODULE:FUNCTION")
    try:
        fn = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as exc:
        raise ValueError(f"cannot import metric {name!r}: {exc}") from exc
    if not callable(fn):
        raise ValueError(f"{name!r} is not a function")
    return fn


def check_agreement_metric(name: str) -> None:
    """``ValueError`` unless ``name`` is top1, cosine or an importable MODULE:FUNCTION."""
    if name in BUILTIN_AGREEMENT:
        return
    if ":" not in name:
        raise ValueError(f"unknown metric {name!r}; use top1, cosine or MODULE:FUNCTION")
    load_user_metric(name)


__all__ = ["BUILTIN_AGREEMENT", "argmax_classes", "check_agreement_metric", "cosine", "cosine_per_sample",
           "load_user_metric", "top1", "top1_matches"]
