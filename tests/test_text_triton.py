"""Triton epilogue kernels against the torch reference formulas, on CPU through Triton's interpreter.

The interpreter is chosen by TRITON_INTERPRET=1 when ``triton.jit`` decorates, so the check runs in a fresh
process (another test may already have imported the kernels compiled for GPU)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton", reason="triton is not installed")
REPO = Path(__file__).resolve().parent.parent

SCRIPT = r"""
import torch
from torch import nn
from torchserve_accel.bert.ops import TorchOps
from torchserve_accel.bert.triton_ops import TritonOps
from benchmarks.reference import bert_config, random_hf_classifier, packed_from_hf, packed_batch, random_sequences

torch.manual_seed(0)
for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2e-3)):
    x = torch.randn(37, 200, dtype=dtype) * 3
    bias = torch.randn(200, dtype=dtype)
    ref = TorchOps.bias_gelu(x.float(), bias.float())
    out = TritonOps.bias_gelu(x.clone(), bias)
    assert (out.float() - ref).abs().max() < tol * (1 if dtype == torch.float32 else 5), ("gelu", dtype)
    norm = nn.LayerNorm(96, eps=1e-12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5); norm.bias.normal_()
    norm = norm.to(dtype)
    x, res, b = (torch.randn(29, 96, dtype=dtype) for _ in range(3))
    ref = TorchOps.bias_residual_layernorm(x.float(), b[0].float(), res.float(), norm.float())
    out = TritonOps.bias_residual_layernorm(x.clone(), b[0], res, norm.to(dtype))
    assert (out.float() - ref).abs().max() < tol * 10, ("layernorm", dtype)

# The whole encoder with Triton epilogues (in-place writes included) against the torch formulas.
hf = random_hf_classifier(bert_config(vocab_size=300, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=64, max_position_embeddings=32))
ids, types = random_sequences([4, 11, 7], 300)
batch = packed_batch(ids, types)
with torch.inference_mode():
    ref = packed_from_hf(hf, head="classify").encode(batch)
    out = packed_from_hf(hf, head="classify", ops=TritonOps()).encode(batch)
assert (out - ref).abs().max() < 1e-5, (out - ref).abs().max()
print("ok")
"""


def test_triton_kernels_match_torch_formulas_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


GEMM_SCRIPT = r"""
import torch
import torch.nn.functional as F
from torchserve_accel.bert.ops import TorchOps
from torchserve_accel.bert.triton_gemm import FusedGemmOps, GemmConfig, linear_gelu
from benchmarks.reference import bert_config, random_hf_classifier, packed_from_hf, packed_batch, random_sequences

torch.manual_seed(0)
small = (GemmConfig(block_m=32, block_n=32, block_k=32, group_m=2, num_stages=1, num_warps=4),
         GemmConfig(block_m=32, block_n=64, block_k=16, group_m=1, num_stages=1, num_warps=4, split_epilogue=False))
# Rows not a multiple of the tile (TMA zero-fills loads and clips stores), N and K over several tiles, one row,
# fewer programs than tiles (each program walks several tiles).
for config in small:
    for tokens, n, k, programs in ((1, 64, 32, 4), (37, 96, 64, 4), (100, 128, 48, 3)):
        x = torch.randn(tokens, k).half()
        w = (torch.randn(n, k) / k ** 0.5).half()
        b = torch.randn(n).half()
        out = linear_gelu(x, w, b, config, num_programs=programs)
        assert out.shape == (tokens, n) and out.dtype == torch.float16
        ref = F.gelu(x.float() @ w.float().T + b.float())
        err = (out.float() - ref).abs().max().item()
        assert err < 4e-3, (config, tokens, n, k, err)
assert linear_gelu(torch.empty(0, 32).half(), torch.ones(64, 32).half(), torch.ones(64).half()).shape == (0, 64)

# The encoder with the fused FFN GEMM against the torch formulas (fp16: the kernel's TMA path is fp16/bf16).
hf = random_hf_classifier(bert_config(vocab_size=300, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                                      intermediate_size=128, max_position_embeddings=32))
ids, types = random_sequences([4, 11, 7], 300)
batch = packed_batch(ids, types)
with torch.inference_mode():
    ref = packed_from_hf(hf, head="classify").encode(batch)
    model = packed_from_hf(hf, head="classify", ops=FusedGemmOps(small[0])).half()
    out = model.encode(batch).float()
err = (out - ref).abs().max().item()
assert err < 3e-2, err
print("ok")
"""


def _triton_version() -> tuple[int, ...]:
    import triton

    return tuple(int(p) for p in triton.__version__.split(".")[:2] if p.isdigit())


@pytest.mark.skipif(_triton_version() < (3, 8), reason="Triton's interpreter runs tensor-descriptor kernels from "
                    "3.8 on (3.6 raises a TypeError inside the interpreter); the GPU check covers older versions")
def test_fused_ffn_gemm_matches_torch_in_interpreter():
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-c", GEMM_SCRIPT], env=env, cwd=REPO, capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0 and "ok" in result.stdout, result.stderr[-3000:]


def test_fused_ffn_gemm_is_not_picked_without_hopper():
    import torch

    from torchserve_accel.bert.triton_gemm import pick_ffn_ops

    linear = torch.nn.Linear(64, 128)
    ops, reason = pick_ffn_ops(linear, 256, "auto")
    assert ops.name == "triton" and "needs CUDA" in reason
    ops, reason = pick_ffn_ops(linear, 256, "off")
    assert ops.name == "triton" and "off" in reason
    with pytest.raises(RuntimeError, match="fused_ffn_gemm: on"):
        pick_ffn_ops(linear, 256, "on")


def test_fused_ffn_gemm_says_which_triton_it_needs(monkeypatch):
    """Triton before 3.4 (torch 2.4 comes with 3.0) has no host-side TMA descriptors: the module still imports, and
    the load picks the unfused path with this reason."""
    import torch

    from torchserve_accel.bert import triton_gemm

    monkeypatch.setattr(triton_gemm, "TensorDescriptor", None)
    reason = triton_gemm.unavailable_reason(torch.device("cuda"), torch.float16, 1024, 4096)
    assert reason is not None and "Triton 3.4+" in reason, reason
