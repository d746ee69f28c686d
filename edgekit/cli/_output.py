"""Rendering helpers shared by commands: rich console, JSON output, the --output option."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any, TypeVar

import click
from rich.console import Console

F = TypeVar("F", bound=Callable[..., Any])


def console(stderr: bool = False) -> Console:
    """A console that writes plain text (no control codes) when the stream is not a terminal."""
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(
        file=stream,
        force_terminal=tty,
        no_color=not tty,
        highlight=False,
        width=None if tty else 160,
        soft_wrap=not tty,
    )


def output_option(func: F) -> F:
    return click.option(
        "--output",
        "-O",
        "output",
        type=click.Choice(["table", "json"]),
        default="table",
        show_default=True,
        help="Render as a table for people or JSON for machines.",
    )(func)


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=False, default=str))
