"""``precision: fp8`` on the CPU: the quantization math against references, GPTQ against round-to-nearest, the
choice of GEMMs, the gate's fallback and refusal, and the options. The GPU kernels' numbers (Triton quantizer,
``torch._scaled_mm``) and the accuracy on a real checkpoint are checked by benchmarks/bench_bert_fp8.py on a GPU;
the quantizer also runs here through Triton's interpreter."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from torchserve_accel.bert import fp8
from torchserve_accel.bert.options import BertOptions
from torchserve_accel.serving.options import OptionsError

REPO = Path(__file__).resolve().parent.parent
needs_fp8 = pytest.mark.skipif(not hasattr(torch, "float8_e4m3fn"), reason="this torch has no float8 dtypes")
TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)


@needs_fp8
def test_quantize_rows_reference_maps_each_rows_amax_to_448_and_rounds_to_nearest():
    torch.manual_seed(0)
    x = torch.randn(64, 96) * torch.logspace(-3, 3, 64)[:, None]
    q, scale = fp8.quantize_rows_reference(x)
    assert q.dtype == torch.float8_e4m3fn and scale.shape == (64, 1)
    assert torch.equal(q.float().abs().amax(-1), torch.full((64,), 448.0))
    back = q.float() * scale
    # e4m3 keeps 3 mantissa bits: round to nearest is within half a step, 1/16 of the value (normal numbers)
    normal = x.abs() / scale >= 2.0**-6
    assert ((back - x).abs() <= x.abs() / 16 + 1e-12)[normal].all()
    assert fp8.round_e4m3(torch.tensor([1e6, -1e6])).float().tolist() == [448.0, -448.0]  # saturates, never NaN


@needs_fp8
def test_gptq_rounds_to_e4m3_and_beats_round_to_nearest_on_correlated_inputs():
    torch.manual_seed(0)
    basis = torch.randn(16, 128)
    x = torch.randn(2048, 16) @ basis + 0.05 * torch.randn(2048, 128)  # inputs on a few directions, as activations are
    w = torch.randn(48, 128) * 0.05
    q, scale = fp8.gptq_fp8(w, x.T @ x)
    assert q.dtype == torch.float8_e4m3fn and q.shape == w.shape and scale.shape == (48,)
    rtn_q, rtn_scale = fp8.quantize_rows_reference(w)
    err_gptq = ((q.float() * scale[:, None] - w) @ x.T).norm()
    err_rtn = ((rtn_q.float() * rtn_scale - w) @ x.T).norm()
    assert err_gptq < 0.6 * err_rtn, (err_gptq, err_rtn)
    assert torch.allclose(scale, rtn_scale[:, 0])  # the same per-channel scales, only the rounding differs


@needs_fp8
def test_fp8_linear_on_cpu_is_the_dequantized_product():
    torch.manual_seed(0)
    w, b, x = torch.randn(24, 32), torch.randn(24), torch.randn(5, 7, 32)
    wq, ws = fp8.quantize_rows_reference(w)
    layer = fp8.Fp8Linear(wq, ws[:, 0], b)
    xq, xs = fp8.quantize_rows_reference(x.reshape(-1, 32))
    expected = ((xq.float() * xs) @ (wq.float() * ws).T).reshape(5, 7, 24)
    assert layer.gemm(x).dtype == torch.bfloat16 and layer.gemm(x).shape == (5, 7, 24)
    assert torch.allclose(layer.gemm(x).float(), expected, rtol=1e-2, atol=1e-2)
    assert torch.allclose(layer(x).float(), expected + b, rtol=1e-2, atol=2e-2)
    # and close to the exact product: e4m3 on both operands, a few percent
    assert ((layer.gemm(x).float() - x @ w.T).norm() / (x @ w.T).norm()) < 0.05


INTERPRETED = r"""
import torch
from torchserve_accel.bert.fp8 import quantize_rows_reference
from torchserve_accel.bert.triton_ops import quantize_rows
torch.manual_seed(0)
x = torch.randn(33, 200) * torch.rand(33, 1) * 10
x[3, 5] = 1000.0
q, s = quantize_rows(x)
q_ref, s_ref = quantize_rows_reference(x)
assert torch.equal(s, s_ref), "scales"
same = q.view(torch.uint8) == q_ref.view(torch.uint8)
# Triton's interpreter converts to e4m3 wrongly where rounding carries into the next power of two (it keeps the
# lower binade); the GPU's conversion is checked byte for byte by benchmarks/bench_bert_fp8.py.
carried = q_ref.float().abs().log2().frac() == 0
assert (same | carried).all(), int((~same & ~carried).sum())
print("ok", float(same.float().mean()))
"""


@needs_fp8
def test_triton_quantizer_in_the_interpreter_matches_the_reference():
    pytest.importorskip("triton", reason="triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", INTERPRETED], env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


# ---------------------------------------------------------------------------------------------- the choice


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    from torchserve_accel.bert.archive import make_random_checkpoint

    return make_random_checkpoint(tmp_path_factory.mktemp("bert") / "tiny", config_overrides=TINY)


def fp32_model(model_dir: Path):
    from torchserve_accel.bert.checkpoint import load_packed_bert

    model, _ = load_packed_bert(model_dir, "embed_mean", "cpu", torch.float32)
    return model


def tokenizer_and_texts(model_dir: Path):
    from torchserve_accel.bert.engines import BUNDLED_CALIBRATION
    from torchserve_accel.bert.tokenize import BatchTokenizer

    texts = BUNDLED_CALIBRATION[0].read_text().splitlines()[:48]
    return BatchTokenizer.from_dir(model_dir, 64), (texts[0::2], texts[1::2])


@needs_fp8
def test_to_fp8_with_loose_bounds_puts_every_gemm_in_fp8_and_stays_close(tiny_checkpoint):
    from torchserve_accel.bert.engines import to_fp8

    model = fp32_model(tiny_checkpoint)
    tokenizer, texts = tokenizer_and_texts(tiny_checkpoint)
    options = BertOptions(task="embed", pooling="mean", precision="fp8", fp8_mean_cosine=0.9, fp8_min_cosine=0.5)
    reference_model = fp32_model(tiny_checkpoint)
    summary = to_fp8(model, tiny_checkpoint, options, tokenizer, texts)
    assert summary.startswith("8 of 8 GEMMs in FP8"), summary
    assert "gate on 24 held-out texts passed" in summary
    kinds = {type(getattr(layer, name)).__name__ for layer in model.layers for name in fp8.GEMMS}
    assert kinds == {"Fp8Linear"}
    assert model.head == "embed_mean" and model.embeddings.word.weight.dtype == torch.bfloat16
    from torchserve_accel.bert.engines import PackedEngine

    def embed(m):
        engine = PackedEngine("packed", m, m, BertOptions(cuda_graphs=False), torch.device("cpu"), 64,
                              tokenizer.pad_token_id, {})
        with torch.inference_mode():
            return engine(tokenizer(texts[1]))

    cos = torch.nn.functional.cosine_similarity(embed(reference_model), embed(model).float(), dim=-1)
    assert cos.min() > 0.9, cos.min()


@needs_fp8
def test_to_fp8_falls_back_or_refuses_when_no_gemm_keeps_the_bounds(tiny_checkpoint):
    from torchserve_accel.bert.engines import to_fp8

    tokenizer, texts = tokenizer_and_texts(tiny_checkpoint)
    strict = dict(task="embed", pooling="mean", precision="fp8", fp8_mean_cosine=1.0, fp8_min_cosine=1.0)
    model = fp32_model(tiny_checkpoint)
    summary = to_fp8(model, tiny_checkpoint, BertOptions(**strict), tokenizer, texts)
    assert summary.startswith("fell back to bf16 GEMMs: no GEMM keeps"), summary
    assert {type(getattr(layer, name)).__name__ for layer in model.layers for name in fp8.GEMMS} == {"Linear"}
    with pytest.raises(ValueError, match="precision: fp8 refused"):
        to_fp8(fp32_model(tiny_checkpoint), tiny_checkpoint, BertOptions(**strict, fp8_on_gate_failure="refuse"),
               tokenizer, texts)


def test_choose_gemms_keeps_the_largest_prefix_of_least_sensitive_gemms_within_the_bounds():
    """A stand-in model whose error is the sum of fixed per-GEMM errors: the choice is the cheapest ones that fit."""
    errors = {(0, "qkv"): 0.004, (0, "attn_out"): 0.001, (0, "ffn_in"): 0.002, (0, "ffn_out"): 0.0005}

    class Layer(torch.nn.Module):
        pass

    layers = torch.nn.ModuleList([Layer()])
    fp8_mods = {key: torch.nn.Identity() for key in errors}
    plain = {key: torch.nn.ReLU() for key in errors}
    reference = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)

    def pooled():
        placed = [key for key in errors if isinstance(getattr(layers[0], key[1]), torch.nn.Identity)]
        err = sum(errors[k] for k in placed)
        # a candidate at cosine 1 - err to the reference: rotate each row slightly
        noise = torch.nn.functional.normalize(torch.randn(8, 16), dim=-1)
        noise = noise - (noise * reference).sum(-1, keepdim=True) * reference
        noise = torch.nn.functional.normalize(noise, dim=-1)
        c = 1 - err
        return c * reference + (1 - c * c) ** 0.5 * noise

    choice = fp8.choose_gemms(layers, fp8_mods, plain, pooled, reference, mean_bound=0.9965, min_bound=0.99)
    assert choice.fp8 == [(0, "ffn_out"), (0, "attn_out"), (0, "ffn_in")]  # 0.0035 <= 0.0035; adding qkv breaks it
    assert isinstance(layers[0].qkv, torch.nn.ReLU) and isinstance(layers[0].ffn_out, torch.nn.Identity)
    assert choice.sensitivity[(0, "qkv")] == pytest.approx(0.004, abs=1e-5)


def test_fp8_options_are_checked():
    with pytest.raises(OptionsError, match="packed backend only"):
        BertOptions(precision="fp8", backend="tensorrt").validate()
    with pytest.raises(OptionsError, match="fp8_min_cosine"):
        BertOptions(precision="fp8", fp8_min_cosine=1.5).validate()
    BertOptions(precision="fp8").validate()


def test_fp8_is_refused_on_a_cpu_worker_with_the_reason(tiny_checkpoint):
    from torchserve_accel.bert.engines import REGISTRY
    from torchserve_accel.bert.tokenize import BatchTokenizer

    tokenizer = BatchTokenizer.from_dir(tiny_checkpoint, 64)
    with pytest.raises(ValueError, match="precision: fp8 cannot run here: FP8 GEMMs need an NVIDIA GPU"):
        REGISTRY["packed"].build(torch.device("cpu"), tiny_checkpoint, BertOptions(precision="fp8"),
                                 torch.device("cpu"), tokenizer, "classify")


@pytest.mark.gpu
def test_fp8_linear_on_the_gpu_runs_the_reference_numbers():
    """The Triton quantizer gives the reference's bytes and ``torch._scaled_mm`` the reference product (sm89+)."""
    reason = fp8.unavailable_reason(torch.device("cuda"))
    if reason:
        pytest.skip(reason)
    torch.manual_seed(0)
    w, b = torch.randn(256, 128, device="cuda"), torch.randn(256, device="cuda")
    x = torch.randn(3, 40, 128, device="cuda", dtype=torch.bfloat16)
    wq, ws = fp8.quantize_rows_reference(w)
    layer = fp8.Fp8Linear(wq, ws[:, 0], b)
    q, s = layer.quantize(x.reshape(-1, 128))
    q_ref, s_ref = fp8.quantize_rows_reference(x.reshape(-1, 128))
    assert torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8)) and torch.equal(s, s_ref)
    expected = fp8.scaled_mm_reference(q_ref, s_ref, wq.t(), ws.reshape(1, -1), b, torch.float32).reshape(3, 40, 256)
    out = layer(x)
    assert out.dtype == torch.bfloat16
    assert ((out.float() - expected).norm() / expected.norm()) < 5e-3


