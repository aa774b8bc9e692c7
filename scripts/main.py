#!/usr/bin/env python3
"""The main job (run by scripts/run_main.sh): `torchserve-accel demo ...` (build, serve and query ResNet-101)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["demo", *sys.argv[1:]]))
