"""BERT engines: what turns a tokenized batch into the head's output, in one registry.

    packed     PackedBert on packed tokens: varlen attention, Triton epilogues (and the fused FFN GEMM on sm90+ when it
               times faster), one CUDA graph per packed-token bucket for small chunks; on a CPU worker the same code,
               unfused, with padded SDPA
    inductor   the same encoder under ``torch.compile`` (Inductor fuses the epilogues); one padded length per chunk
    tensorrt   PackedBert's weights exported to ONNX on padded (B, L) batches and built by TensorRT
               (backends/tensorrt.py); classify and embed only

An engine is ``engine(tokenized) -> (N, out)`` float32 on the CPU ((tokens, 2) for the qa head): one host-to-device
copy and one device-to-host copy per batch; ``engine.description`` says what was chosen and why.
"""

from __future__ import annotations

import io
import logging
from dataclasses import replace
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from torchserve_accel.backends import tensorrt
from torchserve_accel.backends.cuda_graphs import GraphSet
from torchserve_accel.backends.engine_cache import EngineCache, default_cache_root, software_fingerprint
from torchserve_accel.backends.registry import Backend, Registry, always_available
from torchserve_accel.bert import fp8
from torchserve_accel.bert.attention import PaddedSDPAttention, dense_attention, select_attention
from torchserve_accel.bert.checkpoint import load_packed_bert, weights_sha256
from torchserve_accel.bert.encoder import EncoderConfig, PackedBert
from torchserve_accel.bert.ops import TorchOps, select_ops
from torchserve_accel.bert.options import BertOptions
from torchserve_accel.bert.packing import (
    NUM_TOKEN_FIELDS, empty_segment, pack_chunks, plan_chunks, token_bucket, view_segment,
)
from torchserve_accel.bert.tokenize import BatchTokenizer, Tokenized
from torchserve_accel.serving.device import compute_dtype

log = logging.getLogger(__name__)


def graph_buckets(graph_max_tokens: int) -> list[int]:
    """Every token bucket ``plan_chunks(graph_max_tokens=...)`` lays out for a CUDA graph."""
    buckets, n = [], 1
    while token_bucket(n) <= graph_max_tokens:
        buckets.append(token_bucket(n))
        n = buckets[-1] + 1
    return buckets


class PackedEngine:
    """The packed encoder: chunks planned and packed on the host, then per chunk a graph replay or a forward."""

    def __init__(self, name: str, model: PackedBert, forward: Callable, options: BertOptions, device: torch.device,
                 max_length: int, pad_token_id: int, description: dict[str, str]):
        self.name, self.model, self.forward, self.options = name, model, forward, options
        self.device, self.max_length, self.pad_token_id = torch.device(device), max_length, pad_token_id
        self.config: EncoderConfig = model.cfg
        self.description = description
        graphed = options.cuda_graphs and self.device.type == "cuda"
        self.graphs = GraphSet(self._graph_forward, self.device, log=log.info) if graphed else None

    def _graph_forward(self, segment: torch.Tensor) -> torch.Tensor:
        slots = self.options.max_batch_sequences
        num_tokens = (segment.numel() - 2 * slots - 1) // NUM_TOKEN_FIELDS
        return self.forward(view_segment(segment, num_tokens, slots, self.max_length))

    def capture(self, num_tokens: int) -> None:
        """Capture the graph for chunks laid out at ``num_tokens`` tokens x ``max_batch_sequences`` slots."""
        segment = empty_segment(num_tokens, self.options.max_batch_sequences, self.max_length, self.pad_token_id)
        self.graphs.capture(num_tokens, segment.to(self.device))

    def replay(self, segment: torch.Tensor, num_tokens: int) -> torch.Tensor:
        """The graph for ``num_tokens`` (captured on first use) run on a device ``segment`` laid out at that size; its
        static output, which the next replay overwrites."""
        if num_tokens not in self.graphs:
            self.capture(num_tokens)
        return self.graphs.replay(num_tokens, segment)

    def capture_all(self) -> None:
        """Every bucket's graph, the largest first, so smaller graphs reuse its pool memory."""
        for num_tokens in sorted(graph_buckets(self.options.graph_max_tokens), reverse=True):
            if num_tokens not in self.graphs:
                self.capture(num_tokens)

    @torch.inference_mode()
    def __call__(self, tokenized: Tokenized) -> torch.Tensor:
        """Tokenized texts -> (N, out) float32 CPU tensor, or (tokens, 2) for the qa head. One H2D copy, one D2H
        copy; no other host sync."""
        options = self.options
        chunks = plan_chunks(
            tokenized.lengths,
            options.max_batch_sequences,
            options.max_batch_tokens,
            graph_max_tokens=options.graph_max_tokens if self.graphs is not None else 0,
            graph_max_seqlen=self.max_length,
            # compiled: one padded length, so no recompiles (varlen's max_seqlen only sizes its grid)
            fixed_max_seqlen=self.max_length if self.name == "inductor" else None,
        )
        host = pack_chunks(tokenized.ids, tokenized.type_ids, chunks, self.pad_token_id,
                           pin_memory=self.device.type == "cuda")
        packed = host.to(self.device, non_blocking=True)
        outputs, per_token = [], self.model.head == "qa"
        for chunk in chunks:
            segment = packed[chunk.offset : chunk.offset + chunk.size]
            rows = chunk.real_tokens if per_token else chunk.stop - chunk.start
            if chunk.graphed:
                outputs.append(self.replay(segment, chunk.num_tokens)[:rows].clone())
            else:
                batch = view_segment(segment, chunk.num_tokens, chunk.seq_slots, chunk.max_seqlen, chunk.uniform)
                outputs.append(self.forward(batch)[:rows])
        return torch.cat(outputs).cpu()  # the batch's one sync


