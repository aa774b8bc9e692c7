"""ResNet-101 from torchvision's definition: weights from local files, and BatchNorm folded for the engines.

Weights enter as a torchvision ``state_dict`` (``.pth``/``.pt`` read with ``torch.load(weights_only=True)``, or
``.safetensors``); archives always carry ``.safetensors`` so no worker ever unpickles a file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

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
