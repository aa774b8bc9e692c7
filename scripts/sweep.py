#!/usr/bin/env python3
"""`python scripts/sweep.py [--run-dir D] archives|wait|scale|up|unregister|run|combine|table ...`:
`torchserve-accel sweep ...` (benchmark archives, worker waits, sweeps, reports)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
