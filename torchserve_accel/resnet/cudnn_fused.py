"""ResNet with every conv+bias(+residual)+ReLU run as ONE cuDNN fused kernel.

Built once at load time from a BatchNorm-folded torchvision ResNet (``resnet.fold_batchnorm``): the same
weights, no class-name matching (the structure is walked through torchvision's public attributes), no
private ops — ``torch.cudnn_convolution_relu`` and ``torch.cudnn_convolution_add_relu`` are public ATen ops
that call cuDNN's fused convolution-bias-activation kernels. On CPU the same module runs the unfused
reference (conv2d, add, relu), which is how it is tested here.

Why: in a BatchNorm-folded ResNet every pointwise op follows a convolution; Inductor keeps the convolution
in cuDNN and adds a separate Triton kernel for bias/add/ReLU, one more round trip of every activation
through memory. Fusing them into the convolution removes that traffic and needs no compilation at all, so
workers start in seconds.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class FusedConv(nn.Module):
    """conv2d + bias (+ residual ``z``) (+ ReLU). Weights and bias come from a folded ``nn.Conv2d``."""

    def __init__(self, conv: nn.Conv2d, relu: bool, fused: bool):
        super().__init__()
        if conv.bias is None:
            raise ValueError("FusedConv needs a BatchNorm-folded convolution (with bias)")
        self.weight = nn.Parameter(conv.weight.detach(), requires_grad=False)
        self.bias = nn.Parameter(conv.bias.detach(), requires_grad=False)
        self.stride, self.padding, self.dilation, self.groups = conv.stride, conv.padding, conv.dilation, conv.groups
        self.relu = relu
        self.fused = fused

    def forward(self, x: torch.Tensor, z: torch.Tensor | None = None) -> torch.Tensor:
        args = (self.stride, self.padding, self.dilation, self.groups)
        if self.fused and self.relu:
            if z is None:
                return torch.cudnn_convolution_relu(x, self.weight, self.bias, *args)
            return torch.cudnn_convolution_add_relu(x, self.weight, z, 1.0, self.bias, *args)
        out = F.conv2d(x, self.weight, self.bias, *args)
        if z is not None:
            out = out + z
        return F.relu(out) if self.relu else out


class FusedBottleneck(nn.Module):
    def __init__(self, block: nn.Module, fused: bool):
        super().__init__()
        self.conv1 = FusedConv(block.conv1, relu=True, fused=fused)
        self.conv2 = FusedConv(block.conv2, relu=True, fused=fused)
        self.conv3 = FusedConv(block.conv3, relu=True, fused=fused)  # + identity, then ReLU, in one kernel
        self.downsample = FusedConv(block.downsample[0], relu=False, fused=fused) if block.downsample else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        return self.conv3(self.conv2(self.conv1(x)), z=identity)


class FusedResNet(nn.Module):
    """(N, 3, H, W) normalized images -> (N, classes) logits; bottleneck ResNets (50/101/152)."""

    def __init__(self, folded: nn.Module, fused: bool):
        super().__init__()
        self.stem = FusedConv(folded.conv1, relu=True, fused=fused)
        self.maxpool = folded.maxpool
        self.blocks = nn.Sequential(*[
            FusedBottleneck(block, fused)
            for layer in (folded.layer1, folded.layer2, folded.layer3, folded.layer4) for block in layer
        ])
        self.fc = folded.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.maxpool(self.stem(x)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))
