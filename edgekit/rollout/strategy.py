"""A rollout strategy: waves, bake time, spread label, gates — typed, frozen, validated.

Everything here is pure. Parsers turn the strings people type (``1,5%,25%,100%``, ``2m``, ``1%``)
into values and raise the rollout error for the flag at fault, with the flag's name in the one-line
message, before anything talks to a cluster.

Fractions are stored as fractions (``0.01``), durations as seconds. ``to_json``/``from_json``
give the camelCase form kept in the EdgeRollout spec.
"""

from __future__ import annotations

import itertools
import math
import re
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from edgekit.errors import InvalidWavesError, ThresholdRangeError

OfflinePolicy = Literal["fail", "skip"]
BaselineKind = Literal["control", "before"]
OFFLINE_POLICIES: tuple[OfflinePolicy, ...] = ("fail", "skip")

DEFAULT_WAVES = "1,10%,50%,100%"


@dataclass(frozen=True)
class WaveStep:
    """One wave's cumulative target: ``count`` nodes or ``percent`` of the group, moved by its end."""

    amount: float
    percent: bool

    def __str__(self) -> str:
        if self.percent:
            return f"{_fmt_number(self.amount)}%"
        return str(int(self.amount))

    def resolve(self, total: int) -> int:
        """Cumulative number of nodes this step reaches in a group of ``total`` (at least 1)."""
        # Percentages round up so that a small share of a small group still moves a node; the
        # tiny epsilon keeps 25% of 200 at exactly 50 despite binary fractions.
        wanted = math.ceil(self.amount * total / 100.0 - 1e-9) if self.percent else int(self.amount)
        return max(1, min(total, wanted))


@dataclass(frozen=True)
class GatePolicy:
    """What a wave must show before the next one starts. ``None`` switches a gate off."""

    max_error_rate: float | None = 0.01
    max_p95_ms: float | None = None
    max_p95_regression: float | None = None
    min_reporting: float = 0.9
    probe_must_pass: bool = False
    offline_policy: OfflinePolicy = "fail"
    wave_timeout_s: float = 600.0
    fail_fast: bool = True
    silence_deadline_s: float | None = None  # skip silent devices after this (policy skip); None: timeout
    # what the wave is compared with: "control" (the group's devices still on the old revision, same
    # window) or "before" (the wave's own devices before the move)
    baseline: BaselineKind = "control"

    def active_gates(self) -> list[str]:
        """Human names of the gates that apply, for plans and status views."""
        gates = ["pods Ready", f"reporting ≥ {fmt_percent(self.min_reporting)}"]
        if self.max_error_rate is not None:
            gates.append(f"error rate ≤ {fmt_percent(self.max_error_rate)}")
        if self.max_p95_ms is not None:
            gates.append(f"p95 ≤ {_fmt_number(self.max_p95_ms)} ms")
        if self.max_p95_regression is not None:
            gates.append(f"p95 regression ≤ {fmt_percent(self.max_p95_regression)}")
        if self.probe_must_pass:
            gates.append("golden probe passes")
        if self.offline_policy == "skip":
            gates.append(f"silent devices skipped after {fmt_duration(self.silence_after_s)}")
        else:
            gates.append("silent devices count as failing")
        gates.append(f"hold at most {fmt_duration(self.wave_timeout_s)}")
        return gates

    @property
    def silence_after_s(self) -> float:
        return self.wave_timeout_s if self.silence_deadline_s is None else self.silence_deadline_s

    def to_json(self) -> dict[str, Any]:
        """The ``spec.gates`` form of the EdgeRollout CRD. A gate that is off is left out (no
        nulls: server-side apply reads null as "remove")."""
        return _drop_none({
            "maxErrorRate": self.max_error_rate,
            "maxP95LatencyMs": self.max_p95_ms,
            "maxP95Regression": self.max_p95_regression,
            "minReporting": self.min_reporting,
            "probe": self.probe_must_pass,
            "offlinePolicy": self.offline_policy,
            "silenceDeadline": None if self.silence_deadline_s is None else spec_duration(self.silence_deadline_s),
            "holdTimeout": spec_duration(self.wave_timeout_s),
            "failFast": self.fail_fast,
            "baseline": self.baseline,
        })

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatePolicy:
        """The resource form: a threshold gate that is absent is off."""
        d = cls()
        silence = data.get("silenceDeadline")
        return cls(
            max_error_rate=_opt_float(data.get("maxErrorRate")),
            max_p95_ms=_opt_float(data.get("maxP95LatencyMs")),
            max_p95_regression=_opt_float(data.get("maxP95Regression")),
            min_reporting=float(data.get("minReporting", d.min_reporting)),
            probe_must_pass=bool(data.get("probe", d.probe_must_pass)),
            offline_policy=data.get("offlinePolicy", d.offline_policy),
            wave_timeout_s=parse_duration(data.get("holdTimeout", d.wave_timeout_s), flag="holdTimeout"),
            silence_deadline_s=None if silence is None else parse_duration(silence, flag="silenceDeadline"),
            fail_fast=bool(data.get("failFast", d.fail_fast)),
            baseline=data.get("baseline", d.baseline),
        )


