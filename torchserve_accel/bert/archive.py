"""The BERT archive's files: a local HuggingFace checkpoint directory, or a BERT-Large-shaped random one.

Build time only (``torchserve-accel build bert_large``); workers never import this.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import torch

from torchserve_accel.archive import ArchiveFiles
from torchserve_accel.bert.checkpoint import read_hf_config, read_hf_state_dict

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
# BERT-Large's shape (HF BertConfig fields), for random-weight archives and the benchmarks' reference models.
BERT_LARGE = dict(
    vocab_size=30522,
    hidden_size=1024,
    num_hidden_layers=24,
    num_attention_heads=16,
    intermediate_size=4096,
    max_position_embeddings=512,
    type_vocab_size=2,
)


def make_random_checkpoint(out_dir: Path, seed: int = 0, config_overrides: dict | None = None,
                           task: str = "classify") -> Path:
    """A BERT-Large-shaped ``BertForSequenceClassification`` (``task`` qa: ``BertForQuestionAnswering``) with
    random (seeded) weights, saved in fp16, plus a ``BertTokenizerFast`` over a made-up WordPiece vocabulary; HF
    layout in ``out_dir``."""
    from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

    from torchserve_accel.bert.vocab import build_vocab, save_wordpiece_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    settings = {**BERT_LARGE, "vocab_size": len(vocab), "id2label": {0: "negative", 1: "positive"},
                "label2id": {"negative": 0, "positive": 1}, **(config_overrides or {})}
    config = BertConfig(**settings)
    architecture = BertForQuestionAnswering if task == "qa" else BertForSequenceClassification
    config.architectures = [architecture.__name__]
    torch.manual_seed(seed)
    model = architecture(config).eval().half()
    model.save_pretrained(str(out_dir))
    save_wordpiece_tokenizer(out_dir, vocab, model_max_length=config.max_position_embeddings)
    (out_dir / "RANDOM_WEIGHTS.txt").write_text(
        f"Random weights (seed {seed}), made by torchserve_accel.bert.archive.make_random_checkpoint; predictions are meaningless.\n"
    )
    return out_dir


def prepare_archive_files(
    staging_dir: Path,
    source: Path | None,
    log: Callable[[str], None],
    *,
    config_overrides: dict | None = None,
    seed: int = 0,
    handler_options: dict | None = None,
) -> ArchiveFiles:
    """Files for ``torch-model-archiver``: the weights as ``--serialized-file``, config + tokenizer as extra files.

    ``source``: a local HF checkpoint dir (config.json, model.safetensors or shards, tokenizer.json/vocab.txt).
    None: write a random-weight BERT-Large-shaped checkpoint under ``staging_dir`` (``config_overrides`` change
    its shape, for tests; a question-answering one when ``handler_options`` (the model-config's ``handler:``
    section) says ``task: qa``). All files land flat in the archive root, where ``runner.load`` reads them.
    """
    staging_dir = Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        task = (handler_options or {}).get("task", "classify")
        kind = "BertForQuestionAnswering" if task == "qa" else "BertForSequenceClassification"
        log("=" * 100)
        log(f"WARNING: no BERT checkpoint given: writing a BERT-Large-shaped {kind} with RANDOM")
        log(f"WARNING: weights (seed {seed}). Its outputs are MEANINGLESS; use it for load/speed tests only.")
        log("=" * 100)
        source = make_random_checkpoint(staging_dir / "random_bert", seed, config_overrides, task=task)
    source = Path(source)
    read_hf_config(source)  # fails early on a wrong or missing config.json
    if (source / "model.safetensors").exists():
        serialized, weights = source / "model.safetensors", []
    elif (source / "model.safetensors.index.json").exists():
        index = source / "model.safetensors.index.json"
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        serialized, weights = None, [index] + [source / s for s in shards]
    elif (source / "pytorch_model.bin").exists():
        from safetensors.torch import save_file

        log(f"converting {source}/pytorch_model.bin to safetensors")
        serialized = staging_dir / "model.safetensors"
        state = read_hf_state_dict(source)
        save_file({k: v.contiguous() for k, v in state.items()}, str(serialized))
        weights = []
    else:
        raise FileNotFoundError(f"{source}: no model.safetensors, safetensors index or pytorch_model.bin")
    tokenizer_files = [source / name for name in TOKENIZER_FILES if (source / name).exists()]
    if not any(f.name in ("tokenizer.json", "vocab.txt") for f in tokenizer_files):
        raise FileNotFoundError(f"{source}: no tokenizer.json or vocab.txt")
    marker = [source / "RANDOM_WEIGHTS.txt"] if (source / "RANDOM_WEIGHTS.txt").exists() else []
    extra = [source / "config.json", *weights, *tokenizer_files, *marker]
    log(f"BERT archive files from {source}: {serialized.name if serialized else 'sharded'} + {[f.name for f in extra]}")
    return ArchiveFiles(serialized_file=serialized, extra_files=extra)
