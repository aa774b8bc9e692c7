#!/usr/bin/env python3
"""`python scripts/tsctl.py [--run-dir D] start|stop|register|scale|describe|unregister|rotate-keys ...`: the
TorchServe lifecycle commands of `torchserve-accel`."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
