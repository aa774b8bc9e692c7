"""The FFN's first GEMM with bias+GELU in its epilogue: GELU(x @ W^T + b) in one Triton kernel.

The separate bias+GELU pass after cuBLAS reads and writes the (T, 4H) intermediate once more (512 MB per
BERT-Large layer at 32k tokens). Here the fp32 accumulator tile gets bias and GELU in registers and goes out
once, in fp16. Persistent kernel (one program per SM walking the output tiles, grouped along M for L2 reuse),
TMA descriptors for the loads and the store, so it needs sm90+ (Hopper); ``unavailable_reason`` says why not
elsewhere. Tests run it on CPU through Triton's interpreter (``TRITON_INTERPRET=1``).

Weights stay in nn.Linear layout (N, K): the kernel reads W rows as the MMA's transposed operand.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl

try:  # host-side TMA descriptors: Triton 3.4+ (torch 2.8+); older Triton leaves the unfused path (unavailable_reason)
    from triton.tools.tensor_descriptor import TensorDescriptor
except ImportError:
    TensorDescriptor = None

from torchserve_accel.bert.triton_ops import TritonOps, _gelu


@dataclass(frozen=True)
class GemmConfig:
    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    group_m: int = 8
    num_stages: int = 4
    num_warps: int = 8
    split_epilogue: bool = False  # store the tile in two halves: half the shared memory for the epilogue

    def label(self) -> str:
        split = "s" if self.split_epilogue else ""
        return f"{self.block_m}x{self.block_n}x{self.block_k}/st{self.num_stages}/w{self.num_warps}{split}"


# Candidates timed at load time (``pick_ffn_ops``) and by the profile benchmark, best first at BERT-Large's FFN
# shape (benchmarks/NOTES.md).
CANDIDATES = (
    GemmConfig(),
    GemmConfig(block_k=128, num_stages=3),
    GemmConfig(block_n=256, num_stages=4, split_epilogue=True),
    GemmConfig(block_n=256, num_stages=3, split_epilogue=True),
)


@triton.jit
def _tile_coords(tile, num_m, num_n, GROUP_M: tl.constexpr):
    in_group = GROUP_M * num_n
    first_m = (tile // in_group) * GROUP_M
    rows = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % in_group) % rows, (tile % in_group) // rows


@triton.jit
def _linear_gelu_kernel(
    x_desc, w_desc, out_desc, bias_ptr, M, N, K,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    NUM_PROGRAMS: tl.constexpr, SPLIT_EPILOGUE: tl.constexpr,
):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_PROGRAMS, flatten=True):
        pid_m, pid_n = _tile_coords(tile, num_m, num_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for ks in range(k_steps):
            x = x_desc.load([off_m, ks * BLOCK_K])
            w = w_desc.load([off_n, ks * BLOCK_K])
            acc = tl.dot(x, w.T, acc)
        cols = off_n + tl.arange(0, BLOCK_N)
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
        out = _gelu(acc).to(out_desc.dtype)
        if SPLIT_EPILOGUE:
            left, right = tl.split(tl.permute(tl.reshape(out, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1)))
            out_desc.store([off_m, off_n], left)
            out_desc.store([off_m, off_n + BLOCK_N // 2], right)
        else:
            out_desc.store([off_m, off_n], out)


def _num_sms(device: torch.device) -> int:
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter (CPU tests)


def linear_gelu(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, config: GemmConfig = GemmConfig(),
    num_programs: int | None = None,
) -> torch.Tensor:
    """x: (T, K) fp16/bf16 contiguous, weight: (N, K) contiguous, bias: (N,) -> (T, N) GELU(x @ W^T + b), x's dtype.

    K and N must be multiples of 8 (TMA needs 16-byte row strides)."""
    tokens, k = x.shape
    n = weight.shape[0]
    out = torch.empty((tokens, n), device=x.device, dtype=x.dtype)
    if tokens == 0:
        return out
    c = config
    store_n = c.block_n // 2 if c.split_epilogue else c.block_n
    tiles = triton.cdiv(tokens, c.block_m) * triton.cdiv(n, c.block_n)
    programs = min(num_programs or _num_sms(x.device), tiles)
    _linear_gelu_kernel[(programs,)](
        TensorDescriptor.from_tensor(x, [c.block_m, c.block_k]),
        TensorDescriptor.from_tensor(weight, [c.block_n, c.block_k]),
        TensorDescriptor.from_tensor(out, [c.block_m, store_n]),
        bias, tokens, n, k,
        BLOCK_M=c.block_m, BLOCK_N=c.block_n, BLOCK_K=c.block_k, GROUP_M=c.group_m,
        NUM_PROGRAMS=programs, SPLIT_EPILOGUE=c.split_epilogue,
        num_stages=c.num_stages, num_warps=c.num_warps,
    )
    return out


def unavailable_reason(device: torch.device, dtype: torch.dtype, in_features: int, out_features: int) -> str | None:
    """Why the fused GEMM cannot run here, or None if it can (checked once, at load time)."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"the fused GEMM needs CUDA, the device is {device}"
    if TensorDescriptor is None:
        return f"the fused GEMM needs Triton 3.4+ (triton.tools.tensor_descriptor), this is Triton {triton.__version__}"
    if torch.cuda.get_device_capability(device) < (9, 0):
        return "the fused GEMM uses TMA, which needs sm90+ (Hopper)"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"the fused GEMM runs fp16/bf16, the model runs in {dtype}"
    if in_features % 8 or out_features % 8:
        return f"the fused GEMM needs K and N multiples of 8, got K={in_features} N={out_features}"
    return None


