#!/usr/bin/env python3
"""`python scripts/sample_images.py OUT_DIR ...`: `torchserve-accel images ...` (synthetic test images)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main(["images", *sys.argv[1:]]))
