"""Conv-2, Conv-4 and Conv-6 from the LTH paper (Frankle & Carbin 2019, figure 2)."""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lottery.models.registry import check_image_shape, register_model

# Pairs of 3x3 convs per block, each block followed by a 2x2 max-pool.
BLOCK_WIDTHS = {"conv2": [64], "conv4": [64, 128], "conv6": [64, 128, 256]}
HIDDEN_FC = (256, 256)


class ConvNet(nn.Module):
    """conv1..convN (3x3, padding 1, ReLU; max-pool after every second), fc1, fc2, out."""

    def __init__(self, input_shape: tuple[int, ...], block_widths: list[int], num_classes: int,
                 hidden: tuple[int, int] = HIDDEN_FC):
        super().__init__()
        channels, height, width = input_shape
        self.conv_names = []
        for block, block_width in enumerate(block_widths):
            for position in range(2):
                name = f"conv{2 * block + position + 1}"
                self.add_module(name, nn.Conv2d(channels, block_width, kernel_size=3, padding=1))
                self.conv_names.append(name)
                channels = block_width
            height, width = height // 2, width // 2
        if height < 1 or width < 1:
            raise ValueError(f"input shape {tuple(input_shape)} is too small for {len(block_widths)} max-pools")
        self.fc1 = nn.Linear(channels * height * width, hidden[0])
        self.fc2 = nn.Linear(hidden[0], hidden[1])
        self.out = nn.Linear(hidden[1], num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs
        for index, name in enumerate(self.conv_names):
            x = F.relu(getattr(self, name)(x))
            if index % 2 == 1:
                x = F.max_pool2d(x, 2)
        x = F.relu(self.fc1(x.flatten(1)))
        x = F.relu(self.fc2(x))
        return self.out(x)


def convnet_widths(cfg, match) -> list[int]:
    """The block widths, then the two hidden fully connected widths."""
    # model.width sets the first block's width; later blocks keep the 1:2:4 ratio.
    blocks = [w * cfg.width // 64 for w in BLOCK_WIDTHS[cfg.name]] if cfg.width else BLOCK_WIDTHS[cfg.name]
    return [*blocks, *HIDDEN_FC]


@register_model(r"^(conv2|conv4|conv6)$", ", ".join(BLOCK_WIDTHS), "conv2", (3, 8, 8), widths=convnet_widths)
def build_convnet(cfg, match, input_shape: tuple[int, ...], num_classes: int,
                  widths: list[int] | None = None) -> ConvNet:
    check_image_shape(cfg.name, input_shape)
    widths = widths or convnet_widths(cfg, match)
    return ConvNet(input_shape, widths[:-2], num_classes, tuple(widths[-2:]))
