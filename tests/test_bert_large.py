"""The full BERT-Large shape (24 layers, hidden 1024, 16 heads, vocab 30522) once, on CPU in fp32: our encoder
against HuggingFace on a short mixed-length padded batch (short sequences keep it to seconds on 2 cores)."""

from __future__ import annotations

import torch

from benchmarks.reference import (
    BERT_LARGE,
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


def test_bert_large_shape_fp32_matches_huggingface():
    hf = random_hf_classifier(bert_config(num_labels=2), seed=0)
    assert sum(p.numel() for p in hf.parameters()) > 330e6
    ours = packed_from_hf(hf, head="classify")
    assert ours.cfg.num_layers == 24 and ours.cfg.hidden_size == 1024 and ours.cfg.num_heads == 16
    assert ours.layers[0].qkv.weight.shape == (3 * 1024, 1024)
    ids, types = random_sequences([3, 12, 7], BERT_LARGE["vocab_size"], seed=2)
    input_ids, token_types, mask = padded_batch(ids, types)
    hf_hidden, hf_probs = hf_forward(hf, input_ids, token_types, mask)
    hidden, probs = ours_forward(ours, packed_batch(ids, types), len(ids))
    assert max_error(hidden, hf_hidden, mask) < 1e-4
    assert max_error(probs, hf_probs) < 1e-5
    assert torch.all(hidden[~mask.bool()] == 0)


def test_default_archive_is_bert_large_and_serves(tmp_path):
    """What scripts/build_archive.py bert_large does without --weights, then a worker's initialize + one batch."""
    import json
    import shutil

    from bert_handler import BertHandler
    from torchserve_accel.bert.archive import prepare_archive_files
    from tests.fake_context import FakeContext

    files = prepare_archive_files(tmp_path / "staging", None, lambda m: None)
    config = json.loads((files.serialized_file.parent / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["num_attention_heads"]) == (1024, 24, 16)
    assert config["vocab_size"] == 30522 and config["intermediate_size"] == 4096
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    for path in [files.serialized_file, *files.extra_files]:
        shutil.move(str(path), model_dir / path.name)
    handler, context = BertHandler(), FakeContext(model_dir)
    handler.initialize(context)
    out = json.loads(handler.handle([{"body": "Serving a random BERT-Large, loudly."}], context)[0])
    assert out["label"] in ("negative", "positive") and out["batch_size"] == 1
