"""prepare_archive_files / checkpoint reading for local HF checkpoint directories (torchserve_accel/bert/archive.py, checkpoint.py)."""

from __future__ import annotations

import json
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

from torchserve_accel.bert.archive import make_random_checkpoint, prepare_archive_files
from torchserve_accel.bert.checkpoint import load_packed_bert, read_hf_state_dict
from benchmarks.reference import packed_batch, random_sequences

TINY = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, max_position_embeddings=64)
TOKENIZER = ("tokenizer.json", "tokenizer_config.json")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return make_random_checkpoint(tmp_path_factory.mktemp("ckpt") / "bert", seed=3, config_overrides=TINY)


def _copy(src, dst, names):
    dst.mkdir()
    for name in names:
        shutil.copy(src / name, dst / name)
    return dst


def test_local_safetensors_checkpoint(checkpoint, tmp_path):
    files = prepare_archive_files(tmp_path / "staging", checkpoint, lambda m: None)
    assert files.serialized_file == checkpoint / "model.safetensors"
    assert {p.name for p in files.extra_files} >= {"config.json", *TOKENIZER}


def test_pytorch_bin_checkpoint_is_converted(checkpoint, tmp_path):
    source = _copy(checkpoint, tmp_path / "bin", ["config.json", *TOKENIZER])
    state = load_file(str(checkpoint / "model.safetensors"))
    torch.save(state, source / "pytorch_model.bin")
    files = prepare_archive_files(tmp_path / "staging", source, lambda m: None)
    assert files.serialized_file.parent == tmp_path / "staging"
    converted = load_file(str(files.serialized_file))
    assert converted.keys() == state.keys() and all(torch.equal(converted[k], state[k]) for k in state)


def test_sharded_checkpoint_reads_the_same_weights(checkpoint, tmp_path):
    source = _copy(checkpoint, tmp_path / "sharded", ["config.json", *TOKENIZER])
    state = load_file(str(checkpoint / "model.safetensors"))
    keys = sorted(state)
    halves = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, part in halves.items():
        save_file({k: state[k] for k in part}, str(source / name))
    index = {"metadata": {}, "weight_map": {k: name for name, part in halves.items() for k in part}}
    (source / "model.safetensors.index.json").write_text(json.dumps(index))
    files = prepare_archive_files(tmp_path / "staging", source, lambda m: None)
    assert files.serialized_file is None and len(files.extra_files) == 1 + 3 + len(TOKENIZER)
    assert read_hf_state_dict(source).keys() == state.keys()
    model, _ = load_packed_bert(source, "classify", "cpu", torch.float32)
    reference, _ = load_packed_bert(checkpoint, "classify", "cpu", torch.float32)
    ids, types = random_sequences([5, 9], 3000)
    with torch.inference_mode():
        assert torch.equal(model(packed_batch(ids, types)), reference(packed_batch(ids, types)))


def test_bad_checkpoints_fail_early(checkpoint, tmp_path):
    no_tokenizer = _copy(checkpoint, tmp_path / "no_tok", ["config.json", "model.safetensors"])
    with pytest.raises(FileNotFoundError, match="tokenizer"):
        prepare_archive_files(tmp_path / "s1", no_tokenizer, lambda m: None)
    no_weights = _copy(checkpoint, tmp_path / "no_w", ["config.json", *TOKENIZER])
    with pytest.raises(FileNotFoundError, match="safetensors"):
        prepare_archive_files(tmp_path / "s2", no_weights, lambda m: None)
    not_bert = _copy(checkpoint, tmp_path / "roberta", ["model.safetensors", *TOKENIZER])
    config = json.loads((checkpoint / "config.json").read_text())
    (not_bert / "config.json").write_text(json.dumps({**config, "model_type": "roberta"}))
    with pytest.raises(ValueError, match="roberta"):
        prepare_archive_files(tmp_path / "s3", not_bert, lambda m: None)


def test_classify_needs_a_classifier(tmp_path):
    from transformers import BertConfig, BertModel

    from torchserve_accel.bert.vocab import save_wordpiece_tokenizer

    config = BertConfig(vocab_size=200, **{k: v for k, v in TINY.items()})
    BertModel(config).save_pretrained(str(tmp_path))
    save_wordpiece_tokenizer(tmp_path, ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"w{i}" for i in range(195)])
    with pytest.raises(ValueError, match="classifier"):
        load_packed_bert(tmp_path, "classify", "cpu", torch.float32)
    model, _ = load_packed_bert(tmp_path, "embed_cls", "cpu", torch.float32)
    assert model.classifier is None and model.pooler is not None
