"""The ``edgekit`` command line: a thin layer that parses, calls the library, renders.

Each area's commands live in their own module and are listed in ``COMMANDS`` there. Library
errors (``EdgekitError``) become one line on stderr and the error's own exit code.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from edgekit import __version__
from edgekit.errors import EdgekitError

_AREAS = ("optimize", "images", "kube", "fleet", "rollout", "dev")


class EdgekitGroup(click.Group):
    """A group that turns edgekit errors into one-line messages with distinct exit codes."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            click.echo(f"edgekit: error: {exc.one_line()}", err=True)
            ctx.exit(exc.exit_code)
        except KeyboardInterrupt:
            click.echo("edgekit: interrupted", err=True)
            ctx.exit(130)


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, "--version", prog_name="edgekit")
def cli() -> None:
    """edgekit: quantize ONNX models, package them as signed OCI images, and roll them out to
    edge device groups in health-gated waves.

    \b
    Examples:
      edgekit inspect model.onnx
      edgekit quantize model.onnx -o model.int8.onnx --calibration calib/ --eval eval/
      edgekit bench model.onnx model.int8.onnx --threads 1
    """


for _area in _AREAS:
    _module = importlib.import_module(f"edgekit.cli.{_area}")
    for _command in _module.COMMANDS:
        cli.add_command(_command)


def main() -> None:
    cli(prog_name="edgekit")


if __name__ == "__main__":  # pragma: no cover
    main()
