"""The ResNet handler through its TorchServe contract (initialize/handle) with a small fake context, on CPU."""

import io
import json
import sys

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from resnet_handler import ResNetHandler
from tests.fake_context import FakeContext
from torchserve_accel.resnet import runner
from torchserve_accel.resnet.archive import prepare_archive_files
from torchserve_accel.resnet.model import load_resnet101
from torchserve_accel.resnet.options import ResNetOptions
from torchserve_accel.resnet.runner import engine_buckets
from torchserve_accel.serving.options import OptionsError, parse_options

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def jpeg_bytes(seed, size=(320, 240), fmt="JPEG"):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 8, 3), dtype=np.uint8)
    img = Image.fromarray(coarse, "RGB").resize(size, Image.BICUBIC)
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return buf.getvalue()


@pytest.fixture(scope="module")
def handler(tmp_path_factory):
    model_dir = tmp_path_factory.mktemp("model_dir")
    prepare_archive_files(model_dir, None, log=lambda m: None)
    config = yaml.safe_load((ROOT / "archiver_configs/resnet101.yaml").read_text())
    ctx = FakeContext(model_dir, config, gpu_id=None, batch_size=8)
    h = ResNetHandler()
    h.initialize(ctx)
    return h, model_dir


def test_shipped_config_parses():
    config = yaml.safe_load((ROOT / "archiver_configs/resnet101.yaml").read_text())
    options = parse_options(ResNetOptions, config["handler"])
    assert config["batchSize"] in options.batch_buckets


def test_engine_buckets_above_batch_size_only_on_a_gpu():
    wanted = (1, 8, 16, 32, 64, 128, 256)
    # single-image batches of TorchServe's batchSize, several-image requests in chunks of up to 256 on a GPU
    assert engine_buckets(wanted, 64, torch.device("cuda", 0)) == wanted
    assert engine_buckets(wanted, 48, torch.device("cuda", 0)) == (1, 8, 16, 32, 48, 64, 128, 256)
    # a CPU worker keeps no bucket it would only warm up for
    assert engine_buckets(wanted, 4, torch.device("cpu")) == (1, 4)
    assert engine_buckets(wanted, 64, torch.device("cpu")) == (1, 8, 16, 32, 64)


def test_config_typos_and_types_are_errors():
    with pytest.raises(OptionsError, match="unknown handler option"):
        parse_options(ResNetOptions, {"topk": 3})
    with pytest.raises(OptionsError, match="expected an integer"):
        parse_options(ResNetOptions, {"top_k": "3"})
    with pytest.raises(OptionsError, match="not one of"):
        parse_options(ResNetOptions, {"backend": "tensorRT"})
    with pytest.raises(OptionsError, match="top_k"):
        parse_options(ResNetOptions, {"top_k": 0})


def test_batch_with_bad_requests(handler):
    h, model_dir = handler
    ctx = FakeContext(model_dir, gpu_id=None, batch_size=8)
    data = [
        {"body": bytearray(jpeg_bytes(1))},
        {"data": bytearray(jpeg_bytes(2, fmt="PNG"))},
        {"body": bytearray(b"definitely not an image")},
        {"body": bytearray()},
        {"body": {"image": "json where bytes were expected"}},
    ]
    out = [json.loads(r) for r in h.handle(data, ctx)]
    assert len(out) == 5
    assert sorted(ctx.statuses) == [2, 3, 4]
    assert [ctx.statuses[i][0] for i in (2, 3, 4)] == [415, 400, 415]
    for good in out[:2]:
        assert len(good["predictions"]) == 5 and good["batch_size"] == 5 and good["engine"] == "eager"
        probs = [p["probability"] for p in good["predictions"]]
        assert probs == sorted(probs, reverse=True) and 0 < sum(probs) <= 1.0 + 1e-6
        assert all(isinstance(p["label"], str) for p in good["predictions"])
    assert out[2]["status"] == 415 and "image" in out[2]["error"]
    assert ("HandlerBatchedRequests", 5, "count") in ctx.metrics.records
    assert all(v == "application/json" for v in ctx.content_types.values())


def test_predictions_match_reference_pipeline(handler):
    """All 1000 class scores equal torchvision's tensor transforms + the fp32 model on the same bytes.

    Random weights give nearly flat probabilities, so the scores are compared as centered log-probabilities
    (logits up to a constant) against the reference's spread: a resize off by half a pixel moves them by
    percents, fp32 rounding by far less than the bound."""
    from torchvision import transforms
    from torchvision.transforms.functional import pil_to_tensor

    _, model_dir = handler
    config = yaml.safe_load((ROOT / "archiver_configs/resnet101.yaml").read_text())
    config["handler"]["top_k"] = 1000
    h = ResNetHandler()
    h.initialize(FakeContext(model_dir, config, gpu_id=None, batch_size=8))
    model = load_resnet101(model_dir / "resnet101.safetensors")
    tf = transforms.Compose([transforms.ConvertImageDtype(torch.float32), transforms.Resize(256, antialias=True),
                             transforms.CenterCrop(224),
                             transforms.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))])
    blobs = [jpeg_bytes(s, size=(400 + 16 * s, 300 - 8 * s)) for s in range(4)]
    out = [json.loads(r) for r in h.handle([{"body": bytearray(b)} for b in blobs], FakeContext(model_dir))]
    with torch.no_grad():
        ref = model(torch.stack([tf(pil_to_tensor(Image.open(io.BytesIO(b)).convert("RGB"))) for b in blobs]))
    for row, result in enumerate(out):
        ours = torch.zeros(1000, dtype=torch.float64)
        for p in result["predictions"]:
            ours[p["index"]] = p["probability"]
        ours = ours.log()
        expected = ref[row].double()
        spread = expected.std()
        diff = (ours - ours.mean()) - (expected - expected.mean())
        assert diff.abs().max() < 1e-3 * spread, float(diff.abs().max() / spread)


