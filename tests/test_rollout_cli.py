"""The rollout commands without a cluster: the push dispatch (rollout vs image upload), flag errors
with their exit codes, and the rendering of a rollout."""

from __future__ import annotations

import click
import pytest
from click.testing import CliRunner
from rich.console import Console

from edgekit.cli import cli
from edgekit.cli.rollout_view import render, summary
from edgekit.rollout.engine import Live
from edgekit.rollout.gating import Elapsed, KubeFigures, TelemetryFigures, judge
from edgekit.rollout.resource import EdgeRollout, ImageRef, RolloutSpec, RolloutStatus, WaveStatus
from edgekit.rollout.strategy import build_strategy


def test_push_without_group_is_the_image_upload() -> None:
    result = CliRunner().invoke(cli, ["push", "/no/such/layout", "127.0.0.1:5/x:1"])
    assert result.exit_code == 27 and "not a folder" in result.output
    help_text = CliRunner().invoke(cli, ["push", "--help"]).output
    assert "--group" in help_text and "Without --group" in help_text and "LAYOUT REF" in help_text


def test_flag_errors_have_their_exit_codes() -> None:
    runner = CliRunner()
    cases = [(["--waves", "1,50%"], 66), (["--waves", "2,1,100%"], 66), (["--max-error-rate", "200%"], 67),
             (["--bake", "5m", "--wave-timeout", "1m"], 67), (["--max-p95-regression", "-5%"], 67),
             (["--bake", "soon"], 67)]
    for flags, code in cases:
        result = runner.invoke(cli, ["push", "reg/x:1", "-g", "g", "-a", "app", *flags])
        assert result.exit_code == code, (flags, result.output)
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("edgekit: error: "), result.output


def test_render_shows_waves_and_gate_figures() -> None:
    digest = "sha256:" + "1" * 64
    strategy = build_strategy(waves="1,100%", max_p95_regression="20%")
    spec = RolloutSpec("det", "cams", ImageRef(f"reg/m@{digest}", digest, "111111111111"), strategy)
    waves = [WaveStatus(0, "1", ["edge-1"], {"edge-1": "000000000000"}, phase="Baking", ready=1),
             WaveStatus(1, "100%", ["edge-2", "edge-3"], {}, zones={"zone-a": 1, "zone-b": 1})]
    ro = EdgeRollout("det-cams-1", "edgekit", spec, RolloutStatus(phase="Progressing", waves=waves,
                                                                   message="baking"))
    tele = TelemetryFigures(expected=1, reported=1, on_digest=1, inferences=50, errors=10, error_rate=0.2,
                            p95_ms=3.0)
    verdict = judge(strategy.gates, bake_s=strategy.bake_s, auto_promote=True, kube=KubeFigures(1, 1), tele=tele,
                    baseline=None, elapsed=Elapsed(5, 4))
    waves[0].telemetry = tele
    console = Console(record=True, width=200)
    console.print(render(ro, Live(ro, verdict=verdict, ready=1)))
    text = console.export_text()
    assert "det-cams-1" in text and "Progressing" in text and "(zone-a:1, zone-b:1)" in text
    assert "error-rate" in text and "FAIL" in text and "20%" in text
    assert summary(ro)["wavesPassed"] == 0


def test_render_shows_the_control_group_beside_the_wave() -> None:
    digest = "sha256:" + "1" * 64
    spec = RolloutSpec("det", "cams", ImageRef(f"reg/m@{digest}", digest, "111111111111"),
                       build_strategy(waves="1,100%"))
    wave = WaveStatus(0, "1", ["edge-1"], {"edge-1": "000000000000"}, phase="Baking", ready=1,
                      telemetry=TelemetryFigures(expected=1, on_digest=1, error_rate=0.02, p95_ms=3.0),
                      control=TelemetryFigures(expected=2, on_digest=2, error_rate=0.005, p95_ms=2.5))
    ro = EdgeRollout("det-cams-1", "edgekit", spec, RolloutStatus(phase="Progressing", waves=[
        wave, WaveStatus(1, "100%", ["edge-2", "edge-3"], {})]))
    again = EdgeRollout.from_json(ro.to_json())
    console = Console(record=True, width=200)
    console.print(render(again))
    text = console.export_text()
    assert "control" in text and "0.5% · 2.5 ms (2 devices)" in text


def test_push_takes_the_model_source_into_what_it_renders(monkeypatch: pytest.MonkeyPatch) -> None:
    """`push --model-source init-container` forces the fetch where auto would pick image volumes
    (a runtime that reports support but does not mount them)."""
    from edgekit.cli.rollout_session import session_settings
    from edgekit.errors import ConfigError

    assert "model_source" not in session_settings({}).render_options()
    assert session_settings({"model_source": "init-container"}).render_options()["model_source"] == "init-container"
    monkeypatch.setenv("EDGEKIT_ROLLOUT_MODEL_SOURCE", "image-volume")
    assert session_settings({}).render_options()["model_source"] == "image-volume"
    monkeypatch.setenv("EDGEKIT_ROLLOUT_MODEL_SOURCE", "floppy")
    with pytest.raises(ConfigError, match="image-volume or init-container"):
        session_settings({})


@pytest.mark.parametrize("command", [("push",), ("rollout", "undo"), ("rollout", "resume"), ("controller",)])
def test_every_command_that_runs_an_engine_takes_what_the_engine_renders(command: tuple[str, ...]) -> None:
    """The engine renders the DaemonSets at every wave from its own settings: a resume or a
    controller without --agent-image or --insecure-registry would render other agents than the push."""
    from edgekit.cli.rollout_session import session_settings

    cmd: click.Command = cli
    for word in command:
        assert isinstance(cmd, click.Group)
        found = cmd.get_command(click.Context(cmd), word)
        assert found is not None
        cmd = found
    cmd = getattr(cmd, "rollout", cmd)   # push: its rollout mode (with --group)
    params = {p.name for p in cmd.params}
    for name in ("insecure_registry", "agent_image", "agent_broker", "mqtt_auth", "model_source",
                 "api_from_namespaces", "mqtt_allow_plaintext_password", "public_key", "allow_unsigned"):
        assert name in params, f"{' '.join(command)} lacks --{name.replace('_', '-')}"
    ctx = cmd.make_context("edgekit", [*(["IMAGE", "-g", "g", "-a", "a"] if command == ("push",) else
                                        ["-a", "a", "-g", "g"] if command == ("rollout", "undo") else []),
                                      "--agent-image", "reg.example/agent:1", "--insecure-registry"])
    settings = session_settings({k: v for k, v in ctx.params.items()
                                 if k in ("agent_image", "insecure_registry")})
    assert settings.render_options()["agent_image"] == "reg.example/agent:1"
    assert settings.registry_insecure is True
