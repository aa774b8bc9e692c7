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


URL_OPTIONS = {"inference": "--url", "management": "--management-url", "metrics": "--metrics-url"}
TOKEN_OPTIONS = {"inference": "--token", "management": "--management-token"}


def add_target(parser: argparse.ArgumentParser, api: str, also: tuple[str, ...] = ()) -> None:
    """Options that point a command at a TorchServe by its URLs and keys instead of ``--run-dir``
    (endpoints.py): ``api`` is the one the command talks to, ``also`` others it can use."""
    group = parser.add_argument_group(
        "a TorchServe given by its URLs (an existing install, a Kubernetes Service) instead of --run-dir")
    for name in (api, *also):
        example = {"inference": "http://127.0.0.1:8080", "management": "http://127.0.0.1:8081",
                   "metrics": "http://127.0.0.1:8082"}[name]
        group.add_argument(URL_OPTIONS[name], dest=f"{name}_url", metavar="URL", default=None,
                           help=f"the {name} API's base URL, e.g. {example}")
    for name in (api, *also):
        if name in TOKEN_OPTIONS:
            group.add_argument(TOKEN_OPTIONS[name], dest=f"{name}_token", metavar="KEY", default=None,
                               help=f"the {name} key (visible to other users of this machine: prefer --token-file)")
    group.add_argument("--token-file", type=Path, default=None, metavar="FILE",
                       help=f"TorchServe's key_file.json (every API's key), or a file holding just the {api} key")
    group.add_argument("--allow-remote", action="store_true",
                       help="allow URLs whose host is not a loopback address (requests and keys leave this machine)")
    parser.set_defaults(target_api=api)


class Commands:
    """Where a tool module adds its subcommands. ``run(args)`` runs one; with ``instance=True`` it takes
    ``--run-dir`` and is called as ``run(open_instance(args), args)`` (cli.py: the TorchServe of that directory);
    ``target`` names the API the command talks to, and adds that API's URL and key options (``add_target``), with
    which ``open_instance`` gives a TorchServe reached by URL instead. Either returns an exit status (None: 0)."""

    def __init__(self, subparsers: Any, open_instance: Callable[[Any], Any]):
        self._subparsers, self._open_instance = subparsers, open_instance

    def add(self, name: str, run: Callable[..., int | None] | None, help: str, *, instance: bool = False,
            details: str | None = None, target: str | None = None,
            also: tuple[str, ...] = ()) -> argparse.ArgumentParser:
        parser = self._subparsers.add_parser(name, help=help, description=details or help,
                                             formatter_class=argparse.RawDescriptionHelpFormatter)
        if instance:
            add_run_dir(parser)
        if target is not None:
            add_target(parser, target, also)
        if run is not None:
            call = (lambda args: run(self._open_instance(args), args)) if instance else run
            parser.set_defaults(run=call, parser=parser)
        return parser

    def group(self, name: str, help: str, *, instance: bool = False, details: str | None = None) -> Commands:
        parser = self.add(name, None, help, instance=instance, details=details)
        return Commands(parser.add_subparsers(dest=f"{name}_command", required=True, metavar="COMMAND"),
                        self._open_instance)
