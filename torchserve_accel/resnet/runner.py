"""ResNet-101 ImageNet classification: ``load`` at ``initialize``, then ``ResNetRunner.run`` per batch.

``load`` reads the archive's weights, builds the engine the registry chooses (through the engine cache), runs the
correctness gate and logs why each choice was made. ``run`` is the whole request path: decode -> preprocess ->
engine -> top-k, with one device-to-host copy at the end of the batch.
"""

from __future__ import annotations

import copy
import json
import logging
import time
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import torch

from torchserve_accel.backends.engine_cache import EngineCache, default_cache_root, file_sha256, software_fingerprint
from torchserve_accel.resnet.engines import CACHED_BACKENDS, REGISTRY, Engine, EngineSpec, build_engine
from torchserve_accel.resnet.gate import correctness_gate, synthetic_images
from torchserve_accel.resnet.hw_jpeg import HardwareJpegDecoder, choose_jpeg_decoder
from torchserve_accel.resnet.images import ImageLimits, PreprocessSpec, decode_images, resize_crop_normalize
from torchserve_accel.resnet.model import WEIGHTS_FILE, load_resnet101
from torchserve_accel.resnet.options import ResNetOptions
from torchserve_accel.serving.device import compute_dtype
from torchserve_accel.serving.memory import halving_on_oom
from torchserve_accel.resnet.requests import Classified, parse_request
from torchserve_accel.serving.requests import Job, Request, RequestError, Slots

log = logging.getLogger(__name__)

class EngineRejected(RuntimeError):
    """The fast engine computed something other than the reference: never served silently."""


def imagenet_labels() -> list[str]:
    with resources.files("torchserve_accel.resnet").joinpath("imagenet_classes.json").open() as f:
        return json.load(f)


def load(model_dir: Path, options: ResNetOptions, device: torch.device, batch_size: int) -> "ResNetRunner":
    """The archive's weights -> a warmed, gated engine on ``device`` whose largest bucket is ``batch_size``."""
    t0 = time.perf_counter()
    weights = Path(model_dir) / WEIGHTS_FILE
    if not weights.exists():
        raise FileNotFoundError(f"{weights} is missing from the archive; rebuild it with `torchserve-accel build`")
    model = load_resnet101(weights)
    description = {"weights": f"loaded in {time.perf_counter() - t0:.1f} s"}
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed shapes per bucket: let cuDNN pick its fastest kernels
        torch.backends.cudnn.benchmark_limit = options.cudnn_benchmark_limit
    elif options.cpu_threads:
        torch.set_num_threads(options.cpu_threads)
    backend, passed_over = REGISTRY.choose(options.backend, device)
    description["backend"] = "; ".join([*passed_over, f"{backend.name} ({'auto' if options.backend == 'auto' else 'asked for'})"])
    buckets = engine_buckets(options.batch_buckets, batch_size, device)
    spec = EngineSpec(backend=backend.name, device=device, dtype=compute_dtype(options.precision, device),
                      buckets=buckets, image_size=options.crop, compile_mode=options.compile_mode,
                      freezing=options.freezing, cuda_graphs=options.cuda_graphs,
                      conv_1x1_as_mm=options.conv_1x1_as_mm, dynamic_batch=options.dynamic_batch)
    cache = None
    if backend.name in CACHED_BACKENDS:
        root = Path(options.engine_cache_dir) if options.engine_cache_dir else default_cache_root()
        cache = EngineCache(root, {**software_fingerprint(device), "weights": file_sha256(weights),
                                   "spec": repr(replace(spec, device=torch.device(device.type)))})
    gated = options.correctness_gate and backend.name != "eager"
    t1 = time.perf_counter()
    try:
        engine = build_engine(copy.deepcopy(model) if gated else model, spec, cache, log.info)
        description["engine"] = f"built or loaded in {time.perf_counter() - t1:.1f} s"
        if gated:
            t1 = time.perf_counter()
            sample = synthetic_images(options.gate_images, options.crop, torch.Generator().manual_seed(1234))
            gate = correctness_gate(engine, model, sample, options.gate_max_rel_err, options.gate_min_top1)
            description["gate"] = f"{gate.detail} ({time.perf_counter() - t1:.1f} s)"
            if not gate.passed:
                raise EngineRejected(f"correctness gate failed: {gate.detail}")
    except Exception as err:
        if backend.name == "eager" or options.on_engine_failure != "eager":
            raise RuntimeError(f"{backend.name} engine not served ({err}); refusing to start "
                               "(set handler.on_engine_failure: eager to fall back instead)") from err
        description["fallback"] = (f"{backend.name} engine not served ({err}); serving the eager engine "
                                   "(on_engine_failure: eager)")
        engine = build_engine(model, replace(spec, backend="eager"), None, log.info)
    hardware, description["jpeg_decoder"] = choose_jpeg_decoder(options.jpeg_decoder, device)
    description["ready"] = f"{engine.name} engine on {device} ({spec.dtype}) in {time.perf_counter() - t0:.1f} s"
    for key, value in description.items():
        log.info("%s: %s", key, value)
    return ResNetRunner(engine, imagenet_labels(), options, description, hardware)


