"""ResNet-101: build from torchvision's definition, load weights from local files, prepare archive files.

Weights enter as a torchvision ``state_dict`` (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or
``.safetensors``); archives always carry ``.safetensors`` so no worker ever unpickles a file.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from handlers.common import ArchiveFiles

WEIGHTS_FILE = "resnet101.safetensors"


def build_resnet101(num_classes: int = 1000) -> nn.Module:
    from torchvision.models import resnet101

    return resnet101(weights=None, num_classes=num_classes)


def load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """A torchvision ResNet state_dict from ``path`` without executing pickled code."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state_dict (a dict of tensors), got {type(state).__name__}")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_resnet101(weights: Path) -> nn.Module:
    state = load_state_dict(weights)
    num_classes = state["fc.weight"].shape[0] if "fc.weight" in state else 1000
    model = build_resnet101(num_classes)
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"{weights} does not fit torchvision's resnet101: missing {missing[:5]}..., unexpected {unexpected[:5]}..."
        )
    return model.eval()


@torch.no_grad()
def random_resnet101(seed: int = 0, calibration_batches: int = 2, batch: int = 8) -> nn.Module:
    """ResNet-101 with random weights but realistic BatchNorm statistics.

    Freshly initialized BatchNorm (mean 0, var 1) lets activations grow through 33 residual blocks until fp16
    overflows. Running a few batches of image-like input in train mode with cumulative averaging gives the
    statistics a trained network would have, so fp16 numerics are representative.

    The last BatchNorm of each residual branch gets scale 0.2, as in trained ResNets, whose branches add small
    updates to the residual stream. With scale 1 a random ResNet-101 is chaotic: a 1e-3 input perturbation
    changes the logits by 11% (2026-11, measured on CPU), so no fp16 engine could match fp32 on it; with 0.2
    that sensitivity is 0.4% and bf16 eager matches fp32 to 2%.
    """
    generator = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = build_resnet101()
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative moving average over the calibration batches
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            block.bn3.weight.data.fill_(0.2)
    model.train()
    for _ in range(calibration_batches):
        model(synthetic_images(batch, generator=generator))
    return model.eval()


def synthetic_images(n: int, size: int = 224, generator: torch.Generator | None = None) -> torch.Tensor:
    """Smooth, image-like normalized input (N, 3, size, size) float32: low-frequency noise, not white noise."""
    coarse = torch.rand((n, 3, size // 16, size // 16), generator=generator)
    img = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    img = img + 0.05 * torch.randn((n, 3, size, size), generator=generator)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (img.clamp(0, 1) - mean) / std


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def prepare_archive_files(
    staging_dir: Path, source: Path | None, log: Callable[[str], None] = print, handler_options: dict | None = None
) -> ArchiveFiles:
    """Write the archive's weights (``resnet101.safetensors``) into ``staging_dir``.

    ``source``: a torchvision ResNet-101 state_dict (.pth/.pt/.safetensors); None makes random weights.
    """
    from safetensors.torch import save_file

    staging_dir = Path(staging_dir)
    staging_dir.mkdir(parents=True, exist_ok=True)
    if source is None:
        log("WARNING: no --weights given: building ResNet-101 with RANDOM weights (seed 0, BatchNorm calibrated). "
            "Predictions will be meaningless; pass --weights PATH for a trained torchvision state_dict.")
        model = random_resnet101()
    else:
        log(f"loading ResNet-101 weights from {source}")
        model = load_resnet101(Path(source))
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    target = staging_dir / WEIGHTS_FILE
    save_file(state, str(target))
    log(f"wrote {target} ({target.stat().st_size / 1e6:.0f} MB)")
    return ArchiveFiles(serialized_file=target, extra_files=[])


def fold_batchnorm(model: nn.Module) -> nn.Module:
    """Fold each eval-mode BatchNorm into the conv before it (torchvision ResNet layout), in place.

    Done once at load time: the engine then runs conv(+bias) -> relu with no BatchNorm pass over memory.
    """
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    def fold(parent: nn.Module, conv_name: str, bn_name: str) -> None:
        conv, bn = getattr(parent, conv_name), getattr(parent, bn_name)
        setattr(parent, conv_name, fuse_conv_bn_eval(conv, bn))
        setattr(parent, bn_name, nn.Identity())

    model.eval()
    fold(model, "conv1", "bn1")
    for layer in (model.layer1, model.layer2, model.layer3, model.layer4):
        for block in layer:
            for i in (1, 2, 3):
                if hasattr(block, f"bn{i}"):
                    fold(block, f"conv{i}", f"bn{i}")
            if block.downsample is not None:
                fold(block.downsample, "0", "1")
    return model
