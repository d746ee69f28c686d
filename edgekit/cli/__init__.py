"""The ``edgekit`` command line: a thin layer that parses, calls the library, renders.

Each area's commands live in their own module and are listed in ``COMMANDS`` there, loaded on
first use (see ``COMMAND_AREAS``). Library
errors (``EdgekitError``) become one line on stderr and the error's own exit code.
"""

from __future__ import annotations

import importlib
from typing import Any

import click

from edgekit import __version__
from edgekit.errors import EdgekitError

_AREAS = ("optimize", "images", "kube", "fleet", "pushing", "rollout", "controller", "sim", "dev")

# Which area module holds each top-level command. Areas are imported only when one of their
# commands runs (or help lists them all): `edgekit push` need not load onnx, `quantize` need not
# load the Kubernetes client. tests/test_cli.py checks this table against every area's COMMANDS.
COMMAND_AREAS = {
    "inspect": "optimize", "bench": "optimize", "quantize": "optimize",
    "package": "images", "pull": "images", "keygen": "images", "sign": "images", "verify": "images",
    "show": "images",
    "groups": "kube", "render": "kube", "install": "kube",
    "fleet": "fleet",
    "push": "pushing", "rollout": "rollout", "controller": "controller", "sim": "sim",
    "dev": "dev",
}


class EdgekitGroup(click.Group):
    """A group that turns edgekit errors into one-line messages with distinct exit codes."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(set(COMMAND_AREAS) | set(self.commands))

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:
            return self.commands[cmd_name]
        area = COMMAND_AREAS.get(cmd_name)
        if area is None:
            return None
        module = importlib.import_module(f"edgekit.cli.{area}")
        command = next((c for c in module.COMMANDS if c.name == cmd_name), None)
        if command is not None:
            self.add_command(command)
        return command

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            text = exc.one_line()
            if not exc.hint:  # every error says where to look next
                text += f" (exit {exc.exit_code}: see docs/troubleshooting.md)"
            click.echo(f"edgekit: error: {text}", err=True)
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


def main() -> None:
    cli(prog_name="edgekit")


if __name__ == "__main__":  # pragma: no cover
    main()