@pytest.mark.gpu
def test_the_layernorm_kernel_writes_the_quantizers_e4m3_bytes_on_the_gpu():
    reason = fp8.unavailable_reason(torch.device("cuda"))
    if reason:
        pytest.skip(reason)
    from torchserve_accel.bert.triton_ops import TritonOps

    torch.manual_seed(0)
    norm = torch.nn.LayerNorm(1024, eps=1e-12)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.normal_()
    norm = norm.to("cuda", torch.bfloat16)
    x, res = ((torch.randn(512, 1024, device="cuda") * 3).to(torch.bfloat16) for _ in range(2))
    bias = torch.randn(1024, device="cuda").to(torch.bfloat16)
    plain = TritonOps.bias_residual_layernorm(x.clone(), bias, res, norm)
    out, (q, s) = TritonOps.bias_residual_layernorm_quantized(x.clone(), bias, res, norm)
    q_ref, s_ref = fp8.quantize_rows_reference(out)
    assert torch.equal(out, plain)
    assert torch.equal(s, s_ref) and torch.equal(q.view(torch.uint8), q_ref.view(torch.uint8))


GELU_INTERPRETED = r"""
import torch
from torchserve_accel.bert.fp8 import quantize_rows_reference
from torchserve_accel.bert.ops import TorchOps
from torchserve_accel.bert.triton_ops import bias_gelu_quantized
torch.manual_seed(0)
x, bias = torch.randn(17, 96) * 3, torch.randn(96)
q, s = bias_gelu_quantized(x.clone(), bias)
q_ref, s_ref = quantize_rows_reference(TorchOps.bias_gelu(x, bias))
assert torch.allclose(s, s_ref, rtol=1e-5), (s - s_ref).abs().max()
same = q.view(torch.uint8) == q_ref.view(torch.uint8)
carried = q_ref.float().abs().log2().frac() == 0  # the interpreter's e4m3 conversion (see the quantizer's test)
# GELU's erf approximation: one e4m3 step at most (an absolute 2**-9 among subnormals)
near = (q.float() - q_ref.float()).abs() <= torch.clamp(q_ref.float().abs() / 8, min=2.0**-9)
assert (same | carried | near).all()
print("ok", float(same.float().mean()))
"""


