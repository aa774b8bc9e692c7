"""TensorRT, for every model: an ONNX graph -> a serialized engine (cached on disk) -> a runner on torch tensors.

Written against TensorRT 10's documented Python API (``Builder``, ``OnnxParser``, ``IBuilderConfig``,
``IOptimizationProfile``, ``Runtime``, ``IExecutionContext.execute_async_v3``); the ONNX route is the only one
(torch2trt is not published on PyPI and patches torch at import). ``tensorrt`` is imported inside the functions
that need it: a worker that does not run this backend never loads it, and one that asks for it where it is not
installed fails there, with ``unavailable_reason`` saying why.

A model provides its ONNX export and the optimization profile of its inputs; this module builds the engine once
per engine-cache entry (other workers wait on the entry's lock, then deserialize), and runs it on the current CUDA
stream with torch tensors as inputs and outputs.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from torchserve_accel.backends.engine_cache import EngineCache

Shape = tuple[int, ...]
PLAN_FILE = "engine.plan"


def unavailable_reason(device: torch.device) -> str | None:
    """Why the TensorRT backend cannot run on ``device``, or None when it can."""
    try:
        import tensorrt  # noqa: F401
    except ImportError as err:
        return f"needs TensorRT, which is not installed ({err}); pip install 'torchserve-accel[tensorrt]'"
    if torch.device(device).type != "cuda" or not torch.cuda.is_available():
        return f"needs a CUDA device (this worker runs on {device})"
    return None


def build_plan(onnx: bytes, profile: Mapping[str, tuple[Shape, Shape, Shape]], precision: torch.dtype,
               workspace_gib: float = 4.0) -> bytes:
    """Parse ``onnx`` and build a serialized engine with one optimization profile ``{input: (min, opt, max)}``.

    ``precision`` fp16/bf16 lets TensorRT choose those kernels where it keeps the network's accuracy (fp32 inputs
    and outputs stay as exported).
    """
    import tensorrt as trt

    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if precision == torch.float16:
        config.set_flag(trt.BuilderFlag.FP16)
    elif precision == torch.bfloat16:
        config.set_flag(trt.BuilderFlag.BF16)
    optimization = builder.create_optimization_profile()
    for name, (low, opt, high) in profile.items():
        optimization.set_shape(name, low, opt, high)
    config.add_optimization_profile(optimization)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError("TensorRT engine build failed (see the TensorRT log above)")
    return bytes(plan)


def cached_plan(cache: EngineCache | None, make_onnx: Callable[[], bytes],
                profile: Mapping[str, tuple[Shape, Shape, Shape]], precision: torch.dtype,
                progress: Callable[[str], None] = print) -> bytes:
    """The serialized engine from ``cache`` (built into it by the first worker to need it), or built in memory."""
    if cache is None:
        return build_plan(make_onnx(), profile, precision)
    with cache.building(progress):
        path = cache.path(PLAN_FILE)
        if not path.exists():
            progress("exporting ONNX and building the TensorRT engine (minutes)")
            partial = path.with_suffix(".partial")
            partial.write_bytes(build_plan(make_onnx(), profile, precision))
            partial.replace(path)  # readers never see a half-written plan
        return path.read_bytes()


class TensorRTEngine:
    """A deserialized engine and one execution context: ``engine({input: tensor}) -> {output: tensor}``."""

    def __init__(self, plan: bytes, device: torch.device):
        import tensorrt as trt

        self.device = torch.device(device)
        self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self._runtime.deserialize_cuda_engine(plan)
        if self.engine is None:
            raise RuntimeError("TensorRT could not deserialize the engine (built by another TensorRT version?)")
        self.context = self.engine.create_execution_context()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.outputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.OUTPUT]
        dtypes = {trt.float32: torch.float32, trt.float16: torch.float16, trt.bfloat16: torch.bfloat16,
                  trt.int32: torch.int32, trt.int64: torch.int64, trt.int8: torch.int8, trt.bool: torch.bool}
        self.output_dtypes = {n: dtypes[self.engine.get_tensor_dtype(n)] for n in self.outputs}

    def __call__(self, inputs: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Device tensors in the exported dtypes -> outputs, enqueued on the current stream (no host sync)."""
        kept = []  # contiguous copies must outlive the enqueue
        for name, tensor in inputs.items():
            tensor = tensor.contiguous()
            kept.append(tensor)
            self.context.set_input_shape(name, tuple(tensor.shape))
            self.context.set_tensor_address(name, tensor.data_ptr())
        outputs = {}
        for name in self.outputs:
            shape = tuple(self.context.get_tensor_shape(name))
            outputs[name] = torch.empty(shape, dtype=self.output_dtypes[name], device=self.device)
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(torch.cuda.current_stream(self.device).cuda_stream):
            raise RuntimeError("TensorRT execute_async_v3 failed")
        return outputs
