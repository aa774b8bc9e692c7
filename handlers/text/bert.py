"""BERT in HuggingFace format -> a ready ``BertRunner``; and packaging a checkpoint for the model archive.

``build_runner(model_dir, options, device)`` reads config.json + safetensors + tokenizer files from ``model_dir``
(the archive root: ``--extra-files`` are flattened there), remaps the weights into ``PackedBert``, picks the
attention backend and epilogue kernels once, and compiles / captures CUDA graphs if configured.
``BertRunner.run(texts)`` is the hot path: tokenize all texts at once, pack into chunks on the host, one
host-to-device copy, the encoder per chunk (graph replay or eager), one device-to-host copy at the end.
``BertRunner.answer(questions, contexts)`` is the same for question answering (pairs in, answer spans out).

``prepare_archive_files(staging_dir, source, log)`` packages a local HF checkpoint dir, or (source None) writes
a BERT-Large-shaped ``BertForSequenceClassification`` with RANDOM weights and a made-up WordPiece vocabulary.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from handlers.common import ArchiveFiles
from handlers.text import qa
from handlers.text.attention import select_attention
from handlers.text.encoder import EncoderConfig, PackedBert
from handlers.text.fused_ops import select_ops
from handlers.text.graphs import CudaGraphRunner
from handlers.text.options import BertOptions
from handlers.text.packing import pack_chunks, plan_chunks, token_bucket, view_segment
from handlers.text.remap import hf_to_packed
from handlers.text.tokenize import BatchTokenizer, Tokenized

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


# ----------------------------------------------------------------------------------------------- loading
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
    state = hf_to_packed(read_hf_state_dict(model_dir))
    num_labels = state["classifier.weight"].shape[0] if "classifier.weight" in state else 0
    cfg = EncoderConfig.from_hf(hf_config, num_labels=num_labels, with_pooler="pooler.weight" in state,
                                with_qa="qa_outputs.weight" in state)
    if head == "classify" and not (num_labels and cfg.with_pooler):
        raise ValueError(f"task: classify needs a BertForSequenceClassification checkpoint; {model_dir} has no classifier")
    if head == "qa" and not cfg.with_qa:
        raise ValueError(f"task: qa needs a BertForQuestionAnswering checkpoint; {model_dir} has no qa_outputs weights")
    with torch.device("meta"):
        model = PackedBert(cfg, head=head, normalize=normalize)
    model.load_state_dict(state, strict=True, assign=True)
    return model.to(device=device, dtype=dtype).eval().requires_grad_(False), hf_config


def label_names(hf_config: Any, num_labels: int) -> list[str]:
    id2label = {int(k): str(v) for k, v in (getattr(hf_config, "id2label", None) or {}).items()}
    return [id2label.get(i, f"LABEL_{i}") for i in range(num_labels)]


def graph_buckets(graph_max_tokens: int) -> list[int]:
    """Every token bucket ``plan_chunks(graph_max_tokens=...)`` lays out for a CUDA graph."""
    buckets, n = [], 1
    while token_bucket(n) <= graph_max_tokens:
        buckets.append(token_bucket(n))
        n = buckets[-1] + 1
    return buckets


# ----------------------------------------------------------------------------------------------- running
@dataclass
class BertRunner:
    model: PackedBert
    tokenizer: BatchTokenizer
    options: BertOptions
    device: torch.device
    labels: list[str]
    forward: Callable = None  # the model, or its torch.compile'd version
    graphs: CudaGraphRunner | None = None
    description: dict = field(default_factory=dict)

    def __post_init__(self):
        self.forward = self.forward or self.model
        self.device = torch.device(self.device)

    def run(self, texts: Sequence[str]) -> tuple[torch.Tensor, list[bool]]:
        """texts -> ((N, labels) probabilities or (N, H) embeddings, float32 on CPU; truncated flags)."""
        tokenized = self.tokenizer(texts)
        return self.encode(tokenized), tokenized.truncated

    def answer(self, questions: Sequence[str], contexts: Sequence[str]) -> list:
        """Pairs -> per pair an answer dict (``handlers.text.qa.answers``) or the reason it could not be run."""
        pairs = self.tokenizer.pairs(questions, contexts, self.options.doc_stride, self.options.max_windows)
        logits = self.encode(pairs) if pairs.ids else torch.empty(0, 2)
        return qa.answers(pairs, contexts, logits, self.options.max_answer_tokens)

    @torch.inference_mode()
    def encode(self, tokenized: Tokenized) -> torch.Tensor:
        """Tokenized texts -> (N, out) float32 CPU tensor, or (tokens, 2) for the qa head. One H2D copy, one D2H
        copy; no other host sync."""
        chunks = plan_chunks(
            tokenized.lengths,
            self.options.max_batch_sequences,
            self.options.max_batch_tokens,
            graph_max_tokens=self.options.graph_max_tokens if self.graphs is not None else 0,
            graph_max_seqlen=self.tokenizer.max_length,
            # compiled: one padded length, so no recompiles (varlen's max_seqlen only sizes its grid)
            fixed_max_seqlen=self.tokenizer.max_length if self.options.compile else None,
        )
        on_gpu = self.device.type == "cuda"
        host = pack_chunks(tokenized.ids, tokenized.type_ids, chunks, self.tokenizer.pad_token_id, pin_memory=on_gpu)
        packed = host.to(self.device, non_blocking=True)
        outputs, per_token = [], self.model.head == "qa"
        for chunk in chunks:
            segment = packed[chunk.offset : chunk.offset + chunk.size]
            if chunk.graphed:
                out = self.graphs(segment, chunk.num_tokens)
            else:
                batch = view_segment(segment, chunk.num_tokens, chunk.seq_slots, chunk.max_seqlen, chunk.uniform)
                out = self.forward(batch)
            outputs.append(out[: chunk.real_tokens if per_token else chunk.stop - chunk.start])
        return torch.cat(outputs).cpu()  # the batch's one sync


def build_runner(
    model_dir: Path, options: BertOptions, device: str | torch.device, log: Callable[[str], None] = logger.info
) -> BertRunner:
    """Everything ``initialize`` needs: model + tokenizer from ``model_dir``, backends picked, graphs captured."""
    model_dir, device = Path(model_dir), torch.device(device)
    on_gpu = device.type == "cuda"
    dtype = DTYPES.get(options.dtype) or (torch.float16 if on_gpu else torch.float32)
    head = options.task if options.task in ("classify", "qa") else f"embed_{options.pooling}"
    if options.backend == "tensorrt":
        from handlers.text.tensorrt_backend import build_tensorrt_runner

        return build_tensorrt_runner(model_dir, options, device, head, log)

    model, hf_config = load_packed_bert(model_dir, head, device, dtype, normalize=options.normalize)
    max_length = options.max_length or model.cfg.max_position
    if max_length > model.cfg.max_position:
        raise ValueError(f"max_length={max_length} exceeds max_position_embeddings={model.cfg.max_position}")
    if options.max_batch_tokens < max_length:
        raise ValueError(f"max_batch_tokens={options.max_batch_tokens} must be >= max_length={max_length}")
    tokenizer = BatchTokenizer.from_dir(model_dir, max_length)

    model.attention, attention_reason = select_attention(options.attention, device, dtype, model.cfg.head_dim, max_length)
    model.ops, ops_reason = select_ops(options.fusion, device, compiled=options.compile)
    if model.ops.name == "triton":
        from handlers.text.triton_gemm import pick_ffn_ops

        with torch.inference_mode():
            model.ops, gemm_reason = pick_ffn_ops(model.layers[0].ffn_in, min(options.max_batch_tokens, 16384),
                                                  options.fused_ffn_gemm)
        ops_reason = f"{ops_reason}; FFN: {gemm_reason}"
    elif options.fused_ffn_gemm == "on":
        raise ValueError(f"fused_ffn_gemm: on needs the Triton fusion, but fusion is {ops_reason}")
    forward = torch.compile(model, dynamic=True) if options.compile else model  # the one compile call site
    graphs, graphs_reason = None, "off (config)"
    if options.cuda_graphs and on_gpu:
        graphs = CudaGraphRunner(forward, device, options.max_batch_sequences, max_length, tokenizer.pad_token_id, log)
        graphs_reason = f"on for chunks up to {options.graph_max_tokens} tokens ({options.max_batch_sequences} slots)"
    elif options.cuda_graphs:
        graphs_reason = f"off: no CUDA graphs on {device}"
    labels = label_names(hf_config, model.cfg.num_labels) if head == "classify" else []
    description = {
        "device": str(device),
        "dtype": str(dtype).removeprefix("torch."),
        "attention": attention_reason,
        "fusion": ops_reason,
        "compile": options.compile,
        "cuda_graphs": graphs_reason,
        "max_length": max_length,
        "head": head,
    }
    log(f"BERT encoder ready: {description}")
    runner = BertRunner(model, tokenizer, options, device, labels, forward, graphs, description)
    with torch.inference_mode():
        if graphs is not None and options.capture_at_start:
            graphs.capture_all(graph_buckets(options.graph_max_tokens))
        if head == "qa":  # Triton JIT / compile / first graph before the first request
            runner.answer(["warm up?"], ["warm up."])
        else:
            runner.run(["warm up"])
    return runner


# ----------------------------------------------------------------------------------------------- archive
def make_random_checkpoint(out_dir: Path, seed: int = 0, config_overrides: dict | None = None,
                           task: str = "classify") -> Path:
    """A BERT-Large-shaped ``BertForSequenceClassification`` (``task`` qa: ``BertForQuestionAnswering``) with
    random (seeded) weights, saved in fp16, plus a ``BertTokenizerFast`` over a made-up WordPiece vocabulary; HF
    layout in ``out_dir``."""
    from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification

    from handlers.text.vocab import build_vocab, save_wordpiece_tokenizer

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = build_vocab()
    settings = dict(
        vocab_size=len(vocab),
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
        max_position_embeddings=512,
        type_vocab_size=2,
        id2label={0: "negative", 1: "positive"},
        label2id={"negative": 0, "positive": 1},
    )
    settings.update(config_overrides or {})
    config = BertConfig(**settings)
    architecture = BertForQuestionAnswering if task == "qa" else BertForSequenceClassification
    config.architectures = [architecture.__name__]
    torch.manual_seed(seed)
    model = architecture(config).eval().half()
    model.save_pretrained(str(out_dir))
    save_wordpiece_tokenizer(out_dir, vocab, model_max_length=config.max_position_embeddings)
    (out_dir / "RANDOM_WEIGHTS.txt").write_text(
        f"Random weights (seed {seed}), made by handlers.text.bert.make_random_checkpoint; predictions are meaningless.\n"
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
    section) says ``task: qa``). All files land flat in the archive root, where ``build_runner`` reads them.
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
