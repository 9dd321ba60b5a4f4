"""The ``ollama-fleet`` command line: one entry point, one subcommand per component.

Each subcommand lives in its own module exposing ``configure(parser)`` (declares
flags, so ``--help`` documents every knob) and ``run(args, environ) -> int``.
Nothing reads ``os.environ`` except :func:`main`, which hands it down.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Protocol, cast

from modelpool_operator import cli as operator_cli
from ollama_balancer import cli as balancer_cli
from ollama_emulator import cli as emulator_cli

from . import __version__, demo

__all__ = ["main"]

#: subcommand -> (module, one-line help).  Plain imports, so the layer contracts see them.
SUBCOMMANDS: dict[str, tuple[ModuleType, str]] = {
    "emulate": (emulator_cli, "run N emulated Ollama nodes on loopback"),
    "balancer": (balancer_cli, "run the model-aware load balancer"),
    "operator": (operator_cli, "run the ModelPool operator (kopf)"),
    "demo": (demo, "an emulated fleet with the balancer in front"),
}


class _Command(Protocol):
    def configure(self, parser: argparse.ArgumentParser) -> None: ...

    def run(self, args: argparse.Namespace, environ: Mapping[str, str]) -> int: ...


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ollama-fleet",
        description="Serve many Ollama models from many GPU pods through one endpoint.",
    )
    parser.add_argument("--version", action="version", version=f"ollama-fleet {__version__}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (module, help_text) in SUBCOMMANDS.items():
        command = cast(_Command, module)
        sub = subs.add_parser(
            name,
            help=help_text,
            description=help_text,
            formatter_class=argparse.ArgumentDefaultsHelpFormatter,
        )
        command.configure(sub)
        sub.set_defaults(_command=command)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    command = cast(_Command, args._command)
    try:
        return command.run(args, dict(os.environ))
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
