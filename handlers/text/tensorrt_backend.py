"""Optional TensorRT backend for the BERT encoder: ONNX export of our weights, then a TensorRT engine.

Written to TensorRT's documented Python API (``Builder``, ``OnnxParser``, an optimization profile over
(batch, length), ``IExecutionContext.execute_async_v3``). Imported only when ``handler.backend: tensorrt``;
``tensorrt`` is imported inside the functions that need it, so a missing install fails there, loudly.

Unlike the torch backend this one runs *padded* batches (B, L): TensorRT's ONNX path has no varlen attention.
Padding is to the chunk's longest text, rounded up to a multiple of 8.

    export_onnx(model, path)                 PackedBert -> ONNX (inputs int32 (B, L): input_ids, token_type_ids,
                                             attention_mask; output "output": what the head returns)
    build_engine(onnx_path, ...) -> bytes    FP16 engine for batch 1..max_batch, length 1..max_length
    TensorRTEncoder(engine_bytes, device)    runs it on torch tensors, on the current CUDA stream
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from handlers.text.attention import dense_attention
from handlers.text.encoder import PackedBert
from handlers.text.fused_ops import TorchOps

INPUT_NAMES = ("input_ids", "token_type_ids", "attention_mask")


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
            x = layer(x, dense_attention, additive, TorchOps)
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


def export_onnx(model: PackedBert, path: Path, opset: int = 17) -> Path:
    """Export with dynamic batch and length (TorchScript-based exporter: needs no onnxscript)."""
    wrapper = PaddedBertForExport(model).eval()
    device = next(model.parameters()).device
    example = torch.ones(2, 8, dtype=torch.int32, device=device)
    axes = {name: {0: "batch", 1: "length"} for name in INPUT_NAMES}
    axes["output"] = {0: "batch", 1: "length"} if model.head == "hidden" else {0: "batch"}
    with torch.no_grad():
        torch.onnx.export(
            wrapper,
            (example, torch.zeros_like(example), example),
            str(path),
            input_names=list(INPUT_NAMES),
            output_names=["output"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)


def build_engine(
    onnx_path: Path, max_batch: int, max_length: int, opt_batch: int = 64, opt_length: int = 128, fp16: bool = True
) -> bytes:
    """Parse the ONNX file and build a serialized engine with one optimization profile."""
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # TensorRT 8.x; implicit in 10.x
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    opt = (min(opt_batch, max_batch), min(opt_length, max_length))
    for name in INPUT_NAMES:
        profile.set_shape(name, (1, 1), opt, (max_batch, max_length))
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(serialized)


class TensorRTEncoder:
    def __init__(self, engine: bytes, device: torch.device):
        import tensorrt as trt

        self.device = torch.device(device)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(engine)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()

    def __call__(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor, attention_mask: torch.Tensor):
        """int32 (B, L) CUDA tensors -> float32 output, enqueued on the current stream (no sync)."""
        for name, tensor in zip(INPUT_NAMES, (input_ids, token_type_ids, attention_mask)):
            tensor = tensor.contiguous()
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        output = torch.empty(tuple(self.context.get_tensor_shape("output")), dtype=torch.float32, device=self.device)
        self.context.set_tensor_address("output", output.data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return output


def pad_batch(ids: Sequence[Sequence[int]], type_ids: Sequence[Sequence[int]], pad_token_id: int, multiple: int = 8):
    """Host (B, L) int32 arrays (ids, type ids, mask), L = longest rounded up to ``multiple``."""
    length = -(-max(len(i) for i in ids) // multiple) * multiple
    out = np.zeros((3, len(ids), length), dtype=np.int32)
    out[0] = pad_token_id
    for row, (i, t) in enumerate(zip(ids, type_ids)):
        out[0, row, : len(i)], out[1, row, : len(t)], out[2, row, : len(i)] = i, t, 1
    return torch.from_numpy(out)


class TensorRTRunner:
    """Same surface as ``BertRunner`` (``run``, ``labels``, ``description``) over a TensorRT engine."""

    def __init__(self, encoder: TensorRTEncoder, tokenizer, labels, max_batch: int, description: dict):
        self.encoder, self.tokenizer, self.labels = encoder, tokenizer, labels
        self.max_batch, self.description = max_batch, description

    @torch.inference_mode()
    def run(self, texts: Sequence[str]):
        tok = self.tokenizer(texts)
        outputs = []
        for start in range(0, len(texts), self.max_batch):
            stop = start + self.max_batch
            host = pad_batch(tok.ids[start:stop], tok.type_ids[start:stop], self.tokenizer.pad_token_id)
            ids, types, mask = host.pin_memory().to(self.encoder.device, non_blocking=True)
            outputs.append(self.encoder(ids, types, mask))
        return torch.cat(outputs).cpu(), tok.truncated


def build_tensorrt_runner(model_dir: Path, options, device: torch.device, head: str, log: Callable[[str], None]):
    """Load (or export + build + cache) the engine for ``model_dir``; requires CUDA and ``tensorrt``."""
    from handlers.text.bert import label_names, load_packed_bert
    from handlers.text.tokenize import BatchTokenizer

    if torch.device(device).type != "cuda":
        raise RuntimeError(f"backend: tensorrt needs a CUDA device, got {device}")
    try:
        import tensorrt  # noqa: F401
    except ImportError as exc:
        raise RuntimeError(f"backend: tensorrt asked for, but tensorrt does not import: {exc}") from exc
    model, hf_config = load_packed_bert(model_dir, head, "cpu", torch.float32, normalize=options.normalize)
    max_length = options.max_length or model.cfg.max_position
    engine_path = Path(options.tensorrt_engine or Path(model_dir) / "bert.engine")
    if engine_path.exists():
        log(f"loading TensorRT engine {engine_path}")
        engine = engine_path.read_bytes()
    else:
        log(f"building TensorRT engine (batch <= {options.max_batch_sequences}, length <= {max_length}); takes minutes")
        with tempfile.TemporaryDirectory() as tmp:
            onnx_path = export_onnx(model, Path(tmp) / "bert.onnx")
            engine = build_engine(onnx_path, options.max_batch_sequences, max_length)
        engine_path.write_bytes(engine)
    labels = label_names(hf_config, model.cfg.num_labels) if head == "classify" else []
    description = {"device": str(device), "backend": "tensorrt", "engine": str(engine_path), "head": head}
    tokenizer = BatchTokenizer.from_dir(Path(model_dir), max_length)
    return TensorRTRunner(TensorRTEncoder(engine, device), tokenizer, labels, options.max_batch_sequences, description)
