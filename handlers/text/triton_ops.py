"""Triton kernels for the two memory-bound epilogues of a BERT layer (see fused_ops.py for the contract).

Each kernel reads its inputs once and writes the result over ``x`` (the bias-free GEMM output, a temporary),
accumulating in fp32. Imported only when a GPU run asks for Triton fusion; tests run these kernels on CPU
through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import nn


@triton.jit
def _bias_gelu_kernel(x_ptr, bias_ptr, numel, n_cols, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    b = tl.load(bias_ptr + offs % n_cols, mask=mask, other=0.0).to(tl.float32)
    h = x + b
    y = 0.5 * h * (1.0 + tl.math.erf(h * 0.7071067811865476))
    tl.store(x_ptr + offs, y.to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _bias_residual_layernorm_kernel(
    x_ptr, bias_ptr, res_ptr, weight_ptr, beta_ptr, n_cols, eps, BLOCK: tl.constexpr
):
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(x_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
    h += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    h += tl.load(res_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(h, axis=0) / n_cols
    centered = tl.where(mask, h - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_ptr + row + cols, (centered * rstd * w + beta).to(x_ptr.dtype.element_ty), mask=mask)


class TritonOps:
    name = "triton"

    @staticmethod
    def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (T, N) contiguous, bias: (N,) -> GELU(x + bias) written over x."""
        numel, block = x.numel(), 1024
        _bias_gelu_kernel[(triton.cdiv(numel, block),)](x, bias, numel, x.shape[-1], BLOCK=block, num_warps=4)
        return x

    @staticmethod
    def bias_residual_layernorm(
        x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm
    ) -> torch.Tensor:
        """x, residual: (T, N) contiguous -> LayerNorm(x + bias + residual) written over x."""
        n_cols = x.shape[-1]
        block = triton.next_power_of_2(n_cols)
        _bias_residual_layernorm_kernel[(x.numel() // n_cols,)](
            x, bias, residual, norm.weight, norm.bias, n_cols, norm.eps, BLOCK=block, num_warps=4 if block <= 2048 else 8
        )
        return x
