"""How a worker's threads wait for its GPU (``handler.cuda_wait``): the primary context's scheduling flag.

On a machine without a CUDA driver the option must leave CUDA's default and say why, never fail the worker; on a
GPU (``-m gpu``) a fresh process asks for ``sleep``, runs torch work, and the driver still reports the flag.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from tests.fake_context import FakeContext
from torchserve_accel.bert.options import BertOptions
from torchserve_accel.resnet.options import ResNetOptions
from torchserve_accel.serving import device as device_mod
from torchserve_accel.serving.options import OptionsError, parse_options

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("options", [ResNetOptions, BertOptions])
def test_both_models_take_the_same_words(options):
    assert parse_options(options, {}).cuda_wait == "auto"
    assert parse_options(options, {"cuda_wait": "sleep"}).cuda_wait == "sleep"
    with pytest.raises(OptionsError, match="cuda_wait.*'block'.*not one of"):
        parse_options(options, {"cuda_wait": "block"})


def test_a_cpu_worker_never_touches_the_driver(monkeypatch, tmp_path):
    def refuse(*args):
        raise AssertionError("set_cuda_wait called for a CPU worker")
    monkeypatch.setattr(device_mod, "set_cuda_wait", refuse)
    assert device_mod.claim_device(FakeContext(tmp_path, gpu_id=None), "sleep") == torch.device("cpu")


def test_without_a_driver_library_the_default_stays_and_says_why(monkeypatch):
    def no_library(name, *args, **kwargs):
        raise OSError(f"{name}: cannot open shared object file")
    monkeypatch.setattr(device_mod.ctypes, "CDLL", no_library)
    said = device_mod.set_cuda_wait(0, "sleep")
    assert said.startswith("left at CUDA's default: no CUDA driver library") and "libcuda.so.1" in said


class Driver:
    """The five driver calls set_cuda_wait makes, answering ``results[name]`` (0: CUDA_SUCCESS)."""

    def __init__(self, **results):
        self.results, self.flags = results, None

    def _answer(self, name):
        return self.results.get(name, 0)

    def cuInit(self, flags):
        return self._answer("cuInit")

    def cuDeviceGet(self, dev, ordinal):
        dev._obj.value = ordinal
        return self._answer("cuDeviceGet")

    def cuDevicePrimaryCtxSetFlags_v2(self, dev, flags):
        self.flags = flags
        return self._answer("cuDevicePrimaryCtxSetFlags")

    def cuDevicePrimaryCtxGetState(self, dev, flags, active):
        flags._obj.value, active._obj.value = self.flags, 0
        return self._answer("cuDevicePrimaryCtxGetState")


@pytest.mark.parametrize("wait, flag", [("spin", 0x1), ("yield", 0x2), ("sleep", 0x4)])
def test_each_wait_is_its_driver_flag(monkeypatch, wait, flag):
    driver = Driver()
    monkeypatch.setattr(device_mod.ctypes, "CDLL", lambda name: driver)
    assert device_mod.set_cuda_wait(1, wait) == f"{wait} (primary context flags {flag:#x}, not yet created)"
    assert driver.flags == flag


def test_a_driver_that_refuses_leaves_the_default_and_names_the_call(monkeypatch):
    monkeypatch.setattr(device_mod.ctypes, "CDLL", lambda name: Driver(cuDevicePrimaryCtxSetFlags=708))
    assert device_mod.set_cuda_wait(0, "sleep") == ("left at CUDA's default: cuDevicePrimaryCtxSetFlags returned "
                                                     "CUresult 708")


@pytest.mark.gpu
def test_on_a_gpu_the_flag_holds_through_torch_work():
    script = textwrap.dedent("""
        import ctypes, torch
        from torchserve_accel.serving.device import claim_device
        from types import SimpleNamespace
        device = claim_device(SimpleNamespace(system_properties={"gpu_id": 0}), "sleep")
        x = torch.randn(1024, 1024, device=device)
        assert float((x @ x).sum().cpu()) == float((x @ x).sum().cpu())
        cuda = ctypes.CDLL("libcuda.so.1")
        dev, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
        assert cuda.cuDeviceGet(ctypes.byref(dev), 0) == 0
        assert cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)) == 0
        print(hex(flags.value & 0x7), active.value)
    """)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0x4", "1"]
