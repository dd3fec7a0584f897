"""Data pipeline: our batched on-device augmentation vs a torchvision DataLoader with PIL transforms.

Both read the same CIFAR-shaped random uint8 images and produce normalised float batches of
randomly pad-cropped (4 pixels) and flipped images:
- ours:        Dataset.train_batches(...).batch(step): one gather per batch, no per-image work;
- torchvision: DataLoader(shuffle=True) over PIL images with RandomCrop(32, padding=4),
               RandomHorizontalFlip, ToTensor and Normalize.
Ours runs in the training process (0 workers), so the DataLoader gets num_workers=0 too. The
image count is a multiple of the batch size, so every batch has the same size. In the full run,
a DataLoader with 2 workers (one per core here) is also measured, on its own, for reference.
"""
from __future__ import annotations

import logging
import time

import numpy as np
import torch
from PIL import Image

from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.timing import interleaved
from lottery.data import Dataset
from lottery.data.cifar import SPECS

logger = logging.getLogger(__name__)

GOAL = Goal(">=", 10.0)
BATCH_SIZE = 128
SEED = 0
CIFAR = SPECS["cifar10"]


def cifar_shaped_dataset(num_images: int, seed: int = SEED, augment: bool = True) -> Dataset:
    """Random uint8 images (N, 3, 32, 32) with balanced labels (i % 10), CIFAR-10's statistics, in memory."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.arange(num_images) % CIFAR.num_classes
    test = min(num_images, 1000)
    return Dataset("cifar_shaped", {"train": (images, labels), "test": (images[:test], labels[:test])},
                   CIFAR.num_classes, CIFAR.mean, CIFAR.std, scale=1 / 255, augment=augment, device="cpu")


class PilImages(torch.utils.data.Dataset):
    """HWC uint8 arrays served as PIL images through `transform`, the classic torchvision way."""

    def __init__(self, images_hwc: np.ndarray, labels: np.ndarray, transform):
        self.images, self.labels, self.transform = images_hwc, labels, transform

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int):
        return self.transform(Image.fromarray(self.images[index])), int(self.labels[index])


def torchvision_loader(dataset: Dataset, num_workers: int, batch_size: int = BATCH_SIZE) -> torch.utils.data.DataLoader:
    from torchvision import transforms

    images, labels = dataset.raw("train", slice(None))
    transform = transforms.Compose([
        transforms.RandomCrop(32, padding=4),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
        transforms.Normalize(CIFAR.mean, CIFAR.std),
    ])
    pil = PilImages(images.permute(0, 2, 3, 1).contiguous().numpy(), labels.numpy(), transform)
    return torch.utils.data.DataLoader(pil, batch_size=batch_size, shuffle=True, num_workers=num_workers,
                                       persistent_workers=num_workers > 0,
                                       generator=torch.Generator().manual_seed(SEED))


class EndlessBatches:
    """Calling it yields the next batch of a DataLoader, starting a new epoch when one ends."""

    def __init__(self, loader: torch.utils.data.DataLoader):
        self.loader = loader
        self._iterator = iter(loader)

    def __call__(self):
        try:
            return next(self._iterator)
        except StopIteration:
            self._iterator = iter(self.loader)
            return next(self._iterator)


class OurBatches:
    """Calling it yields the next training batch of our pipeline, step after step."""

    def __init__(self, dataset: Dataset):
        self.batches = dataset.train_batches(BATCH_SIZE, SEED)
        self.step = 0

    def __call__(self):
        batch = self.batches.batch(self.step)
        self.step += 1
        return batch


def images_per_second_alone(next_batch, batches: int) -> float:
    """Throughput of one pipeline timed on its own (after one warm-up batch)."""
    next_batch()
    start = time.perf_counter()
    for _ in range(batches):
        next_batch()
    return batches * BATCH_SIZE / (time.perf_counter() - start)


def run(quick: bool = False) -> list[BenchEntry]:
    num_images = BATCH_SIZE * (16 if quick else 80)
    rounds, batches_per_sample = (3, 2) if quick else (10, 8)
    dataset = cifar_shaped_dataset(num_images)
    ours = OurBatches(dataset)
    theirs = EndlessBatches(torchvision_loader(dataset, num_workers=0))
    check_same_batches(ours(), theirs())
    timings = interleaved({"ours": ours, "torchvision": theirs}, rounds, 1, batches_per_sample)
    speedup = timings.ratio("torchvision", "ours")  # time ratio = throughput ratio
    low, high = timings.ratio_spread("torchvision", "ours")
    details = {
        "ours_images_per_s": BATCH_SIZE / timings.median("ours"),
        "torchvision_images_per_s": BATCH_SIZE / timings.median("torchvision"),
        "speedup_min": low, "speedup_max": high,
        "num_workers": 0, "images": num_images, "batch_size": BATCH_SIZE, "image_shape": [3, 32, 32],
        "torch_threads": torch.get_num_threads(), **timings.summary(),
        "note": "both pipelines use 0 worker processes (ours runs in the training process); "
                "value = median over rounds of torchvision / ours time per batch",
    }
    if not quick:
        loader = torchvision_loader(dataset, num_workers=2)
        details["torchvision_2_workers_images_per_s"] = images_per_second_alone(EndlessBatches(loader), 40)
        details["speedup_vs_2_workers"] = details["ours_images_per_s"] / details["torchvision_2_workers_images_per_s"]
        details["note_2_workers"] = ("DataLoader with 2 worker processes, timed on its own (not interleaved: "
                                     "its workers prefetch while others run); for reference only")
    logger.info("data pipeline: ours %.0f images/s, torchvision %.0f images/s, %.1fx",
                details["ours_images_per_s"], details["torchvision_images_per_s"], speedup)
    return [BenchEntry("data_pipeline", speedup, "x torchvision", GOAL, details)]


def check_same_batches(ours, theirs) -> None:
    """Both pipelines must produce the same kind of batch, or the comparison means nothing."""
    (our_x, our_y), (their_x, their_y) = ours, theirs
    if our_x.shape != their_x.shape or our_x.dtype != their_x.dtype or our_y.shape != their_y.shape:
        raise RuntimeError(f"data_pipeline: batches differ: ours {tuple(our_x.shape)} {our_x.dtype}, "
                           f"torchvision {tuple(their_x.shape)} {their_x.dtype}")
