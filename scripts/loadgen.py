#!/usr/bin/env python3
"""`python scripts/loadgen.py MODEL ...`: `torchserve-accel bench MODEL ...` (the load generator)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", *sys.argv[1:]]))
