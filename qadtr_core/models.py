"""CIFAR ResNets (He et al. 2016) and a small fast CNN, built from switchable quantized layers.

Every model takes images in [0, 1] (normalisation is its first layer) and runs at whatever bit-width
:func:`qadtr_core.quant.set_bits` sets. The first convolution and the last linear layer stay at
``edge_bits`` (8 by default) whenever the model is quantized, the usual convention (PACT, DoReFa).
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from .quant import QuantAct, QuantConv2d, QuantLinear, SwitchBatchNorm2d

Arch = Literal["resnet20", "resnet56", "smallcnn"]
ARCHS: tuple[str, ...] = ("resnet20", "resnet56", "smallcnn")

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


class Normalize(nn.Module):
    """Per-channel standardisation inside the model, so that attacks work in [0, 1] pixel space."""

    def __init__(self, mean: tuple[float, ...] = CIFAR10_MEAN, std: tuple[float, ...] = CIFAR10_STD) -> None:
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv3x3(cin: int, cout: int, stride: int = 1, fixed_bits: int | None = None) -> QuantConv2d:
    return QuantConv2d(cin, cout, 3, stride=stride, padding=1, bias=False, fixed_bits=fixed_bits)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (option A: strided, zero-padded channels)."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = _conv3x3(cin, cout, stride)
        self.bn1 = SwitchBatchNorm2d(cout)
        self.act1 = QuantAct()
        self.conv2 = _conv3x3(cout, cout)
        self.bn2 = SwitchBatchNorm2d(cout)
        self.act2 = QuantAct()
        self.pad = cout - cin
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.act1(F.relu(self.bn1(self.conv1(x))))
        out = self.bn2(self.conv2(out))
        shortcut = x
        if self.stride != 1 or self.pad:
            shortcut = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))
        return self.act2(F.relu(out + shortcut))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for 32x32 images: widths 16/32/64, ``n`` blocks per stage."""

    def __init__(self, blocks_per_stage: int, num_classes: int = 10, edge_bits: int = 8) -> None:
        super().__init__()
        self.normalize = Normalize()
        self.conv1 = _conv3x3(3, 16, fixed_bits=edge_bits)
        self.bn1 = SwitchBatchNorm2d(16)
        self.act1 = QuantAct()
        layers: list[nn.Module] = []
        cin = 16
        for stage, width in enumerate((16, 32, 64)):
            for i in range(blocks_per_stage):
                layers.append(BasicBlock(cin, width, 2 if stage > 0 and i == 0 else 1))
                cin = width
        self.layers = nn.Sequential(*layers)
        # The pooled features feed an 8-bit linear layer, so they are quantized at 8 bits too.
        self.pool_act = QuantAct(fixed_bits=edge_bits)
        self.fc = QuantLinear(64, num_classes, fixed_bits=edge_bits)
        for m in self.modules():
            if isinstance(m, QuantConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The last convolutional feature map (for Grad-CAM style analyses)."""
        return self.layers(self.act1(F.relu(self.bn1(self.conv1(self.normalize(x))))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = F.adaptive_avg_pool2d(self.features(x), 1).flatten(1)
        return self.fc(self.pool_act(f))


class SmallCNN(nn.Module):
    """A fast four-convolution network for smoke runs and tests (about 0.1 M parameters)."""

    def __init__(self, num_classes: int = 10, width: int = 32, edge_bits: int = 8) -> None:
        super().__init__()
        self.normalize = Normalize()
        chans = (3, width // 2, width, 2 * width, 2 * width)
        convs, bns, acts = [], [], []
        for i in range(4):
            convs.append(_conv3x3(chans[i], chans[i + 1], fixed_bits=edge_bits if i == 0 else None))
            bns.append(SwitchBatchNorm2d(chans[i + 1]))
            acts.append(QuantAct(fixed_bits=edge_bits if i == 3 else None))
        self.convs, self.bns, self.acts = nn.ModuleList(convs), nn.ModuleList(bns), nn.ModuleList(acts)
        self.fc = QuantLinear(chans[-1], num_classes, fixed_bits=edge_bits)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.normalize(x)
        for i, (conv, bn, act) in enumerate(zip(self.convs, self.bns, self.acts)):
            x = act(F.relu(bn(conv(x))))
            if i < 3:
                x = F.max_pool2d(x, 2)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


def build_model(arch: Arch, num_classes: int = 10, edge_bits: int = 8) -> nn.Module:
    """Build ``arch`` ("resnet20", "resnet56" or "smallcnn") at full precision."""
    if arch == "resnet20":
        return CifarResNet(3, num_classes, edge_bits)
    if arch == "resnet56":
        return CifarResNet(9, num_classes, edge_bits)
    if arch == "smallcnn":
        return SmallCNN(num_classes, edge_bits=edge_bits)
    raise ValueError(f"unknown architecture {arch!r}; allowed: {', '.join(ARCHS)}")
