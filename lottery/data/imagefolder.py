"""Image folders streamed from disk with torchvision's ImageFolder and a DataLoader.

Layout: <folder>/train/<class>/<image> and <folder>/val/<class>/<image> (or test/ instead
of val/), where <folder> is data.path if set, else data.root. The val/ folder is the
held-out evaluation set (the "test" split); data.val_size carves a validation split
from train/ as for every other dataset.

Choices, kept simple:
- Every image is resized (shorter side) and centre-cropped to a square whose side is the
  shorter side of the first training image, then kept as uint8 RGB: input_shape (3, S, S).
  A folder of equally sized small images therefore keeps its native size.
- ImageFolder lists files class by class, so before data.subset / data.val_size the
  training files are shuffled once by a fixed permutation (numpy RandomState(0),
  independent of the run seed); "first N" and "last V" then refer to that order.
- mean/std per channel come from up to 256 training images spread evenly over the train split.
- Batches follow the same (seed, step) order and augmentation as tensor datasets; a
  DataLoader over exactly those index lists is kept open while steps are consecutive.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from lottery.data.dataset import Batch, DataError, Dataset, TrainBatches
from lottery.data.splits import carve_train, train_statistics

logger = logging.getLogger(__name__)

STATISTICS_SAMPLE = 256


def default_workers() -> int:
    return min(4, (os.cpu_count() or 1) // 2)


def _open_folder(path: Path, transform=None):
    from torchvision.datasets import ImageFolder

    try:
        return ImageFolder(str(path), transform=transform)
    except (FileNotFoundError, OSError) as error:
        raise DataError(f"imagefolder: cannot use {path}: {error}. Expected {path}/<class name>/<image files>.") from None


class ImageFolderDataset(Dataset):
    """The Dataset interface over images on disk (see the module docstring for the choices)."""

    def __init__(self, cfg, device="cpu", num_workers: int | None = None):
        folder = Path(cfg.path or cfg.root).expanduser()
        test_dir = next((folder / name for name in ("val", "test") if (folder / name).is_dir()), None)
        if not (folder / "train").is_dir() or test_dir is None:
            raise DataError(f"imagefolder: expected folders {folder / 'train'} and {folder / 'val'} (or test/), each with "
                            f"one sub-folder per class; set data.path (or data.root / DATA_ROOT) to their parent")
        from torchvision import transforms

        train_folder = _open_folder(folder / "train")
        width, height = train_folder.loader(train_folder.samples[0][0]).size
        side = min(width, height)
        transform = transforms.Compose([transforms.Resize(side), transforms.CenterCrop(side), transforms.PILToTensor()])
        train_folder.transform = transform
        test_folder = _open_folder(test_dir, transform)
        _remap_classes(test_folder, train_folder.class_to_idx, test_dir)
        self.device = torch.device(device)
        self.num_workers = default_workers() if num_workers is None else num_workers
        self._members = _carve(cfg, train_folder, test_folder)
        self._folders = {"train": train_folder, "val": train_folder, "test": test_folder}
        sample = np.linspace(0, len(self._members["train"]) - 1, min(STATISTICS_SAMPLE, len(self._members["train"])))
        mean, std = train_statistics(self.raw("train", torch.as_tensor(sample.round().astype(np.int64)))[0], 1 / 255)
        augment = bool(cfg.augment)
        self._set_metadata("imagefolder", (3, side, side), len(train_folder.classes), mean, std, 1 / 255, augment, device)
        self.classes = list(train_folder.classes)
        logger.info("loaded %r from %s", self, folder)

    def split_size(self, split: str) -> int:
        return len(self._members.get(split, ()))

    def labels(self, split: str) -> torch.Tensor:
        targets = np.asarray(self._folders[split].targets, dtype=np.int64)
        return torch.as_tensor(targets[self._members[split]])

    def raw(self, split: str, indices) -> Batch:
        positions = np.arange(self.split_size(split))[indices] if isinstance(indices, slice) else np.asarray(indices.cpu())
        batches = list(self.loader(split, [positions]))
        return batches[0]

    def loader(self, split: str, position_batches: list) -> Iterator[Batch]:
        """Raw (x uint8, y) batches for lists of positions within `split`, on the device."""
        members = self._members[split]
        batch_sampler = [members[np.asarray(positions, dtype=np.int64)].tolist() for positions in position_batches]
        loader = torch.utils.data.DataLoader(self._folders[split], batch_sampler=batch_sampler,
                                             num_workers=self.num_workers if len(batch_sampler) > 1 else 0)
        for x, y in loader:
            yield x.to(self.device), y.to(self.device)

    def eval_batches(self, split: str = "test", batch_size: int = 1000) -> Iterator[Batch]:
        size = self._check_split(split)
        chunks = [range(start, min(start + batch_size, size)) for start in range(0, size, batch_size)]
        for x, y in self.loader(split, chunks):
            yield self.normalize(x), y

    def train_batches(self, batch_size: int, seed: int, rank: int = 0, world_size: int = 1) -> TrainBatches:
        return StreamedTrainBatches(self, batch_size, seed, rank, world_size)


class StreamedTrainBatches(TrainBatches):
    """TrainBatches that keep one DataLoader per run of consecutive steps within an epoch."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._stream: Iterator[Batch] | None = None
        self._stream_step = self._stream_end = -1

    def _load(self, step: int, indices: torch.Tensor) -> Batch:
        if self._stream is None or step != self._stream_step or step >= self._stream_end:
            self._stream_end = (step // self.iterations_per_epoch + 1) * self.iterations_per_epoch
            plan = [self.indices(future).numpy() for future in range(step, self._stream_end)]
            self._stream = self.dataset.loader("train", plan)
        batch = next(self._stream)
        self._stream_step = step + 1
        return batch


def _remap_classes(test_folder, class_to_idx: dict[str, int], test_dir: Path) -> None:
    """Give the evaluation folder the training folder's class indices."""
    unknown = sorted(set(test_folder.classes) - set(class_to_idx))
    if unknown:
        raise DataError(f"imagefolder: {test_dir} has classes {unknown} that train/ does not have")
    test_folder.samples = [(path, class_to_idx[test_folder.classes[label]]) for path, label in test_folder.samples]
    test_folder.targets = [label for _, label in test_folder.samples]
    test_folder.imgs = test_folder.samples
    test_folder.classes = sorted(class_to_idx, key=class_to_idx.get)
    test_folder.class_to_idx = dict(class_to_idx)


def _carve(cfg, train_folder, test_folder) -> dict[str, np.ndarray]:
    """Folder sample indices of each split (see the module docstring for the rules)."""
    order = np.random.RandomState(0).permutation(len(train_folder.samples))
    train_range, val_range = carve_train("imagefolder", len(order), cfg.subset, cfg.val_size)
    members = {"train": order[train_range]}
    if cfg.val_size > 0:
        members["val"] = order[val_range]
    test_count = len(test_folder.samples) if cfg.test_subset is None else min(cfg.test_subset, len(test_folder.samples))
    members["test"] = np.arange(test_count)
    return members
