"""The JPEG corpus (tests/jpeg_corpus.py) through both decode paths: every case is classified or refused with a 4xx
that says why, in one batch with the others; on a GPU, nvJPEG and PIL decide alike and decode within a stated bound."""

from __future__ import annotations

import pytest
import torch

from tests.fake_context import FakeContext
from tests.jpeg_corpus import CORPUS, REFUSED, corpus
from tests.test_wire_formats import resnet, resnet_dir  # noqa: F401  (the fixture)
from torchserve_accel.resnet.images import PreprocessSpec, decode_images, resize_crop_normalize
from torchserve_accel.serving.requests import RequestError

CPU = torch.device("cpu")
CASES = corpus()
# nvJPEG and libjpeg differ in IDCT and chroma upsampling by a few levels (of 255) on average.
MEAN_LEVELS = 3.0
# After resize, crop and ImageNet normalization (units of one standard deviation): the same few levels.
MEAN_NORMALIZED = 0.05


def check_decision(name: str, out) -> None:
    if name in REFUSED:
        status, words = REFUSED[name]
        assert isinstance(out, RequestError), f"{name}: decoded, expected {status}"
        assert out.status == status and words in out.message, f"{name}: {out.status} {out.message}"
    else:
        assert isinstance(out, torch.Tensor), f"{name}: {out.status} {out.message}"
        assert out.dtype == torch.uint8 and out.shape[0] == 3 and min(out.shape[1:]) >= 1, name


def test_every_file_has_its_source_written_down():
    sources = (CORPUS / "SOURCES.md").read_text()
    assert [p.name for p in sorted(CORPUS.glob("*.jpg")) if f"`{p.name}`" not in sources] == []


def test_every_case_is_classified_or_refused_in_one_batch_on_the_cpu():
    decoded = decode_images(list(CASES.values()), CPU)
    for name, out in zip(CASES, decoded):
        check_decision(name, out)


def test_the_handler_answers_every_case_alone(resnet_dir):  # noqa: F811
    """All cases in one TorchServe batch: each answered 200 with its top-5, or its own 4xx; nothing else fails."""
    handler = resnet(resnet_dir)
    context = FakeContext("unused")
    context.metrics = None
    answers = handler.handle([{"body": bytearray(blob)} for blob in CASES.values()], context)
    assert len(answers) == len(CASES)
    refused = {name: context.statuses[i] for i, name in enumerate(CASES) if i in context.statuses}
    assert refused.keys() == REFUSED.keys(), refused
    for name, (status, message) in refused.items():
        assert 400 <= status < 500 and status == REFUSED[name][0], (name, status, message)
        assert "object at 0x" not in message and len(message) <= 300, message


@pytest.mark.gpu
def test_nvjpeg_and_pil_decide_alike_and_decode_within_a_bound():
    """The GPU path (nvJPEG where the header allows, PIL for the rest, moved to the GPU) against the CPU path."""
    device = torch.device("cuda:0")
    on_gpu = decode_images(list(CASES.values()), device)
    on_cpu = decode_images(list(CASES.values()), CPU)
    spec = PreprocessSpec(dtype=torch.float32, channels_last=False)
    for name, gpu, cpu in zip(CASES, on_gpu, on_cpu):
        check_decision(name, gpu)
        if isinstance(cpu, RequestError):
            assert (gpu.status, gpu.message) == (cpu.status, cpu.message), name
            continue
        assert gpu.is_cuda and gpu.shape == cpu.shape, (name, gpu.shape, cpu.shape)
        levels = (gpu.cpu().int() - cpu.int()).abs().float().mean().item()
        normalized = (resize_crop_normalize([gpu], spec).cpu() - resize_crop_normalize([cpu.to(device)], spec).cpu())
        print(f"{name}: mean |GPU - CPU| {levels:.2f} levels, {normalized.abs().mean().item():.4f} normalized")
        assert levels < MEAN_LEVELS, (name, levels)
        assert normalized.abs().mean().item() < MEAN_NORMALIZED, name
