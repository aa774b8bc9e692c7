"""TensorRT backend: ONNX export -> TensorRT fp16 engine with one optimization profile over the batch buckets.

Written against TensorRT's documented Python API (``tensorrt`` 10.x: ``Builder``, ``OnnxParser``,
``IBuilderConfig``, ``IOptimizationProfile``, ``Runtime``, ``IExecutionContext.execute_async_v3``). The ONNX
route is the only one: torch2trt is not published on PyPI and patches torch at import. Imported only when
this backend is asked for; the serialized engine (``engine.plan``) lives in the engine cache, so later
workers deserialize it instead of building.
"""

from __future__ import annotations

import io
from typing import Callable

import torch
from torch import nn

from handlers.vision.engine_cache import EngineCache
from handlers.vision.engines import Engine, EngineSpec
from handlers.vision.resnet import fold_batchnorm

INPUT, OUTPUT = "input", "logits"


def export_onnx(model: nn.Module, image_size: int = 224, opset: int = 17) -> bytes:
    """fp32 ONNX graph with a dynamic batch dimension (TensorRT picks fp16 kernels itself)."""
    model = fold_batchnorm(model).float().cpu().eval()
    example = torch.randn(2, 3, image_size, image_size)
    buffer = io.BytesIO()
    torch.onnx.export(
        model, (example,), buffer, input_names=[INPUT], output_names=[OUTPUT], opset_version=opset,
        dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}}, dynamo=False,
    )
    return buffer.getvalue()


def build_serialized_engine(onnx_bytes: bytes, spec: EngineSpec, workspace_gib: float = 4.0) -> bytes:
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx_bytes):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if spec.dtype == torch.float16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif spec.dtype == torch.bfloat16:
        config.set_flag(trt.BuilderFlag.BF16)
    size = spec.image_size
    profile = builder.create_optimization_profile()
    lo, hi = min(spec.buckets), max(spec.buckets)
    profile.set_shape(INPUT, (lo, 3, size, size), (hi, 3, size, size), (hi, 3, size, size))
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(plan)


class TensorRTEngine(Engine):
    name = "tensorrt"

    def __init__(self, plan: bytes, spec: EngineSpec):
        import tensorrt as trt

        super().__init__(spec)
        self._logger = trt.Logger(trt.Logger.WARNING)
        self._runtime = trt.Runtime(self._logger)
        self._engine = self._runtime.deserialize_cuda_engine(plan)
        if self._engine is None:
            raise RuntimeError("TensorRT could not deserialize the cached engine")
        self._context = self._engine.create_execution_context()
        self._classes = self._engine.get_tensor_shape(OUTPUT)[-1]

    @classmethod
    def from_model(
        cls, model: nn.Module, spec: EngineSpec, cache: EngineCache | None, progress: Callable[[str], None]
    ) -> "TensorRTEngine":
        if cache is None:
            return cls(build_serialized_engine(export_onnx(model, spec.image_size), spec), spec)
        with cache.building(progress):
            plan_path = cache.path("engine.plan")
            if not plan_path.exists():
                progress("exporting ONNX and building the TensorRT engine (minutes)")
                partial = plan_path.with_suffix(".partial")
                partial.write_bytes(build_serialized_engine(export_onnx(model, spec.image_size), spec))
                partial.replace(plan_path)  # readers never see a half-written plan
            return cls(plan_path.read_bytes(), spec)

    @torch.inference_mode()
    def _run_padded(self, x: torch.Tensor) -> torch.Tensor:
        # The engine's input is fp32 NCHW (TensorRT converts and reorders internally).
        x = x.float().contiguous()
        out = torch.empty((x.shape[0], self._classes), device=x.device, dtype=torch.float32)
        self._context.set_input_shape(INPUT, tuple(x.shape))
        self._context.set_tensor_address(INPUT, x.data_ptr())
        self._context.set_tensor_address(OUTPUT, out.data_ptr())
        if not self._context.execute_async_v3(torch.cuda.current_stream(x.device).cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        return out