@dataclass(frozen=True)
class Strategy:
    """How to move a group: cumulative wave targets (canary first), bake time, gates."""

    waves: tuple[WaveStep, ...] = field(default_factory=lambda: parse_waves(DEFAULT_WAVES))
    bake_s: float = 120.0
    spread_by: str | None = None
    gates: GatePolicy = field(default_factory=GatePolicy)
    auto_promote: bool = True
    baseline_s: float = 30.0

    def to_json(self) -> dict[str, Any]:
        """The strategy's part of the EdgeRollout spec (``waves``, ``bakeTime``, ``spreadBy``,
        ``gates``). Manual promotion and the baseline window ride in ``gates`` (it keeps unknown
        fields)."""
        gates = self.gates.to_json()
        gates["manualPromotion"] = not self.auto_promote
        gates["baselineWindow"] = spec_duration(self.baseline_s)
        return _drop_none({
            "waves": [int(w.amount) if not w.percent else str(w) for w in self.waves],
            "bakeTime": spec_duration(self.bake_s),
            "spreadBy": self.spread_by,
            "gates": gates,
        })

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Strategy:
        d = cls()
        waves = data.get("waves")
        gates = data.get("gates") or {}
        return validate_strategy(cls(
            waves=parse_waves(",".join(str(w) for w in waves)) if waves else d.waves,
            bake_s=parse_duration(data.get("bakeTime", d.bake_s), flag="bakeTime"),
            spread_by=data.get("spreadBy") or None,
            gates=GatePolicy.from_json(gates),
            auto_promote=not bool(gates.get("manualPromotion", False)),
            baseline_s=parse_duration(gates.get("baselineWindow", d.baseline_s), flag="baselineWindow"),
        ))


# --- parsing ---------------------------------------------------------------------------------

_WAVE_RE = re.compile(r"^(\d+(?:\.\d+)?)(%?)$")


