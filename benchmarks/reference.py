"""The HuggingFace reference and the comparison helpers shared by the tests and benchmarks/bench_bert.py.

Not used when serving. Everything here builds models from configs with random (seeded) weights: no hub.
"""

from __future__ import annotations

import random
from typing import Sequence

import torch

from torchserve_accel.bert.archive import BERT_LARGE
from torchserve_accel.bert.checkpoint import packed_bert
from torchserve_accel.bert.encoder import PackedBert, unpack_hidden
from torchserve_accel.bert.packing import pack_chunks, plan_chunks, view_segment


def bert_config(num_labels: int = 2, **overrides):
    from transformers import BertConfig

    return BertConfig(**{**BERT_LARGE, **overrides}, num_labels=num_labels)


def random_hf_classifier(config, seed: int = 0, attn_implementation: str = "sdpa"):
    """``BertForSequenceClassification`` with seeded random weights, LayerNorm parameters randomized too (so a
    mixed-up gamma/beta or a missing weight shows), in eval mode on CPU, fp32."""
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config, attn_implementation=attn_implementation).eval()
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:
                p.copy_(torch.rand(p.shape, generator=gen) + 0.5)
            elif "LayerNorm.bias" in name or name.endswith(".bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * 0.02)
    return model


def packed_from_hf(hf_model, head: str = "hidden", attention=None, ops=None) -> PackedBert:
    """Our encoder with a copy of the HF model's weights (through the remap), on the HF model's device and dtype."""
    state = {k: v.clone() for k, v in hf_model.state_dict().items()}
    model = packed_bert(state, hf_model.config, head, attention=attention, ops=ops)
    param = next(hf_model.parameters())
    return model.to(device=param.device, dtype=param.dtype).eval().requires_grad_(False)


def scenario_lengths(name: str, seed: int = 0) -> list[int]:
    """Sequence lengths of the benchmark scenarios (issue #4's targets are stated on these three)."""
    rng = random.Random(seed)
    return {
        "fixed128x256": [128] * 256,
        "fixed384x64": [384] * 64,
        "mixed16-128x256": [rng.randint(16, 128) for _ in range(256)],
    }[name]


def random_sequences(lengths: Sequence[int], vocab_size: int, seed: int = 0, cls_id: int = 101, sep_id: int = 102):
    """Token ids [CLS] w... [SEP] of the given lengths (>= 2) and all-zero token types."""
    gen = torch.Generator().manual_seed(seed)
    ids = []
    for n in lengths:
        body = torch.randint(min(1000, vocab_size // 2), vocab_size, (n - 2,), generator=gen).tolist()
        ids.append([cls_id, *body, sep_id])
    return ids, [[0] * n for n in lengths]


def padded_batch(ids, type_ids, pad_id: int = 0, device="cpu", pad_to: int | None = None):
    """(B, L) int64 input_ids, token_type_ids, attention_mask, right-padded (as HF tokenizers do)."""
    length = pad_to or max(len(i) for i in ids)
    out = torch.full((3, len(ids), length), 0, dtype=torch.int64)
    out[0].fill_(pad_id)
    for row, (i, t) in enumerate(zip(ids, type_ids)):
        out[0, row, : len(i)] = torch.tensor(i)
        out[1, row, : len(t)] = torch.tensor(t)
        out[2, row, : len(i)] = 1
    return tuple(x.to(device) for x in out)


def packed_batch(ids, type_ids, device="cpu", bucketed: bool = False, seq_slots: int | None = None, max_seqlen=None):
    """One chunk on ``device``: the exact layout, or the CUDA-graph layout (bucketed tokens, fixed slots and
    ``max_seqlen``)."""
    lengths = [len(i) for i in ids]
    limit = max(sum(lengths), 256)
    (chunk,) = plan_chunks(
        lengths,
        seq_slots or len(ids),
        limit,
        graph_max_tokens=2 * limit if bucketed else 0,
        graph_max_seqlen=max_seqlen or max(lengths),
        fixed_max_seqlen=max_seqlen,
    )
    segment = pack_chunks(ids, type_ids, [chunk]).to(device)
    return view_segment(segment, chunk.num_tokens, chunk.seq_slots, chunk.max_seqlen, chunk.uniform)


@torch.inference_mode()
def hf_forward(hf_model, input_ids, token_type_ids, attention_mask):
    """-> (last hidden states (B, L, H), class probabilities (B, labels) float32)."""
    out = hf_model(
        input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask, output_hidden_states=True
    )
    return out.hidden_states[-1], torch.softmax(out.logits.float(), dim=-1)


@torch.inference_mode()
def ours_forward(model: PackedBert, batch, num_seqs: int, head: str = "classify"):
    """-> (last hidden states re-padded (B, L, H) with zeros at padding, probabilities (B, labels))."""
    hidden = model.encode(batch)
    probs = model.apply_head(hidden, batch, head)[:num_seqs]
    return unpack_hidden(hidden, batch, num_seqs), probs


def max_error(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor | None = None) -> float:
    """max |a - b| in fp32 over positions where ``mask`` (B, L) is set (all positions if None)."""
    diff = (a.float() - b.float()).abs()
    if mask is not None:
        diff = diff[mask.bool()]
    return float(diff.max())
