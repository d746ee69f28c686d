"""Strategy parsing and validation: the flags people type, and a distinct error for each bad one."""

from __future__ import annotations

import pytest

from edgekit.errors import InvalidWavesError, ThresholdRangeError
from edgekit.rollout.strategy import (
    GatePolicy,
    Strategy,
    WaveStep,
    build_strategy,
    fmt_duration,
    fmt_percent,
    parse_duration,
    parse_fraction,
    parse_waves,
)


def test_waves_counts_and_percentages() -> None:
    steps = parse_waves("1,5%,25%,100%")
    assert steps == (WaveStep(1, False), WaveStep(5, True), WaveStep(25, True), WaveStep(100, True))
    assert [str(s) for s in steps] == ["1", "5%", "25%", "100%"]
    assert [s.resolve(200) for s in steps] == [1, 10, 50, 200]
    assert [s.resolve(7) for s in steps] == [1, 1, 2, 7]
    assert parse_waves(" 2 , 12.5% ,100%")[1].resolve(8) == 1


@pytest.mark.parametrize("text, fragment", [
    ("", "comma-separated"),
    ("1,,100%", "comma-separated"),
    ("1,abc,100%", "'abc' is neither"),
    ("0,100%", "whole number"),
    ("1.5,100%", "whole number"),
    ("1,120%", "outside 0-100%"),
    ("1,50%,25%,100%", "must grow"),
    ("5,2,100%", "must grow"),
    ("1,50%", "must reach 100%"),
    ("1,100%,100%", "must grow"),
    ("100%,5", "100% must be the last"),
])
def test_bad_waves(text: str, fragment: str) -> None:
    with pytest.raises(InvalidWavesError) as info:
        parse_waves(text)
    assert fragment in info.value.one_line()
    assert info.value.exit_code == 66
    assert "\n" not in info.value.one_line()


@pytest.mark.parametrize("text, seconds", [
    ("2m", 120), ("90s", 90), ("1h30m", 5400), ("500ms", 0.5), ("1m30s", 90), ("3", 3), (2.5, 2.5), ("0", 0),
])
def test_durations(text: str | float, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["2x", "m", "-3", "1m-", "", "inf"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(ThresholdRangeError) as info:
        parse_duration(text, flag="--bake")
    assert info.value.exit_code == 67
    assert "--bake" in info.value.one_line()


def test_fractions() -> None:
    assert parse_fraction("1%", flag="x") == pytest.approx(0.01)
    assert parse_fraction("0.05", flag="x") == pytest.approx(0.05)
    assert parse_fraction("250%", flag="x", allow_above_one=True) == pytest.approx(2.5)
    for bad in ("120%", "-1%", "5", "abc", "nan"):
        with pytest.raises(ThresholdRangeError) as info:
            parse_fraction(bad, flag="--max-error-rate")
        assert info.value.one_line().startswith("--max-error-rate")


def test_build_strategy_defaults_and_round_trip() -> None:
    strategy = build_strategy(waves="1,5%,25%,100%", bake="2m", spread_by="topology.kubernetes.io/zone",
                              max_error_rate="1%", max_p95_ms="80", max_p95_regression="20%",
                              min_reporting="90%", probe_must_pass=True, offline_policy="skip",
                              wave_timeout="10m", auto_promote=False)
    assert strategy.bake_s == 120
    assert strategy.gates == GatePolicy(0.01, 80.0, 0.2, 0.9, True, "skip", 600.0)
    assert not strategy.auto_promote
    assert Strategy.from_json(strategy.to_json()) == strategy
    assert "p95 regression ≤ 20%" in strategy.gates.active_gates()


@pytest.mark.parametrize("kwargs, fragment", [
    ({"max_error_rate": "150%"}, "--max-error-rate"),
    ({"min_reporting": "0%"}, "--min-reporting"),
    ({"max_p95_ms": "0"}, "--max-p95-ms"),
    ({"max_p95_ms": "fast"}, "--max-p95-ms"),
    ({"max_p95_regression": "2000%"}, "--max-p95-regression"),
    ({"offline_policy": "maybe"}, "--offline-policy"),
    ({"bake": "5m", "wave_timeout": "2m"}, "--wave-timeout"),
])
def test_thresholds_out_of_range(kwargs: dict[str, str], fragment: str) -> None:
    with pytest.raises(ThresholdRangeError) as info:
        build_strategy(**kwargs)
    assert fragment in info.value.one_line()
    assert info.value.exit_code == 67


def test_formatting() -> None:
    assert fmt_percent(0.2) == "20%"
    assert fmt_percent(0.125) == "12.5%"
    assert fmt_duration(5) == "5s"
    assert fmt_duration(150) == "2m30s"
    assert fmt_duration(3600) == "1h00m"
