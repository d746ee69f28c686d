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
from edgekit.gates import BY_FIELD, GATES
from edgekit.kube.selectors import parse_selector
from edgekit.units import fmt_duration as fmt_duration
from edgekit.units import fmt_number
from edgekit.units import fmt_percent as fmt_percent
from edgekit.units import parse_duration as parse_duration
from edgekit.units import parse_fraction as parse_fraction
from edgekit.units import spec_duration as spec_duration

OfflinePolicy = Literal["fail", "skip"]
BaselineKind = Literal["control", "before"]
InconclusivePolicy = Literal["fail", "pass"]
OFFLINE_POLICIES: tuple[OfflinePolicy, ...] = ("fail", "skip")

DEFAULT_WAVES = "1,10%,50%,100%"


@dataclass(frozen=True)
class WaveStep:
    """One wave's cumulative target: ``count`` nodes or ``percent`` of the group, moved by its end."""

    amount: float
    percent: bool

    def __str__(self) -> str:
        if self.percent:
            return f"{fmt_number(self.amount)}%"
        return str(int(self.amount))

    def resolve(self, total: int) -> int:
        """Cumulative number of nodes this step reaches in a group of ``total`` (at least 1)."""
        # Percentages round up so that a small share of a small group still moves a node; the
        # tiny epsilon keeps 25% of 200 at exactly 50 despite binary fractions.
        wanted = math.ceil(self.amount * total / 100.0 - 1e-9) if self.percent else int(self.amount)
        return max(1, min(total, wanted))


@dataclass(frozen=True)
class GatePolicy:
    """What a wave must show before the next one starts. ``None`` switches a gate off. Each
    field is declared once, with its flag, spec field and help, in ``edgekit.gates``."""

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
    inconclusive: InconclusivePolicy = "fail"  # what a gate without enough evidence decides at the timeout
    consecutive: int = 1          # fail judgements in a row (on new data) before the rollback
    confidence: float = 0.99      # 1 - alpha: the chance a healthy wave is not failed, over all looks
    power: float = 0.99           # 1 - beta: the chance a 3x error rate does not pass

    @property
    def alpha(self) -> float:
        return 1.0 - self.confidence

    @property
    def beta(self) -> float:
        return 1.0 - self.power

    def active_gates(self) -> list[str]:
        """Human names of the gates that apply, for plans and status views."""
        gates = ["pods Ready"]
        for entry in GATES:
            if entry.describe is None:
                continue
            value = getattr(self, entry.field)
            text = None if value is None else entry.describe(value)
            if text is not None:
                gates.append(text)
            if entry.field == "probe_must_pass":
                if self.offline_policy == "skip":
                    gates.append(f"silent devices skipped after {fmt_duration(self.silence_after_s)}")
                else:
                    gates.append("silent devices count as failing")
        gates.append(f"fail at {fmt_percent(self.confidence)} confidence, {fmt_percent(self.power)} power")
        return gates

    @property
    def silence_after_s(self) -> float:
        return self.wave_timeout_s if self.silence_deadline_s is None else self.silence_deadline_s

    def to_json(self) -> dict[str, Any]:
        """The ``spec.gates`` form of the EdgeRollout CRD. A gate that is off is left out (no
        nulls: server-side apply reads null as "remove")."""
        out: dict[str, Any] = {}
        for entry in GATES:
            value = getattr(self, entry.field)
            if value is not None:
                out[entry.crd] = entry.dump(value)
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> GatePolicy:
        """The resource form: a threshold gate that is absent is off; other settings default."""
        values: dict[str, Any] = {}
        for entry in GATES:
            raw = data.get(entry.crd)
            if raw is None:
                values[entry.field] = None if entry.absent_is_off else entry.default
            elif entry.unit in ("fraction", "ms"):
                values[entry.field] = float(raw)   # the spec holds fractions, not "1%"
            else:
                values[entry.field] = entry.parse(raw)
        return cls(**values)


