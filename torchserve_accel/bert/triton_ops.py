"""Triton kernels for the two memory-bound epilogues of a BERT layer (see fused_ops.py for the contract).

Each kernel reads its inputs once and writes the result over ``x`` (the bias-free GEMM output, a temporary),
accumulating in fp32. Imported only when a GPU run asks for Triton fusion; tests run these kernels on CPU
through Triton's interpreter (``TRITON_INTERPRET=1``).
"""

# No ``from __future__ import annotations`` here: Triton 3.0's interpreter (torch 2.4) finds constexpr parameters
# only by their annotation object, and the string "tl.constexpr" would make BLOCK a runtime value.
import torch
import triton
import triton.language as tl
from torch import nn


@triton.jit
def _gelu(h):
    """Exact (erf) GELU in fp32, erf by Abramowitz & Stegun 7.1.26 (|error| < 1.5e-7, GELU within 7e-7 of
    torch's fp64 GELU on [-12, 12]). libdevice's erf made the kernel compute-bound; this form is a handful of
    FMAs, one exp and one reciprocal, so the kernel stays memory-bound."""
    z = h * 0.7071067811865476
    az = tl.abs(z)
    t = 1.0 / (1.0 + 0.3275911 * az)
    poly = t * (0.254829592 + t * (-0.284496736 + t * (1.421413741 + t * (-1.453152027 + t * 1.061405429))))
    erf_abs = 1.0 - poly * tl.exp(-az * az)
    return 0.5 * h * (1.0 + tl.where(z < 0, -erf_abs, erf_abs))