def engine_buckets(wanted: Sequence[int], batch_size: int, device: torch.device) -> tuple[int, ...]:
    """``handler.batch_buckets`` below TorchServe's batchSize, batchSize itself, and on a GPU the larger buckets too
    (batches of several-image requests fill them; on a CPU they would only cost start-up time)."""
    keep = {b for b in wanted if b < batch_size or (device.type == "cuda" and b > batch_size)}
    return tuple(sorted(keep | {batch_size}))


class ResNetRunner:
    def __init__(self, engine: Engine, labels: list[str], options: ResNetOptions, description: dict[str, str],
                 hardware: HardwareJpegDecoder | None = None):
        self.engine = engine
        self.labels = labels
        self.options = options
        self.description = description  # what was chosen at load, and why
        self.device = engine.spec.device
        self.preprocess = PreprocessSpec(resize=options.resize, crop=options.crop, dtype=engine.spec.dtype,
                                         channels_last=self.device.type == "cuda")
        self.limits = ImageLimits(max_pixels=options.max_pixels)
        self.hardware = hardware  # the JPEG engines' decoder (handler.jpeg_decoder), or None: nvJPEG

    def parse(self, request: Request) -> Job:
        """The request's images (still encoded: they are decoded in ``run``, batched) and its answer's shape."""
        return parse_request(request, self.options)

    def run(self, items: Sequence[Job | RequestError], timings: dict[str, float] | None = None
            ) -> list[Any | RequestError]:
        """Every image of the batch's requests through decode, preprocessing and the engine at once -> one answer
        (or error) per request.

        A batch that runs out of GPU memory (many large images) is split in halves and retried; a single image that
        still does not fit gets a 503 of its own (``halving_on_oom``). ``timings`` accumulates host seconds per
        stage: ``decode`` (until the decoder returns) and ``compute`` (preprocess + engine + the sync).
        """
        slots = Slots(items, lambda job: job.inputs)
        outputs = self.classify(slots.flat, timings)
        batch = {"batch_size": len(items), "images_in_batch": sum(isinstance(o, Classified) for o in outputs),
                 "engine": self.engine.name}
        return slots.answers(outputs, lambda job, mine: job.reply(mine, batch))

    def classify(self, blobs: Sequence[bytes | bytearray | RequestError], timings: dict[str, float] | None = None
                 ) -> list[Classified | RequestError]:
        """Encoded images (a ``RequestError`` keeps its slot) -> each image's top-k, or why it could not be run."""
        return halving_on_oom(lambda part: self._classify(part, timings), blobs, "image")

    def _classify(self, blobs: Sequence[bytes | bytearray | RequestError], timings: dict[str, float] | None
                  ) -> list[Classified | RequestError]:
        t0 = time.perf_counter()
        decoded = decode_images(blobs, self.device, self.limits, self.options.exif_orientation, self.hardware)
        t1 = time.perf_counter()
        ok = [i for i, item in enumerate(decoded) if isinstance(item, torch.Tensor)]
        results: list[Classified | RequestError] = list(decoded)  # errors stay in their slots
        if ok:
            batch = resize_crop_normalize([decoded[i] for i in ok], self.preprocess)
            probs, indices = self.top_k(batch)
        if timings is not None:
            timings["decode"] = timings.get("decode", 0.0) + t1 - t0
            timings["compute"] = timings.get("compute", 0.0) + time.perf_counter() - t1
        for row, i in enumerate(ok):
            names = [self.labels[k] if k < len(self.labels) else str(k) for k in indices[row]]
            results[i] = Classified(probs[row], indices[row], names)
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