def time_ms(fn, iters: int = 10) -> float:
    """Median of ``iters`` CUDA-event timings of ``fn()`` after two warm-up calls (load-time selection only)."""
    for _ in range(2):
        fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


class FusedGemmOps(TritonOps):
    """``TritonOps`` with the FFN's first GEMM and its bias+GELU as one kernel (this module's ``linear_gelu``)."""

    name = "triton+fused-gemm"

    def __init__(self, config: GemmConfig = GemmConfig()):
        self.config = config

    def linear_gelu(self, x: torch.Tensor, linear: torch.nn.Linear, xq=None) -> torch.Tensor:
        """x: (..., K) contiguous -> (..., N) GELU(linear(x)); a plain (fp16/bf16) Linear only, so ``xq`` is None."""
        out = linear_gelu(x.reshape(-1, x.shape[-1]), linear.weight, linear.bias, self.config)
        return out.view(*x.shape[:-1], out.shape[-1])


def pick_ffn_ops(
    linear: torch.nn.Linear, tokens: int, preference: str = "auto", candidates: tuple[GemmConfig, ...] = CANDIDATES
):
    """Returns ``(ops, reason)`` for the FFN's first GEMM: ``FusedGemmOps`` or the unfused ``TritonOps``.

    ``preference``: ``off`` (unfused), ``on`` (the first candidate that runs), ``auto`` (time every candidate and
    cuBLAS + the bias+GELU kernel on ``tokens`` random rows at this layer's shape, keep the fastest). Load time
    only: a few JIT compiles and ~100 GEMM calls. Which one wins depends on the card and the row count (they are
    within a few percent of each other at BERT-Large's shape; benchmarks/NOTES.md), so it is measured, not
    assumed.
    """
    unfused = TritonOps()
    if preference == "off":
        return unfused, "cuBLAS GEMM + Triton bias+GELU (fused_ffn_gemm: off)"
    weight = linear.weight
    reason = unavailable_reason(weight.device, weight.dtype, weight.shape[1], weight.shape[0])
    if reason is not None:
        if preference == "on":
            raise RuntimeError(f"fused_ffn_gemm: on asked for, but {reason}")
        return unfused, f"cuBLAS GEMM + Triton bias+GELU ({reason})"
    x = torch.randn(tokens, weight.shape[1], device=weight.device, dtype=weight.dtype)
    timings: dict[str, float] = {}
    errors: list[str] = []
    ops_by_label: dict[str, object] = {}
    for config in candidates:
        ops = FusedGemmOps(config)
        try:
            fn = lambda: ops.linear_gelu(x, linear)  # noqa: E731
            fn()
        except Exception as exc:  # noqa: BLE001 - a tile that does not compile here is skipped, and said
            errors.append(f"{config.label()}: {type(exc).__name__}")
            continue
        if preference == "on":
            return ops, f"fused GEMM + bias + GELU, tile {config.label()} (fused_ffn_gemm: on)"
        timings[config.label()] = time_ms(fn)
        ops_by_label[config.label()] = ops
    if preference == "on":
        raise RuntimeError(f"fused_ffn_gemm: on asked for, but no tile compiled: {errors}")
    timings["unfused"] = time_ms(lambda: unfused.linear_gelu(x, linear))
    best = min(timings, key=timings.get)
    measured = ", ".join(f"{k} {v:.3f} ms" for k, v in sorted(timings.items(), key=lambda kv: kv[1]))
    skipped = f"; not compiled: {', '.join(errors)}" if errors else ""
    if best == "unfused":
        return unfused, f"cuBLAS GEMM + Triton bias+GELU, faster at {tokens} tokens ({measured}{skipped})"
    return ops_by_label[best], f"fused GEMM + bias + GELU, tile {best} ({measured} at {tokens} tokens{skipped})"
