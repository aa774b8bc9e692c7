"""HF state dict <-> PackedBert state dict (torchserve_accel/bert/remap.py)."""

from __future__ import annotations

import pytest
import torch

from benchmarks.reference import bert_config, random_hf_classifier
from torchserve_accel.bert.remap import hf_to_packed, packed_to_hf

TINY = dict(vocab_size=500, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=48,
            max_position_embeddings=40)


@pytest.fixture(scope="module")
def hf_state():
    return random_hf_classifier(bert_config(num_labels=3, **TINY)).state_dict()


def test_round_trip_is_exact(hf_state):
    ours = hf_to_packed(hf_state)
    back = packed_to_hf(ours)
    persistent = {k for k in hf_state if not k.endswith(("position_ids", "token_type_ids"))}
    assert set(back) == persistent
    for key in persistent:
        assert torch.equal(back[key], hf_state[key]), key


def test_qkv_is_joined_query_key_value(hf_state):
    ours = hf_to_packed(hf_state)
    assert ours["layers.1.qkv.weight"].shape == (96, 32)
    q, k, v = ours["layers.1.qkv.weight"].chunk(3)
    assert torch.equal(q, hf_state["bert.encoder.layer.1.attention.self.query.weight"])
    assert torch.equal(v, hf_state["bert.encoder.layer.1.attention.self.value.weight"])
    assert torch.equal(ours["layers.1.qkv.bias"][32:64], hf_state["bert.encoder.layer.1.attention.self.key.bias"])


def test_bert_model_names_and_tf_era_layernorm_names(hf_state):
    base = {k.removeprefix("bert."): v for k, v in hf_state.items() if k.startswith("bert.")}
    base = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
            for k, v in base.items()}
    ours = hf_to_packed(base)
    assert "classifier.weight" not in ours
    assert torch.equal(ours["layers.0.attn_norm.weight"], hf_state["bert.encoder.layer.0.attention.output.LayerNorm.weight"])
    assert set(packed_to_hf(ours)) == {k.removeprefix("bert.") for k in hf_state
                                       if k.startswith("bert.") and not k.endswith(("position_ids", "token_type_ids"))}


def test_pretraining_heads_are_dropped_unknown_weights_are_errors(hf_state):
    ours = hf_to_packed({**hf_state, "cls.predictions.bias": torch.zeros(3)})
    assert not any(k.startswith("cls") for k in ours)
    with pytest.raises(KeyError, match="unexpected"):
        hf_to_packed({**hf_state, "bert.encoder.layer.0.attention.self.rotary.weight": torch.zeros(3)})
    partial = {k: v for k, v in hf_state.items() if "layer.1.attention.self.key.weight" not in k}
    with pytest.raises(KeyError, match="missing"):
        hf_to_packed(partial)
