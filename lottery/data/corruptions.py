"""Corrupted test sets in the style of CIFAR-10-C (Hendrycks & Dietterich 2019), generated from a seed.

Five corruptions at severities 1-5, with the parameters of the CIFAR-10-C generator (make_cifar_c.py), on
the raw images scaled to [0, 1], before normalisation; every result is clipped to [0, 1]:

    noise       x + N(0, c²)                            c = 0.04, 0.06, 0.08, 0.09, 0.10
    blur        Gaussian blur, σ in pixels               σ = 0.4, 0.6, 0.7, 0.8, 1.0
    contrast    (x - m)·c + m, m the per-channel mean    c = 0.75, 0.5, 0.4, 0.3, 0.15
    brightness  V + c in HSV                             c = 0.05, 0.1, 0.15, 0.2, 0.3
    jpeg        PIL JPEG round trip at quality           q = 80, 65, 58, 50, 40

Severity 0 is the clean image, unchanged. The same parameters serve every image size: all but blur are
per pixel; blur is in pixels, and CIFAR's 0.4-1 px is already the smallest range that changes an image (a
σ scaled down to 8x8 digits, 0.1-0.25 px, would leave every severity an identity), so on MNIST (28 px) it
is CIFAR's blur and on 8x8 digits a relatively stronger one. The blur follows skimage's `gaussian` (scipy:
kernel radius int(4σ + 0.5), edges repeated); brightness uses the exact HSV identity (V' = min(V + c, 1)
scales every channel by V'/V, and black becomes grey V'), so no colour-space round trip.

Datasets stored as uint8 (MNIST, CIFAR, image folders) get their corrupted images rounded back to uint8, as
CIFAR-10-C is stored; float images (digits) stay float. Noise comes from CPU generators seeded by
mix_seed(corruption, seed, chunk), the same draw scaled for every severity, and JPEG runs on the CPU, so the images are the same on every
device and for every evaluation batch size; the rest runs on the data's device.
"""
from __future__ import annotations

import io
import math
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from lottery.data.dataset import Batch, DataError
from lottery.seeds import mix_seed

CORRUPTIONS = ("noise", "blur", "contrast", "brightness", "jpeg")
SEVERITIES = (1, 2, 3, 4, 5)
PARAMETERS = {
    "noise": (0.04, 0.06, 0.08, 0.09, 0.10),
    "blur": (0.4, 0.6, 0.7, 0.8, 1.0),
    "contrast": (0.75, 0.5, 0.4, 0.3, 0.15),
    "brightness": (0.05, 0.1, 0.15, 0.2, 0.3),
    "jpeg": (80, 65, 58, 50, 40),
}
CHUNK = 256  # examples per noise draw: the images do not depend on the evaluation batch size


