"""Fidelity of a candidate against FP32: built-in metrics, user metrics, and the budget.

A metric turns (reference outputs, candidate outputs[, labels]) for the whole eval set into one
score. ``Budget`` says which scores pass. Pure functions: no sessions, no files.

Built-in metrics (top1 and cosine are ``edgekit_agent.agreement``'s, which the device's shadow
evaluation uses too):
  accuracy  argmax of the first output vs true labels (needs --labels); higher is better
  top1      argmax agreement with FP32 on the first output; higher is better
  cosine    mean cosine similarity per sample, the worst output counts; higher is better
  max-abs   largest absolute difference over all outputs; lower is better
  MODULE:FUNCTION  your function(reference: list[ndarray], candidate: list[ndarray]) -> float,
            called once per eval batch and averaged; higher is better
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from edgekit_agent import agreement

from edgekit.errors import ConfigError, DataError

Outputs = list[np.ndarray]  # one array per model output, axis 0 over samples
UserMetric = Callable[[list[np.ndarray], list[np.ndarray]], float]

BUILTIN = ("accuracy", "top1", "cosine", "max-abs")


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    needs_labels: bool = False
    user: UserMetric | None = None


def parse_metric(name: str) -> Metric:
    if name in ("accuracy", "top1", "cosine"):
        return Metric(name, True, needs_labels=name == "accuracy")
    if name in ("max-abs", "max_abs"):
        return Metric("max-abs", False)
    if ":" in name:
        try:
            fn = agreement.load_user_metric(name)
        except ValueError as exc:
            raise ConfigError(str(exc), field="--metric") from exc
        return Metric(name, True, user=fn)
    raise ConfigError(f"unknown metric {name!r}; use one of {', '.join(BUILTIN)} or MODULE:FUNCTION", field="--metric")


@dataclass(frozen=True)
class Budget:
    """``drop``: allowed loss in points against FP32's own score (``1%``); ``floor``: minimum
    score (``0.99``) for higher-is-better metrics, ``ceiling``: maximum for lower-is-better."""

    text: str
    drop: float | None = None
    limit: float | None = None

    def passes(self, metric: Metric, score: float, reference: float) -> bool:
        if not np.isfinite(score):
            return False
        if self.drop is not None:
            if metric.higher_is_better:
                return score >= reference - self.drop - 1e-12
            return score <= reference + self.drop + 1e-12
        assert self.limit is not None
        return score >= self.limit - 1e-12 if metric.higher_is_better else score <= self.limit + 1e-12

    def describe(self, metric: Metric) -> str:
        if self.drop is not None:
            return f"{metric.name} drop ≤ {self.drop * 100:g} points vs FP32"
        op = "≥" if metric.higher_is_better else "≤"
        return f"{metric.name} {op} {self.limit:g}"


_BUDGET = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*(%|pp|points)?\s*$")


def parse_budget(text: str, metric: Metric) -> Budget:
    match = _BUDGET.match(text or "")
    if not match:
        raise ConfigError(
            f"cannot parse budget {text!r}; use e.g. 1% (drop in points) or 0.99 (limit)", field="--max-drop"
        )
    value = float(match.group(1))
    if match.group(2):
        if not 0 <= value <= 100:
            raise ConfigError(f"a drop must be between 0% and 100%, got {text!r}", field="--max-drop")
        return Budget(text, drop=value / 100)
    if metric.name in ("accuracy", "top1", "cosine") and not 0 <= value <= 1:
        raise ConfigError(f"a {metric.name} limit must be between 0 and 1, got {text!r}", field="--max-drop")
    return Budget(text, limit=value)


def default_metric(has_labels: bool, output_shapes: Sequence[Sequence[object] | None]) -> str:
    if has_labels:
        return "accuracy"
    first = output_shapes[0] if output_shapes else None
    if first is not None and len(first) == 2:
        return "top1"
    return "cosine"


def default_budget(metric: Metric) -> str:
    return {"accuracy": "1%", "top1": "1%", "cosine": "0.99"}.get(metric.name, "1%" if metric.user else "0.01")


# --- the scores -------------------------------------------------------------------------------
def cosine(reference: Outputs, candidate: Outputs) -> float:
    return agreement.cosine(reference, candidate)


def max_abs(reference: Outputs, candidate: Outputs) -> float:
    return max(
        float(np.abs(r.astype(np.float64) - c.astype(np.float64)).max())
        for r, c in zip(reference, candidate, strict=True)
    )


def _argmax(out: np.ndarray) -> np.ndarray:
    try:
        return agreement.argmax_classes(out)
    except ValueError as exc:
        raise DataError(str(exc)) from exc


def top1(reference: Outputs, candidate: Outputs) -> float:
    _argmax(reference[0])
    return agreement.top1(reference, candidate)


def accuracy(outputs: Outputs, labels: np.ndarray) -> float:
    pred = _argmax(outputs[0])
    if pred.ndim != 1 or pred.shape[0] != labels.shape[0]:
        raise DataError(
            f"accuracy needs one prediction per label: got {list(pred.shape)} predictions for {labels.shape[0]} labels"
        )
    return float((pred == labels).mean())


@dataclass(frozen=True)
class Fidelity:
    """What a candidate scored; ``score`` is the metric that decides."""

    metric: str
    score: float
    reference: float
    cosine: float
    max_abs: float
    top1: float | None

    def to_dict(self) -> dict[str, float | str | None]:
        return {
            "metric": self.metric,
            "score": self.score,
            "fp32": self.reference,
            "cosine": self.cosine,
            "max_abs": self.max_abs,
            "top1_agreement": self.top1,
        }


def evaluate(
    metric: Metric,
    reference_batches: Sequence[Outputs],
    candidate_batches: Sequence[Outputs],
    labels: np.ndarray | None,
) -> Fidelity:
    """Score a candidate on the eval set (outputs given batch by batch)."""
    ref = [np.concatenate([b[i] for b in reference_batches]) for i in range(len(reference_batches[0]))]
    cand = [np.concatenate([b[i] for b in candidate_batches]) for i in range(len(candidate_batches[0]))]
    if len(ref) != len(cand) or any(r.shape != c.shape for r, c in zip(ref, cand, strict=True)):
        raise DataError("candidate outputs do not match FP32 output shapes")
    try:
        t1: float | None = top1(ref, cand)
    except DataError:
        t1 = None
    cos, mabs = cosine(ref, cand), max_abs(ref, cand)
    if metric.name == "accuracy":
        if labels is None:
            raise ConfigError("the accuracy metric needs --labels", field="--metric")
        score, reference = accuracy(cand, labels), accuracy(ref, labels)
    elif metric.name == "top1":
        if t1 is None:
            raise DataError("top1 needs a first output with a class axis; use --metric cosine")
        score, reference = t1, 1.0
    elif metric.name == "cosine":
        score, reference = cos, 1.0
    elif metric.name == "max-abs":
        score, reference = mabs, 0.0
    else:
        assert metric.user is not None
        scores = []
        for rb, cb in zip(reference_batches, candidate_batches, strict=True):
            try:
                scores.append(float(metric.user(list(rb), list(cb))))
            except Exception as exc:
                raise DataError(f"metric {metric.name} failed: {type(exc).__name__}: {exc}") from exc
        selfs = [float(metric.user(list(rb), list(rb))) for rb in reference_batches]
        score, reference = float(np.mean(scores)), float(np.mean(selfs))
    return Fidelity(metric.name, score, reference, cos, mabs, t1)
