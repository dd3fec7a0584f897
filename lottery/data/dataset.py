"""The Dataset every loader returns, and the deterministic TrainBatches built from it.

Examples are stored raw (uint8 images, or floats) on the device and normalised per
batch: x_normalised = (x_raw * scale - mean) / std. Augmentation runs on the raw batch
with black (0) as padding, which equals padding with -mean/std after normalisation.
"""
from __future__ import annotations

import math
from typing import Iterator

import torch

from lottery.data.augment import draw_pad_crop_flip, pad_crop_flip
from lottery.data.order import cpu_generator, epoch_permutation, shard_bounds
from lottery.errors import LotteryError

Batch = tuple[torch.Tensor, torch.Tensor]
EVAL_SPLITS = ("test", "val", "train")


class DataError(LotteryError):
    """Data that cannot be found, read or used. The message says which file or key, and how to fix it."""


class Dataset:
    """A dataset whose splits live as tensors on `device`.

    Attributes: name, input_shape (C, H, W for images), num_classes, num_train (after
    data.subset and after removing the validation split), has_val, augment, scale, mean, std
    (shaped to broadcast over one example), device.
    """

    def __init__(self, name: str, splits: dict[str, Batch], num_classes: int, mean, std,
                 scale: float = 1.0, augment: bool = False, device="cpu"):
        device = torch.device(device)
        self._splits = {split: (x.to(device), y.to(device=device, dtype=torch.int64)) for split, (x, y) in splits.items()}
        train_x = self._splits["train"][0]
        self._set_metadata(name, tuple(train_x.shape[1:]), num_classes, mean, std, scale, augment, device)

    def _set_metadata(self, name, input_shape, num_classes, mean, std, scale, augment, device) -> None:
        self.name = name
        self.input_shape = tuple(int(size) for size in input_shape)
        self.num_classes = int(num_classes)
        self.device = torch.device(device)
        self.num_train = self.split_size("train")
        self.has_val = self.split_size("val") > 0
        if augment and len(self.input_shape) != 3:
            raise DataError(f"{name}: data.augment=true needs images (C, H, W), but examples have shape {self.input_shape}")
        self.augment = bool(augment)
        stat_shape = (-1, 1, 1) if len(self.input_shape) == 3 else self.input_shape
        self.scale = float(scale)  # raw * scale is in [0, 1] for images (corruptions work there)
        self.mean = torch.as_tensor(mean, dtype=torch.float32).reshape(stat_shape).to(self.device)
        self.std = torch.as_tensor(std, dtype=torch.float32).reshape(stat_shape).to(self.device)
        self._multiplier = scale / self.std
        self._offset = -self.mean / self.std

    def __repr__(self) -> str:
        sizes = ", ".join(f"{split}={self.split_size(split)}" for split in ("train", "val", "test"))
        return f"Dataset({self.name}, shape={self.input_shape}, classes={self.num_classes}, {sizes}, augment={self.augment})"

    # -- storage access; ImageFolderDataset overrides these three ------------------------
    def split_size(self, split: str) -> int:
        return len(self._splits[split][1]) if split in self._splits else 0

    def labels(self, split: str) -> torch.Tensor:
        return self._splits[split][1]

    def raw(self, split: str, indices) -> Batch:
        """Raw (un-normalised, un-augmented) examples and labels at `indices` (tensor or slice)."""
        x, y = self._splits[split]
        if isinstance(indices, torch.Tensor):
            indices = indices.to(self.device)
            return x.index_select(0, indices), y.index_select(0, indices)  # ~10x faster than x[indices]
        return x[indices], y[indices]

    # -- public API --------------------------------------------------------------------
    def digest(self, examples: int = 1000) -> str:
        """A short fingerprint of the data: every label and the first `examples` of each split (MLflow's dataset
        inputs; reading every image of a large dataset would cost seconds per run)."""
        import hashlib

        digest = hashlib.sha256(f"{self.name} {self.input_shape} {self.num_classes}".encode())
        for split in ("train", "val", "test"):
            size = self.split_size(split)
            if size:
                digest.update(f"{split} {size}".encode())
                digest.update(self.labels(split).cpu().numpy().tobytes())
                digest.update(self.raw(split, slice(0, min(examples, size)))[0].cpu().contiguous().numpy().tobytes())
        return digest.hexdigest()[:16]

    def normalize(self, raw_x: torch.Tensor) -> torch.Tensor:
        # A fresh copy, then in place: much faster than out-of-place broadcasting, and
        # the stored tensors (which a slice may view) stay untouched.
        return raw_x.to(torch.float32, copy=True).mul_(self._multiplier).add_(self._offset)

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> "TrainBatches":
        return TrainBatches(self, batch_size, seed, rank, world_size)

    def eval_batches(self, split: str = "test", batch_size: int = 1000) -> Iterator[Batch]:
        """(x, y) in file order, normalised, never augmented. data.test_subset already applies."""
        size = self._check_split(split)
        for start in range(0, size, batch_size):
            x, y = self.raw(split, slice(start, min(start + batch_size, size)))
            yield self.normalize(x), y

    def class_balanced(self, per_class: int, seed: int) -> Batch:
        """`per_class` training examples of every class, chosen by `seed`, normalised.

        Classes are interleaved (labels 0, 1, ..., K-1, 0, 1, ...) so that any leading
        chunk is itself balanced.
        """
        labels = self.labels("train").cpu()
        shuffled = torch.randperm(len(labels), generator=cpu_generator("balanced", seed))
        chosen = []
        for label in range(self.num_classes):
            members = shuffled[labels[shuffled] == label][:per_class]
            if len(members) < per_class:
                raise DataError(f"{self.name}: class {label} has only {len(members)} training examples, "
                                f"{per_class} per class were requested")
            chosen.append(members)
        indices = torch.stack(chosen, dim=1).reshape(-1)
        x, y = self.raw("train", indices)
        return self.normalize(x), y

    def random_examples(self, count: int, seed: int) -> Batch:
        """`count` training examples drawn uniformly without replacement by `seed`, normalised (SNIP's own code
        scores one such batch, where OpenLTH and Synaptic-Flow take a class-balanced one)."""
        if not 0 < count <= self.num_train:
            raise DataError(f"{self.name}: cannot draw {count} of its {self.num_train} training examples")
        indices = torch.randperm(self.num_train, generator=cpu_generator("pruning batch", seed))[:count]
        x, y = self.raw("train", indices)
        return self.normalize(x), y

    def _check_split(self, split: str) -> int:
        if split not in EVAL_SPLITS:
            raise DataError(f"unknown split {split!r}; valid: {', '.join(EVAL_SPLITS)}")
        if split == "val" and not self.has_val:
            raise DataError(f"{self.name} has no validation split: set data.val_size > 0")
        return self.split_size(split)


