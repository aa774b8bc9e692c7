#!/usr/bin/env python3
"""`python scripts/build_archive.py MODEL ...`: `torchserve-accel build MODEL ...` (an archive of one of our models)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["build", *sys.argv[1:]]))
