"""ImageNet classification service: typed options, loading at ``initialize``, and the batch hot path.

``ImageClassifier.load`` builds the engine (through the engine cache), runs the correctness gate and keeps
everything on the worker's device. ``classify_blobs`` is the whole request path: decode -> preprocess ->
engine -> top-k, with one device-to-host copy at the end of the batch.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path
from typing import Literal, Sequence

import torch

from handlers.common import RequestError
from handlers.vision.engine_cache import EngineCache, default_cache_root, software_fingerprint
from handlers.vision.engines import (
    Engine, EngineSpec, build_engine, choose_backend, correctness_gate, dtype_of,
)
from handlers.vision.images import ImageLimits, PreprocessSpec, decode_images, resize_crop_normalize
from handlers.vision.resnet import WEIGHTS_FILE, file_sha256, load_resnet101, synthetic_images

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResNetOptions:
    """The ``handler:`` section of archiver_configs/resnet101.yaml."""

    backend: Literal["auto", "tensorrt", "cudnn", "inductor", "eager"] = "auto"
    precision: Literal["fp16", "bf16", "fp32"] = "fp16"  # on GPU; CPU workers always run fp32
    top_k: int = 5
    batch_buckets: tuple[int, ...] = (1, 8, 16, 32, 64)
    compile_mode: Literal["default", "max-autotune-no-cudagraphs"] = "default"
    freezing: bool = True
    cuda_graphs: bool = True
    conv_1x1_as_mm: bool = False  # 1x1 convolutions as cuBLAS matmuls instead of cuDNN
    dynamic_batch: bool = False  # compile once for all buckets (faster worker start) instead of once per bucket
    cudnn_benchmark_limit: int = 10  # cuDNN algorithms tried per conv shape; 0 tries them all
    engine_cache_dir: str = ""  # empty: $XDG_CACHE_HOME/torchserve-accel/engines
    correctness_gate: bool = True
    gate_images: int = 16
    gate_max_rel_err: float = 1e-2
    gate_min_top1: float = 0.99
    on_engine_failure: Literal["refuse", "eager"] = "refuse"  # a fast engine that fails to build or the gate
    resize: int = 256
    crop: int = 224
    max_pixels: int = 40_000_000
    cpu_threads: int = 0  # 0: leave torch's default
    # GPU: wait for the batch's results asleep (a blocking CUDA event) instead of spinning a core, so that
    # several workers per GPU leave the host's cores to each other and to the frontend. 2026-11, H100, 8 workers
    # under MPS: the busiest worker used 0.51 instead of 0.73 of a core, host CPU 61% instead of 71%, same img/s.
    blocking_sync: bool = True

    def validate(self) -> None:
        if not 1 <= self.top_k <= 1000:
            raise ValueError(f"handler.top_k must be in 1..1000, got {self.top_k}")
        if not self.batch_buckets or min(self.batch_buckets) < 1:
            raise ValueError(f"handler.batch_buckets must be positive sizes, got {self.batch_buckets}")
        if self.crop > self.resize:
            raise ValueError("handler.crop must not exceed handler.resize")


def imagenet_labels() -> list[str]:
    with resources.files("handlers.vision").joinpath("imagenet_classes.json").open() as f:
        return json.load(f)


class EngineRejected(RuntimeError):
    """The fast engine computed something other than the reference: never served silently."""


class ImageClassifier:
    def __init__(self, engine: Engine, labels: list[str], options: ResNetOptions, notes: list[str]):
        self.engine = engine
        self.labels = labels
        self.options = options
        self.notes = notes  # why this backend, gate result: shown in logs and /describe-able
        self.device = engine.spec.device
        self.preprocess_spec = PreprocessSpec(resize=options.resize, crop=options.crop, dtype=engine.spec.dtype,
                                              channels_last=self.device.type == "cuda")
        self.limits = ImageLimits(max_pixels=options.max_pixels)

    @classmethod
    def load(cls, model_dir: Path, options: ResNetOptions, device: torch.device, max_batch: int) -> "ImageClassifier":
        t0 = time.perf_counter()
        weights = Path(model_dir) / WEIGHTS_FILE
        if not weights.exists():
            raise FileNotFoundError(f"{weights} is missing from the archive; rebuild it with scripts/build_archive.py")
        model = load_resnet101(weights)
        notes = [f"weights loaded in {time.perf_counter() - t0:.1f} s"]
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: let cuDNN pick its fastest kernels
            torch.backends.cudnn.benchmark_limit = options.cudnn_benchmark_limit
        elif options.cpu_threads:
            torch.set_num_threads(options.cpu_threads)
        backend, reasons = choose_backend(options.backend, device)
        notes += reasons
        buckets = tuple(sorted(set(b for b in options.batch_buckets if b < max_batch) | {max_batch}))
        spec = EngineSpec(backend=backend, device=device, dtype=dtype_of(options.precision, device), buckets=buckets,
                          image_size=options.crop, compile_mode=options.compile_mode, freezing=options.freezing,
                          cuda_graphs=options.cuda_graphs, conv_1x1_as_mm=options.conv_1x1_as_mm,
                          dynamic_batch=options.dynamic_batch)
        cache = None
        if backend in ("inductor", "tensorrt"):
            root = Path(options.engine_cache_dir) if options.engine_cache_dir else default_cache_root()
            cache = EngineCache(root, {**software_fingerprint(device), "weights": file_sha256(weights),
                                       "spec": repr(replace(spec, device=torch.device(device.type)))})
        reference = model if options.correctness_gate and backend != "eager" else None
        t1 = time.perf_counter()
        try:
            engine = build_engine(_copy_if(model, reference is not None), spec, cache, log.info)
            notes.append(f"engine built/loaded in {time.perf_counter() - t1:.1f} s")
            if reference is not None:
                t1 = time.perf_counter()
                sample = synthetic_images(options.gate_images, options.crop, torch.Generator().manual_seed(1234))
                gate = correctness_gate(engine, reference, sample, options.gate_max_rel_err, options.gate_min_top1)
                notes.append(f"{gate.detail} ({time.perf_counter() - t1:.1f} s)")
                if not gate.passed:
                    raise EngineRejected(f"correctness gate failed: {gate.detail}")
        except Exception as err:
            if backend == "eager" or options.on_engine_failure != "eager":
                raise RuntimeError(f"{backend} engine not served ({err}); refusing to start "
                                   "(set handler.on_engine_failure: eager to fall back instead)") from err
            notes.append(f"{backend} engine not served ({err}); serving the eager engine (on_engine_failure: eager)")
            engine = build_engine(model, replace(spec, backend="eager"), None, log.info)
        notes.append(f"{engine.name} engine on {device} ({spec.dtype}), ready in {time.perf_counter() - t0:.1f} s")
        for note in notes:
            log.info(note)
        return cls(engine, imagenet_labels(), options, notes)

    def classify_blobs(
        self, blobs: Sequence[bytes | RequestError], timings: dict[str, float] | None = None
    ) -> list[dict | RequestError]:
        """Encoded images (or per-request errors) -> one top-k dict (or the error) per request.

        A batch that runs out of GPU memory (many large images) is split in halves and retried; a single
        image that still does not fit gets a 503 of its own. ``timings`` (optional) accumulates host seconds
        per stage: ``decode`` (until the decoder returns) and ``compute`` (preprocess + engine + the sync).
        """
        try:
            return self._classify(blobs, timings)
        except torch.cuda.OutOfMemoryError:
            pass
        # Retry outside the except block: until it ends, the exception's traceback keeps the failed attempt's
        # frames, and with them every tensor it had allocated (2026-11: retrying inside it ran a GPU with a
        # capped memory budget out of memory even for single images).
        torch.cuda.empty_cache()
        if len(blobs) == 1:
            return [RequestError(503, "out of GPU memory for this image; retry later or send a smaller one")]
        log.warning("batch of %d ran out of GPU memory: splitting it and retrying", len(blobs))
        mid = len(blobs) // 2
        return self.classify_blobs(blobs[:mid], timings) + self.classify_blobs(blobs[mid:], timings)

    def _classify(
        self, blobs: Sequence[bytes | RequestError], timings: dict[str, float] | None
    ) -> list[dict | RequestError]:
        t0 = time.perf_counter()
        decoded = decode_images(blobs, self.device, self.limits)
        t1 = time.perf_counter()
        ok = [i for i, item in enumerate(decoded) if isinstance(item, torch.Tensor)]
        results: list[dict | RequestError] = list(decoded)  # errors stay in their slots
        if ok:
            batch = resize_crop_normalize([decoded[i] for i in ok], self.preprocess_spec)
            probs, indices = self.top_k(batch)
        if timings is not None:
            timings["decode"] = timings.get("decode", 0.0) + t1 - t0
            timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t1
        if not ok:
            return results
        for row, i in enumerate(ok):
            results[i] = {
                "predictions": [
                    {"label": self.labels[k] if k < len(self.labels) else str(k), "index": k, "probability": p}
                    for p, k in zip(probs[row], indices[row])
                ],
            }
        return results

    @torch.inference_mode()
    def top_k(self, batch: torch.Tensor) -> tuple[list[list[float]], list[list[int]]]:
        """(N, 3, H, W) normalized -> top-k probabilities and class indices; the batch's one host sync."""
        logits = self.engine(batch)
        probs, indices = torch.softmax(logits, dim=1).topk(self.options.top_k, dim=1)
        both = torch.stack([probs, indices.float()])
        if self.options.blocking_sync and both.is_cuda:
            host = torch.empty(both.shape, dtype=both.dtype, pin_memory=True)
            host.copy_(both, non_blocking=True)
            done = torch.cuda.Event(blocking=True)
            done.record()
            done.synchronize()  # the thread sleeps until the copy is done
            both = host
        else:
            both = both.cpu()
        return both[0].tolist(), both[1].long().tolist()


def _copy_if(model: torch.nn.Module, needed: bool) -> torch.nn.Module:
    """Engines modify their model (BatchNorm folding, dtype); keep the original when the gate needs it."""
    return copy.deepcopy(model) if needed else model
