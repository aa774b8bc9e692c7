"""FP8 (e4m3) GEMMs for the packed encoder, ``precision: fp8``: chosen by measured error, kept only if accurate.

At load, on the worker's GPU, from the checkpoint's fp32 weights and a set of calibration texts:

1. ``hessians``: one fp32 forward over the calibration texts records, for every layer GEMM, X^T X of its inputs.
2. ``gptq_fp8``: each GEMM's weight rounded to e4m3, one scale per output channel, by GPTQ (Frantar et al., 2022):
   columns in order of decreasing input energy, each column's rounding error pushed onto the columns not yet
   rounded through the inverse Hessian. Plain round-to-nearest leaves an error every token shares (the same
   weights for all of them), which does not average out over a sentence; GPTQ removes most of it
   (benchmarks/NOTES.md has the figures).
3. ``choose_gemms``: every GEMM alone in FP8, its error measured (``1 - mean cosine`` of the mean-pooled last
   hidden states against fp32); then the least sensitive ones, as many as keep the calibration set within the
   bounds (a binary search over that order).
4. ``gate``: the chosen model against fp32 on held-out gate texts; below the bounds the load falls back to bf16
   GEMMs with a stated reason, or refuses (``fp8_on_gate_failure``).

At run time an ``Fp8Linear`` quantizes its input per token (one scale per row, the row's amax mapped to 448: the
Triton kernel in triton_ops.py on a GPU) and runs ``torch._scaled_mm`` with row-wise scales, bf16 out (the kernel
PyTorch ships for row-wise scales writes bf16), so an FP8 model's activations are bf16 throughout. Where the kernel
before a GEMM can write e4m3 itself (the GELU before the FFN's second GEMM, the LayerNorms before the FFN's first and
the next layer's QKV GEMMs; ``place`` marks the layers), the GEMM gets those bytes and quantizes nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

E4M3_MAX = 448.0
GEMMS = ("qkv", "attn_out", "ffn_in", "ffn_out")
CALIBRATION_MARGIN = 0.5  # the choice may use this share of the error the bounds allow


def unavailable_reason(device: torch.device) -> str | None:
    """Why FP8 GEMMs cannot run on ``device``, or None."""
    device = torch.device(device)
    if device.type != "cuda":
        return f"FP8 GEMMs need an NVIDIA GPU of compute capability 8.9+ (Ada, Hopper); the worker runs on {device}"
    major, minor = torch.cuda.get_device_capability(device)
    if (major, minor) < (8, 9):
        return f"FP8 GEMMs need compute capability 8.9+ (Ada, Hopper); {torch.cuda.get_device_name(device)} is {major}.{minor}"
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no FP8 GEMM (torch._scaled_mm)"
    return None


# ---------------------------------------------------------------------------------------------- numbers


def round_e4m3(x: torch.Tensor) -> torch.Tensor:
    """fp32 values already scaled to [-448, 448] (clamped here) -> float8_e4m3fn, round to nearest even."""
    return x.float().clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn)


def quantize_rows_reference(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(M, K) -> (M, K) e4m3 and (M, 1) fp32 scales, one per row: x ~= q * scale, each row's amax -> 448."""
    x = x.float()
    scale = x.abs().amax(-1, keepdim=True).clamp(min=1e-12) / E4M3_MAX
    return round_e4m3(x / scale), scale


