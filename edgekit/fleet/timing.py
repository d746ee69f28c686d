"""Pure: which devices to ask for a device bench, and what their answers add up to.

``edgekit bench --group G --app A`` (``edgekit.fleet.benching`` does the MQTT) reads the group's
retained statuses, asks ``pick_devices`` for a few devices per device class (platform), sends each
a request, and folds the answers with ``summarize``: per class and candidate, the median of the
devices' medians, the median of their ratios to the running model (each device timed both in the
same interleaved rounds, so its ratio is honest on its own), the runs behind it and the spread.

The verdict is the paired test's (``edgekit.optimize.speedup``): an agent sends each model's
per-round times (``samples_ms``, index ``i`` is round ``i``), so within a device a candidate pairs
with its reference round by round; the per-round ratios of every device of the class are pooled
(each keeps its pairing) and the sign test gives their median and 95 % interval (``speed``). An
answer is hostile input: ``samples_ms`` that is not a list of at most ``MAX_SAMPLES`` finite
positive numbers, or whose length differs from its reference's, is ignored and the figure rests on
the medians alone. Without any (older agents) the interval is unknown, and nothing is shown faster.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgekit.optimize.speedup import PairedRatio, ratio_interval

__all__ = ["MAX_SAMPLES", "BenchDevice", "BenchSummary", "ClassFigure", "Refusal", "RelativeFigure",
           "classes_without_devices", "decode_samples", "paired_rounds", "pick_devices", "relative_to",
           "speed_dict", "summarize"]

UNKNOWN_PLATFORM = "unknown"
MAX_SAMPLES = 1000  # per-round times taken from one model's answer (the agent sends at most this many)
NO_SAMPLES = "interval unknown: no device sent per-round times that pair (an older agent, or unusable ones)"


def decode_samples(value: Any, limit: int = MAX_SAMPLES) -> list[float] | None:
    """Pure: ``samples_ms`` from an answer, or None when it is anything but a non-empty list of at
    most ``limit`` finite positive numbers (strings, NaN, nested lists, ... make it unusable whole:
    a partly valid list would shift the rounds)."""
    if not isinstance(value, list) or not value or len(value) > limit:
        return None
    out: list[float] = []
    for x in value:
        if isinstance(x, bool) or not isinstance(x, int | float):
            return None
        f = float(x)
        if not math.isfinite(f) or f <= 0.0:
            return None
        out.append(f)
    return out


def paired_rounds(reference: Mapping[str, Any], candidate: Mapping[str, Any]) -> list[float] | None:
    """Pure: the per-round ratios candidate/reference of one device's answer, or None when either
    has no usable ``samples_ms`` or their lengths differ (the rounds would not pair)."""
    ref, cand = decode_samples(reference.get("samples_ms")), decode_samples(candidate.get("samples_ms"))
    if ref is None or cand is None or len(ref) != len(cand):
        return None
    return [c / r for r, c in zip(ref, cand, strict=True)]


def _pooled(per_device: Sequence[tuple[str, list[float] | None]]) -> tuple[PairedRatio | None, list[str]]:
    """The sign test over the paired rounds of every device that sent them, and those devices."""
    paired = [(d, rs) for d, rs in per_device if rs]
    if not paired:
        return None, []
    return ratio_interval([r for _, rs in paired for r in rs]), [d for d, _ in paired]


def speed_dict(speed: PairedRatio | None, devices: Sequence[str]) -> dict[str, Any]:
    """The paired test as a report records it; ``why`` says so when there is none."""
    if speed is None:
        return {"test": None, "ratio": None, "ci_low": None, "ci_high": None, "rounds": 0, "devices": [],
                "why": NO_SAMPLES}
    return {**speed.to_dict(), "devices": list(devices), "describe": speed.describe()}


@dataclass(frozen=True)
class BenchDevice:
    device: str
    platform: str


def pick_devices(statuses: Mapping[str, Mapping[str, Any]], app: str, per_class: int) -> dict[str, list[BenchDevice]]:
    """Online, ready devices whose agent answers benches for ``app``: the first ``per_class`` of
    each platform by name (stable, so a repeated bench asks the same devices)."""
    by_class: dict[str, list[BenchDevice]] = {}
    for device in sorted(statuses):
        st = statuses[device]
        if st.get("state") != "online" or st.get("ready") is False or st.get("bench") != app:
            continue
        platform = st.get("platform") if isinstance(st.get("platform"), str) else UNKNOWN_PLATFORM
        chosen = by_class.setdefault(str(platform), [])
        if len(chosen) < per_class:
            chosen.append(BenchDevice(device, str(platform)))
    return dict(sorted(by_class.items()))


def classes_without_devices(expected: Iterable[str], asked: Iterable[str]) -> list[str]:
    return sorted(set(expected) - set(asked))


@dataclass(frozen=True)
class Refusal:
    device: str
    platform: str
    image: str
    error: str
    detail: str
    exit_code: int | None = None


@dataclass(frozen=True)
class ClassFigure:
    """One candidate on one device class, over the devices that timed it."""

    platform: str
    image: str
    digest: str
    median_ms: float
    p90_ms: float
    ratio: float | None          # median over devices of (candidate median / running median)
    running_median_ms: float
    n: int                        # timed runs of the candidate, all devices
    devices: list[str]
    ratio_spread: tuple[float, float] | None = None  # min and max of the devices' ratios
    speed: PairedRatio | None = None   # the paired test against the running model; None: no per-round times
    paired_devices: list[str] = field(default_factory=list)  # the devices whose rounds are in ``speed``

    def describe_speed(self) -> str:
        return self.speed.describe() if self.speed is not None else NO_SAMPLES

    def to_dict(self) -> dict[str, Any]:
        return {"platform": self.platform, "image": self.image, "digest": self.digest,
                "median_ms": self.median_ms, "p90_ms": self.p90_ms, "ratio": self.ratio,
                "running_median_ms": self.running_median_ms, "n": self.n, "devices": self.devices,
                "ratio_min": self.ratio_spread[0] if self.ratio_spread else None,
                "ratio_max": self.ratio_spread[1] if self.ratio_spread else None,
                "speed": speed_dict(self.speed, self.paired_devices)}


@dataclass
class BenchSummary:
    figures: list[ClassFigure] = field(default_factory=list)
    refusals: list[Refusal] = field(default_factory=list)
    unanswered: list[str] = field(default_factory=list)        # devices asked that sent no final answer
    rejected: list[tuple[str, str]] = field(default_factory=list)  # (device, detail): request refused whole
    busy: list[str] = field(default_factory=list)
    truncated: list[str] = field(default_factory=list)
    without_devices: list[str] = field(default_factory=list)  # expected classes no device answered for

    def figure(self, platform: str, image: str) -> ClassFigure | None:
        return next((f for f in self.figures if f.platform == platform and f.image == image), None)

    def refused_everywhere(self, candidates: Sequence[str]) -> list[str]:
        """Candidates that some device refused and none timed."""
        timed = {f.image for f in self.figures}
        refused = {r.image for r in self.refusals}
        return [c for c in candidates if c in refused and c not in timed]

    def to_dict(self) -> dict[str, Any]:
        return {"figures": [f.to_dict() for f in self.figures],
                "refusals": [r.__dict__ for r in self.refusals],
                "unanswered": self.unanswered, "rejected": [{"device": d, "detail": t} for d, t in self.rejected],
                "busy": self.busy, "truncated": self.truncated, "without_devices": self.without_devices}


def summarize(asked: Sequence[BenchDevice], answers: Mapping[str, Mapping[str, Any]], candidates: Sequence[str],
              expected_platforms: Iterable[str] = ()) -> BenchSummary:
    """Fold the devices' final answers (device -> ``bench_result`` payload) into per-class figures."""
    out = BenchSummary()
    per: dict[tuple[str, str], list[tuple[str, Mapping[str, Any], Mapping[str, Any]]]] = {}
    answered_classes: set[str] = set()
    for dev in asked:
        answer = answers.get(dev.device)
        if answer is None:
            out.unanswered.append(dev.device)
            continue
        state = answer.get("state")
        platform = str(answer.get("platform") or dev.platform)
        if state == "busy":
            out.busy.append(dev.device)
            continue
        if state in ("rejected", "failed"):
            out.rejected.append((dev.device, str(answer.get("detail") or state)))
            continue
        if state != "done":
            out.unanswered.append(dev.device)
            continue
        answered_classes.add(platform)
        if answer.get("truncated"):
            out.truncated.append(dev.device)
        running = answer.get("running") or {}
        for entry in answer.get("candidates") or []:
            image = str(entry.get("image"))
            if entry.get("status") == "ok" and entry.get("median_ms") is not None and running.get("median_ms"):
                per.setdefault((platform, image), []).append((dev.device, entry, running))
            elif entry.get("status") in ("refused", "failed"):
                out.refusals.append(Refusal(dev.device, platform, image, str(entry.get("error") or entry["status"]),
                                            str(entry.get("detail") or ""), entry.get("exit_code")))
    order = {c: i for i, c in enumerate(candidates)}
    for (platform, image), rows in sorted(per.items(), key=lambda kv: (kv[0][0], order.get(kv[0][1], 99))):
        ratios = [float(e["ratio"]) for _, e, _ in rows if e.get("ratio") is not None]
        speed, paired = _pooled([(d, paired_rounds(r, e)) for d, e, r in rows])
        out.figures.append(ClassFigure(
            platform=platform, image=image, digest=str(rows[0][1].get("digest") or image.rsplit("@", 1)[-1]),
            median_ms=round(statistics.median(float(e["median_ms"]) for _, e, _ in rows), 4),
            p90_ms=round(statistics.median(float(e["p90_ms"]) for _, e, _ in rows), 4),
            ratio=round(statistics.median(ratios), 4) if ratios else None,
            running_median_ms=round(statistics.median(float(r["median_ms"]) for _, _, r in rows), 4),
            n=sum(int(e.get("n") or 0) for _, e, _ in rows),
            devices=[d for d, _, _ in rows],
            ratio_spread=(min(ratios), max(ratios)) if ratios else None, speed=speed, paired_devices=paired))
    out.without_devices = classes_without_devices(expected_platforms, answered_classes)
    return out


