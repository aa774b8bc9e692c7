"""The two memory-bound epilogues of a BERT layer, behind one small interface.

``bias_gelu(x, bias)``: GELU(x + bias), exact (erf) GELU as BERT uses.
``bias_residual_layernorm(x, bias, residual, norm)``: LayerNorm(x + bias + residual).
``linear_gelu(x, linear)``: GELU(linear(x)), the FFN's first GEMM with its epilogue.
``ffn(x, ffn_in, ffn_out, xq)``: the FFN up to its last bias (TritonOps quantizes in the GELU kernel for FP8).
``bias_residual_layernorm_quantized``: the LayerNorm, and its output in e4m3 with row scales for an FP8 GEMM that
reads it next (``xq`` of the next ``gemm``; one kernel in TritonOps).

Both take ``x``: (T, N) straight out of a bias-free ``F.linear`` and may overwrite it.

* ``TorchOps``: the reference formulas. Under ``torch.compile`` Inductor fuses each into one kernel; in plain
  eager mode they run as 2-3 kernels each (the slow path, used on CPU).
* ``TritonOps`` (triton_ops.py): one hand-written Triton kernel each, for eager GPU runs and
  CUDA graphs; tested against ``TorchOps`` on CPU through Triton's interpreter.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from torchserve_accel.bert.fp8 import quantize_rows_reference


class TorchOps:
    name = "torch"

    @staticmethod
    def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        return F.gelu(x + bias)

    @staticmethod
    def bias_residual_layernorm(
        x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm
    ) -> torch.Tensor:
        return F.layer_norm(x + bias + residual, norm.normalized_shape, norm.weight, norm.bias, norm.eps)

    @classmethod
    def bias_residual_layernorm_quantized(
        cls, x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """(LayerNorm(x + bias + residual), its rows in e4m3 and their (T, 1) scales)."""
        out = cls.bias_residual_layernorm(x, bias, residual, norm)
        return out, quantize_rows_reference(out.reshape(-1, out.shape[-1]))

    @classmethod
    def linear_gelu(cls, x: torch.Tensor, linear: nn.Linear, xq=None) -> torch.Tensor:
        """GELU(x @ W^T + b): a bias-free GEMM, then the bias+GELU epilogue."""
        return cls.bias_gelu(linear.gemm(x, xq), linear.bias)

    @classmethod
    def ffn(cls, x: torch.Tensor, ffn_in: nn.Module, ffn_out: nn.Module, xq=None) -> torch.Tensor:
        """The feed-forward block up to its last bias: ``ffn_out.gemm(GELU(ffn_in(x)))``; ``xq``: x in e4m3 with
        row scales (for an FP8 ``ffn_in``) or None."""
        return ffn_out.gemm(cls.linear_gelu(x, ffn_in, xq))


def select_ops(preference: str, device: torch.device, compiled: bool):
    """Returns ``(ops, reason)``; ``preference`` is ``auto``, ``triton`` or ``torch``.

    Under torch.compile the reference formulas are used and Inductor generates the fused kernels.
    """
    if preference == "torch":
        return TorchOps(), "torch: asked for in config"
    if compiled and preference == "auto":
        return TorchOps(), "torch formulas, fused by Inductor (torch.compile)"
    if torch.device(device).type != "cuda":
        if preference == "triton":
            raise RuntimeError(f"fusion=triton asked for, but the device is {device}")
        return TorchOps(), f"torch (unfused): no Triton on {device}"
    try:
        from torchserve_accel.bert.triton_ops import TritonOps
    except ImportError as exc:
        if preference == "triton":
            raise RuntimeError(f"fusion=triton asked for, but triton does not import: {exc}") from exc
        return TorchOps(), f"torch (unfused): triton does not import ({exc})"
    return TritonOps(), "triton: bias+GELU and bias+residual+LayerNorm kernels"
