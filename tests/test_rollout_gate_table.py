"""Each gate is declared once (edgekit/gates.py): the CLI options, GatePolicy's spec form, the CRD
schema and the docs table all follow that table."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import click
import pytest

from edgekit.cli.pushing import push_rollout
from edgekit.errors import ThresholdRangeError
from edgekit.gates import GATES, crd_schema, docs_table
from edgekit.kube.install import edgerollout_crd
from edgekit.rollout.strategy import GatePolicy, Strategy, build_strategy

DOCS = Path(__file__).resolve().parent.parent / "docs" / "rollouts.md"


def test_every_policy_field_has_one_entry() -> None:
    fields = [f.name for f in dataclasses.fields(GatePolicy)]
    assert sorted(g.field for g in GATES) == sorted(fields)
    assert len({g.crd for g in GATES}) == len({g.option for g in GATES}) == len(GATES)
    assert {g.field: g.default for g in GATES} == {f.name: f.default for f in dataclasses.fields(GatePolicy)}


def _push_options() -> dict[str, click.Parameter]:
    push = push_rollout
    return {opt: p for p in push.params for opt in (*p.opts, *p.secondary_opts)}


def test_cli_options_come_from_the_table() -> None:
    options = _push_options()
    for g in GATES:
        flag = g.option.split("/")[0]
        assert flag in options, flag
        param = options[flag]
        assert param.name == g.param
        assert param.help is not None and param.help.startswith(g.help)  # type: ignore[attr-defined]


def test_crd_schema_comes_from_the_table() -> None:
    crd = edgerollout_crd()
    spec = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["properties"]["gates"]["properties"] == crd_schema()
    assert set(crd_schema()) == {g.crd for g in GATES}


def test_docs_table_matches_the_table() -> None:
    text = DOCS.read_text()
    assert docs_table() in text, "regenerate the gates table in docs/rollouts.md from edgekit.gates.docs_table()"


def test_spec_round_trip_of_every_setting() -> None:
    policy = GatePolicy(max_error_rate=0.02, max_p95_ms=80.0, max_p95_regression=0.3, min_reporting=0.8,
                        probe_must_pass=True, offline_policy="skip", wave_timeout_s=900.0, fail_fast=False,
                        silence_deadline_s=300.0, baseline="before", inconclusive="pass", consecutive=3,
                        confidence=0.995, power=0.95)
    spec = policy.to_json()
    assert set(spec) == {g.crd for g in GATES}
    assert GatePolicy.from_json(spec) == policy
    # a spec written before these settings existed reads with their defaults
    assert GatePolicy.from_json({"maxErrorRate": 0.01, "holdTimeout": "600s"}) == GatePolicy()
    assert Strategy.from_json(Strategy(gates=policy, bake_s=60).to_json()).gates == policy


def test_flags_build_the_policy() -> None:
    s = build_strategy(inconclusive="pass", consecutive="3", confidence="99.5%", power="95%", baseline="before",
                       fail_fast=False)
    assert (s.gates.inconclusive, s.gates.consecutive, s.gates.confidence, s.gates.power, s.gates.baseline,
            s.gates.fail_fast) == ("pass", 3, 0.995, 0.95, "before", False)
    # a duration given to --baseline still sets the window before the move, as it did
    s = build_strategy(baseline="7s")
    assert (s.baseline_s, s.gates.baseline) == (7.0, "control")
    assert build_strategy(baseline_window="9s").baseline_s == 9.0
    for bad in ({"consecutive": "0"}, {"confidence": "40%"}, {"power": "100%"}, {"inconclusive": "maybe"},
                {"baseline": "sometimes"}):
        with pytest.raises(ThresholdRangeError):
            build_strategy(**bad)


def test_active_gates_name_the_settings() -> None:
    gates = GatePolicy(consecutive=2, max_p95_regression=0.2).active_gates()
    assert "error rate ≤ 1%" in gates and "2 consecutive breaches" in gates
    assert "p95 regression ≤ 20%" in gates and "inconclusive at the timeout: fail" in gates
    assert gates[-1] == "fail at 99% confidence, 99% power"
