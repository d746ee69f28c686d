"""``edgekit-agent`` command line (argparse: the device needs no click)."""

from __future__ import annotations

import argparse
import sys

from edgekit_agent import __version__
from edgekit_agent.errors import EdgekitError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edgekit-agent", description="edgekit's on-device daemon.")
    parser.add_argument("--version", action="version", version=f"edgekit-agent {__version__}")
    parser.add_subparsers(dest="command")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        if args.command is None:
            parser.print_help()
            return 0
    except EdgekitError as exc:
        print(f"edgekit-agent: error: {exc.one_line()}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
