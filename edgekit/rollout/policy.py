"""The release policy of ``edgekit push --policy``: which quantized images may roll out (pure).

A policy reads the image's verified quantization attestation (``edgekit.image.attestations``)
and refuses, before anything in the cluster changes, an image

- without an attestation verified by the release key (when ``require_attestation``),
- whose attestation does not verify (another key, tampered, about another image),
- whose attested accuracy drop against FP32 is over ``max_accuracy_drop``,
- whose attested latency ratio against FP32 on the group's platform is at or over
  ``max_latency_ratio`` (1.0 by default: a quantized model must be faster than FP32 where it runs),
  or was never measured there. The figure is the devices' where ``quantize --timing-group`` timed
  the build on devices of that class, else the build host's; a refusal names which, with the
  paired test's interval and rounds when the attestation records them. With ``latency_evidence:
  interval`` the figure that counts is the upper bound of that interval, so an image passes only
  when it is shown faster at the recorded confidence; an attestation without an interval (too few
  rounds, or an older one) is then refused.

An image whose attestation records FP32 kept (nothing quantized) has no drop and nothing to be
slower than: both budgets pass. ``decide`` is the whole judgement; the adapter that fetches and
verifies the attestation is ``edgekit.rollout.releasing``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edgekit.errors import (
    AccuracyBudgetError,
    AttestationInvalidError,
    AttestationMissingError,
    ConfigError,
    LatencyBudgetError,
    ReleasePolicyError,
)
from edgekit.units import parse_fraction

__all__ = ["EVIDENCE", "FIELDS", "AttestationEvidence", "Refusal", "ReleasePolicy", "Verdict", "decide", "override",
           "parse_policy", "provenance", "refusal_error"]

FIELDS = ("max_accuracy_drop", "require_attestation", "max_latency_ratio", "platform", "latency_evidence")
EVIDENCE = ("median", "interval")  # which attested figure the latency rule compares
Family = Literal["invalid", "missing", "accuracy", "latency"]
# the order refusals are reported in: the error of the first one gives the exit code
_ORDER: tuple[Family, ...] = ("invalid", "missing", "accuracy", "latency")


@dataclass(frozen=True)
class ReleasePolicy:
    max_accuracy_drop: float | None = None  # in the metric's units; points as a fraction (0.01 = 1 point)
    require_attestation: bool = True
    max_latency_ratio: float | None = 1.0  # refuse a ratio at or over this; None: no latency rule
    platform: str | None = None  # the group's platform (os/arch); None: every platform measured
    latency_evidence: Literal["median", "interval"] = "median"  # interval: its upper bound must pass


@dataclass(frozen=True)
class AttestationEvidence:
    """What the adapter found: a verified predicate, none, or one that does not verify."""

    status: Literal["verified", "missing", "invalid"]
    predicate: Mapping[str, Any] = field(default_factory=dict)
    detail: str = ""  # the verifier's one line, for missing/invalid


@dataclass(frozen=True)
class Refusal:
    family: Family
    message: str


@dataclass(frozen=True)
class Verdict:
    refusals: tuple[Refusal, ...]
    checked: tuple[str, ...]  # what passed, in a few words each

    @property
    def ok(self) -> bool:
        return not self.refusals


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def decide(policy: ReleasePolicy, evidence: AttestationEvidence) -> Verdict:
    """Every rule of ``policy`` against ``evidence``: the refusals (in reporting order) and the passes."""
    refusals: list[Refusal] = []
    checked: list[str] = []
    if evidence.status == "invalid":
        return Verdict((Refusal("invalid", evidence.detail or "the quantization attestation does not verify"),), ())
    if evidence.status == "missing":
        if policy.require_attestation:
            return Verdict((Refusal("missing", evidence.detail or "no quantization attestation"),), ())
        return Verdict((), ("no attestation (not required): accuracy and latency unchecked",))
    pred = evidence.predicate
    fp32_kept = pred.get("quantized") is False or pred.get("precision") == "fp32"
    accuracy = pred.get("accuracy") if isinstance(pred.get("accuracy"), Mapping) else {}
    assert isinstance(accuracy, Mapping)
    if policy.max_accuracy_drop is not None:
        drop = 0.0 if fp32_kept else _number(accuracy.get("drop"))
        metric = accuracy.get("metric") or pred.get("metric") or "metric"
        if drop is None:
            refusals.append(Refusal("missing", "the attestation records no accuracy drop against FP32"))
        elif drop > policy.max_accuracy_drop + 1e-12:
            refusals.append(Refusal("accuracy", f"attested {metric} drop {_fmt(drop)} is over the budget "
                                                f"{_fmt(policy.max_accuracy_drop)}"))
        else:
            checked.append(f"{metric} drop {_fmt(drop)} ≤ {_fmt(policy.max_accuracy_drop)}")
    if policy.max_latency_ratio is not None and not fp32_kept:
        latency = pred.get("latency") if isinstance(pred.get("latency"), Mapping) else {}
        assert isinstance(latency, Mapping)
        records = {p: v for p, v in latency.items() if isinstance(v, Mapping)}
        ratios = {p: _number(v.get("ratio")) for p, v in records.items()}
        if policy.platform is not None:
            wanted = {policy.platform: ratios.get(policy.platform)}
        else:
            wanted = {p: r for p, r in ratios.items() if r is not None}
            if not wanted:
                refusals.append(Refusal("latency", "the attestation records no latency measured on any platform"))
        for plat, ratio in sorted(wanted.items()):
            if ratio is None:
                refusals.append(Refusal("latency", f"latency on {plat} was never measured (the attestation "
                                                   "records none there)"))
                continue
            refusal, passed = _latency_rule(policy, plat, ratio, records[plat])
            if refusal is not None:
                refusals.append(Refusal("latency", refusal))
            else:
                checked.append(passed)
    refusals.sort(key=lambda r: _ORDER.index(r.family))
    return Verdict(tuple(refusals), tuple(checked))


def _latency_rule(policy: ReleasePolicy, plat: str, ratio: float, record: Mapping[str, Any]) -> tuple[str | None, str]:
    """(why it is refused or None, what passed) for one platform's attested latency."""
    bound = policy.max_latency_ratio
    assert bound is not None
    if policy.latency_evidence == "interval":
        high = _number(record.get("ci_high"))
        if high is None:
            return (f"attested latency on {plat} (x{_fmt(ratio)} FP32) has no interval to show it under "
                    f"x{_fmt(bound)} ({provenance(record)})"), ""
        if high >= bound:
            return (f"attested latency on {plat} is not shown under x{_fmt(bound)} FP32: its interval reaches "
                    f"x{_fmt(high)} ({provenance(record)})"), ""
        return None, f"latency on {plat} x{_fmt(ratio)}, interval up to x{_fmt(high)} < x{_fmt(bound)}"
    if ratio >= bound:
        return (f"attested latency on {plat} is x{_fmt(ratio)} FP32, not under x{_fmt(bound)} "
                f"({provenance(record)})"), ""
    return None, f"latency on {plat} x{_fmt(ratio)} < x{_fmt(bound)}"