@dataclass(frozen=True)
class Strategy:
    """How to move a group: cumulative wave targets (canary first), bake time, gates."""

    waves: tuple[WaveStep, ...] = field(default_factory=lambda: parse_waves(DEFAULT_WAVES))
    bake_s: float = 120.0
    spread_by: str | None = None
    gates: GatePolicy = field(default_factory=GatePolicy)
    auto_promote: bool = True
    baseline_s: float = 30.0
    canary_selector: str | None = None

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
            "canarySelector": self.canary_selector,
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
            canary_selector=data.get("canarySelector") or None,
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
    if not 0.5 <= g.confidence < 1:
        raise ThresholdRangeError(f"--confidence {fmt_percent(g.confidence)} must be at least 50% and below 100%")
    if not 0.5 <= g.power < 1:
        raise ThresholdRangeError(f"--power {fmt_percent(g.power)} must be at least 50% and below 100%")
    if g.consecutive < 1:
        raise ThresholdRangeError(f"--consecutive {g.consecutive} must be at least 1")
    if g.inconclusive not in ("fail", "pass"):
        raise ThresholdRangeError(f"--inconclusive {g.inconclusive!r} must be fail or pass")
    if g.baseline not in ("control", "before"):
        raise ThresholdRangeError(f"--baseline {g.baseline!r} must be control or before")
    if strategy.spread_by is not None and not strategy.spread_by.strip():
        raise ThresholdRangeError("--spread-by needs a node label key")
    if strategy.canary_selector is not None:
        parse_selector(strategy.canary_selector)   # a clear one-line error before any node is touched
    return strategy


def build_strategy(
    *,
    waves: str = DEFAULT_WAVES,
    bake: str | float = "2m",
    spread_by: str | None = None,
    canary_selector: str | None = None,
    auto_promote: bool = True,
    baseline: str | float | None = None,
    baseline_window: str | float | None = None,
    **gates: Any,
) -> Strategy:
    """Build and validate a strategy from flag strings (the CLI's one entry point). ``gates``:
    the gate flags by parameter name (``max_error_rate="1%"``, ``wave_timeout="10m"``, ...), as
    declared in ``edgekit.gates``; a flag set to None is off (a threshold) or the default."""
    by_param = {g.param: g for g in GATES}
    unknown = sorted(set(gates) - set(by_param))
    if unknown:
        raise TypeError(f"build_strategy() got unknown gate settings: {', '.join(unknown)}")
    if baseline is not None and str(baseline) not in ("control", "before"):
        # the flag once named the window before the move: a duration still means that
        try:
            baseline_window, baseline = parse_duration(baseline, flag="--baseline"), None
        except ThresholdRangeError:
            raise ThresholdRangeError(f"--baseline {baseline!r} must be control or before",
                                      hint="a duration there sets --baseline-window, as it once did") from None
    values: dict[str, Any] = {}
    for param, raw in gates.items():
        entry = by_param[param]
        values[entry.field] = None if raw is None else entry.parse(raw)
    if baseline is not None:
        values["baseline"] = BY_FIELD["baseline"].parse(str(baseline))
    bake_s = parse_duration(bake, flag="--bake")
    policy = GatePolicy(**values)
    if "max_error_rate" not in values:   # the flag's default: a 1% gate
        policy = replace(policy, max_error_rate=BY_FIELD["max_error_rate"].default)
    baseline_s = (parse_duration(baseline_window, flag="--baseline-window") if baseline_window is not None
                  else min(max(bake_s, 5.0), 60.0))
    return validate_strategy(Strategy(parse_waves(waves), bake_s, spread_by or None, policy, auto_promote,
                                      baseline_s, canary_selector or None))


def with_gates(strategy: Strategy, **changes: Any) -> Strategy:
    return validate_strategy(replace(strategy, gates=replace(strategy.gates, **changes)))


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)
