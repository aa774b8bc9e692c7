"""The worker's device and the compute dtype a precision means on it."""

from __future__ import annotations

from typing import Any

import torch

DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def device_for(context: Any) -> str:
    """``cuda:{gpu_id}`` when TorchServe assigned this worker a GPU, else ``cpu``."""
    gpu_id = (getattr(context, "system_properties", None) or {}).get("gpu_id")
    if gpu_id is not None and torch.cuda.is_available():
        return f"cuda:{int(gpu_id)}"
    return "cpu"


def claim_device(context: Any) -> torch.device:
    """The worker's device (``device_for``), made current for this process when it is a GPU.

    Everything that uses the *current* device (CUDA graph capture streams, pinned staging buffers, TensorRT
    runtimes) then lands on the worker's GPU rather than on cuda:0.
    """
    device = torch.device(device_for(context))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def compute_dtype(precision: str, device: torch.device) -> torch.dtype:
    """``precision`` (fp16 | bf16 | fp32) on a GPU; CPU workers always compute in fp32."""
    return DTYPES[precision] if torch.device(device).type == "cuda" else torch.float32
