"""CIFAR ResNets (He et al. 2016): depth 6n+2, three stages of n basic blocks, OpenLTH style.

Convs followed by BatchNorm carry no bias: BN's shift makes it redundant, and a bias would
break SynFlow's conservation of flow. The shortcut is a strided 1x1 conv + BN when the shape
changes, the identity otherwise.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lottery.models.registry import check_image_shape, register_model

DEPTHS = (20, 32, 44, 56, 110)
DEFAULT_WIDTH = 16


def _norm(channels: int, batchnorm: bool) -> nn.Module:
    return nn.BatchNorm2d(channels) if batchnorm else nn.Identity()


def _conv3x3(in_channels: int, out_channels: int, stride: int, batchnorm: bool) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=not batchnorm)


class Shortcut(nn.Module):
    """Projection shortcut: 1x1 conv with stride, then BN."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batchnorm: bool):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=not batchnorm)
        self.bn = _norm(out_channels, batchnorm)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


class BasicBlock(nn.Module):
    """conv-BN-ReLU-conv-BN, plus the shortcut, then ReLU."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, batchnorm: bool):
        super().__init__()
        self.conv1 = _conv3x3(in_channels, out_channels, stride, batchnorm)
        self.bn1 = _norm(out_channels, batchnorm)
        self.conv2 = _conv3x3(out_channels, out_channels, 1, batchnorm)
        self.bn2 = _norm(out_channels, batchnorm)
        changes_shape = stride != 1 or in_channels != out_channels
        self.shortcut = Shortcut(in_channels, out_channels, stride, batchnorm) if changes_shape else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = F.relu(self.bn1(self.conv1(x)))
        residual = self.bn2(self.conv2(residual))
        return F.relu(residual + self.shortcut(x))


class CifarResNet(nn.Module):
    """Stem conv, stages stage1..stage3 (widths w, 2w, 4w unless stage_widths says), global average pool, output `out`."""

    def __init__(self, input_shape: tuple[int, ...], depth: int, num_classes: int,
                 width: int = DEFAULT_WIDTH, batchnorm: bool = True, stage_widths: list[int] | None = None):
        super().__init__()
        if (depth - 2) % 6 != 0 or depth < 8:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2 with n >= 1, got {depth}")
        blocks_per_stage = (depth - 2) // 6
        stage_widths = stage_widths or [width, 2 * width, 4 * width]
        self.conv = _conv3x3(input_shape[0], stage_widths[0], 1, batchnorm)  # the stem feeds stage 1's identities
        self.bn = _norm(stage_widths[0], batchnorm)
        in_channels = stage_widths[0]
        for stage, out_channels in enumerate(stage_widths, start=1):
            blocks = []
            for index in range(blocks_per_stage):
                stride = 2 if stage > 1 and index == 0 else 1
                blocks.append(BasicBlock(in_channels, out_channels, stride, batchnorm))
                in_channels = out_channels
            self.add_module(f"stage{stage}", nn.Sequential(*blocks))
        self.out = nn.Linear(in_channels, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.conv(inputs)))
        x = self.stage3(self.stage2(self.stage1(x)))
        return self.out(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet_widths(cfg, match) -> list[int]:
    """The three stages' widths: w, 2w, 4w."""
    width = cfg.width or DEFAULT_WIDTH
    return [width, 2 * width, 4 * width]


@register_model(r"^resnet(\d+)$", ", ".join(f"resnet{depth}" for depth in DEPTHS), "resnet20", (3, 8, 8),
                accepts=lambda match: int(match.group(1)) in DEPTHS, widths=resnet_widths)
def build_resnet(cfg, match, input_shape: tuple[int, ...], num_classes: int,
                 widths: list[int] | None = None) -> CifarResNet:
    check_image_shape(cfg.name, input_shape)
    return CifarResNet(input_shape, int(match.group(1)), num_classes, cfg.width or DEFAULT_WIDTH, cfg.batchnorm,
                       stage_widths=widths)