@needs_fp8
def test_triton_bias_gelu_quantizer_in_the_interpreter_matches_gelu_then_quantize():
    pytest.importorskip("triton", reason="triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", GELU_INTERPRETED], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


def test_the_bundled_calibration_is_sentences_then_short_prefixes_of_them(tmp_path):
    """The bundled FP8 calibration: the sentences and stop-word runs, then short texts, each the first 1-5 words of
    one of them; the load reads both files, and bench_bert_fp8.py's ``sentences`` variant the first alone."""
    from benchmarks.bench_bert_fp8 import calibration_files
    from torchserve_accel.bert.engines import BUNDLED_CALIBRATION, calibration_texts

    def lines(path):
        return [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]

    sentences, short = (lines(path) for path in BUNDLED_CALIBRATION)
    assert len(sentences) >= 300 and len(short) >= 200
    assert all(1 <= len(text.split()) <= 5 and any(b.split()[: len(text.split())] == text.split() for b in sentences)
               for text in short)
    calibration, gate = calibration_texts(tmp_path / "archive", BertOptions())
    assert (calibration, gate) == ((sentences + short)[0::2], (sentences + short)[1::2])
    files = calibration_files(["bundled", "sentences"])
    assert files[""] == "" and lines(files["-sentences"]) == sentences
    calibration, gate = calibration_texts(tmp_path / "archive", BertOptions(fp8_calibration=files["-sentences"]))
    assert sorted(calibration + gate) == sorted(sentences)


