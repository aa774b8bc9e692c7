"""ResNet engines behind one small interface, in one registry.

An ``Engine`` maps a normalized batch ``(N, 3, H, W)`` in its input dtype and layout to float32 logits
``(N, classes)``; it pads N up to the next of its ``buckets`` so nothing recompiles while serving.

    eager     the model as it is, channels_last in the worker's precision (fp32 on CPU): the reference
    cudnn     BatchNorm folded, every conv+bias(+residual)+ReLU one cuDNN fused kernel (cudnn_fused.py); compiles
              nothing, so a worker starts in seconds
    inductor  BatchNorm folded, ``torch.compile`` with freezing; kernels kept in the engine cache
    tensorrt  ONNX -> TensorRT engine with one optimization profile over the buckets (backends/tensorrt.py)

On a GPU, cudnn and inductor replay one CUDA graph per bucket (backends/cuda_graphs.py). ``REGISTRY.choose``
resolves ``auto`` to cudnn on a GPU worker and eager on a CPU worker; TensorRT runs when asked for by name (auto
takes only engines that have run and been measured on a GPU).
"""

from __future__ import annotations

import bisect
import contextlib
import io
import logging
import time
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from torchserve_accel.backends import tensorrt
from torchserve_accel.backends.cuda_graphs import GraphSet
from torchserve_accel.backends.engine_cache import EngineCache
from torchserve_accel.backends.registry import Backend, Registry, needs_gpu
from torchserve_accel.resnet.cudnn_fused import FusedResNet
from torchserve_accel.resnet.model import fold_batchnorm

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class EngineSpec:
    backend: str
    device: torch.device
    dtype: torch.dtype
    buckets: tuple[int, ...]
    image_size: int = 224
    compile_mode: str = "default"
    freezing: bool = True
    cuda_graphs: bool = True
    conv_1x1_as_mm: bool = False
    dynamic_batch: bool = False  # one compiled graph for every bucket (faster start), CUDA graph per bucket


