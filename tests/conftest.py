"""Shared pytest set-up: the repo root and handlers/ on sys.path, and markers.

Markers
    integration  starts real TorchServe instances (Java frontend) on free loopback ports; select or skip with
                 ``-m integration`` / ``-m "not integration"``.
    gpu          needs CUDA; skipped automatically where torch sees no GPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
# The repository root (``tests.*``, ``benchmarks.*``), and handlers/ as TorchServe puts an archive's root on sys.path:
# tests import the entry files by their module names (``import resnet_handler``), as a worker does.
for path in (REPO, REPO / "handlers"):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))


def pytest_configure(config):
    config.addinivalue_line("markers", "integration: starts real TorchServe instances on loopback ports")
    config.addinivalue_line("markers", "gpu: needs a CUDA GPU (skipped without one)")


def pytest_collection_modifyitems(config, items):
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)
