"""From whole train/test tensors and a DataConfig to a Dataset: subset, validation split, statistics.

Rules (the same for every dataset):
- data.subset = N keeps the first N training examples (in file order);
- data.val_size = V then moves the LAST V of those into the validation split;
- data.test_subset = M keeps the first M test examples;
- mean/std, when the dataset has no standard values, come from the remaining train split.
"""
from __future__ import annotations

import logging

import torch

from lottery.data.dataset import DataError, Dataset
from lottery.errors import ConfigError

logger = logging.getLogger(__name__)


def carve_train(name: str, count: int, subset: int | None, val_size: int) -> tuple[slice, slice]:
    """Index ranges of the train and validation splits within `count` training examples."""
    if subset is not None and subset > count:
        logger.warning("%s: data.subset=%d exceeds the %d training examples; using all of them", name, subset, count)
    kept = count if subset is None else min(subset, count)
    if val_size < 0:
        raise ConfigError(f"must be >= 0, got {val_size}", "data.val_size")
    if val_size >= kept:
        raise ConfigError(f"{val_size} must be smaller than the {kept} training examples of {name} "
                          f"(after data.subset)", "data.val_size")
    return slice(0, kept - val_size), slice(kept - val_size, kept)


def check_labels(name: str, labels: torch.Tensor, num_classes: int, where: str) -> None:
    if labels.ndim != 1:
        raise DataError(f"{name}: labels in {where} must be one-dimensional, got shape {tuple(labels.shape)}")
    if len(labels) and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{name}: labels in {where} must lie in [0, {num_classes}), "
                        f"found {int(labels.min())}..{int(labels.max())}")


def train_statistics(x: torch.Tensor, scale: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (images: C, H, W) or per-feature mean and std of x * scale.

    A feature that is constant on train gets std 1, so it maps to 0 instead of blowing up.
    """
    values = x.to(torch.float64) * scale
    dims = (0, 2, 3) if values.ndim == 4 else (0,)
    mean = values.mean(dim=dims)
    std = values.std(dim=dims)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    return mean.float(), std.float()


def tensor_dataset(name: str, cfg, device, train: tuple[torch.Tensor, torch.Tensor], test: tuple[torch.Tensor, torch.Tensor],
                   num_classes: int, mean=None, std=None, scale: float = 1.0, default_augment: bool = False) -> Dataset:
    """Apply subset / val_size / test_subset to whole CPU tensors and build the Dataset."""
    (x_train, y_train), (x_test, y_test) = train, test
    for split, (x, y) in (("train", train), ("test", test)):
        if len(x) != len(y):
            raise DataError(f"{name}: {split} split has {len(x)} examples but {len(y)} labels")
        check_labels(name, y, num_classes, f"the {split} split")
    train_range, val_range = carve_train(name, len(y_train), cfg.subset, cfg.val_size)
    splits = {"train": (x_train[train_range], y_train[train_range])}
    if cfg.val_size > 0:
        splits["val"] = (x_train[val_range], y_train[val_range])
        _warn_missing_val_classes(name, splits["train"][1], splits["val"][1])
    test_count = len(y_test) if cfg.test_subset is None else min(cfg.test_subset, len(y_test))
    splits["test"] = (x_test[:test_count], y_test[:test_count])
    if mean is None or std is None:
        mean, std = train_statistics(splits["train"][0], scale)
    augment = default_augment if cfg.augment is None else cfg.augment
    dataset = Dataset(name, splits, num_classes, mean, std, scale, augment, device)
    logger.info("loaded %r", dataset)
    return dataset


def _warn_missing_val_classes(name: str, train_labels: torch.Tensor, val_labels: torch.Tensor) -> None:
    missing = set(train_labels.unique().tolist()) - set(val_labels.unique().tolist())
    if missing and len(val_labels) >= len(missing) * 10:
        logger.warning("%s: the validation split (the last data.val_size training examples) has no example of "
                       "classes %s; is the training data sorted by class?", name, sorted(missing))
