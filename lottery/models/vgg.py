"""CIFAR VGG-11/13/16/19 (configs A, B, D, E), in the OpenLTH / Synaptic-Flow style.

The last max-pool of the ImageNet configs is replaced by a global average pool, followed by
a single Linear layer. On 32x32 inputs that is OpenLTH's AvgPool2d(2); pooling with
ceil_mode and the global average let smaller inputs (28x28, 8x8) work too.
Convs followed by BatchNorm carry no bias (see resnet.py for why).
"""
from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torch.nn import functional as F

from lottery.models.registry import check_image_shape, register_model

POOL = "M"
CONFIGS = {
    11: [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512],
    13: [64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512],
    16: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512],
    19: [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL, 512, 512, 512, 512],
}
STANDARD_WIDTH = 64


class CifarVGG(nn.Module):
    """features (conv1, bn1, relu1, ..., pool1, ...), global average pool, output `out`."""

    def __init__(self, input_shape: tuple[int, ...], depth: int, num_classes: int,
                 width: int = STANDARD_WIDTH, batchnorm: bool = True, conv_widths: list[int] | None = None):
        super().__init__()
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        channels, conv_count, pool_count = input_shape[0], 0, 0
        conv_widths = conv_widths or [entry * width // STANDARD_WIDTH for entry in CONFIGS[depth] if entry != POOL]
        for entry in CONFIGS[depth]:
            if entry == POOL:
                pool_count += 1
                layers[f"pool{pool_count}"] = nn.MaxPool2d(2, ceil_mode=True)
                continue
            out_channels = conv_widths[conv_count]
            conv_count += 1
            layers[f"conv{conv_count}"] = nn.Conv2d(channels, out_channels, 3, padding=1, bias=not batchnorm)
            if batchnorm:
                layers[f"bn{conv_count}"] = nn.BatchNorm2d(out_channels)
            layers[f"relu{conv_count}"] = nn.ReLU()
            channels = out_channels
        self.features = nn.Sequential(layers)
        self.out = nn.Linear(channels, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = self.features(inputs)
        return self.out(F.adaptive_avg_pool2d(x, 1).flatten(1))


def vgg_widths(cfg, match) -> list[int]:
    """One width per conv layer."""
    width = cfg.width or STANDARD_WIDTH
    return [entry * width // STANDARD_WIDTH for entry in CONFIGS[int(match.group(1))] if entry != POOL]


@register_model(r"^vgg(\d+)$", ", ".join(f"vgg{depth}" for depth in CONFIGS), "vgg11", (3, 8, 8),
                accepts=lambda match: int(match.group(1)) in CONFIGS, widths=vgg_widths)
def build_vgg(cfg, match, input_shape: tuple[int, ...], num_classes: int, widths: list[int] | None = None) -> CifarVGG:
    check_image_shape(cfg.name, input_shape)
    return CifarVGG(input_shape, int(match.group(1)), num_classes, cfg.width or STANDARD_WIDTH, cfg.batchnorm,
                    conv_widths=widths)