def parse_waves(text: str) -> tuple[WaveStep, ...]:
    """``"1,5%,25%,100%"`` -> steps. Counts and percentages are cumulative and must grow."""
    items = [item.strip() for item in str(text).split(",")]
    if not text or not str(text).strip() or any(not item for item in items):
        raise InvalidWavesError(f"--waves {text!r}: give comma-separated counts or percentages",
                                hint="for example --waves 1,5%,25%,100%")
    steps: list[WaveStep] = []
    for item in items:
        match = _WAVE_RE.match(item)
        if not match:
            raise InvalidWavesError(f"--waves {text!r}: {item!r} is neither a node count nor a percentage",
                                    hint="for example --waves 1,5%,25%,100%")
        amount, is_percent = float(match.group(1)), bool(match.group(2))
        if is_percent and not 0 < amount <= 100:
            raise InvalidWavesError(f"--waves {text!r}: {item} is outside 0-100%")
        if not is_percent and (amount < 1 or amount != int(amount)):
            raise InvalidWavesError(f"--waves {text!r}: {item} is not a whole number of nodes ≥ 1")
        steps.append(WaveStep(amount, is_percent))
    for kind in (True, False):
        same = [s.amount for s in steps if s.percent is kind]
        if any(b <= a for a, b in itertools.pairwise(same)):
            raise InvalidWavesError(f"--waves {text!r}: wave targets are cumulative and must grow",
                                    hint="each wave names how many nodes are moved by its end")
    if steps[-1].percent and steps[-1].amount != 100:
        raise InvalidWavesError(f"--waves {text!r}: the last wave must reach 100% of the group")
    if any(s.percent and s.amount == 100 for s in steps[:-1]):
        raise InvalidWavesError(f"--waves {text!r}: 100% must be the last wave")
    return tuple(steps)