LAYERNORM_INTERPRETED = r"""
import torch
from torch import nn
from torchserve_accel.bert.fp8 import quantize_rows_reference
from torchserve_accel.bert.ops import TorchOps
from torchserve_accel.bert.triton_ops import TritonOps
torch.manual_seed(0)
norm = nn.LayerNorm(96, eps=1e-12)
with torch.no_grad():
    norm.weight.uniform_(0.5, 1.5); norm.bias.normal_()
norm = norm.to(torch.bfloat16)
x, res = (torch.randn(29, 96).to(torch.bfloat16) * 3 for _ in range(2))
bias = torch.randn(96).to(torch.bfloat16)
plain = TritonOps.bias_residual_layernorm(x.clone(), bias, res, norm)
out, (q, s) = TritonOps.bias_residual_layernorm_quantized(x.clone(), bias, res, norm)
assert torch.equal(out, plain), "the LayerNorm output is the plain kernel's"
q_ref, s_ref = quantize_rows_reference(out)
assert torch.equal(s, s_ref), (s - s_ref).abs().max()
same = q.view(torch.uint8) == q_ref.view(torch.uint8)
carried = q_ref.float().abs().log2().frac() == 0  # the interpreter's e4m3 conversion (see the quantizer's test)
# bf16 rows put some values exactly halfway between two e4m3 values; the interpreter rounds those away from zero,
# the GPU to even (bench_bert_fp8.py checks the GPU's bytes)
scaled = out.float() / s
tie = (scaled - q_ref.float()).abs() * 2 == (q.float() - q_ref.float()).abs()
assert (same | carried | tie).all(), int((~same & ~carried & ~tie).sum())
ref_out, (q_t, s_t) = TorchOps.bias_residual_layernorm_quantized(x.float(), bias.float(), res.float(), norm.float())
assert (out.float() - ref_out).abs().max() < 0.05
print("ok", float(same.float().mean()))
"""