def _packed(model_dir: Path, options: BertOptions, device: torch.device, tokenizer: BatchTokenizer, head: str,
            compiled: bool = False) -> PackedEngine:
    fp8_asked = options.precision == "fp8"
    if fp8_asked and (reason := fp8.unavailable_reason(device)):
        raise ValueError(f"precision: fp8 cannot run here: {reason}")
    dtype = torch.bfloat16 if fp8_asked else compute_dtype(options.precision, device)
    # FP8 starts from fp32 weights: the calibration's reference and GPTQ's input
    model, _ = load_packed_bert(model_dir, head, device, torch.float32 if fp8_asked else dtype)
    max_length = tokenizer.max_length
    fp8_summary = to_fp8(model, model_dir, options, tokenizer) if fp8_asked else None  # model now bf16 + FP8 GEMMs
    model.attention, attention = select_attention(options.attention, device, dtype, model.cfg.head_dim, max_length)
    model.ops, fusion = select_ops(options.fusion, device, compiled=compiled)
    if fp8_summary is not None:
        fusion = f"{fusion}; FFN: cuBLAS/FP8 GEMMs (the fused fp16 FFN GEMM is not used with fp8)"
    elif model.ops.name == "triton":
        from torchserve_accel.bert.triton_gemm import pick_ffn_ops

        with torch.inference_mode():
            model.ops, gemm = pick_ffn_ops(model.layers[0].ffn_in, min(options.max_batch_tokens, 16384),
                                           options.fused_ffn_gemm)
        fusion = f"{fusion}; FFN: {gemm}"
    elif options.fused_ffn_gemm == "on":
        raise ValueError(f"fused_ffn_gemm: on needs the Triton fusion, but fusion is {fusion}")
    forward = torch.compile(model, dynamic=True) if compiled else model  # the one compile call site
    if not options.cuda_graphs:
        graphs = "off (config)"
    elif device.type != "cuda":
        graphs = f"off: no CUDA graphs on {device}"
    else:
        graphs = f"on for chunks up to {options.graph_max_tokens} tokens ({options.max_batch_sequences} slots)"
    description = {"dtype": str(dtype).removeprefix("torch."), "attention": attention, "fusion": fusion,
                   "cuda_graphs": graphs}
    if fp8_summary is not None:
        description["fp8"] = fp8_summary
    engine = PackedEngine("inductor" if compiled else "packed", model, forward, options, device, max_length,
                          tokenizer.pad_token_id, description)
    if engine.graphs is not None and options.capture_at_start:
        with torch.inference_mode():
            engine.capture_all()
    return engine


# ---------------------------------------------------------------------------------------------- FP8
# The bundled set: sentences and stop-word runs in 73 languages, then short texts (their first 1-5 words): FP8's
# error is largest on short texts, and a choice calibrated without them missed the accuracy bounds on a real
# checkpoint (benchmarks/NOTES.md).
BUNDLED_CALIBRATION = (Path(__file__).with_name("fp8_calibration.txt"),
                       Path(__file__).with_name("fp8_calibration_short.txt"))


