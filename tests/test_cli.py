"""The command line as a whole: every command is reachable, documented with examples, and lazy."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
from click.testing import CliRunner

from edgekit.cli import _AREAS, COMMAND_AREAS, cli


def all_commands() -> dict[str, click.Command]:
    found: dict[str, click.Command] = {}
    for area in _AREAS:
        for command in importlib.import_module(f"edgekit.cli.{area}").COMMANDS:
            found[command.name or ""] = command
    return found


def test_every_area_command_is_in_the_lazy_table() -> None:
    for name, command in all_commands().items():
        assert name in COMMAND_AREAS, f"{name} missing from COMMAND_AREAS"
        module = importlib.import_module(f"edgekit.cli.{COMMAND_AREAS[name]}")
        assert command in module.COMMANDS or any(c.name == name for c in module.COMMANDS)
    assert set(COMMAND_AREAS) == set(all_commands())


def walk(command: click.Command, path: str = "edgekit",
         parent: click.Context | None = None) -> list[tuple[str, click.Command]]:
    out = [(path, command)]
    if isinstance(command, click.Group):
        # With the command's own context settings: click caches each command's help option from
        # the first context it sees, and a bare Context would leave it without -h for later users.
        ctx = click.Context(command, info_name=path.split()[-1], parent=parent, **command.context_settings)
        for name in command.list_commands(ctx):
            sub = command.get_command(ctx, name)
            assert sub is not None, f"{path} {name} does not load"
            out += walk(sub, f"{path} {name}", ctx)
    return out


def test_every_command_has_help_with_examples() -> None:
    for path, command in walk(cli):
        assert command.help and command.help.strip(), f"`{path}` has no help"
        if not isinstance(command, click.Group) or path == "edgekit":
            assert "Examples:" in command.help or "Example:" in command.help, f"`{path}` --help has no examples"


def test_help_and_version() -> None:
    runner = CliRunner()
    result = runner.invoke(cli, ["--help"])
    assert result.exit_code == 0 and "quantize" in result.output and "push" in result.output
    assert runner.invoke(cli, ["--version"]).output.startswith("edgekit, version ")


def _loaded_after(argv: list[str], modules: tuple[str, ...]) -> list[str]:
    """Which of ``modules`` a fresh interpreter has imported after running ``edgekit ARGV``."""
    code = (
        "import sys; from edgekit.cli import cli\n"
        f"try:\n    cli({argv!r}, standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        f"print('LOADED:' + ','.join(m for m in {modules!r} if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    last = out.strip().splitlines()[-1]
    assert last.startswith("LOADED:"), out
    return [m for m in last.removeprefix("LOADED:").split(",") if m]


def test_running_one_command_loads_only_its_area() -> None:
    rollout_areas = ("edgekit.cli.pushing", "edgekit.cli.rollout", "edgekit.cli.controller", "edgekit.cli.sim")
    assert _loaded_after(["inspect", "--help"], ("kubernetes", *rollout_areas, "edgekit.cli.fleet")) == []
    assert _loaded_after(["rollout", "status", "--help"], rollout_areas) == ["edgekit.cli.rollout"]


def test_help_of_cluster_commands_loads_no_cluster_client() -> None:
    # The Kubernetes client and the rollout service load only when a command talks to a cluster.
    for argv in (["push", "--help"], ["push", "-g", "g", "--help"], ["rollout", "status", "--help"]):
        assert _loaded_after(argv, ("kubernetes", "edgekit.rollout.service")) == [], argv