def gptq_fp8(weight: torch.Tensor, hessian: torch.Tensor, damp: float = 0.01, block: int = 128
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, K) weight and (K, K) sum of x x^T over calibration inputs -> (N, K) e4m3 and (N,) fp32 per-channel
    scales, minimizing ||(W - Q) X||: GPTQ with columns in decreasing order of ``hessian``'s diagonal and the
    scales fixed beforehand (each row's amax -> 448). Computed in fp32 on the weight's device."""
    w = weight.detach().float().clone()
    h = hessian.detach().float().to(w.device).clone()
    n_cols = w.shape[1]
    scale = w.abs().amax(1).clamp(min=1e-12) / E4M3_MAX
    dead = h.diagonal() == 0  # an input channel that never carried a value: its weights do not matter
    h[dead, dead] = 1.0
    w[:, dead] = 0.0
    order = torch.argsort(h.diagonal(), descending=True)
    w, h = w[:, order], h[order][:, order]
    h.diagonal().add_(damp * h.diagonal().mean())
    h_inv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    q = torch.empty_like(w)
    for start in range(0, n_cols, block):
        stop = min(start + block, n_cols)
        part, errors, h_part = w[:, start:stop].clone(), torch.empty_like(w[:, start:stop]), h_inv[start:stop, start:stop]
        for j in range(stop - start):
            column = part[:, j]
            rounded = round_e4m3(column / scale).float() * scale
            q[:, start + j] = rounded
            error = (column - rounded) / h_part[j, j]
            part[:, j:] -= error[:, None] * h_part[j, j:][None, :]
            errors[:, j] = error
        w[:, stop:] -= errors @ h_inv[start:stop, stop:]
    q = q[:, torch.argsort(order)]
    return round_e4m3(q / scale[:, None]), scale


def scaled_mm_reference(q: torch.Tensor, q_scale: torch.Tensor, weight_t: torch.Tensor, w_scale: torch.Tensor,
                        bias: torch.Tensor | None, out_dtype: torch.dtype) -> torch.Tensor:
    """``torch._scaled_mm``'s row-wise numbers in fp32 on any device: (M, K) x (K, N) e4m3, (M, 1) and (1, N)
    scales -> (M, N) ``out_dtype``."""
    out = (q.float() @ weight_t.float()) * q_scale * w_scale
    return (out + bias.float() if bias is not None else out).to(out_dtype)


# ---------------------------------------------------------------------------------------------- the GEMM


class Fp8Linear(nn.Module):
    """A layer GEMM in FP8: (N, K) e4m3 weights with one scale per output channel; ``gemm(x)`` quantizes ``x`` per
    row and returns ``x @ W^T`` in bf16; ``forward`` adds the bias (in the GEMM's epilogue on a GPU)."""

    def __init__(self, weight_q: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        self.out_features, self.in_features = weight_q.shape
        self.register_buffer("weight_t", weight_q.t())  # (K, N) column-major: _scaled_mm's second operand
        self.register_buffer("weight_scale", weight_scale.float().reshape(1, -1).contiguous())
        self.bias = nn.Parameter(bias.detach().to(torch.bfloat16), requires_grad=False)
        on_gpu = weight_q.device.type == "cuda"
        if on_gpu:
            from torchserve_accel.bert.triton_ops import quantize_rows
        self.quantize: Callable = quantize_rows if on_gpu else quantize_rows_reference
        self.matmul: Callable = _scaled_mm if on_gpu else scaled_mm_reference

    def _product(self, x: torch.Tensor, bias: torch.Tensor | None, xq) -> torch.Tensor:
        q, scale = xq if xq is not None else self.quantize(x.reshape(-1, self.in_features).contiguous())
        out = self.matmul(q, scale, self.weight_t, self.weight_scale, bias, torch.bfloat16)
        return out.view(*x.shape[:-1], self.out_features)

    def gemm(self, x: torch.Tensor, xq=None) -> torch.Tensor:
        """(..., K) -> (..., N) bf16, no bias. ``xq``: x already in e4m3, ((M, K), (M, 1) row scales), or None."""
        return self._product(x, None, xq)

    def gemm_quantized(self, q: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        """An input already in e4m3, (M, K) and its (M, 1) row scales -> (M, N) bf16, no bias."""
        return self.matmul(q, scale, self.weight_t, self.weight_scale, None, torch.bfloat16)

    def forward(self, x: torch.Tensor, xq=None) -> torch.Tensor:
        """(..., K) -> (..., N) bf16, bias added."""
        return self._product(x, self.bias, xq)


def _scaled_mm(q, q_scale, weight_t, w_scale, bias, out_dtype):
    return torch._scaled_mm(q, weight_t, scale_a=q_scale, scale_b=w_scale, bias=bias, out_dtype=out_dtype)


# ---------------------------------------------------------------------------------------------- calibration


class _Recorder(nn.Module):
    """Stands in for a Linear during the calibration forward: adds X^T X of its inputs to ``hessian``."""

    def __init__(self, linear: nn.Module):
        super().__init__()
        self.linear = linear
        self.bias = linear.bias
        self.hessian = torch.zeros(linear.in_features, linear.in_features, dtype=torch.float32,
                                   device=linear.weight.device)

    def _record(self, x: torch.Tensor) -> None:
        rows = x.reshape(-1, x.shape[-1]).float()
        self.hessian.addmm_(rows.t(), rows)

    def gemm(self, x: torch.Tensor, xq=None) -> torch.Tensor:
        self._record(x)
        return self.linear.gemm(x, xq)

    def forward(self, x: torch.Tensor, xq=None) -> torch.Tensor:
        self._record(x)
        return self.linear(x, xq)


def hessians(layers: nn.ModuleList, run: Callable[[], object]) -> dict[tuple[int, str], torch.Tensor]:
    """X^T X per layer GEMM over whatever ``run()`` feeds the model (the original Linears are put back)."""
    recorders = {(i, name): _Recorder(getattr(layer, name)) for i, layer in enumerate(layers) for name in GEMMS}
    for (i, name), recorder in recorders.items():
        setattr(layers[i], name, recorder)
    try:
        run()
    finally:
        for (i, name), recorder in recorders.items():
            setattr(layers[i], name, recorder.linear)
    return {key: recorder.hessian for key, recorder in recorders.items()}


# ---------------------------------------------------------------------------------------------- choosing


@dataclass(frozen=True)
class Agreement:
    mean_cosine: float
    min_cosine: float

    def within(self, mean_bound: float, min_bound: float) -> bool:
        return self.mean_cosine >= mean_bound and self.min_cosine >= min_bound

    def __str__(self) -> str:
        return f"mean cosine {self.mean_cosine:.6f}, min {self.min_cosine:.6f}"


def agreement(reference: torch.Tensor, candidate: torch.Tensor) -> Agreement:
    """(S, H) pooled states of the same texts -> their cosine agreement."""
    cos = F.cosine_similarity(reference.float(), candidate.float(), dim=-1)
    return Agreement(cos.mean().item(), cos.min().item())


@dataclass
class Choice:
    fp8: list[tuple[int, str]]  # the GEMMs that run in FP8, (layer, name)
    sensitivity: dict[tuple[int, str], float]  # each GEMM alone in FP8: 1 - mean cosine on the calibration texts
    calibration: Agreement  # the chosen set on the calibration texts

    def summary(self, total: int) -> str:
        by_name = {name: sum(1 for _, n in self.fp8 if n == name) for name in GEMMS}
        parts = ", ".join(f"{name} {count}" for name, count in by_name.items())
        return f"{len(self.fp8)} of {total} GEMMs in FP8 ({parts}); calibration texts: {self.calibration}"


def place(layers: nn.ModuleList, chosen: Sequence[tuple[int, str]], fp8: dict, plain: dict) -> None:
    """Put ``fp8[key]`` at every chosen GEMM and ``plain[key]`` everywhere else; a layer followed by an FP8 QKV
    GEMM writes its output in e4m3 too (``quantize_output``)."""
    chosen = set(chosen)
    for i, layer in enumerate(layers):
        for name in GEMMS:
            setattr(layer, name, fp8[(i, name)] if (i, name) in chosen else plain[(i, name)])
    for i, layer in enumerate(layers):
        layer.quantize_output = i + 1 < len(layers) and isinstance(layers[i + 1].qkv, Fp8Linear)


def choose_gemms(layers: nn.ModuleList, fp8: dict, plain: dict, pooled: Callable[[], torch.Tensor],
                 reference: torch.Tensor, mean_bound: float, min_bound: float) -> Choice:
    """The largest set of least-sensitive GEMMs whose FP8 model keeps ``pooled()`` within the bounds of
    ``reference`` (``pooled`` runs the calibration texts through the model as placed). Leaves it placed."""
    keys = list(plain)
    sensitivity = {}
    for key in keys:
        place(layers, [key], fp8, plain)
        sensitivity[key] = 1.0 - agreement(reference, pooled()).mean_cosine
    order = sorted(keys, key=sensitivity.get)
    results: dict[int, Agreement] = {0: Agreement(1.0, 1.0)}

    def measure(count: int) -> Agreement:
        if count not in results:
            place(layers, order[:count], fp8, plain)
            results[count] = agreement(reference, pooled())
        return results[count]

    low, high = 0, len(order)  # measure(low) is within the bounds; find the largest such count
    if measure(high).within(mean_bound, min_bound):
        low = high
    while high - low > 1:
        mid = (low + high) // 2
        if measure(mid).within(mean_bound, min_bound):
            low = mid
        else:
            high = mid
    place(layers, order[:low], fp8, plain)
    return Choice(order[:low], sensitivity, measure(low))


def fp8_flop_share(config, chosen: Sequence[tuple[int, str]]) -> float:
    """The share of the layer GEMMs' multiply-adds that the chosen set runs in FP8."""
    h, i = config.hidden_size, config.intermediate_size
    cost = {"qkv": 3 * h * h, "attn_out": h * h, "ffn_in": h * i, "ffn_out": h * i}
    total = config.num_layers * sum(cost.values())
    return sum(cost[name] for _, name in chosen) / total if total else 0.0
