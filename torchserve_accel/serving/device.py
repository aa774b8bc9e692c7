"""The worker's device and the compute dtype a precision means on it."""

from __future__ import annotations

import ctypes
import logging
from typing import Any

import torch

from torchserve_accel.serving.options import CudaWait

log = logging.getLogger(__name__)

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def device_for(context: Any) -> str:
    """``cuda:{gpu_id}`` when TorchServe assigned this worker a GPU, else ``cpu``."""
    gpu_id = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return f"cuda:{int(gpu_id)}"
    return "cpu"


def claim_device(context: Any, cuda_wait: CudaWait = "auto") -> torch.device:
    """The worker's device (``device_for``), made current for this process when it is a GPU.

    Everything that uses the *current* device (CUDA graph capture streams, pinned staging buffers, TensorRT
    runtimes) then lands on the worker's GPU rather than on cuda:0. ``cuda_wait`` is set first (``set_cuda_wait``).
    """
    device = torch.device(device_for(context))
    if device.type == "cuda":
        if cuda_wait != "auto":
            log.info("CUDA waits: %s", set_cuda_wait(device.index or 0, cuda_wait))
        torch.cuda.set_device(device)
    return device


# The CU_CTX_SCHED_* flags of CUDA's driver API, by the name of the option that asks for them.
CUDA_WAIT_FLAGS = {"auto": 0x0, "spin": 0x1, "yield": 0x2, "sleep": 0x4}


def set_cuda_wait(index: int, wait: CudaWait) -> str:
    """Make every CUDA wait of this process on GPU ``index`` spin, yield or sleep; a sentence for the log.

    The flag belongs to the device's primary context, which the CUDA runtime (torch, nvJPEG, nvImageCodec) shares,
    so it reaches the waits of libraries as well as our own. Set before the context is created (``claim_device``
    runs first in ``initialize``); a driver that refuses leaves CUDA's default and says so, the worker serves on.
    """
    flag = CUDA_WAIT_FLAGS[wait]
    try:
        cuda = ctypes.CDLL("libcuda.so.1")
    except OSError as err:
        return f"left at CUDA's default: no CUDA driver library ({err})"
    dev, flags, active = ctypes.c_int(), ctypes.c_uint(), ctypes.c_int()
    set_flags = getattr(cuda, "cuDevicePrimaryCtxSetFlags_v2", None) or cuda.cuDevicePrimaryCtxSetFlags
    for name, call in (("cuInit", lambda: cuda.cuInit(0)),
                       ("cuDeviceGet", lambda: cuda.cuDeviceGet(ctypes.byref(dev), index)),
                       ("cuDevicePrimaryCtxSetFlags", lambda: set_flags(dev, flag)),
                       ("cuDevicePrimaryCtxGetState",
                        lambda: cuda.cuDevicePrimaryCtxGetState(dev, ctypes.byref(flags), ctypes.byref(active)))):
        result = call()
        if result != 0:
            return f"left at CUDA's default: {name} returned CUresult {result}"
    return f"{wait} (primary context flags {flags.value:#x}, {'active' if active.value else 'not yet created'})"


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``precision`` (fp16 | bf16 | fp32) on a GPU; CPU workers always compute in fp32."""
    return DTYPES[precision] if torch.device(device).type == "cuda" else torch.float32
