"""Batched pad-crop-flip augmentation on tensors, on whatever device the batch lives.

The random parameters are drawn separately (from a CPU generator, for the whole global
batch) from their application, so every DDP rank can apply its slice of the same draw.
"""
from __future__ import annotations

import torch

PADDING = 4


def draw_pad_crop_flip(num_images: int, generator: torch.Generator, padding: int = PADDING) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image crop offsets (N, 2) in [0, 2*padding] (row, column) and flip flags (N,)."""
    offsets = torch.randint(0, 2 * padding + 1, (num_images, 2), generator=generator)
    flips = torch.rand(num_images, generator=generator) < 0.5
    return offsets, flips


def pad_crop_flip(images: torch.Tensor, offsets: torch.Tensor, flips: torch.Tensor, padding: int = PADDING, fill=0.0) -> torch.Tensor:
    """Pad every image by `padding` with `fill`, cut the window at `offsets`, mirror it where `flips`.

    images: (N, C, H, W) of any dtype. fill: a scalar or one value per channel. Pass the raw
    value of black (0) for raw images, or -mean/std for already normalised ones; both equal
    torchvision's Pad -> RandomCrop -> RandomHorizontalFlip -> Normalize. One gather, no
    Python loop over images.
    """
    num, channels, height, width = images.shape
    padded_h, padded_w = height + 2 * padding, width + 2 * padding
    fill = torch.as_tensor(fill, dtype=images.dtype, device=images.device).reshape(-1, 1, 1)
    padded = fill.expand(channels, padded_h, padded_w).repeat(num, 1, 1, 1)
    padded[:, :, padding:padding + height, padding:padding + width] = images
    offsets = offsets.to(images.device)
    flips = flips.to(images.device)
    rows = offsets[:, :1] + torch.arange(height, device=images.device)
    columns = torch.arange(width, device=images.device).expand(num, width)
    columns = torch.where(flips[:, None], width - 1 - columns, columns) + offsets[:, 1:]
    flat_index = (rows[:, :, None] * padded_w + columns[:, None, :]).reshape(num, 1, height * width)
    windows = padded.reshape(num, channels, -1).gather(2, flat_index.expand(num, channels, -1))
    return windows.reshape(num, channels, height, width)
