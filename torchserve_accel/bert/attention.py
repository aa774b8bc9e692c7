"""Self-attention over packed tokens. The backend is picked once, at load time, and says why in one string.

* ``VarlenAttention``: ``torch.nn.attention.varlen.varlen_attn`` (FlashAttention-2 varlen, or cuDNN where
  torch picks it) reads the packed (T, 3, heads, head_dim) projections directly, bounded by ``cu_seqlens``.
  Needs CUDA, fp16/bf16, sm80+. No padding anywhere.
* ``PaddedSDPAttention``: the portable fallback (CPU, fp32, old torch). Scatters q/k/v into a padded
  (S+1, L) layout with indices the host computed, runs ``F.scaled_dot_product_attention`` with a key mask,
  gathers back. Still no host sync; the padding lives only inside this function.

Both take ``qkv``: (T, 3, heads, head_dim) and return (T, heads, head_dim), same dtype. When the host knows that
every sequence of a chunk has the same length (``PackedBatch.uniform``), both run ``uniform_attention``: packed
is then dense, and plain SDPA (cuDNN/Flash) needs no padding and no varlen bookkeeping.
The per-batch metadata (``prepare``) is built once at encoder entry and shared by all layers.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from torchserve_accel.bert.packing import PackedBatch


class VarlenMeta(NamedTuple):
    cu_seqlens: torch.Tensor  # (S+1,) int32
    max_seqlen: int
    uniform: bool  # all sequences have max_seqlen tokens: packed == dense, see uniform_attention


class PaddedMeta(NamedTuple):
    dense_index: torch.Tensor  # (T,) int64 row of each token in the (S+1) x L padded layout
    key_mask: torch.Tensor  # (S+1, 1, 1, L) bool, True = attend
    rows: int  # S+1
    max_seqlen: int  # L
    uniform: bool


def uniform_attention(qkv: torch.Tensor, length: int) -> torch.Tensor:
    """Chunks whose sequences all have ``length`` tokens: the packed (T, 3, H, D) tensor *is* a dense
    (T / length, length, 3, H, D) batch with no padding, so plain SDPA runs on views of it (SDPA's cuDNN kernel is
    faster there than varlen_attn; benchmarks/NOTES.md)."""
    tokens, _, heads, dim = qkv.shape
    q, k, v = qkv.view(tokens // length, length, 3, heads, dim).transpose(1, 3).unbind(2)  # (S, H, L, D)
    return F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(tokens, heads, dim)


class VarlenAttention:
    name = "varlen"

    def __init__(self):
        from torch.nn.attention.varlen import varlen_attn

        self._varlen_attn = varlen_attn

    def prepare(self, batch: PackedBatch) -> VarlenMeta:
        return VarlenMeta(batch.cu_seqlens.to(torch.int32), batch.max_seqlen, batch.uniform)

    def __call__(self, qkv: torch.Tensor, meta: VarlenMeta) -> torch.Tensor:
        """qkv: (T, 3, H, D) fp16/bf16 -> (T, H, D). Tokens outside ``cu_seqlens`` come back undefined."""
        if meta.uniform:
            return uniform_attention(qkv, meta.max_seqlen)
        q, k, v = qkv.unbind(1)
        cu, n = meta.cu_seqlens, meta.max_seqlen
        # Positional arguments only: the keyword set changed between torch 2.10 and 2.14.
        return self._varlen_attn(q, k, v, cu, cu, n, n)


class PaddedSDPAttention:
    name = "sdpa"

    def prepare(self, batch: PackedBatch) -> PaddedMeta:
        slots, length = batch.seq_slots, batch.max_seqlen
        lengths = batch.cu_seqlens[1:] - batch.cu_seqlens[:-1]  # (S,)
        # The trash row (pad tokens of bucketed layouts) attends to all its keys: no fully masked row.
        lengths = torch.cat([lengths, lengths.new_full((1,), length)])
        key_mask = torch.arange(length, device=lengths.device)[None, :] < lengths[:, None]
        return PaddedMeta(batch.dense_index, key_mask[:, None, None, :], slots + 1, length, batch.uniform)

    def __call__(self, qkv: torch.Tensor, meta: PaddedMeta) -> torch.Tensor:
        """qkv: (T, 3, H, D) -> (T, H, D); padded only inside this call."""
        if meta.uniform:
            return uniform_attention(qkv, meta.max_seqlen)
        _, _, heads, dim = qkv.shape
        dense = qkv.new_zeros(meta.rows * meta.max_seqlen, 3, heads, dim).index_copy_(0, meta.dense_index, qkv)
        q, k, v = dense.view(meta.rows, meta.max_seqlen, 3, heads, dim).transpose(1, 3).unbind(2)  # (B, H, L, D)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=meta.key_mask)
        return out.transpose(1, 2).reshape(meta.rows * meta.max_seqlen, heads, dim).index_select(0, meta.dense_index)


def dense_attention(qkv: torch.Tensor, additive_mask: torch.Tensor) -> torch.Tensor:
    """Padded attention for export (ONNX/TensorRT): qkv (B, L, 3, H, D), mask (B, 1, 1, L) -> (B, L, H, D)."""
    q, k, v = qkv.transpose(1, 3).unbind(2)  # (B, H, L, D)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=additive_mask).transpose(1, 2)


def varlen_unavailable_reason(
    device: torch.device, dtype: torch.dtype, head_dim: int, max_seqlen: int = 512
) -> str | None:
    """Why ``VarlenAttention`` cannot run here, or None if it can (checked once, at load time)."""
    if device.type != "cuda":
        return f"varlen_attn needs CUDA, the device is {device}"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"varlen_attn needs fp16/bf16, the model runs in {dtype}"
    if head_dim % 8 or head_dim > 256:
        return f"varlen_attn needs head_dim % 8 == 0 and <= 256, got {head_dim}"
    if torch.cuda.get_device_capability(device) < (8, 0):
        return f"FlashAttention needs sm80+, the GPU is sm{''.join(map(str, torch.cuda.get_device_capability(device)))}"
    try:
        backend = VarlenAttention()
    except ImportError as exc:
        return f"torch {torch.__version__} has no torch.nn.attention.varlen ({exc})"
    try:
        _smoke_test(backend, device, dtype, head_dim, max_seqlen)
    except Exception as exc:  # noqa: BLE001 - any failure means: don't use it, and say why
        return f"varlen_attn smoke test failed: {type(exc).__name__}: {exc}"
    return None


def _smoke_test(backend: "VarlenAttention", device, dtype, head_dim: int, max_seqlen: int) -> None:
    """One small call in the layouts the encoder uses (interleaved QKV views; the CUDA-graph layout with an
    empty slot, pad tokens past ``cu_seqlens`` and the fixed ``max_seqlen``, which can switch torch's kernel
    choice), checked sequence by sequence against SDPA."""
    lengths = [3, min(140, max_seqlen)]
    real = sum(lengths)
    gen = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(real + 5, 3, 2, head_dim, device=device, dtype=dtype, generator=gen)
    zeros = torch.zeros(real + 5, dtype=torch.int64, device=device)
    for cu, length in (([0, 3, real], max(lengths)), ([0, 3, real, real], max_seqlen)):
        cu = torch.tensor(cu, device=device, dtype=torch.int64)
        out = backend(qkv, backend.prepare(PackedBatch(zeros, zeros, zeros, zeros, zeros, cu, cu[:-1], length)))
        for start, n in ((0, 3), (3, lengths[1])):
            q, k, v = qkv[start : start + n].transpose(0, 2).unbind(1)  # (H, L, D)
            ref = F.scaled_dot_product_attention(q[None], k[None], v[None])[0].transpose(0, 1)
            if not torch.allclose(out[start : start + n].float(), ref.float(), atol=2e-2, rtol=2e-2):
                raise ValueError(f"disagrees with SDPA (max_seqlen={length})")


def select_attention(
    preference: str, device: torch.device, dtype: torch.dtype, head_dim: int, max_seqlen: int = 512
):
    """Returns ``(backend, reason)``; ``preference`` is ``auto``, ``varlen`` or ``sdpa``.

    Asking for ``varlen`` where it cannot run is an error; ``auto`` falls back to SDPA and says why.
    """
    if preference == "sdpa":
        return PaddedSDPAttention(), "sdpa: asked for in config"
    reason = varlen_unavailable_reason(torch.device(device), dtype, head_dim, max_seqlen)
    if reason is None:
        return VarlenAttention(), "varlen: packed tokens straight into varlen_attn"
    if preference == "varlen":
        raise RuntimeError(f"attention=varlen asked for, but {reason}")
    return PaddedSDPAttention(), f"sdpa (padded inside attention only): {reason}"
