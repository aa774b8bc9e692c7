"""benchmarks/resnet_conv1x1_fp8.py on a CPU: the convolutions it times are ResNet-101's, and without a GPU that
runs FP8 it says why and fails."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "benchmarks"))

import resnet_conv1x1_fp8  # noqa: E402


def test_the_shapes_are_resnet101s_104_convolutions_half_of_whose_flops_are_1x1():
    shapes = resnet_conv1x1_fp8.conv_shapes()
    assert sum(s["count"] for s in shapes) == 104  # stem + 33 bottlenecks x 3 + 4 downsamples

    def flops(s):
        out = (s["h"] + 2 * s["pad"] - s["k"]) // s["stride"] + 1
        return 2 * s["cin"] * s["cout"] * s["k"] ** 2 * out * out * s["count"]

    total = sum(flops(s) for s in shapes)
    assert abs(total / 1e9 - 15.6) < 0.05  # ~7.8 GMACs per 224 x 224 image, as published for ResNet-101
    assert 0.49 < sum(flops(s) for s in shapes if s["k"] == 1) / total < 0.50


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here: the script would run")
def test_without_a_gpu_that_runs_fp8_it_fails_with_the_reason(tmp_path):
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "resnet_conv1x1_fp8.py"), "--out",
                           str(tmp_path / "out.json")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 1 and "cannot run here" in done.stderr and not (tmp_path / "out.json").exists()
