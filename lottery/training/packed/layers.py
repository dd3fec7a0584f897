"""Linear, Conv2d and BatchNorm2d over K stacked models, each model's math unchanged.

Activations of a pack travel in one of two layouts, told apart by shape:
- channels: (B, K·C, ...) — model k owns channels k·C .. (k+1)·C. Convolutions are grouped (K groups of the
  model's own groups), BatchNorm has K·C channels, so every per-channel operation of the model's own forward
  (ReLU, pooling, residual additions, flatten(1)) acts on each model separately;
- features: (K, D, B) — a batch of K feature-major matrices, so a Linear layer is one batched product
  W_k · h_k + b_k (`baddbmm`) whose weight gradient comes out in the weight's own layout.
A layer that sees the raw, unpacked input (B, C, ...) of a pack that shares one batch treats it as every
model's input: a convolution with K·O output channels, a Linear layer with the input broadcast over models.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from lottery.errors import LotteryError


class PackError(LotteryError):
    """Models that cannot train together in one pack, or a layer fed a layout it cannot be."""


class PackedLinear(nn.Module):
    """K Linear layers: weight (K, O, D), bias (K, O). Output in the features layout (K, O, B)."""

    def __init__(self, name: str, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.name, self.weight, self.bias = name, weight, bias
        self.pack_size, self.out_features, self.in_features = weight.shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pack, width = self.pack_size, self.in_features
        if x.dim() == 3 and x.shape[0] == pack and x.shape[1] == width:
            features = x
        elif x.dim() == 2 and x.shape[1] == pack * width:
            features = x.view(x.shape[0], pack, width).permute(1, 2, 0)
        elif x.dim() == 2 and x.shape[1] == width:
            features = x.t().expand(pack, width, x.shape[0])  # one shared batch
        else:
            raise PackError(f"packed layer {self.name} (Linear {width} -> {self.out_features}) got input of shape "
                            f"{tuple(x.shape)}: this model's forward does not keep its {pack} models apart")
        if self.bias is None:
            return torch.bmm(self.weight, features)
        return torch.baddbmm(self.bias.unsqueeze(2), self.weight, features)


class PackedConv2d(nn.Module):
    """K Conv2d layers as one grouped convolution: weight (K, O, I/g, kh, kw) seen as (K·O, I/g, kh, kw)."""

    def __init__(self, name: str, conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None):
        super().__init__()
        self.name, self.weight, self.bias = name, weight, bias
        self.pack_size, self.in_channels, self.groups = weight.shape[0], conv.in_channels, conv.groups
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.padding_mode = conv.padding_mode
        self.reversed_padding = conv._reversed_padding_repeated_twice

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pack = self.pack_size
        weight = self.weight.view(-1, *self.weight.shape[2:])
        bias = None if self.bias is None else self.bias.view(-1)
        if x.dim() == 4 and x.shape[1] == pack * self.in_channels:
            groups = pack * self.groups
        elif x.dim() == 4 and x.shape[1] == self.in_channels and self.groups == 1:
            groups = 1  # one shared batch: every model's filters over the same input
        else:
            raise PackError(f"packed layer {self.name} (Conv2d, {self.in_channels} input channels, groups "
                            f"{self.groups}) got input of shape {tuple(x.shape)}: this model's forward does not "
                            f"keep its {pack} models apart")
        if self.padding_mode != "zeros":
            x = F.pad(x, self.reversed_padding, mode=self.padding_mode)
            return F.conv2d(x, weight, bias, self.stride, 0, self.dilation, groups)
        return F.conv2d(x, weight, bias, self.stride, self.padding, self.dilation, groups)


class PackedBatchNorm2d(nn.Module):
    """K BatchNorm2d layers as one over K·C channels; running statistics (K, C), each from its model's batch."""

    def __init__(self, name: str, norm: nn.BatchNorm2d, weight, bias, running_mean, running_var,
                 num_batches_tracked):
        super().__init__()
        if norm.track_running_stats and norm.momentum is None:
            raise PackError(f"{name}: BatchNorm with momentum=None (a cumulative average) cannot be packed")
        self.name, self.weight, self.bias = name, weight, bias
        self.running_mean, self.running_var, self.num_batches_tracked = running_mean, running_var, num_batches_tracked
        self.channels, self.eps, self.momentum = norm.num_features, norm.eps, norm.momentum
        self.track_running_stats = norm.track_running_stats
        self.pack_size = (weight if weight is not None else running_mean).shape[0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or x.shape[1] != self.pack_size * self.channels:
            raise PackError(f"packed layer {self.name} (BatchNorm2d, {self.channels} channels) got input of shape "
                            f"{tuple(x.shape)}: this model's forward does not keep its {self.pack_size} models apart")
        # As nn.BatchNorm2d.forward, with each tensor seen flat over the pack.
        if self.training and self.track_running_stats and self.num_batches_tracked is not None:
            self.num_batches_tracked.add_(1)
        use_batch_stats = self.training or self.running_mean is None
        track = not self.training or self.track_running_stats
        return F.batch_norm(
            x,
            self.running_mean.view(-1) if track and self.running_mean is not None else None,
            self.running_var.view(-1) if track and self.running_var is not None else None,
            None if self.weight is None else self.weight.view(-1),
            None if self.bias is None else self.bias.view(-1),
            use_batch_stats, self.momentum if self.momentum is not None else 0.0, self.eps,
        )


def packed_logits(output: torch.Tensor, pack_size: int) -> torch.Tensor:
    """The network's output as (K, classes, B), the layout cross_entropy takes with labels (K, B)."""
    if output.dim() == 3 and output.shape[0] == pack_size:
        return output
    if output.dim() == 2 and output.shape[1] % pack_size == 0:
        return output.view(output.shape[0], pack_size, -1).permute(1, 2, 0)
    raise PackError(f"the packed network's output has shape {tuple(output.shape)}, not (K={pack_size}, classes, B) "
                    f"or (B, K*classes)")
