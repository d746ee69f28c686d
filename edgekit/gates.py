"""The gate table: every setting of ``GatePolicy`` declared once — its CLI option, its field in
the EdgeRollout ``spec.gates`` (with the CRD schema), unit, default, help and how a plan names it.

The CLI options (``edgekit.cli.rollout_options``), ``GatePolicy.to_json/from_json`` and
``active_gates()``, the CRD schema (``edgekit.kube.install``) and the table in
``docs/rollouts.md`` are all built from ``GATES``; a test checks the docs. A new gate is one
entry here plus its figure in ``edgekit.rollout.gating``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from edgekit.errors import ThresholdRangeError
from edgekit.units import (
    fmt_duration,
    fmt_number,
    fmt_percent,
    parse_duration,
    parse_fraction,
    spec_duration,
)

Unit = Literal["fraction", "ms", "duration", "count", "choice", "flag"]

_DURATION_PATTERN = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"


def _fraction(flag: str, *, above_one: bool = False) -> Callable[[Any], float]:
    return lambda raw: raw if isinstance(raw, float) else parse_fraction(raw, flag=flag, allow_above_one=above_one)


def _duration(flag: str) -> Callable[[Any], float]:
    return lambda raw: parse_duration(raw, flag=flag)


def _ms(raw: Any) -> float:
    try:
        return float(str(raw).strip().removesuffix("ms"))
    except ValueError:
        raise ThresholdRangeError(f"--max-p95-ms {raw!r} is not a number of milliseconds") from None


def _count(flag: str) -> Callable[[Any], int]:
    def parse(raw: Any) -> int:
        try:
            value = int(str(raw).strip())
        except ValueError:
            raise ThresholdRangeError(f"{flag} {raw!r} is not a whole number") from None
        if value < 1:
            raise ThresholdRangeError(f"{flag} {raw!r} must be at least 1")
        return value
    return parse


def _choice(flag: str, choices: tuple[str, ...]) -> Callable[[Any], str]:
    def parse(raw: Any) -> str:
        if raw not in choices:
            raise ThresholdRangeError(f"{flag} {raw!r} must be {' or '.join(choices)}")
        return str(raw)
    return parse


def _same(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class GateField:
    """One setting of the gates, declared once."""

    field: str                 # the GatePolicy attribute
    option: str                # the CLI flag ("--a/--no-a" for a switch pair)
    param: str                 # the CLI parameter (and ``build_strategy`` keyword)
    crd: str                   # the key in the EdgeRollout ``spec.gates``
    schema: dict[str, Any]     # its CRD (OpenAPI v3) schema
    unit: Unit
    default: Any               # the GatePolicy default; None: off
    help: str
    parse: Callable[[Any], Any]               # a flag's or spec's raw value -> the field's value
    dump: Callable[[Any], Any] = _same        # the field's value -> its spec form
    describe: Callable[[Any], str | None] | None = None  # the plan's words for it (None: not named)
    gate: str | None = None    # the gate this field sets (its name in verdicts)
    metavar: str | None = None
    choices: tuple[str, ...] = ()
    absent_is_off: bool = False  # in a spec, a missing threshold means the gate is off
    cli_choices: bool = True     # False: the CLI takes any value and the parser checks it (for an old form)

    def default_text(self) -> str:
        return show(self, self.default)


def show(entry: GateField, value: Any) -> str:
    """A value as a person writes it for this entry (the docs and help defaults)."""
    if value is None:
        return "off"
    if entry.unit == "fraction":
        return fmt_percent(value)
    if entry.unit == "duration":
        return fmt_duration(value)
    if entry.unit == "ms":
        return f"{fmt_number(value)} ms"
    if entry.unit == "flag":
        return "on" if value else "off"
    return str(value)


GATES: tuple[GateField, ...] = (
    GateField("max_error_rate", "--max-error-rate", "max_error_rate", "maxErrorRate",
              {"type": "number", "minimum": 0, "maximum": 1}, "fraction", 0.01,
              "Gate: inference error rate, judged by a sequential test (SPRT) at --confidence and --power",
              _fraction("--max-error-rate"), describe=lambda v: f"error rate ≤ {fmt_percent(v)}",
              gate="error-rate", metavar="PCT", absent_is_off=True),
    GateField("max_p95_ms", "--max-p95-ms", "max_p95_ms", "maxP95LatencyMs", {"type": "number", "minimum": 0},
              "ms", None, "Gate: absolute p95 latency (an SPRT of the share of latencies above it)",
              _ms, describe=lambda v: f"p95 ≤ {fmt_number(v)} ms", gate="p95", metavar="MS", absent_is_off=True),
    GateField("max_p95_regression", "--max-p95-regression", "max_p95_regression", "maxP95Regression",
              {"type": "number", "minimum": 0}, "fraction", None,
              "Gate: p95 increase vs the --baseline (control group or the devices before the move), e.g. 20%",
              _fraction("--max-p95-regression", above_one=True),
              describe=lambda v: f"p95 regression ≤ {fmt_percent(v)}", gate="p95-regression", metavar="PCT",
              absent_is_off=True),
    GateField("min_reporting", "--min-reporting", "min_reporting", "minReporting",
              {"type": "number", "minimum": 0, "maximum": 1}, "fraction", 0.9,
              "Gate: share of the wave's devices reporting the new model", _fraction("--min-reporting"),
              describe=lambda v: f"reporting ≥ {fmt_percent(v)}", gate="reporting", metavar="PCT"),
    GateField("probe_must_pass", "--probe-must-pass", "probe_must_pass", "probe", {"type": "boolean"}, "flag",
              False, "Gate: the golden probe passes everywhere", bool,
              describe=lambda v: "golden probe passes" if v else None, gate="probe"),
    GateField("offline_policy", "--offline-policy", "offline_policy", "offlinePolicy",
              {"type": "string", "enum": ["fail", "skip"]}, "choice", "fail",
              "Silent/offline devices: count as failing, or skip and report them",
              _choice("--offline-policy", ("fail", "skip")), choices=("fail", "skip")),
    GateField("silence_deadline_s", "--silence-deadline", "silence_deadline", "silenceDeadline",
              {"type": "string", "pattern": _DURATION_PATTERN}, "duration", None,
              "With --offline-policy skip: skip silent devices after this (off: the wave timeout)",
              _duration("--silence-deadline"), dump=spec_duration, metavar="DURATION"),
    GateField("wave_timeout_s", "--wave-timeout", "wave_timeout", "holdTimeout",
              {"type": "string", "pattern": _DURATION_PATTERN}, "duration", 600.0,
              "Hold a wave at most this long (an inconclusive gate extends the bake up to it)",
              _duration("--wave-timeout"), dump=spec_duration,
              describe=lambda v: f"hold at most {fmt_duration(v)}", metavar="DURATION"),
    GateField("fail_fast", "--fail-fast/--no-fail-fast", "fail_fast", "failFast", {"type": "boolean"}, "flag",
              True, "Roll back during the bake as soon as a gate fails on evidence", bool),
    GateField("baseline", "--baseline", "baseline", "baseline", {"type": "string", "enum": ["control", "before"]},
              "choice", "control",
              "Compare the wave with the group's devices still on the old revision (control), or with "
              "its own devices before the move (before); a duration, as before, sets --baseline-window",
              _choice("--baseline", ("control", "before")),
              describe=lambda v: f"compared with {'the control group' if v == 'control' else 'before the move'}",
              choices=("control", "before"), cli_choices=False),
    GateField("inconclusive", "--inconclusive", "inconclusive", "inconclusive",
              {"type": "string", "enum": ["fail", "pass"]}, "choice", "fail",
              "What an inconclusive gate (too few samples) decides at the wave timeout",
              _choice("--inconclusive", ("fail", "pass")),
              describe=lambda v: f"inconclusive at the timeout: {v}", choices=("fail", "pass")),
    GateField("consecutive", "--consecutive", "consecutive", "consecutiveBreaches",
              {"type": "integer", "minimum": 1}, "count", 1,
              "Roll back once a gate has failed on this many consecutive judgements of new data",
              _count("--consecutive"), describe=lambda v: f"{v} consecutive breaches" if v > 1 else None,
              metavar="N"),
    GateField("confidence", "--confidence", "confidence", "confidence",
              {"type": "number", "minimum": 0.5, "maximum": 0.9999}, "fraction", 0.99,
              "Confidence of a fail verdict (1 - the false rollback rate), for any number of looks",
              _fraction("--confidence"), metavar="PCT"),
    GateField("power", "--power", "power", "power", {"type": "number", "minimum": 0.5, "maximum": 0.9999},
              "fraction", 0.99, "Chance to catch an error rate 3x the threshold (sets the minimum sample)",
              _fraction("--power"), metavar="PCT"),
)

BY_FIELD: dict[str, GateField] = {g.field: g for g in GATES}


def crd_schema() -> dict[str, Any]:
    """The ``spec.gates`` properties of the EdgeRollout CRD."""
    return {g.crd: dict(g.schema, description=g.help + ".") for g in GATES}


def docs_table() -> str:
    """The Markdown table of the gates in ``docs/rollouts.md``."""
    rows = ["| Option | Spec field | Unit | Default | What it does |", "|---|---|---|---|---|"]
    for g in GATES:
        option = g.option + (f" {g.metavar}" if g.metavar else "") + (
            f" {{{','.join(g.choices)}}}" if g.choices else "")
        rows.append(f"| `{option}` | `{g.crd}` | {g.unit} | {g.default_text()} | {g.help}. |")
    return "\n".join(rows) + "\n"