_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration(text: str | float, *, flag: str = "duration") -> float:
    """``"2m"``, ``"90s"``, ``"1h30m"``, ``"500ms"`` or plain seconds -> seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        try:
            seconds = float(raw)
        except ValueError:
            pos, seconds = 0, 0.0
            for match in _DURATION_RE.finditer(raw):
                if match.start() != pos:
                    break
                value, unit = float(match.group(1)), match.group(2)
                seconds += value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
                pos = match.end()
            if pos != len(raw) or not raw:
                raise ThresholdRangeError(f"{flag} {text!r} is not a duration",
                                          hint="use e.g. 30s, 2m, 1h30m") from None
    if not math.isfinite(seconds) or seconds < 0:
        raise ThresholdRangeError(f"{flag} {text!r} must be a duration ≥ 0")
    return seconds


def parse_fraction(text: str | float, *, flag: str, allow_above_one: bool = False) -> float:
    """``"1%"`` -> 0.01; a bare number is a fraction (``0.01``). Out of range -> ThresholdRangeError."""
    raw = str(text).strip()
    try:
        value = float(raw[:-1]) / 100.0 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ThresholdRangeError(f"{flag} {text!r} is not a percentage",
                                  hint="use e.g. 1% or 0.01") from None
    if not math.isfinite(value) or value < 0 or (value > 1 and not allow_above_one):
        limit = "0% and 100%" if not allow_above_one else "0% and 1000%"
        raise ThresholdRangeError(f"{flag} {text!r} is out of range: give a value between {limit}",
                                  hint="a bare number is a fraction; 5% and 0.05 are the same")
    return value


def validate_strategy(strategy: Strategy) -> Strategy:
    """Range checks that need more than one field; returns the strategy unchanged."""
    g = strategy.gates
    if g.max_error_rate is not None and not 0 <= g.max_error_rate <= 1:
        raise ThresholdRangeError(f"--max-error-rate {fmt_percent(g.max_error_rate)} is outside 0-100%")
    if not 0 < g.min_reporting <= 1:
        raise ThresholdRangeError(f"--min-reporting {fmt_percent(g.min_reporting)} must be above 0% and at most 100%")
    if g.max_p95_ms is not None and not (math.isfinite(g.max_p95_ms) and g.max_p95_ms > 0):
        raise ThresholdRangeError(f"--max-p95-ms {g.max_p95_ms} must be a latency above 0 ms")
    if g.max_p95_regression is not None and not 0 <= g.max_p95_regression <= 10:
        raise ThresholdRangeError(
            f"--max-p95-regression {fmt_percent(g.max_p95_regression)} is outside 0-1000%")
    if g.offline_policy not in OFFLINE_POLICIES:
        raise ThresholdRangeError(f"--offline-policy {g.offline_policy!r} must be fail or skip")
    if strategy.bake_s < 0 or not math.isfinite(strategy.bake_s):
        raise ThresholdRangeError(f"--bake {strategy.bake_s} must be ≥ 0")
    if g.wave_timeout_s <= strategy.bake_s:
        raise ThresholdRangeError(
            f"--wave-timeout {fmt_duration(g.wave_timeout_s)} must be longer than --bake "
            f"{fmt_duration(strategy.bake_s)}", hint="the gate is judged after the bake, before the timeout")
    if not strategy.waves:
        raise InvalidWavesError("--waves is empty")
    if g.silence_deadline_s is not None and not 0 <= g.silence_deadline_s <= g.wave_timeout_s:
        raise ThresholdRangeError(f"--silence-deadline {fmt_duration(g.silence_deadline_s)} must be within "
                                  f"--wave-timeout {fmt_duration(g.wave_timeout_s)}")
    if strategy.spread_by is not None and not strategy.spread_by.strip():
        raise ThresholdRangeError("--spread-by needs a node label key")
    return strategy


def build_strategy(
    *,
    waves: str = DEFAULT_WAVES,
    bake: str | float = "2m",
    spread_by: str | None = None,
    max_error_rate: str | float | None = "1%",
    max_p95_ms: float | str | None = None,
    max_p95_regression: str | float | None = None,
    min_reporting: str | float = "90%",
    probe_must_pass: bool = False,
    offline_policy: str = "fail",
    wave_timeout: str | float = "10m",
    auto_promote: bool = True,
    baseline: str | float | None = None,
    fail_fast: bool = True,
    silence_deadline: str | float | None = None,
) -> Strategy:
    """Build and validate a strategy from flag strings (the CLI's one entry point)."""
    if offline_policy not in OFFLINE_POLICIES:
        raise ThresholdRangeError(f"--offline-policy {offline_policy!r} must be fail or skip")
    p95: float | None = None
    if max_p95_ms is not None:
        try:
            p95 = float(str(max_p95_ms).removesuffix("ms"))
        except ValueError:
            raise ThresholdRangeError(f"--max-p95-ms {max_p95_ms!r} is not a number of milliseconds") from None
    bake_s = parse_duration(bake, flag="--bake")
    gates = GatePolicy(
        max_error_rate=None if max_error_rate is None else parse_fraction(max_error_rate, flag="--max-error-rate"),
        max_p95_ms=p95,
        max_p95_regression=None if max_p95_regression is None else parse_fraction(
            max_p95_regression, flag="--max-p95-regression", allow_above_one=True),
        min_reporting=parse_fraction(min_reporting, flag="--min-reporting"),
        probe_must_pass=probe_must_pass,
        offline_policy=offline_policy,
        wave_timeout_s=parse_duration(wave_timeout, flag="--wave-timeout"),
        fail_fast=fail_fast,
        silence_deadline_s=None if silence_deadline is None else parse_duration(
            silence_deadline, flag="--silence-deadline"),
    )
    baseline_s = parse_duration(baseline, flag="--baseline") if baseline is not None else min(max(bake_s, 5.0), 60.0)
    return validate_strategy(Strategy(parse_waves(waves), bake_s, spread_by or None, gates, auto_promote,
                                      baseline_s))


def with_gates(strategy: Strategy, **changes: Any) -> Strategy:
    return validate_strategy(replace(strategy, gates=replace(strategy.gates, **changes)))


# --- formatting ------------------------------------------------------------------------------

def fmt_percent(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{_fmt_number(round(value * 100, 2))}%"


def fmt_duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{_fmt_number(round(seconds, 1))}s"
    minutes, secs = divmod(round(seconds), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s" if secs else f"{minutes}m"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def spec_duration(seconds: float) -> str:
    """Seconds in the CRD's duration syntax (``90s``, ``1.5s``, ``250ms``)."""
    if seconds and seconds < 1:
        return f"{_fmt_number(round(seconds * 1000, 3))}ms"
    return f"{_fmt_number(round(seconds, 3))}s"


def _fmt_number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
