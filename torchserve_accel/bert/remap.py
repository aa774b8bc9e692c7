"""HuggingFace BERT state dict <-> ``PackedBert`` state dict. The only place HF names appear.

Handles ``BertModel`` (no prefix) and ``BertFor*`` (``bert.`` prefix) checkpoints, their heads (``classifier.*``
of sequence classification, ``qa_outputs.*`` of question answering, kept by name), TF-era ``LayerNorm.gamma/beta``
names, and drops HF's non-persistent buffers and pretraining heads (``cls.*``). Anything else unknown is an
error: a silently dropped weight is a silently wrong model. Query/key/value are joined into one QKV weight here,
once, at load time.
"""

from __future__ import annotations

import re
from typing import Mapping

import torch

_IGNORED = re.compile(r"^(embeddings\.(position_ids|token_type_ids)|cls\..*)$")

# HF name (after the "bert." prefix) -> ours, for everything that is a plain rename.
_EMBEDDINGS = {
    "embeddings.word_embeddings.weight": "embeddings.word.weight",
    "embeddings.position_embeddings.weight": "embeddings.position.weight",
    "embeddings.token_type_embeddings.weight": "embeddings.token_type.weight",
    "embeddings.LayerNorm.weight": "embeddings.norm.weight",
    "embeddings.LayerNorm.bias": "embeddings.norm.bias",
    "pooler.dense.weight": "pooler.weight",
    "pooler.dense.bias": "pooler.bias",
}
_LAYER = {
    "attention.output.dense": "attn_out",
    "attention.output.LayerNorm": "attn_norm",
    "intermediate.dense": "ffn_in",
    "output.dense": "ffn_out",
    "output.LayerNorm": "ffn_norm",
}
_QKV = ("query", "key", "value")
_HEADS = ("classifier.", "qa_outputs.")  # task heads outside the encoder: same names on both sides


def _normalize_hf_name(name: str) -> str:
    name = name.removeprefix("bert.")
    return re.sub(r"LayerNorm\.gamma$", "LayerNorm.weight", re.sub(r"LayerNorm\.beta$", "LayerNorm.bias", name))


def hf_to_packed(hf_state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """HF ``BertModel``/``BertForSequenceClassification``/``BertForQuestionAnswering`` state dict -> ``PackedBert``'s."""
    state = {_normalize_hf_name(k): v for k, v in hf_state.items()}
    out: dict[str, torch.Tensor] = {}
    qkv_parts: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    unknown = []
    for name, tensor in state.items():
        if _IGNORED.match(name):
            continue
        if name in _EMBEDDINGS:
            out[_EMBEDDINGS[name]] = tensor
            continue
        if name.startswith(_HEADS):
            out[name] = tensor
            continue
        m = re.fullmatch(r"encoder\.layer\.(\d+)\.(.+)\.(weight|bias)", name)
        if m is None:
            unknown.append(name)
            continue
        index, module, kind = int(m.group(1)), m.group(2), m.group(3)
        if module.startswith("attention.self.") and module.removeprefix("attention.self.") in _QKV:
            qkv_parts.setdefault((index, kind), {})[module.removeprefix("attention.self.")] = tensor
        elif module in _LAYER:
            out[f"layers.{index}.{_LAYER[module]}.{kind}"] = tensor
        else:
            unknown.append(name)
    if unknown:
        raise KeyError(f"unexpected weights in the BERT checkpoint: {sorted(unknown)[:10]}")
    for (index, kind), parts in sorted(qkv_parts.items()):
        missing = [p for p in _QKV if p not in parts]
        if missing:
            raise KeyError(f"layer {index}: attention {missing} {kind} missing from the checkpoint")
        out[f"layers.{index}.qkv.{kind}"] = torch.cat([parts[p] for p in _QKV], dim=0)
    return out


def packed_to_hf(state: Mapping[str, torch.Tensor], prefix: str | None = None) -> dict[str, torch.Tensor]:
    """The inverse of ``hf_to_packed``. ``prefix`` defaults to ``bert.`` when there is a task head."""
    if prefix is None:
        prefix = "bert." if any(k.startswith(_HEADS) for k in state) else ""
    inverse_embeddings = {v: k for k, v in _EMBEDDINGS.items()}
    inverse_layer = {v: k for k, v in _LAYER.items()}
    out: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        if name in inverse_embeddings:
            out[prefix + inverse_embeddings[name]] = tensor
        elif name.startswith(_HEADS):
            out[name] = tensor
        else:
            m = re.fullmatch(r"layers\.(\d+)\.(\w+)\.(weight|bias)", name)
            if m is None:
                raise KeyError(f"not a PackedBert weight: {name}")
            index, module, kind = m.groups()
            base = f"{prefix}encoder.layer.{index}."
            if module == "qkv":
                for part, chunk in zip(_QKV, tensor.chunk(3, dim=0)):
                    out[f"{base}attention.self.{part}.{kind}"] = chunk
            else:
                out[f"{base}{inverse_layer[module]}.{kind}"] = tensor
    return out
