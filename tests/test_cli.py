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


def test_running_one_command_loads_only_its_area() -> None:
    code = (
        "import sys; from edgekit.cli import cli\n"
        "try:\n    cli(['inspect', '--help'], standalone_mode=False)\nexcept SystemExit:\n    pass\n"
        "print('LOADED:' + ','.join(m for m in ('kubernetes', 'edgekit.cli.rollout', 'edgekit.cli.fleet')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "LOADED:"
