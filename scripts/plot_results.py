#!/usr/bin/env python3
"""`python scripts/plot_results.py FILES...`: `torchserve-accel plot ...` (throughput-vs-p99 plots)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
