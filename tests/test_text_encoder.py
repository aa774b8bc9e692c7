"""Our padding-free encoder (fp32, CPU) against HuggingFace BERT on random weights, mixed-length padded batches."""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import (
    bert_config,
    hf_forward,
    max_error,
    ours_forward,
    packed_batch,
    packed_from_hf,
    padded_batch,
    random_hf_classifier,
    random_sequences,
)

TINY = dict(vocab_size=3000, hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=160,
            max_position_embeddings=64)
LENGTHS = [5, 17, 2, 33, 9, 24]


@pytest.fixture(scope="module")
def tiny():
    hf = random_hf_classifier(bert_config(num_labels=3, **TINY), seed=0)
    ids, types = random_sequences(LENGTHS, TINY["vocab_size"], seed=1)
    types[1] = [0] * 8 + [1] * 9  # a sentence pair, so token types matter
    return hf, packed_from_hf(hf), ids, types


def test_fp32_matches_huggingface_on_a_mixed_length_batch(tiny):
    hf, ours, ids, types = tiny
    input_ids, token_types, mask = padded_batch(ids, types)
    hf_hidden, hf_probs = hf_forward(hf, input_ids, token_types, mask)
    hidden, probs = ours_forward(ours, packed_batch(ids, types), len(ids))
    assert hidden.shape == hf_hidden.shape
    assert max_error(hidden, hf_hidden, mask) < 2e-5
    assert max_error(probs, hf_probs) < 1e-5
    assert torch.all(hidden[~mask.bool()] == 0)  # padding restored once, at exit, as zeros


def test_padding_never_leaks_into_results(tiny):
    """Each sequence's result is the same alone, in a batch, and in the CUDA-graph layout (pad tokens with
    garbage ids outside every sequence, empty sequence slots)."""
    _, ours, ids, types = tiny
    hidden, probs = ours_forward(ours, packed_batch(ids, types), len(ids))
    bucketed = packed_batch(ids, types, bucketed=True, seq_slots=9, max_seqlen=64)
    bucketed.input_ids[sum(map(len, ids)):] = torch.randint(0, 3000, (bucketed.num_tokens - sum(map(len, ids)),))
    hidden_b, probs_b = ours_forward(ours, bucketed, len(ids))
    assert max_error(hidden_b[:, : hidden.shape[1]], hidden) < 1e-5
    assert max_error(probs_b, probs) < 1e-6
    for i in (0, 3):
        alone_hidden, alone_probs = ours_forward(ours, packed_batch([ids[i]], [types[i]]), 1)
        n = len(ids[i])
        assert max_error(alone_hidden[0, :n], hidden[i, :n]) < 1e-5
        assert max_error(alone_probs[0], probs[i]) < 1e-6


def test_huggingface_padding_really_is_masked(tiny):
    """The reference itself: changing padded positions' ids must not move HF's valid outputs either."""
    hf, _, ids, types = tiny
    input_ids, token_types, mask = padded_batch(ids, types)
    a, _ = hf_forward(hf, input_ids, token_types, mask)
    b, _ = hf_forward(hf, torch.where(mask.bool(), input_ids, 7), token_types, mask)
    assert max_error(a, b, mask) < 1e-5


def test_embedding_heads_cls_and_mean(tiny):
    hf, ours, ids, types = tiny
    input_ids, token_types, mask = padded_batch(ids, types)
    hf_hidden, _ = hf_forward(hf, input_ids, token_types, mask)
    batch = packed_batch(ids, types)
    with torch.inference_mode():
        hidden = ours.encode(batch)
        cls = ours.apply_head(hidden, batch, "embed_cls")
        mean = ours.apply_head(hidden, batch, "embed_mean")
    ref_mean = (hf_hidden * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
    assert max_error(cls, hf_hidden[:, 0]) < 2e-5
    assert max_error(mean, ref_mean) < 2e-5


def test_bf16_error_within_3x_of_huggingface_bf16(tiny):
    """The GPU criterion (ours fp16 vs HF fp32 <= 3x HF fp16 vs HF fp32), in bf16 on CPU."""
    hf, _, ids, types = tiny
    input_ids, token_types, mask = padded_batch(ids, types)
    ref_hidden, ref_probs = hf_forward(hf, input_ids, token_types, mask)
    hf16 = random_hf_classifier(hf.config, seed=0).to(torch.bfloat16)
    hf16.load_state_dict(hf.state_dict())
    hf16_hidden, hf16_probs = hf_forward(hf16, input_ids, token_types, mask)
    ours16 = packed_from_hf(hf16)
    hidden, probs = ours_forward(ours16, packed_batch(ids, types), len(ids))
    assert max_error(hidden, ref_hidden, mask) <= 3 * max_error(hf16_hidden, ref_hidden, mask)
    assert max_error(probs, ref_probs) <= 3 * max(max_error(hf16_probs, ref_probs), 1e-3)


def test_uniform_length_chunks_run_dense_attention(tiny):
    """Equal lengths: packed is dense, attention runs plain SDPA on views (no scatter); same results."""
    hf, ours, _, _ = tiny
    ids, types = random_sequences([12] * 4, TINY["vocab_size"], seed=3)
    batch = packed_batch(ids, types)
    assert batch.uniform
    input_ids, token_types, mask = padded_batch(ids, types)
    hf_hidden, hf_probs = hf_forward(hf, input_ids, token_types, mask)
    hidden, probs = ours_forward(ours, batch, len(ids))
    assert max_error(hidden, hf_hidden) < 2e-5 and max_error(probs, hf_probs) < 1e-5


def test_varlen_load_time_smoke_test_logic():
    """The GPU load-time check of varlen_attn, run against a per-sequence CPU stand-in (and a broken one)."""
    import torch.nn.functional as F

    from torchserve_accel.bert.attention import _smoke_test

    class LoopVarlen:
        def __init__(self, broken=False):
            self.broken = broken

        def prepare(self, batch):
            return batch.cu_seqlens.tolist()

        def __call__(self, qkv, cu):
            out = torch.zeros(qkv.shape[0], qkv.shape[2], qkv.shape[3])
            for a, b in zip(cu[:-1], cu[1:]):
                if b > a and not self.broken:
                    q, k, v = qkv[a:b].transpose(0, 2).unbind(1)
                    out[a:b] = F.scaled_dot_product_attention(q, k, v).transpose(0, 1)
            return out

    _smoke_test(LoopVarlen(), torch.device("cpu"), torch.float32, 64, 512)
    with pytest.raises(ValueError, match="disagrees"):
        _smoke_test(LoopVarlen(broken=True), torch.device("cpu"), torch.float32, 64, 512)
