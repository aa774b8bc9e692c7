"""``python -m torchserve_accel ...`` runs the ``torchserve-accel`` command (a checkout on PYTHONPATH, no install)."""

import sys

from torchserve_accel.tools.cli import main

if __name__ == "__main__":
    sys.exit(main())
