"""A HuggingFace BERT checkpoint directory (the archive root) -> ``PackedBert`` on a device, and its label names.

Reads config.json and the weights (model.safetensors, sharded safetensors, or a pytorch_model.bin loaded with
``weights_only=True``); the weights enter the encoder through the state-dict remap (remap.py), never through
module surgery.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from torchserve_accel.bert.encoder import EncoderConfig, PackedBert
from torchserve_accel.bert.remap import hf_to_packed


def read_hf_config(model_dir: Path):
    from transformers import BertConfig

    config = BertConfig.from_pretrained(str(model_dir))
    if config.model_type != "bert":
        raise ValueError(f"{model_dir}/config.json is model_type={config.model_type!r}, not 'bert'")
    return config


def read_hf_state_dict(model_dir: Path) -> dict[str, torch.Tensor]:
    """model.safetensors, sharded safetensors (index json), or (converted on the fly) pytorch_model.bin."""
    from safetensors.torch import load_file

    model_dir = Path(model_dir)
    if (model_dir / "model.safetensors").exists():
        return load_file(str(model_dir / "model.safetensors"))
    index = model_dir / "model.safetensors.index.json"
    if index.exists():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: v for shard in shards for k, v in load_file(str(model_dir / shard)).items()}
    if (model_dir / "pytorch_model.bin").exists():
        return torch.load(model_dir / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise FileNotFoundError(f"no model.safetensors (or index, or pytorch_model.bin) in {model_dir}")


def load_packed_bert(
    model_dir: Path, head: str, device: str | torch.device, dtype: torch.dtype, normalize: bool = False
) -> tuple[PackedBert, Any]:
    """HF checkpoint dir -> ``PackedBert`` on ``device`` in ``dtype`` (eval), and the HF config."""
    hf_config = read_hf_config(model_dir)
    try:
        model = packed_bert(read_hf_state_dict(model_dir), hf_config, head, normalize)
    except ValueError as err:
        raise ValueError(f"{model_dir}: {err}") from None
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), hf_config


def packed_bert(hf_state: dict[str, torch.Tensor], hf_config: Any, head: str, normalize: bool = False,
                **modules: Any) -> PackedBert:
    """An HF state dict and config -> ``PackedBert`` holding those tensors (remapped, QKV joined). ``modules``:
    ``attention``/``ops`` for the encoder (default: the portable reference ones)."""
    state = hf_to_packed(hf_state)
    num_labels = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
    cfg = EncoderConfig.from_hf(hf_config, num_labels=num_labels, with_pooler="pooler.weight" in state,
                                with_qa="qa_outputs.weight" in state)
    if head == "classify" and not (num_labels and cfg.with_pooler):
        raise ValueError("task: classify needs a BertForSequenceClassification checkpoint; this one has no classifier")
    if head == "qa" and not cfg.with_qa:
        raise ValueError("task: qa needs a BertForQuestionAnswering checkpoint; this one has no qa_outputs weights")
    with torch.device("meta"):
        model = PackedBert(cfg, head=head, normalize=normalize, **modules)
    model.load_state_dict(state, strict=True, assign=True)
    return model


def label_names(hf_config: Any, num_labels: int) -> list[str]:
    id2label = {int(k): str(v) for k, v in (getattr(hf_config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]


def weights_sha256(model_dir: Path) -> str:
    """One digest over the checkpoint's weight files (engine cache keys)."""
    import hashlib

    from torchserve_accel.backends.engine_cache import file_sha256

    model_dir = Path(model_dir)
    names = sorted(p.name for p in model_dir.iterdir()
                   if p.name.endswith(".safetensors") or p.name in ("model.safetensors.index.json", "pytorch_model.bin"))
    if not names:
        raise FileNotFoundError(f"no weights in {model_dir}")
    return hashlib.sha256("".join(f"{n}:{file_sha256(model_dir / n)}" for n in names).encode()).hexdigest()
