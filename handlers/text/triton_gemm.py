"""A Triton GEMM with the bias (+GELU) epilogue fused: ``y = act(x @ W^T + b)`` in one kernel.

The FFN's first GEMM writes a (T, 4*H) activation; fusing bias+GELU into its epilogue saves one full read and
write of it per layer. This only pays if the Triton GEMM is close to cuBLAS for the shape, which
``benchmarks/bench_bert.py --profile`` measures on the device. The autotune key buckets T (powers of two) so
serving does not re-tune for every packed token count.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


def _configs():
    shapes = [(128, 256, 64, 3, 8), (256, 128, 64, 3, 8), (128, 256, 64, 4, 8), (128, 128, 64, 4, 4), (128, 128, 64, 4, 8)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": k, "GROUP_M": 8}, num_stages=s, num_warps=w)
        for m, n, k, s, w in shapes
    ]


@triton.autotune(configs=_configs(), key=["N", "K", "M_BUCKET", "EPILOGUE"])
@triton.jit
def _linear_kernel(
    a_ptr, w_ptr, bias_ptr, c_ptr, M, N, K, M_BUCKET, stride_am, stride_wn, stride_cm,
    EPILOGUE: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    group = GROUP_M * num_pid_n
    first_m = (pid // group) * GROUP_M
    size_m = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % group) % size_m
    pid_n = (pid % group) // size_m
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)) % M  # wrap instead of masking the loads
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)) % N
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + offs_m[:, None] * stride_am + offs_k[None, :]
    w_ptrs = w_ptr + offs_n[None, :] * stride_wn + offs_k[:, None]
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for _ in range(0, K, BLOCK_K):  # K % BLOCK_K == 0, checked by the wrapper
        acc = tl.dot(tl.load(a_ptrs), tl.load(w_ptrs), acc)
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    if EPILOGUE >= 1:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    if EPILOGUE == 2:
        acc = 0.5 * acc * (1.0 + tl.math.erf(acc * 0.7071067811865476))
    c_ptrs = c_ptr + rows[:, None] * stride_cm + cols[None, :]
    tl.store(c_ptrs, acc.to(c_ptr.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < N))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None, gelu: bool = False) -> torch.Tensor:
    """x: (T, K), weight: (N, K) (nn.Linear layout), bias: (N,) -> (T, N) = [GELU](x @ weight.T + bias)."""
    m, k = x.shape
    n = weight.shape[0]
    if k % 64 or not x.is_contiguous() or not weight.is_contiguous() or max(m, n) * k >= 2**31:
        raise ValueError(f"triton linear needs contiguous inputs, K % 64 == 0 and < 2^31 elements; got {x.shape} x {weight.shape}")
    out = torch.empty((m, n), dtype=x.dtype, device=x.device)
    epilogue = 0 if bias is None else (2 if gelu else 1)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    m_bucket = 1 << max(m - 1, 1).bit_length()
    _linear_kernel[grid](
        x, weight, bias if bias is not None else x, out, m, n, k, m_bucket, x.stride(0), weight.stride(0), out.stride(0),
        EPILOGUE=epilogue,
    )
    return out