@dataclass(frozen=True)
class RelativeFigure:
    """A candidate against a reference candidate timed in the same rounds on the same devices."""

    image: str
    ratio: float           # median over devices of (candidate median / reference median)
    median_ms: float       # median over devices of the candidate's median
    n: int                 # the candidate's timed runs, all devices
    devices: list[str]
    ratio_min: float
    ratio_max: float
    speed: PairedRatio | None = None   # the paired test against the reference; None: no per-round times
    paired_devices: list[str] = field(default_factory=list)

    def faster(self) -> bool:
        """Shown faster than the reference on the devices: the whole interval is under 1.0."""
        return self.speed is not None and self.speed.faster()

    def describe_speed(self) -> str:
        return self.speed.describe() if self.speed is not None else NO_SAMPLES

    def to_dict(self) -> dict[str, Any]:
        return {"ratio": self.ratio, "median_ms": self.median_ms, "n": self.n, "devices": self.devices,
                "ratio_min": self.ratio_min, "ratio_max": self.ratio_max,
                "speed": speed_dict(self.speed, self.paired_devices)}


def relative_to(answers: Mapping[str, Mapping[str, Any]], reference: str) -> dict[str, RelativeFigure]:
    """Pure: each candidate's figures against ``reference`` (e.g. the FP32 build sent with them),
    from the ``done`` answers where both were timed."""
    rows: dict[str, list[tuple[str, float, float, int]]] = {}
    rounds: dict[str, list[tuple[str, list[float] | None]]] = {}
    for device, answer in sorted(answers.items()):
        if answer.get("state") != "done":
            continue
        entries = {str(e.get("image")): e for e in answer.get("candidates") or [] if e.get("status") == "ok"}
        ref = entries.get(reference)
        if ref is None or not ref.get("median_ms"):
            continue
        for image, e in entries.items():
            if image == reference or e.get("median_ms") is None:
                continue
            rows.setdefault(image, []).append((device, float(e["median_ms"]) / float(ref["median_ms"]),
                                               float(e["median_ms"]), int(e.get("n") or 0)))
            rounds.setdefault(image, []).append((device, paired_rounds(ref, e)))
    out: dict[str, RelativeFigure] = {}
    for image, found in rows.items():
        ratios = [r for _, r, _, _ in found]
        speed, paired = _pooled(rounds[image])
        out[image] = RelativeFigure(image, round(statistics.median(ratios), 4),
                                    round(statistics.median(m for _, _, m, _ in found), 4),
                                    sum(n for _, _, _, n in found), [d for d, _, _, _ in found],
                                    round(min(ratios), 4), round(max(ratios), 4), speed, paired)
    return out
