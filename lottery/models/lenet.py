"""LeNet-style fully connected networks: lenet_300_100 and friends (LTH paper)."""
from __future__ import annotations

import math

import torch
from torch import nn

from lottery.models.registry import refuse_width, register_model


class LeNet(nn.Module):
    """Flatten, then hidden Linear+ReLU layers fc1, fc2, ..., then the output layer `out`."""

    def __init__(self, input_shape: tuple[int, ...], hidden: list[int], num_classes: int):
        super().__init__()
        self.hidden_names = []
        width = math.prod(input_shape)
        for index, next_width in enumerate(hidden, start=1):
            self.add_module(f"fc{index}", nn.Linear(width, next_width))
            self.hidden_names.append(f"fc{index}")
            width = next_width
        self.out = nn.Linear(width, num_classes)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        x = inputs.flatten(1)
        for name in self.hidden_names:
            x = torch.relu(getattr(self, name)(x))
        return self.out(x)


def hidden_widths(cfg, match) -> list[int]:
    return [int(width) for width in match.group(1).strip("_").split("_")]


@register_model(r"^lenet((?:_[1-9]\d*)+)$", "lenet_<w1>_<w2>... (e.g. lenet_300_100)", "lenet_16_8", (1, 8, 8),
                widths=hidden_widths)
def build_lenet(cfg, match, input_shape: tuple[int, ...], num_classes: int, widths: list[int] | None = None) -> LeNet:
    refuse_width(cfg.name, cfg.width)
    return LeNet(input_shape, widths or hidden_widths(cfg, match), num_classes)