@triton.jit
def _bias_gelu_kernel(x_ptr, bias_ptr, n_cols, BLOCK: tl.constexpr):
    # 2D grid (row, column block): the bias index is the column, no per-element integer division.
    row = tl.program_id(0).to(tl.int64) * n_cols
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(x_ptr + row + cols, mask=mask, other=0.0).to(tl.float32)
    h += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    tl.store(x_ptr + row + cols, _gelu(h).to(x_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _store_e4m3_row(y, q_ptr, scale_ptr, row, offsets, mask):
    """One row ``y`` (fp32, zero where masked) -> e4m3 at ``q_ptr + offsets`` and its scale (amax -> 448) at
    ``scale_ptr + row``; the numbers of ``fp8.quantize_rows_reference``."""
    scale = tl.maximum(tl.max(tl.abs(y), axis=0), 1e-12) / 448.0
    q = tl.minimum(tl.maximum(y / scale, -448.0), 448.0)
    tl.store(q_ptr + offsets, q.to(q_ptr.dtype.element_ty), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _bias_residual_layernorm_kernel(
    x_ptr, bias_ptr, res_ptr, weight_ptr, beta_ptr, q_ptr, scale_ptr, n_cols, eps, BLOCK: tl.constexpr,
    QUANTIZE: tl.constexpr,
):
    # QUANTIZE: also the output in e4m3 with one scale per row, for the FP8 GEMM that reads it next. The rounded
    # output (what the separate quantizer would read back) is scaled in registers, no second pass.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    offsets = row * n_cols + cols
    mask = cols < n_cols
    h = tl.load(x_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    h += tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    h += tl.load(res_ptr + offsets, mask=mask, other=0.0).to(tl.float32)
    mean = tl.sum(h, axis=0) / n_cols
    centered = tl.where(mask, h - mean, 0.0)
    var = tl.sum(centered * centered, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    w = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out = (centered * rstd * w + beta).to(x_ptr.dtype.element_ty)
    tl.store(x_ptr + offsets, out, mask=mask)
    if QUANTIZE:
        _store_e4m3_row(tl.where(mask, out.to(tl.float32), 0.0), q_ptr, scale_ptr, row, offsets, mask)


@triton.jit
def _quantize_rows_kernel(x_ptr, q_ptr, scale_ptr, n_cols, BLOCK: tl.constexpr):
    # One row per program, held in registers: its amax, then the scaled values, in one read of x.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    _store_e4m3_row(x, q_ptr, scale_ptr, row, row * n_cols + cols, mask)


@triton.jit
def _bias_gelu_quantize_kernel(x_ptr, bias_ptr, q_ptr, scale_ptr, n_cols, BLOCK: tl.constexpr):
    # The whole row in one program: GELU(x + bias), its amax, then e4m3; the bf16 GELU output is never written.
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < n_cols
    h = tl.load(x_ptr + row * n_cols + cols, mask=mask, other=0.0).to(tl.float32)
    h = _gelu(h + tl.load(bias_ptr + cols, mask=mask, other=0.0).to(tl.float32))
    _store_e4m3_row(tl.where(mask, h, 0.0), q_ptr, scale_ptr, row, row * n_cols + cols, mask)


def _e4m3_rows(rows: int, n_cols: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Empty (rows, n_cols) e4m3 values and (rows, 1) float32 scales."""
    return (torch.empty((rows, n_cols), dtype=torch.float8_e4m3fn, device=device),
            torch.empty((rows, 1), dtype=torch.float32, device=device))


def bias_gelu_quantized(x: torch.Tensor, bias: torch.Tensor):
    """x: (M, N) contiguous, bias: (N,) -> e4m3 (M, N) and (M, 1) float32 scales of GELU(x + bias), per row."""
    q, scale = _e4m3_rows(*x.shape, x.device)
    block = triton.next_power_of_2(x.shape[1])
    _bias_gelu_quantize_kernel[(x.shape[0],)](x, bias, q, scale, x.shape[1], BLOCK=block,
                                              num_warps=8 if block >= 4096 else 4)
    return q, scale


def quantize_rows(x: torch.Tensor):
    """x: (M, K) contiguous -> (M, K) float8_e4m3fn and (M, 1) float32 scales, x ~= q * scale; the same numbers
    as ``fp8.quantize_rows_reference``."""
    q, scale = _e4m3_rows(*x.shape, x.device)
    block = triton.next_power_of_2(x.shape[1])
    _quantize_rows_kernel[(x.shape[0],)](x, q, scale, x.shape[1], BLOCK=block, num_warps=4 if block <= 2048 else 8)
    return q, scale


def _layernorm(x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm, quantize: bool):
    """LayerNorm(x + bias + residual) written over x; with ``quantize`` also its e4m3 rows and scales (else None)."""
    n_cols = x.shape[-1]
    rows = x.numel() // n_cols
    q, scale = _e4m3_rows(rows, n_cols, x.device) if quantize else (x, x)  # unread when not quantizing
    block = triton.next_power_of_2(n_cols)
    _bias_residual_layernorm_kernel[(rows,)](
        x, bias, residual, norm.weight, norm.bias, q, scale, n_cols, norm.eps, BLOCK=block, QUANTIZE=quantize,
        num_warps=4 if block <= 2048 else 8
    )
    return (q, scale) if quantize else None


class TritonOps:
    name = "triton"

    @staticmethod
    def bias_gelu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        """x: (T, N) contiguous, bias: (N,) -> GELU(x + bias) written over x."""
        n_cols = x.shape[-1]
        block = min(triton.next_power_of_2(n_cols), 2048)
        grid = (x.numel() // n_cols, triton.cdiv(n_cols, block))
        _bias_gelu_kernel[grid](x, bias, n_cols, BLOCK=block, num_warps=8 if block >= 2048 else 4)
        return x

    @staticmethod
    def bias_residual_layernorm(
        x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm
    ) -> torch.Tensor:
        """x, residual: (T, N) contiguous -> LayerNorm(x + bias + residual) written over x."""
        _layernorm(x, bias, residual, norm, quantize=False)
        return x

    @staticmethod
    def bias_residual_layernorm_quantized(
        x: torch.Tensor, bias: torch.Tensor, residual: torch.Tensor, norm: nn.LayerNorm
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """``bias_residual_layernorm``, plus its output in e4m3 (T, N) and (T, 1) float32 row scales: the bytes
        ``quantize_rows`` would make of it, from the same kernel."""
        return x, _layernorm(x, bias, residual, norm, quantize=True)

    @classmethod
    def linear_gelu(cls, x: torch.Tensor, linear: nn.Linear, xq=None) -> torch.Tensor:
        """cuBLAS GEMM (no bias), then the Triton bias+GELU kernel in place."""
        return cls.bias_gelu(linear.gemm(x, xq), linear.bias)

    def ffn(self, x: torch.Tensor, ffn_in: nn.Module, ffn_out: nn.Module, xq=None) -> torch.Tensor:
        """x: (T, H) -> ffn_out's bias-free product of GELU(ffn_in(x)), (T, H); ``xq``: x in e4m3 with row scales
        for an FP8 ``ffn_in``, or None. Before an FP8 ``ffn_out`` the GELU kernel writes e4m3 and the row scales
        directly (no bf16 intermediate, no separate quantizing pass)."""
        gemm_quantized = getattr(ffn_out, "gemm_quantized", None)  # an fp8.Fp8Linear takes e4m3 input
        if gemm_quantized is not None:
            inner = ffn_in.gemm(x, xq)
            q, scale = bias_gelu_quantized(inner.reshape(-1, inner.shape[-1]), ffn_in.bias)
            return gemm_quantized(q, scale).view(*x.shape[:-1], -1)
        return ffn_out.gemm(self.linear_gelu(x, ffn_in, xq))