def gaussian_noise(images: torch.Tensor, std: float, generator: torch.Generator) -> torch.Tensor:
    noise = torch.randn(images.shape, generator=generator, dtype=torch.float32)
    return images + noise.to(images.device) * std


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """scipy.ndimage.gaussian_filter over height and width (truncate 4, mode 'nearest'), channel by channel."""
    radius = int(4 * sigma + 0.5)
    offsets = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
    kernel = (kernel / kernel.sum()).to(device=images.device, dtype=images.dtype)
    count, channels, height, width = images.shape
    flat = images.reshape(count * channels, 1, height, width)
    flat = F.conv2d(F.pad(flat, (radius, radius, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, radius, radius), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(count, channels, height, width)


def contrast(images: torch.Tensor, factor: float) -> torch.Tensor:
    means = images.mean(dim=(2, 3), keepdim=True)
    return (images - means) * factor + means


def brightness(images: torch.Tensor, shift: float) -> torch.Tensor:
    """HSV value + shift: every channel scaled by V'/V with V the channel maximum; black becomes grey V'."""
    value = images.amax(dim=1, keepdim=True)
    brighter = (value + shift).clamp(max=1.0)
    ratio = torch.where(value > 0, brighter / value.clamp(min=1e-12), torch.zeros_like(value))
    return torch.where(value > 0, images * ratio, brighter.expand_as(images))


def jpeg(images: torch.Tensor, quality: int) -> torch.Tensor:
    """Each image through PIL's JPEG encoder and decoder at `quality` (grey or RGB), on the CPU."""
    from PIL import Image

    count, channels = images.shape[:2]
    if channels not in (1, 3):
        raise DataError(f"the jpeg corruption needs grey or RGB images, got {channels} channels")
    pixels = (images.clamp(0, 1) * 255).round().to(torch.uint8).permute(0, 2, 3, 1).cpu().numpy()
    decoded = np.empty_like(pixels)
    for index in range(count):
        picture = Image.fromarray(pixels[index, :, :, 0] if channels == 1 else pixels[index],
                                  mode="L" if channels == 1 else "RGB")
        buffer = io.BytesIO()
        picture.save(buffer, format="JPEG", quality=quality)
        buffer.seek(0)
        decoded[index] = np.asarray(Image.open(buffer)).reshape(pixels.shape[1:])
    return torch.from_numpy(decoded).permute(0, 3, 1, 2).to(images.device, torch.float32) / 255


def corrupt(images: torch.Tensor, name: str, severity: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """`images` (N, C, H, W) in [0, 1] under corruption `name` at `severity` (0: unchanged), clipped to [0, 1]."""
    check(name, severity)
    if severity == 0:
        return images
    parameter = PARAMETERS[name][severity - 1]
    if name == "noise":
        if generator is None:
            raise ValueError("the noise corruption needs a generator")
        out = gaussian_noise(images, parameter, generator)
    elif name == "blur":
        out = gaussian_blur(images, parameter)
    elif name == "contrast":
        out = contrast(images, parameter)
    elif name == "brightness":
        out = brightness(images, parameter)
    else:
        out = jpeg(images, parameter)
    return out.clamp_(0.0, 1.0)


def check(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {name!r}; valid: {', '.join(CORRUPTIONS)}")
    if not 0 <= severity <= len(SEVERITIES):
        raise ValueError(f"severity must be in 0..{len(SEVERITIES)}, got {severity}")


class CorruptedTestSets:
    """The dataset's test split under each corruption and severity, normalised and ready to evaluate.

    Chunks are generated once and kept (in the raw dtype) while they fit in `budget_bytes`, so evaluating many
    networks costs one generation per corruption and severity.
    """

    def __init__(self, dataset, seed: int = 0, budget_bytes: int = 2 << 30):
        if len(dataset.input_shape) != 3:
            raise DataError(f"{dataset.name}: corruptions need images (C, H, W), but examples have shape "
                            f"{dataset.input_shape}")
        self.dataset, self.seed, self.budget = dataset, seed, budget_bytes
        self._kept: dict[tuple[str, int, int], torch.Tensor] = {}
        self._kept_bytes = 0

    def batches(self, name: str, severity: int) -> Iterator[Batch]:
        """(normalised corrupted images, labels) chunk by chunk; severity 0 gives the clean test set."""
        check(name, severity)
        size = self.dataset.split_size("test")
        for index, start in enumerate(range(0, size, CHUNK)):
            raw, labels = self.dataset.raw("test", slice(start, min(start + CHUNK, size)))
            if severity > 0:
                raw = self._corrupted(raw, name, severity, index)
            yield self.dataset.normalize(raw), labels

    def clean(self) -> Iterator[Batch]:
        return self.batches(CORRUPTIONS[0], 0)

    def _corrupted(self, raw: torch.Tensor, name: str, severity: int, index: int) -> torch.Tensor:
        key = (name, severity, index)
        if key in self._kept:
            return self._kept[key]
        scale = self.dataset.scale
        images = raw.to(torch.float32) * scale
        if raw.dtype != torch.uint8 and (images.numel() and (images.min() < 0 or images.max() > 1)):
            raise DataError(f"{self.dataset.name}: corruptions need images in [0, 1] (after the dataset's scale); "
                            f"these range over {images.min().item():.3g}..{images.max().item():.3g}")
        # One noise draw per chunk for every severity: severities differ only in its scale (paired comparisons).
        generator = torch.Generator().manual_seed(mix_seed("corruption", name, self.seed, index))
        out = corrupt(images, name, severity, generator)
        out = (out * 255).round_().to(torch.uint8) if raw.dtype == torch.uint8 and math.isclose(scale, 1 / 255) \
            else (out / scale).to(raw.dtype)
        if self._kept_bytes + out.numel() * out.element_size() <= self.budget:
            self._kept[key] = out
            self._kept_bytes += out.numel() * out.element_size()
        return out
