"""The ResNet-101 archive's files: ``resnet101.safetensors`` from a torchvision state_dict, or random weights.

Build time only (``torchserve-accel build resnet101``); workers never import this.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from torchserve_accel.archive import ArchiveFiles
from torchserve_accel.resnet.gate import synthetic_images
from torchserve_accel.resnet.model import WEIGHTS_FILE, build_resnet101, load_resnet101


@torch.no_grad()
def random_resnet101(seed: int = 0, calibration_batches: int = 2, batch: int = 8) -> nn.Module:
    """ResNet-101 with random weights but realistic BatchNorm statistics.

    Freshly initialized BatchNorm (mean 0, var 1) lets activations grow through 33 residual blocks until fp16
    overflows. Running a few batches of image-like input in train mode with cumulative averaging gives the
    statistics a trained network would have, so fp16 numerics are representative.

    The last BatchNorm of each residual branch gets scale 0.2, as in trained ResNets, whose branches add small
    updates to the residual stream. With scale 1 a random ResNet-101 is chaotic (a tiny input perturbation moves
    its logits by several percent), so no fp16 engine could match fp32 on it (benchmarks/NOTES.md).
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


