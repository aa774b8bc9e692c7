#!/usr/bin/env python3
"""`python scripts/client.py MODEL FILES... [--text T]`: `torchserve-accel predict ...` (send images or texts)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["predict", *sys.argv[1:]]))
