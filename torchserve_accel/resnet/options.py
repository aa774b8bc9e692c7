"""ResNet's typed options: the ``handler:`` section of archiver_configs/resnet101.yaml."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from torchserve_accel.serving.options import CudaWait, OptionsError, Precision


@dataclass(frozen=True)
class ResNetOptions:
    # Engine: a name in resnet.engines.REGISTRY; auto takes cudnn on a GPU, eager on a CPU. TensorRT runs only when
    # asked for by name: auto picks engines that have run and been measured on a GPU, and it has not yet.
    backend: Literal["auto", "tensorrt", "cudnn", "inductor", "eager"] = "auto"
    precision: Precision = "fp16"  # on a GPU; CPU workers run fp32
    top_k: int = 5
    # How plain requests are answered (resnet/requests.py): native ({"predictions": [...], ...}) or torchserve
    # (TorchServe's stock image_classifier: {"<label>": probability}). KServe v1/v2 requests get their protocol's.
    response_format: Literal["native", "torchserve"] = "native"
    max_items_per_request: int = 64  # images in one request (a JSON list, multipart parts, KServe instances/tensors)
    # The engine's batch sizes: a batch pads to the next bucket, and one larger than the largest runs in chunks of it.
    # batchSize is always a bucket. Buckets above it are kept on a GPU only (batches of several-image requests can
    # fill them; CPU workers stop at batchSize); they are not listed by default: each costs GPU memory in every worker
    # and served several-image requests are bound by TorchServe, not the engine (benchmarks/NOTES.md).
    batch_buckets: tuple[int, ...] = (1, 8, 16, 32, 64)
    cuda_graphs: bool = True
    # Wait for a batch's results asleep (a blocking CUDA event) instead of spinning a core: several workers per GPU
    # leave the host's cores to each other and to the frontend.
    blocking_sync: bool = True
    cuda_wait: CudaWait = "auto"  # every CUDA wait of the worker, libraries' included (serving/options.py)
    engine_cache_dir: str = ""  # inductor/tensorrt; empty: $XDG_CACHE_HOME/torchserve-accel/engines
    # The fast engine against fp32 eager on synthetic images at load; a failure refuses to serve (or falls back).
    correctness_gate: bool = True
    gate_images: int = 16
    gate_max_rel_err: float = 1e-2
    gate_min_top1: float = 0.99
    on_engine_failure: Literal["refuse", "eager"] = "refuse"  # a fast engine that fails to build or the gate
    # inductor backend only
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    freezing: bool = True
    conv_1x1_as_mm: bool = False  # 1x1 convolutions as cuBLAS matmuls instead of cuDNN
    dynamic_batch: bool = False  # compile once for all buckets (faster worker start) instead of once per bucket
    cudnn_benchmark_limit: int = 10  # cuDNN algorithms tried per conv shape; 0 tries them all
    # Preprocessing and request limits.
    resize: int = 256
    crop: int = 224
    max_pixels: int = 40_000_000  # larger images are refused before decoding (decompression bombs)
    # Turn images as their EXIF Orientation tag says (phone photos are often stored sideways with the tag), as
    # PIL's exif_transpose does; images without the tag cost nothing more.
    exif_orientation: bool = True
    # Where JPEGs decode on a GPU: hardware (the GPU's JPEG engines through nvImageCodec, off the SMs; needs
    # torchserve-accel[hwjpeg]; resnet/hw_jpeg.py), nvjpeg (torchvision's nvJPEG kernels, on the SMs), or auto (the
    # engines when they are installed and work, else nvJPEG; the worker log says which).
    jpeg_decoder: Literal["auto", "hardware", "nvjpeg"] = "auto"
    cpu_threads: int = 0  # 0: leave torch's default

    def validate(self) -> None:
        if not 1 <= self.top_k <= 1000:
            raise OptionsError(f"handler.top_k must be in 1..1000, got {self.top_k}")
        if self.max_items_per_request < 1:
            raise OptionsError("handler.max_items_per_request must be >= 1")
        if not self.batch_buckets or min(self.batch_buckets) < 1:
            raise OptionsError(f"handler.batch_buckets must be positive sizes, got {self.batch_buckets}")
        if not 0 < self.crop <= self.resize:
            raise OptionsError("handler.crop must be positive and not exceed handler.resize")
