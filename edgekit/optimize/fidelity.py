"""Fidelity of a candidate against FP32: built-in metrics, user metrics, and the budget.

A metric turns (reference outputs, candidate outputs[, labels]) for the whole eval set into one
score. ``Budget`` says which scores pass. Pure functions: no sessions, no files.

Built-in metrics (top1 and cosine are ``edgekit_agent.agreement``'s, which the device's shadow
evaluation uses too):
  accuracy  argmax of the first output vs true labels (needs --labels); higher is better
  top1      argmax agreement with FP32 on the first output; higher is better
  cosine    mean cosine similarity per sample, the worst output counts; higher is better
  max-abs   largest absolute difference over all outputs; lower is better
  task metrics (``task_metrics``): detection-f1, top5, mask-iou, ctc-agreement, embedding-cosine,
            each with settings: ``NAME:key=value,...`` (``detection-f1:conf=0.3,iou=0.6``);
            higher is better
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
from edgekit.optimize.task_metrics import INTEGER_SETTINGS, TASK_METRICS, UNIT_SETTINGS

Outputs = list[np.ndarray]  # one array per model output, axis 0 over samples
UserMetric = Callable[[list[np.ndarray], list[np.ndarray]], float]

BUILTIN = ("accuracy", "top1", "top5", "cosine", "max-abs", "detection-f1", "mask-iou", "ctc-agreement",
           "embedding-cosine")
UNIT_SCORES = ("accuracy", "top1", "cosine", *TASK_METRICS)  # scores between 0 and 1


@dataclass(frozen=True)
class Metric:
    name: str
    higher_is_better: bool
    needs_labels: bool = False
    user: UserMetric | None = None
    settings: tuple[tuple[str, float], ...] = ()  # a task metric's, every key with its value

    @property
    def options(self) -> dict[str, float]:
        return dict(self.settings)

    def describe_settings(self) -> str:
        return ", ".join(f"{k}={v:g}" for k, v in self.settings)


def _task_settings(name: str, text: str) -> tuple[tuple[str, float], ...]:
    """``conf=0.3,iou=0.6`` over the metric's defaults; every key known, every value in range."""
    task = TASK_METRICS[name]
    values = dict(task.defaults)
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, eq, raw = item.partition("=")
        key = key.strip().replace("-", "_")
        if not eq or key not in task.defaults:
            raise ConfigError(
                f"{name} takes {', '.join(f'{k}=' for k in task.defaults)}; got {item!r}", field="--metric"
            )
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}: {key} must be a number, got {raw.strip()!r}", field="--metric") from None
        if key in UNIT_SETTINGS and not 0 <= value <= 1:
            raise ConfigError(f"{name}: {key} must be between 0 and 1, got {value:g}", field="--metric")
        if key in INTEGER_SETTINGS and (value != int(value) or (value < 0 and key != "axis")):
            raise ConfigError(f"{name}: {key} must be a whole number ≥ 0, got {value:g}", field="--metric")
        if key in ("k", "max_det") and value < 1:
            raise ConfigError(f"{name}: {key} must be at least 1, got {value:g}", field="--metric")
        values[key] = value
    return tuple(values.items())


def parse_metric(name: str) -> Metric:
    base, _, options = name.partition(":")
    if base in TASK_METRICS:
        return Metric(base, True, settings=_task_settings(base, options))
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
    if metric.name in UNIT_SCORES and not 0 <= value <= 1:
        raise ConfigError(f"a {metric.name} limit must be between 0 and 1, got {text!r}", field="--max-drop")
    return Budget(text, limit=value)


def default_budget(metric: Metric) -> str:
    if metric.name in TASK_METRICS:
        return TASK_METRICS[metric.name].budget
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


def _task_score(metric: Metric, reference: Outputs, candidate: Outputs) -> float:
    options = metric.options
    index = int(options["output"])
    if index >= len(reference):
        raise ConfigError(
            f"{metric.name}: output={index}, but the model has {len(reference)} output(s)", field="--metric"
        )
    try:
        return TASK_METRICS[metric.name].score(reference[index], candidate[index], options)
    except ValueError as exc:
        raise DataError(f"{exc}; pick the metric for this output with --metric") from exc


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
    elif metric.name in TASK_METRICS:
        score, reference = _task_score(metric, ref, cand), _task_score(metric, ref, ref)
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