@needs_fp8
def test_triton_layernorm_quantizer_in_the_interpreter_writes_the_quantizers_bytes():
    """The LayerNorm kernel's e4m3 output is what the separate quantizer makes of its bf16 output."""
    pytest.importorskip("triton", reason="triton is not installed")
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", LAYERNORM_INTERPRETED], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.startswith("ok")


@needs_fp8
def test_layernorms_before_fp8_gemms_hand_them_e4m3_and_change_no_number(tiny_checkpoint):
    """With every GEMM in FP8, each LayerNorm that feeds an FP8 GEMM (the attention's, and a layer's last before
    the next layer's QKV) writes its e4m3 rows itself: the GEMMs behind them quantize nothing, and the embeddings
    are bit for bit those of quantizing in the GEMMs."""
    from torchserve_accel.bert.engines import PackedEngine, to_fp8
    from torchserve_accel.bert.ops import TorchOps

    model = fp32_model(tiny_checkpoint)
    tokenizer, texts = tokenizer_and_texts(tiny_checkpoint)
    options = BertOptions(task="embed", pooling="mean", precision="fp8", fp8_mean_cosine=0.9, fp8_min_cosine=0.5)
    to_fp8(model, tiny_checkpoint, options, tokenizer, texts)
    assert [layer.quantize_output for layer in model.layers] == [True] * (len(model.layers) - 1) + [False]

    class QuantizeInGemms(TorchOps):
        @classmethod
        def bias_residual_layernorm_quantized(cls, x, bias, residual, norm):
            return cls.bias_residual_layernorm(x, bias, residual, norm), None

    calls = []
    for layer in model.layers:
        for name in fp8.GEMMS:
            gemm = getattr(layer, name)
            gemm.quantize = lambda x, own=gemm.quantize, name=name: (calls.append(name), own(x))[1]

    def embed(ops):
        model.ops = ops
        engine = PackedEngine("packed", model, model, BertOptions(cuda_graphs=False), torch.device("cpu"), 64,
                              tokenizer.pad_token_id, {})
        calls.clear()
        with torch.inference_mode():
            return engine(tokenizer(texts[1])), sorted(calls)

    fused, fused_calls = embed(TorchOps())
    unfused, unfused_calls = embed(QuantizeInGemms())
    assert torch.equal(fused, unfused)
    layers = len(model.layers)
    assert unfused_calls == sorted(fp8.GEMMS * layers)
    # left: the first QKV (the embeddings' LayerNorm is torch's), and every attention output and FFN output
    assert fused_calls == sorted(["qkv"] + ["attn_out", "ffn_out"] * layers)
