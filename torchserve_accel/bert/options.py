"""BERT's typed options: the ``handler:`` section of archiver_configs/bert_large.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torchserve_accel.serving.options import CudaWait, OptionsError, rename_option


@dataclass(frozen=True)
class BertOptions:
    # What to answer: class probabilities (needs a classifier in the checkpoint), sentence embeddings, or
    # extractive answers to questions about a context (needs a BertForQuestionAnswering checkpoint).
    task: Literal["classify", "embed", "qa"] = "classify"
    pooling: Literal["cls", "mean"] = "cls"  # embed: [CLS] hidden state or mean over tokens
    normalize: bool = False  # embed: L2-normalize (a request's "normalize" overrides it, {"inputs": ...} form)
    max_answer_tokens: int = 30  # qa: longest answer span, in tokens
    doc_stride: int = 128  # qa: a context longer than one row runs in windows overlapping by this many tokens
    max_windows: int = 16  # qa: windows per pair at most; the rest of a longer context is dropped (truncated: true)
    # Tokens per text after truncation ([CLS]/[SEP] included); 0 = the model's max_position_embeddings.
    max_length: int = 0
    # How plain requests are answered (bert/requests.py): native, or hf (HuggingFace pipelines / TEI shapes).
    # KServe v1/v2 requests get their protocol's answer.
    response_format: Literal["native", "hf"] = "native"
    # Request limits (a request over them gets a 4xx of its own).
    max_items_per_request: int = 64
    max_text_chars: int = 100_000
    # One encoder call runs at most this many sequences / packed tokens; bigger batches run in chunks.
    max_batch_sequences: int = 256
    max_batch_tokens: int = 32768
    # Engine: a name in bert.engines.REGISTRY. packed: our padding-free encoder (Triton epilogues, CUDA graphs);
    # inductor: the same encoder under torch.compile; tensorrt: a TensorRT engine on padded batches.
    backend: Literal["auto", "packed", "inductor", "tensorrt"] = "auto"
    # On a GPU; CPU workers run fp32. fp8 (sm89+, opt-in): e4m3 GEMMs where measured accurate enough (bert/fp8.py),
    # bf16 activations; refused on other devices.
    precision: Literal["fp16", "bf16", "fp32", "fp8"] = "fp16"
    # precision: fp8 only. Texts (one per line, a file in the archive; empty: the bundled set) that calibrate
    # the FP8 weights and choose the FP8 GEMMs; every second line is held out for the accuracy gate.
    fp8_calibration: str = ""
    # The bounds FP8 must keep against fp32 (cosine of mean-pooled last hidden states), on the calibration
    # texts when choosing GEMMs and on the held-out texts at the gate.
    fp8_mean_cosine: float = 0.999
    fp8_min_cosine: float = 0.998
    fp8_on_gate_failure: Literal["fallback", "refuse"] = "fallback"  # fallback: bf16 GEMMs, and the reason logged
    attention: Literal["auto", "varlen", "sdpa"] = "auto"
    fusion: Literal["auto", "triton", "torch"] = "auto"
    # With Triton fusion on sm90+: the FFN's first GEMM with bias+GELU in its epilogue (triton_gemm.py).
    # auto: timed against cuBLAS + the bias+GELU kernel at load, the faster one is kept.
    fused_ffn_gemm: Literal["auto", "on", "off"] = "auto"
    cuda_graphs: bool = True  # GPU only: one graph per packed-token bucket, for chunks up to graph_max_tokens
    graph_max_tokens: int = 8192  # larger chunks are GPU-bound: they run eagerly, with no bucket padding
    capture_at_start: bool = True  # capture every bucket's graph in initialize (else on first use)
    cuda_wait: CudaWait = "auto"  # how the worker's threads wait for the GPU (serving/options.py)
    engine_cache_dir: str = ""  # tensorrt; empty: $XDG_CACHE_HOME/torchserve-accel/engines

    @classmethod
    def upgrade(cls, section: dict) -> list[str]:
        """Rename the keys of earlier releases in place (``dtype``, ``compile``, ``backend: torch``)."""
        notes = rename_option(section, "dtype", "precision",
                              {"auto": "fp16", "float16": "fp16", "bfloat16": "bf16", "float32": "fp32"})
        if section.get("backend") == "torch":
            section["backend"] = "packed"
            notes.append("handler.backend: 'torch' is now handler.backend: packed")
        if "compile" in section:
            compiled = section.pop("compile")
            if compiled is True and section.get("backend", "auto") in ("auto", "packed"):
                section["backend"] = "inductor"
            notes.append(f"handler.compile: {compiled!r} is now handler.backend: "
                         f"{'inductor' if compiled is True else 'packed (or auto)'}")
        if "tensorrt_engine" in section:
            section.pop("tensorrt_engine")
            notes.append("handler.tensorrt_engine is ignored: TensorRT engines live in the engine cache "
                         "(handler.engine_cache_dir), keyed by GPU and software versions")
        return notes

    def validate(self) -> None:
        if self.max_length < 0:
            raise OptionsError("handler.max_length must be >= 0")
        if self.doc_stride < 0:
            raise OptionsError("handler.doc_stride must be >= 0")
        for name in ("max_answer_tokens", "max_windows", "max_items_per_request", "max_text_chars",
                     "max_batch_sequences", "max_batch_tokens", "graph_max_tokens"):
            if getattr(self, name) < 1:
                raise OptionsError(f"handler.{name} must be >= 1")
        if self.task != "embed" and (self.pooling != "cls" or self.normalize):
            raise OptionsError("handler.pooling/normalize apply to task: embed only")
        if self.precision == "fp8" and self.backend not in ("auto", "packed"):
            raise OptionsError("handler.precision: fp8 runs on the packed backend only")
        for name in ("fp8_mean_cosine", "fp8_min_cosine"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise OptionsError(f"handler.{name} must be in (0, 1]")
        if self.task == "qa" and self.backend == "tensorrt":
            raise OptionsError("handler.task: qa runs on the packed or inductor backend only (the TensorRT engine "
                               "has no span head)")