def provenance(record: Mapping[str, Any]) -> str:
    """Where an attested latency was measured and how sure it is, in a few words: ``measured on 2
    devices of group cams, 95% CI 0.98-1.07x, sign test, 40 paired rounds``."""
    where = record.get("measured_on")
    if where == "devices":
        group = record.get("group")
        place = f"measured on {record.get('devices') or '?'} device(s)" + (f" of group {group}" if group else "")
    elif isinstance(where, str) and where:
        place = f"measured on the {where}" if where == "build host" else f"measured on {where}"
    else:
        place = "measured where the attestation does not say"
    low, high, rounds = _number(record.get("ci_low")), _number(record.get("ci_high")), record.get("rounds")
    confidence = _number(record.get("confidence")) or 0.95
    if low is not None and high is not None:
        return f"{place}, {confidence:.0%} CI {low:.2f}-{high:.2f}x, sign test, {rounds} paired rounds"
    if isinstance(rounds, int) and rounds > 0:
        return f"{place}, {rounds} paired rounds: too few for an interval"
    return f"{place}, no interval recorded"


_ERRORS: dict[Family, type[ReleasePolicyError]] = {
    "invalid": AttestationInvalidError, "missing": AttestationMissingError,
    "accuracy": AccuracyBudgetError, "latency": LatencyBudgetError}


def refusal_error(image: str, verdict: Verdict) -> ReleasePolicyError:
    """One error for a refused verdict: the first refusal's family, every refusal in the line."""
    first = verdict.refusals[0]
    reasons = "; ".join(r.message for r in verdict.refusals)
    return _ERRORS[first.family](f"release policy refuses {image}: {reasons}",
                                 hint="nothing in the cluster was changed")


# --- reading a policy ------------------------------------------------------------------------------
def _ratio(value: Any, where: str) -> float:
    number = _number(value)
    if number is None or number <= 0:
        raise ConfigError(f"must be a number above 0 (a latency ratio against FP32), got {value!r}", field=where)
    return number


def _bool(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"must be true or false, got {value!r}", field=where)
    return value


def parse_policy(data: Any, *, where: str = "policy") -> ReleasePolicy:
    """A policy from the mapping a YAML/JSON file holds; every key known, every value in range."""
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("must be a mapping of " + ", ".join(FIELDS), field=where)
    unknown = sorted(set(map(str, data)) - set(FIELDS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)}; known: {', '.join(FIELDS)}", field=where)
    return override(ReleasePolicy(), where=where, **dict(data))


def override(policy: ReleasePolicy, *, where: str = "policy", **values: Any) -> ReleasePolicy:
    """``policy`` with the given fields replaced (``None`` values keep the field: flags not given)."""
    changes: dict[str, Any] = {}
    if (v := values.get("max_accuracy_drop")) is not None:
        changes["max_accuracy_drop"] = parse_fraction(v, flag=f"{where}.max_accuracy_drop", allow_above_one=True)
    if (v := values.get("require_attestation")) is not None:
        changes["require_attestation"] = _bool(v, f"{where}.require_attestation")
    if (v := values.get("max_latency_ratio")) is not None:
        changes["max_latency_ratio"] = _ratio(v, f"{where}.max_latency_ratio")
    if (v := values.get("platform")) is not None:
        if not isinstance(v, str) or v.count("/") != 1 or not all(v.split("/")):
            raise ConfigError(f"must be os/arch (e.g. linux/arm64), got {v!r}", field=f"{where}.platform")
        changes["platform"] = v
    if (v := values.get("latency_evidence")) is not None:
        if v not in EVIDENCE:
            raise ConfigError(f"must be one of {', '.join(EVIDENCE)}, got {v!r}", field=f"{where}.latency_evidence")
        changes["latency_evidence"] = v
    return replace(policy, **changes)