def test_engine_failure_refuses_or_falls_back_per_config(handler):
    _, model_dir = handler
    cpu = torch.device("cpu")
    # The cudnn engine cannot build on a CPU worker: a stand-in for any engine build failure.
    with pytest.raises(RuntimeError, match="cudnn engine not served.*refusing to start"):
        runner.load(model_dir, ResNetOptions(backend="cudnn"), cpu, batch_size=4)
    fallback = runner.load(model_dir, ResNetOptions(backend="cudnn", on_engine_failure="eager"), cpu, 4)
    assert fallback.engine.name == "eager"
    assert "needs a GPU worker" in fallback.description["fallback"]
    assert "serving the eager engine" in fallback.description["fallback"]


def test_out_of_memory_batch_is_split_and_retried(handler):
    h, model_dir = handler
    classifier = h.runner
    real_engine = classifier.engine
    seen = []

    class SmallMemoryEngine:
        """Runs out of GPU memory above 2 images, like a card with too little free memory."""

        name, spec = real_engine.name, real_engine.spec

        def __call__(self, batch):
            seen.append(batch.shape[0])
            # A retry must not run inside the failed attempt's except block (its traceback pins that
            # attempt's tensors in memory).
            assert sys.exc_info()[0] is None
            if batch.shape[0] > 2:
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_engine(batch)

    classifier.engine = SmallMemoryEngine()
    try:
        blobs = [jpeg_bytes(s) for s in range(5)]
        split = classifier.classify(blobs)
    finally:
        classifier.engine = real_engine
    whole = classifier.classify(blobs)
    assert seen == [5, 2, 3, 1, 2]  # 5 fails -> 2 + 3; 3 fails -> 1 + 2
    assert [r.indices[0] for r in split] == [r.indices[0] for r in whole]


def test_an_image_that_alone_runs_out_of_memory_gets_a_503_and_the_others_answer(handler):
    h, model_dir = handler
    real_engine = h.runner.engine

    class OneHugeImage:
        """Out of GPU memory whenever the batch holds the 320x241 image."""

        name, spec = real_engine.name, real_engine.spec

        def __call__(self, batch):
            if any(bool((row == self.huge).all()) for row in batch):
                raise torch.cuda.OutOfMemoryError("CUDA out of memory (simulated)")
            return real_engine(batch)

    from torchserve_accel.resnet.images import decode_images, resize_crop_normalize

    blobs = [jpeg_bytes(s) for s in range(3)] + [jpeg_bytes(9, size=(320, 241))]
    OneHugeImage.huge = resize_crop_normalize(decode_images(blobs[3:], h.runner.device), h.runner.preprocess)[0]
    h.runner.engine = OneHugeImage()
    try:
        ctx = FakeContext(model_dir)
        out = [json.loads(r) for r in h.handle([{"body": bytearray(b)} for b in blobs], ctx)]
    finally:
        h.runner.engine = real_engine
    assert {i: code for i, (code, _) in ctx.statuses.items()} == {3: 503}
    assert "out of GPU memory for this image" in out[3]["error"]
    assert all(len(o["predictions"]) == 5 for o in out[:3])


@pytest.mark.gpu
def test_gpu_worker_answers_like_the_cpu_worker(handler):
    """The shipped config on a GPU worker (nvJPEG decode, the engine auto picks, CUDA graphs, the gate at load) gives
    the CPU worker's top-1 on real JPEG and PNG bytes, and refuses the bad body alone."""
    cpu_handler, model_dir = handler
    config = yaml.safe_load((ROOT / "archiver_configs/resnet101.yaml").read_text())
    gpu_handler = ResNetHandler()
    gpu_handler.initialize(FakeContext(model_dir, config, gpu_id=0, batch_size=8))
    description = gpu_handler.runner.description
    assert gpu_handler.runner.engine.name in ("cudnn", "tensorrt") and "gate" in description and "fallback" not in description
    data = [{"body": bytearray(jpeg_bytes(s, size=(400 + 16 * s, 300)))} for s in range(5)]
    data += [{"body": bytearray(jpeg_bytes(9, fmt="PNG"))}, {"body": bytearray(b"not an image")}]
    ctx = FakeContext(model_dir, gpu_id=0, batch_size=8)
    ctx.metrics = None  # TorchServe's metric types are not importable on a GPU machine without TorchServe
    on_gpu = [json.loads(r) for r in gpu_handler.handle(data, ctx)]
    cpu_ctx = FakeContext(model_dir)
    cpu_ctx.metrics = None
    on_cpu = [json.loads(r) for r in cpu_handler.handle(data, cpu_ctx)]
    assert {i: code for i, (code, _) in ctx.statuses.items()} == {6: 415}
    for gpu, cpu in zip(on_gpu[:6], on_cpu[:6]):
        assert gpu["predictions"][0]["index"] == cpu["predictions"][0]["index"]
        assert abs(gpu["predictions"][0]["probability"] - cpu["predictions"][0]["probability"]) < 2e-2
