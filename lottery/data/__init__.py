"""Datasets: one registry, one Dataset interface, deterministic batches.

    dataset = load_dataset(config.data, seed=config.seed, device="cuda")
    batches = dataset.train_batches(batch_size=128, seed=config.seed)
    x, y = batches.batch(step)          # pure function of (seed, step)
    for x, y in dataset.eval_batches("test"): ...

Where the files are expected, how subset / val_size / test_subset cut the splits and how
augmentation works is documented in the loader modules (idx, cifar, small, imagefolder),
splits and dataset. corruptions.py makes CIFAR-10-C-style corrupted test sets from a seed.
"""
from __future__ import annotations

from functools import partial

import torch

from lottery.data.cifar import load_cifar
from lottery.data.dataset import DataError, Dataset, TrainBatches
from lottery.data.idx import load_idx_dataset
from lottery.data.imagefolder import ImageFolderDataset
from lottery.data.small import load_digits, load_npz, load_synthetic

__all__ = ["DataError", "Dataset", "TrainBatches", "dataset_names", "is_dataset_name", "load_dataset"]


def _load_imagefolder(cfg, seed: int, device) -> Dataset:
    return ImageFolderDataset(cfg, device)


# name -> loader(cfg, seed, device) -> Dataset
LOADERS = {
    "cifar10": partial(load_cifar, "cifar10"),
    "cifar100": partial(load_cifar, "cifar100"),
    "digits": load_digits,
    "fashion_mnist": partial(load_idx_dataset, "fashion_mnist"),
    "imagefolder": _load_imagefolder,
    "mnist": partial(load_idx_dataset, "mnist"),
    "npz": load_npz,
    "synthetic": load_synthetic,
}


def dataset_names() -> list[str]:
    return sorted(LOADERS)


def is_dataset_name(name: str) -> bool:
    return name in LOADERS


def load_dataset(cfg, seed: int = 0, device="cpu") -> Dataset:
    """Build the dataset `cfg.name` (a lottery.config.DataConfig) with its tensors on `device`.

    `seed` only matters for datasets whose content is random (synthetic); splits of real
    datasets never depend on it.
    """
    if not is_dataset_name(cfg.name):
        raise DataError(f"unknown dataset {cfg.name!r} (data.name); valid: {', '.join(dataset_names())}")
    return LOADERS[cfg.name](cfg, seed, torch.device(device))