class Engine:
    """Base: splits a batch at the largest bucket, runs each chunk, returns float32 logits."""

    name = "engine"

    def __init__(self, spec: EngineSpec):
        self.spec = spec
        self.buckets = tuple(sorted(spec.buckets))
        self.max_batch = self.buckets[-1]

    def bucket_for(self, n: int) -> int:
        i = bisect.bisect_left(self.buckets, n)
        if i == len(self.buckets):
            raise ValueError(f"batch of {n} is over this engine's largest bucket {self.max_batch}")
        return self.buckets[i]

    def input_like(self, n: int) -> torch.Tensor:
        size = self.spec.image_size
        x = torch.empty((n, 3, size, size), device=self.spec.device, dtype=self.spec.dtype)
        return x.contiguous(memory_format=torch.channels_last)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) normalized input -> (N, classes) float32 logits. N may exceed the largest bucket."""
        outputs = [self._run_chunk(chunk) for chunk in x.split(self.max_batch)]
        return outputs[0] if len(outputs) == 1 else torch.cat(outputs)

    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def warmup(self) -> None:
        for bucket in self.buckets:
            self(self.input_like(bucket).normal_())
        if self.spec.device.type == "cuda":
            torch.cuda.synchronize(self.spec.device)


def _prepare(model: nn.Module, spec: EngineSpec) -> nn.Module:
    memory_format = torch.channels_last if spec.device.type == "cuda" else torch.contiguous_format
    model = model.to(device=spec.device, dtype=spec.dtype, memory_format=memory_format).eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


class EagerEngine(Engine):
    name = "eager"

    def __init__(self, model: nn.Module, spec: EngineSpec):
        super().__init__(spec)
        self.model = _prepare(model, spec)

    @torch.inference_mode()
    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        # Eager needs no padding: every batch size runs without recompilation.
        return self.model(x.to(self.spec.dtype)).float()


class GraphedEngine(Engine):
    """Runs ``forward_fn`` on batches padded to a bucket: one CUDA graph per bucket on a GPU, plain calls else."""

    def __init__(self, spec: EngineSpec, forward_fn: Callable[[torch.Tensor], torch.Tensor]):
        super().__init__(spec)
        self.forward_fn = forward_fn
        graphed = spec.cuda_graphs and spec.device.type == "cuda"
        # Two runs before each capture: the first compiles or lets cuDNN autotune the shape, the second runs tuned.
        self.graphs = GraphSet(self._forward_float, spec.device, warmup_runs=2) if graphed else None

    def _forward_float(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_fn(x).float()

    def _capture(self, bucket: int) -> None:
        static_input = self.input_like(bucket).normal_()
        if self.spec.dynamic_batch and bucket > 1:
            torch._dynamo.mark_dynamic(static_input, 0)
        self.graphs.capture(bucket, static_input)

    @torch.inference_mode()
    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        bucket = self.bucket_for(n)
        if self.graphs is None:
            padded = x if n == bucket else torch.cat([x, x.new_zeros((bucket - n, *x.shape[1:]))])
            return self._forward_float(padded.to(self.spec.dtype))[:n]
        if bucket not in self.graphs:
            self._capture(bucket)
        # Rows past n keep an earlier batch's data: samples are independent in eval mode, and they are dropped.
        return self.graphs.replay(bucket, x)[:n].clone()

    def warmup(self) -> None:
        for bucket in self.buckets:
            t0 = time.perf_counter()
            if self.graphs is not None:
                self._capture(bucket)
            else:
                self(self.input_like(bucket).normal_())
            log.info("%s engine: batch bucket %d ready in %.1f s", self.name, bucket, time.perf_counter() - t0)


class CudnnFusedEngine(GraphedEngine):
    """BatchNorm folded; every conv+bias(+residual)+ReLU one cuDNN fused kernel; a CUDA graph per bucket."""

    name = "cudnn"

    def __init__(self, model: nn.Module, spec: EngineSpec):
        fused = FusedResNet(fold_batchnorm(model), fused=spec.device.type == "cuda")
        self.model = _prepare(fused, spec)
        super().__init__(spec, self.model)


class InductorEngine(GraphedEngine):
    """BatchNorm folded, ``torch.compile`` (freezing: weights become constants), a CUDA graph per bucket."""

    name = "inductor"

    def __init__(self, model: nn.Module, spec: EngineSpec):
        import torch._inductor.config as inductor_config

        self.model = _prepare(fold_batchnorm(model), spec)
        inductor_config.freezing = spec.freezing
        inductor_config.conv_1x1_as_mm = spec.conv_1x1_as_mm
        compiled = torch.compile(self.model, mode=spec.compile_mode, fullgraph=True,
                                 dynamic=None if spec.dynamic_batch else False)
        super().__init__(spec, compiled)


ONNX_INPUT, ONNX_OUTPUT = "input", "logits"


def export_onnx(model: nn.Module, image_size: int = 224, opset: int = 17) -> bytes:
    """fp32 ONNX graph with a dynamic batch dimension (TensorRT picks reduced-precision kernels itself)."""
    model = fold_batchnorm(model).float().cpu().eval()
    example = torch.randn(2, 3, image_size, image_size)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, input_names=[ONNX_INPUT], output_names=[ONNX_OUTPUT], opset_version=opset,
        dynamic_axes={ONNX_INPUT: {0: "batch"}, ONNX_OUTPUT: {0: "batch"}}, dynamo=False,
    )
    return buffer.getvalue()


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, plan: bytes, spec: EngineSpec):
        super().__init__(spec)
        self.engine = tensorrt.TensorRTEngine(plan, spec.device)

    @torch.inference_mode()
    def _run_chunk(self, x: torch.Tensor) -> torch.Tensor:
        # The engine's input is fp32 NCHW, as exported (TensorRT converts and reorders internally).
        return self.engine({ONNX_INPUT: x.float().contiguous()})[ONNX_OUTPUT]


def _eager(model: nn.Module, spec: EngineSpec, cache: EngineCache | None, progress: Callable) -> Engine:
    engine = EagerEngine(model, spec)
    engine.warmup()
    return engine


def _cudnn(model: nn.Module, spec: EngineSpec, cache: EngineCache | None, progress: Callable) -> Engine:
    engine = CudnnFusedEngine(model, spec)
    engine.warmup()
    return engine


def _inductor(model: nn.Module, spec: EngineSpec, cache: EngineCache | None, progress: Callable) -> Engine:
    with cache.building(progress) if cache else contextlib.nullcontext():
        engine = InductorEngine(model, spec)
        engine.warmup()
    return engine


def _tensorrt(model: nn.Module, spec: EngineSpec, cache: EngineCache | None, progress: Callable) -> Engine:
    size, low, high = spec.image_size, min(spec.buckets), max(spec.buckets)
    profile = {ONNX_INPUT: ((low, 3, size, size), (high, 3, size, size), (high, 3, size, size))}
    plan = tensorrt.cached_plan(cache, lambda: export_onnx(model, size), profile, spec.dtype, progress)
    engine = TensorRTEngine(plan, spec)
    engine.warmup()
    return engine


REGISTRY = Registry(
    [
        Backend("eager", _eager, summary="the model as it is: the reference"),
        Backend("cudnn", _cudnn, needs_gpu, summary="fused cuDNN conv+bias+ReLU kernels, CUDA graphs"),
        Backend("inductor", _inductor, needs_gpu, summary="torch.compile with freezing, CUDA graphs"),
        Backend("tensorrt", _tensorrt, tensorrt.unavailable_reason, summary="TensorRT engine from ONNX"),
    ],
    auto=("cudnn", "eager"),
)
CACHED_BACKENDS = ("inductor", "tensorrt")  # keep compiled artifacts in the engine cache


def build_engine(model: nn.Module, spec: EngineSpec, cache: EngineCache | None = None,
                 progress: Callable[[str], None] = log.info) -> Engine:
    """Build (or load from ``cache``) and warm the engine ``spec.backend`` for ``model``."""
    t0 = time.perf_counter()
    engine = REGISTRY[spec.backend].build(spec.device, model, spec, cache, progress)
    progress(f"{engine.name} engine ready in {time.perf_counter() - t0:.1f} s (buckets {engine.buckets})")
    return engine
