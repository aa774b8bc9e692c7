"""The BERT handler's options: the ``handler:`` section of model-config.yaml, read once at ``initialize``."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from handlers.config import ConfigError


@dataclass(frozen=True)
class BertOptions:
    # What to answer: class probabilities (needs a classifier in the checkpoint), sentence embeddings, or
    # extractive answers to questions about a context (needs a BertForQuestionAnswering checkpoint).
    task: Literal["classify", "embed", "qa"] = "classify"
    pooling: Literal["cls", "mean"] = "cls"  # embed: [CLS] hidden state or mean over tokens
    normalize: bool = False  # embed: L2-normalize
    max_answer_tokens: int = 30  # qa: longest answer span, in tokens
    doc_stride: int = 128  # qa: a context longer than one row runs in windows overlapping by this many tokens
    max_windows: int = 16  # qa: windows per pair at most; the rest of a longer context is dropped (truncated: true)
    # Tokens per text after truncation ([CLS]/[SEP] included); 0 = the model's max_position_embeddings.
    max_length: int = 0
    # Request limits (a request over them gets a 4xx of its own).
    max_items_per_request: int = 64
    max_text_chars: int = 100_000
    # One encoder call runs at most this many sequences / packed tokens; bigger batches run in chunks.
    max_batch_sequences: int = 256
    max_batch_tokens: int = 32768
    # Execution.
    dtype: Literal["auto", "float16", "bfloat16", "float32"] = "auto"  # auto: fp16 on GPU, fp32 on CPU
    attention: Literal["auto", "varlen", "sdpa"] = "auto"
    fusion: Literal["auto", "triton", "torch"] = "auto"
    # With Triton fusion on sm90+: the FFN's first GEMM with bias+GELU in its epilogue (triton_gemm.py).
    # auto: timed against cuBLAS + the bias+GELU kernel at load, the faster one is kept.
    fused_ffn_gemm: Literal["auto", "on", "off"] = "auto"
    compile: bool = False  # torch.compile the encoder (Inductor fuses the epilogues)
    cuda_graphs: bool = True  # GPU only: one graph per packed-token bucket, for chunks up to graph_max_tokens
    graph_max_tokens: int = 8192  # larger chunks are GPU-bound: they run eagerly, with no bucket padding
    capture_at_start: bool = True  # capture every bucket's graph in initialize (else on first use)
    backend: Literal["torch", "tensorrt"] = "torch"
    tensorrt_engine: str = ""  # where to cache the serialized engine ("" = model_dir/bert.engine)

    def validate(self) -> None:
        if self.max_length < 0:
            raise ConfigError("handler.max_length must be >= 0")
        if self.doc_stride < 0:
            raise ConfigError("handler.doc_stride must be >= 0")
        for name in ("max_answer_tokens", "max_windows", "max_items_per_request", "max_text_chars", "max_batch_sequences", "max_batch_tokens", "graph_max_tokens"):
            if getattr(self, name) < 1:
                raise ConfigError(f"handler.{name} must be >= 1")
        if self.task != "embed" and (self.pooling != "cls" or self.normalize):
            raise ConfigError("handler.pooling/normalize apply to task: embed only")
        if self.task == "qa" and self.backend != "torch":
            raise ConfigError("handler.task: qa runs on backend: torch only (the TensorRT engine has no span head)")
