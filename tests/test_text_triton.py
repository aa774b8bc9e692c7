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
from handlers.text.fused_ops import TorchOps
from handlers.text.triton_ops import TritonOps
from handlers.text.reference import bert_config, random_hf_classifier, packed_from_hf, packed_batch, random_sequences

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