class TrainBatches:
    """Training batches as a pure function of (seed, step).

    epoch = step // iterations_per_epoch; the epoch order is a permutation seeded by
    (seed, epoch); batch `step` is the slice at position step % iterations_per_epoch (the
    last one of an epoch may be short); augmentation is seeded by (seed, step). With
    world_size > 1 each rank gets a contiguous shard of that global batch, drawn from the
    same augmentation parameters, so the shards are disjoint and together are exactly the
    single-process batch.
    """

    def __init__(self, dataset: Dataset, batch_size: int, seed: int, rank: int = 0, world_size: int = 1):
        if batch_size < 1:
            raise DataError(f"batch size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise DataError(f"rank {rank} is outside world size {world_size}")
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.iterations_per_epoch = math.ceil(dataset.num_train / batch_size)
        self._epoch = -1
        self._order = torch.empty(0, dtype=torch.int64)

    def global_indices(self, step: int) -> torch.Tensor:
        """Training-set indices of the whole (all ranks) batch for `step`, on CPU."""
        if step < 0:
            raise DataError(f"step must be >= 0, got {step}")
        epoch, position = divmod(step, self.iterations_per_epoch)
        if epoch != self._epoch:
            self._order = epoch_permutation(self.dataset.num_train, self.seed, epoch)
            self._epoch = epoch
        return self._order[position * self.batch_size:(position + 1) * self.batch_size]

    def indices(self, step: int) -> torch.Tensor:
        """This rank's shard of global_indices(step)."""
        whole = self.global_indices(step)
        start, stop = shard_bounds(len(whole), self.rank, self.world_size)
        return whole[start:stop]

    def batch(self, step: int) -> Batch:
        whole = self.global_indices(step)
        start, stop = shard_bounds(len(whole), self.rank, self.world_size)
        x, y = self._load(step, whole[start:stop])
        if self.dataset.augment:
            offsets, flips = draw_pad_crop_flip(len(whole), cpu_generator("augment", self.seed, step))
            x = pad_crop_flip(x, offsets[start:stop], flips[start:stop])
        return self.dataset.normalize(x), y

    def _load(self, step: int, indices: torch.Tensor) -> Batch:
        return self.dataset.raw("train", indices)

    @staticmethod
    def joined(batches: list["TrainBatches"], step: int) -> Batch:
        """[b.batch(step) for b in batches] joined along the batch dimension (packed training's K data orders).

        When they all read one in-memory dataset in one process, the examples come from one gather and one
        normalisation; both are elementwise, so every part equals its separate batch exactly.
        """
        first = batches[0]
        if any(type(b) is not TrainBatches or b.dataset is not first.dataset or b.world_size != 1 for b in batches):
            parts = [b.batch(step) for b in batches]
            return torch.cat([x for x, _ in parts]), torch.cat([y for _, y in parts])
        indices = [b.global_indices(step) for b in batches]
        x, y = first.dataset.raw("train", torch.cat(indices))
        if first.dataset.augment:
            draws = [draw_pad_crop_flip(len(part), cpu_generator("augment", b.seed, step))
                     for b, part in zip(batches, indices)]
            x = pad_crop_flip(x, torch.cat([offsets for offsets, _ in draws]), torch.cat([flips for _, flips in draws]))
        return first.dataset.normalize(x), y

