"""Generate the command line reference (``docs/cli.md``) from the click commands themselves.

    python -m edgekit.cli_docs > docs/cli.md        # regenerate
    python -m edgekit.cli_docs --check docs/cli.md  # exit 1 when the file is out of date

Every command's page is its own ``--help`` text rendered at a fixed width, so the reference can
never say something the command does not. ``tests/test_docs.py`` fails when the file is stale, when
a command is missing from it, or when a command has no help or no examples.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import click

WIDTH = 100
HEADER = """\
# Command line reference

Generated from the commands' own `--help` by `python -m edgekit.cli_docs > docs/cli.md`; do not
edit by hand (`tests/test_docs.py` fails when this file and the commands disagree).

Errors print one line, `edgekit: error: <what went wrong> (<what to do next>)`, and exit with the
error's own code: see [troubleshooting](troubleshooting.md). Shell completion: see
[shell completion](completion.md).
"""


@dataclass(frozen=True)
class Entry:
    """One page of the reference: a command path and the command (or one mode of it)."""

    path: str              # "edgekit rollout status"
    command: click.Command
    context: click.Context
    title: str             # heading text; differs from path for the modes of one command


def _context(command: click.Command, name: str, parent: click.Context | None) -> click.Context:
    # The command's own settings (e.g. -h for help), as when it really runs: click caches a command's
    # help option from the first context it sees, so anything else would depend on what ran before.
    settings = {**command.context_settings, "terminal_width": WIDTH, "max_content_width": WIDTH}
    return click.Context(command, info_name=name, parent=parent, **settings)


def walk(root: click.Command | None = None, name: str = "edgekit") -> Iterator[Entry]:
    """Every command reachable from ``root`` (default: ``edgekit.cli.cli``), depth first, sorted.

    Areas load lazily (``EdgekitGroup.get_command``), so walking imports them all. A command that
    dispatches to two commands by its arguments (``edgekit push``: a rollout with ``--group``, an
    image upload without) has one entry per mode."""
    if root is None:
        from edgekit.cli import cli

        root = cli
    yield from _walk(root, name, None)


def _walk(command: click.Command, path: str, parent: click.Context | None) -> Iterator[Entry]:
    ctx = _context(command, path.rsplit(" ", 1)[-1], parent)
    modes = _modes(command)
    if modes:
        for label, mode in modes:
            mctx = _context(mode, path.rsplit(" ", 1)[-1], parent)
            yield Entry(path, mode, mctx, f"{path} ({label})")
    else:
        yield Entry(path, command, ctx, path)
    if isinstance(command, click.Group):
        for sub_name in command.list_commands(ctx):
            sub = command.get_command(ctx, sub_name)
            if sub is None:
                raise RuntimeError(f"`{path} {sub_name}` is listed but does not load")
            if sub.hidden:
                continue
            yield from _walk(sub, f"{path} {sub_name}", ctx)


def _modes(command: click.Command) -> list[tuple[str, click.Command]]:
    """(label, command) for each mode of a command that has several (``edgekit push``)."""
    return list(getattr(command, "modes", ()))


def help_text(entry: Entry) -> str:
    return entry.command.get_help(entry.context).rstrip() + "\n"


def has_examples(command: click.Command) -> bool:
    text = command.help or ""
    return "Examples:" in text or "Example:" in text


def problems() -> list[str]:
    """Commands without help or without examples (one line each)."""
    found = []
    for entry in walk():
        if not (entry.command.help or "").strip():
            found.append(f"`{entry.title}` has no help")
        elif not has_examples(entry.command):
            found.append(f"`{entry.title}` --help has no Examples: block")
    return found


def _anchor(title: str) -> str:
    keep = "".join(c for c in title.lower() if c.isalnum() or c in " -")
    return keep.replace(" ", "-")


def _summary(command: click.Command) -> str:
    return command.get_short_help_str(limit=90).replace("|", "\\|")


def render() -> str:
    entries = list(walk())
    out = [HEADER, "## Commands\n", "| command | what it does |", "|---|---|"]
    for e in entries:
        out.append(f"| [`{e.title}`](#{_anchor(e.title)}) | {_summary(e.command)} |")
    out.append("")
    for e in entries:
        out += [f"## {e.title}\n", "```text", help_text(e).rstrip(), "```\n"]
    return "\n".join(out).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.cli_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--check", type=Path, metavar="FILE", help="exit 1 if FILE differs from the generated text")
    args = parser.parse_args(argv)
    text = render()
    if args.check is not None:
        current = args.check.read_text() if args.check.exists() else ""
        if current != text:
            print(f"{args.check} is out of date: run `python -m edgekit.cli_docs > {args.check}`", file=sys.stderr)
            return 1
        return 0
    sys.stdout.write(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