def calibration_texts(model_dir: Path, options: BertOptions) -> tuple[list[str], list[str]]:
    """(calibration texts, held-out gate texts): the lines of ``fp8_calibration`` (in the archive) or of the
    bundled set, alternately."""
    paths = (Path(model_dir) / options.fp8_calibration,) if options.fp8_calibration else BUNDLED_CALIBRATION
    texts = []
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"handler.fp8_calibration: no file {path}")
        texts += [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    if len(texts) < 16:
        raise ValueError(f"handler.fp8_calibration: {paths[0]} has {len(texts)} texts; FP8 calibration needs at "
                         "least 16")
    return texts[0::2], texts[1::2]


def to_fp8(model: PackedBert, model_dir: Path, options: BertOptions, tokenizer: BatchTokenizer,
           texts: tuple[list[str], list[str]] | None = None) -> str:
    """An fp32 ``model`` -> bf16 with FP8 GEMMs where the calibration texts allow (bert/fp8.py: hessians, GPTQ,
    choice by sensitivity, gate on held-out texts); returns what was chosen, in one line. Raises when the gate
    fails and ``fp8_on_gate_failure`` is ``refuse``."""
    calibration, gate = texts or calibration_texts(model_dir, options)
    head, attention, ops = model.head, model.attention, model.ops
    model.head, model.attention, model.ops = "embed_mean", PaddedSDPAttention(), TorchOps()
    device = next(model.parameters()).device
    probe = PackedEngine("packed", model, model, replace(options, cuda_graphs=False), device, tokenizer.max_length,
                         tokenizer.pad_token_id, {})
    with torch.inference_mode():
        cal_tokens, gate_tokens = tokenizer(calibration), tokenizer(gate)
        reference, gate_reference = probe(cal_tokens), probe(gate_tokens)  # fp32
        hessians = fp8.hessians(model.layers, lambda: probe(cal_tokens))
        plain = {(i, name): getattr(layer, name) for i, layer in enumerate(model.layers) for name in fp8.GEMMS}
        quantized = {key: fp8.Fp8Linear(*fp8.gptq_fp8(linear.weight, hessians.pop(key)), linear.bias)
                     for key, linear in plain.items()}
        # in place (``plain`` too), and before any Fp8Linear is placed: .to(dtype) would convert its e4m3 buffers
        model.to(torch.bfloat16)
        if device.type == "cuda":
            model.attention, _ = select_attention(options.attention, device, torch.bfloat16, model.cfg.head_dim,
                                                  tokenizer.max_length)
            model.ops, _ = select_ops(options.fusion, device, compiled=False)
        # chosen against bounds with half the allowed error, so the held-out texts have room
        margin = fp8.CALIBRATION_MARGIN
        choice = fp8.choose_gemms(model.layers, quantized, plain, lambda: probe(cal_tokens), reference,
                                  1 - (1 - options.fp8_mean_cosine) * margin, 1 - (1 - options.fp8_min_cosine) * margin)
        held_out = fp8.agreement(gate_reference, probe(gate_tokens))
    model.head, model.attention, model.ops = head, attention, ops
    summary = choice.summary(len(plain))
    share = f"{fp8.fp8_flop_share(model.cfg, choice.fp8):.0%} of the GEMM work"
    if held_out.within(options.fp8_mean_cosine, options.fp8_min_cosine) and choice.fp8:
        return f"{summary}; {share}; gate on {len(gate)} held-out texts passed: {held_out}"
    why = (f"the gate on {len(gate)} held-out texts failed: {held_out} (bounds mean {options.fp8_mean_cosine}, "
           f"min {options.fp8_min_cosine})" if choice.fp8 else "no GEMM keeps the calibration texts within the bounds")
    if options.fp8_on_gate_failure == "refuse":
        raise ValueError(f"precision: fp8 refused: {why} ({summary})")
    fp8.place(model.layers, [], quantized, plain)
    log.warning("precision: fp8 fell back to bf16 GEMMs: %s", why)
    return f"fell back to bf16 GEMMs: {why}"


def _inductor(*args, **kwargs) -> PackedEngine:
    return _packed(*args, **kwargs, compiled=True)


# ---------------------------------------------------------------------------------------------- TensorRT
ONNX_INPUTS = ("input_ids", "token_type_ids", "attention_mask")
ONNX_OUTPUT = "output"


class PaddedBertForExport(nn.Module):
    """``PackedBert``'s weights and layer code on a padded (B, L) batch with an additive key mask."""

    def __init__(self, model: PackedBert):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        """int32 (B, L) x3 -> (B, labels) probabilities | (B, H) embeddings | (B, L, H) hidden."""
        m = self.model
        positions = torch.arange(input_ids.shape[1], dtype=torch.int32, device=input_ids.device)
        x = m.embeddings(input_ids, positions.unsqueeze(0).expand_as(input_ids), token_type_ids)
        mask = attention_mask.to(x.dtype)
        additive = (1.0 - mask)[:, None, None, :] * -10000.0  # finite: stays exact in fp16 engines
        for layer in m.layers:
            x, _ = layer(x, dense_attention, additive, TorchOps)
        if m.head == "hidden":
            return x
        if m.head == "embed_mean":
            pooled = (x.float() * mask[..., None].float()).sum(1) / mask.float().sum(1, keepdim=True).clamp(min=1)
        else:
            pooled = x[:, 0]
        if m.head == "classify":
            return torch.softmax(m.classifier(torch.tanh(m.pooler(pooled))).float(), dim=-1)
        pooled = pooled.float()
        return nn.functional.normalize(pooled, dim=-1) if m.normalize else pooled


def export_onnx(model: PackedBert, opset: int = 17) -> bytes:
    """Export with dynamic batch and length (the TorchScript-based exporter: needs no onnxscript)."""
    wrapper = PaddedBertForExport(model).eval()
    device = next(model.parameters()).device
    example = torch.ones(2, 8, dtype=torch.int32, device=device)
    axes = {name: {0: "batch", 1: "length"} for name in ONNX_INPUTS}
    axes[ONNX_OUTPUT] = {0: "batch", 1: "length"} if model.head == "hidden" else {0: "batch"}
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(wrapper, (example, torch.zeros_like(example), example), buffer,
                          input_names=list(ONNX_INPUTS), output_names=[ONNX_OUTPUT], dynamic_axes=axes,
                          opset_version=opset, dynamo=False)
    return buffer.getvalue()


def pad_batch(ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], pad_token_id: int, multiple: int = 8):
    """Host (3, B, L) int32 (ids, type ids, mask), L = the longest rounded up to ``multiple``."""
    length = -(-max(len(i) for i in ids) // multiple) * multiple
    out = np.zeros((3, len(ids), length), dtype=np.int32)
    out[0] = pad_token_id
    for row, (i, t) in enumerate(zip(ids, type_ids)):
        out[0, row, : len(i)], out[1, row, : len(t)], out[2, row, : len(i)] = i, t, 1
    return torch.from_numpy(out)


class PaddedTensorRTEngine:
    """A TensorRT engine on padded chunks of at most ``max_batch_sequences`` texts, padded to their longest."""

    name = "tensorrt"

    def __init__(self, engine: tensorrt.TensorRTEngine, config: EncoderConfig, max_batch: int, pad_token_id: int,
                 description: dict[str, str]):
        self.engine, self.config, self.max_batch, self.pad_token_id = engine, config, max_batch, pad_token_id
        self.description = description

    @torch.inference_mode()
    def __call__(self, tokenized: Tokenized) -> torch.Tensor:
        outputs = []
        for start in range(0, len(tokenized.ids), self.max_batch):
            stop = start + self.max_batch
            host = pad_batch(tokenized.ids[start:stop], tokenized.type_ids[start:stop], self.pad_token_id)
            ids, types, mask = host.pin_memory().to(self.engine.device, non_blocking=True)
            outputs.append(self.engine(dict(zip(ONNX_INPUTS, (ids, types, mask))))[ONNX_OUTPUT])
        return torch.cat(outputs).cpu()


def _tensorrt(model_dir: Path, options: BertOptions, device: torch.device, tokenizer: BatchTokenizer,
              head: str) -> PaddedTensorRTEngine:
    model, _ = load_packed_bert(model_dir, head, "cpu", torch.float32)
    dtype = compute_dtype(options.precision, device)
    max_batch, max_length = options.max_batch_sequences, tokenizer.max_length
    opt = (min(64, max_batch), min(128, max_length))
    profile = {name: ((1, 1), opt, (max_batch, max_length)) for name in ONNX_INPUTS}
    root = Path(options.engine_cache_dir) if options.engine_cache_dir else default_cache_root()
    cache = EngineCache(root, {**software_fingerprint(device), "weights": weights_sha256(model_dir), "head": head,
                               "profile": repr(profile), "dtype": str(dtype)})
    plan = tensorrt.cached_plan(cache, lambda: export_onnx(model), profile, dtype, log.info)
    description = {"dtype": str(dtype).removeprefix("torch."), "engine": f"TensorRT, padded batches ({cache.dir})"}
    engine = tensorrt.TensorRTEngine(plan, device)
    return PaddedTensorRTEngine(engine, model.cfg, max_batch, tokenizer.pad_token_id, description)


REGISTRY = Registry(
    [
        Backend("packed", _packed, always_available, summary="padding-free encoder, Triton epilogues, CUDA graphs"),
        Backend("inductor", _inductor, always_available, summary="the packed encoder under torch.compile"),
        Backend("tensorrt", _tensorrt, tensorrt.unavailable_reason, summary="TensorRT engine on padded batches"),
    ],
    auto=("packed",),
)
