"""``torchserve-accel``: build archives, run TorchServe, register and scale models, predict, benchmark.

    torchserve-accel build resnet101                      # model_store/resnet101.mar (random weights)
    torchserve-accel start                                # TorchServe from .run/torchserve (--run-dir)
    torchserve-accel register resnet101.mar --batch-size 32 --max-batch-delay 10
    torchserve-accel predict resnet101 photo.jpg
    torchserve-accel stop
    torchserve-accel predict resnet101 photo.jpg --url http://127.0.0.1:8080 --token-file key_file.json
                                                          # any TorchServe, by its URLs and keys (endpoints.py)

``torchserve-accel COMMAND --help`` says more. ``python -m torchserve_accel`` is the same command, for a
checkout that is on PYTHONPATH but not installed.
"""

from __future__ import annotations

import argparse
import signal
import sys

from torchserve_accel.tools import build, client, demo, endpoints, images, loadgen, plot, soak, sweep, torchserve
from torchserve_accel.tools.build import ArchiveError
from torchserve_accel.tools.commands import Commands, add_run_dir
from torchserve_accel.tools.launch import TorchServeError
from torchserve_accel.tools.paths import DEFAULT_RUN_DIR

PROG = "torchserve-accel"
MODULES = (build, torchserve, client, loadgen, soak, sweep, plot, images, demo)  # in the order --help lists them


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_run_dir(parser)
    commands = Commands(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"),
                        open_instance=lambda args: endpoints.open_instance(args, DEFAULT_RUN_DIR))
    for module in MODULES:
        module.add_commands(commands)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    args.command_line = [PROG, *argv]  # recorded in result documents
    # SIGTERM (e.g. from `timeout`) ends a command as Ctrl-C would: load processes and servers are stopped.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    try:
        return args.run(args) or 0
    except (TorchServeError, ArchiveError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
