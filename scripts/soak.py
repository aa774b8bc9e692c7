#!/usr/bin/env python3
"""`python scripts/soak.py --model M ...`: `torchserve-accel soak ...` (steady load, memory and restarts watched)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["soak", *sys.argv[1:]]))
