"""How a tool module adds its subcommands to the one ``torchserve-accel`` parser (cli.py builds it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Callable

from torchserve_accel.tools.paths import DEFAULT_RUN_DIR


def add_run_dir(parser: argparse.ArgumentParser) -> None:
    # SUPPRESS: given before or after a subcommand, the option keeps its value (a subparser's default would
    # overwrite one given before it)
    parser.add_argument("--run-dir", type=Path, default=argparse.SUPPRESS,
                        help=f"the TorchServe instance's directory (default {DEFAULT_RUN_DIR})")


class Commands:
    """Where a tool module adds its subcommands. ``run(args)`` runs one; with ``instance=True`` it takes
    ``--run-dir`` and is called as ``run(open_instance(args), args)`` (cli.py: the TorchServe of that directory).
    Either returns an exit status (None: 0)."""

    def __init__(self, subparsers: Any, open_instance: Callable[[Any], Any]):
        self._subparsers, self._open_instance = subparsers, open_instance

    def add(self, name: str, run: Callable[..., int | None] | None, help: str, *, instance: bool = False,
            details: str | None = None) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(name, help=help, description=details or help,
                                             formatter_class=argparse.RawDescriptionHelpFormatter)
        if instance:
            add_run_dir(parser)
        if run is not None:
            call = (lambda args: run(self._open_instance(args), args)) if instance else run
            parser.set_defaults(run=call, parser=parser)
        return parser

    def group(self, name: str, help: str, *, instance: bool = False, details: str | None = None) -> Commands:
        parser = self.add(name, None, help, instance=instance, details=details)
        return Commands(parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND"),
                        self._open_instance)
