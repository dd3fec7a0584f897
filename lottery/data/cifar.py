"""CIFAR-10 and CIFAR-100 from the python pickles, in torchvision's layout.

Expected files: <data.root>/cifar-10-batches-py/{data_batch_1..5, test_batch} or
<data.root>/cifar-100-python/{train, test}. Each file is checked against the official
md5; a copy with mismatches gets one WARNING naming them all, and is still loaded (a
re-packed or reduced copy is legitimate, but the numbers it gives are not comparable).
"""
from __future__ import annotations

import hashlib
import logging
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lottery.data.dataset import DataError, Dataset
from lottery.data.fetch import missing_files_error, torchvision_download
from lottery.data.splits import tensor_dataset

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CifarSpec:
    folder: str
    train_files: tuple[tuple[str, str], ...]  # (file name, official md5)
    test_files: tuple[tuple[str, str], ...]
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    torchvision_class: str


SPECS = {
    "cifar10": CifarSpec(
        folder="cifar-10-batches-py",
        train_files=(("data_batch_1", "c99cafc152244af753f735de768cd75f"),
                     ("data_batch_2", "d4bba439e000b95fd0a9bffe97cbabec"),
                     ("data_batch_3", "54ebc095f3ab1f0389bbae665268c751"),
                     ("data_batch_4", "634d18415352ddfa80567beed471001a"),
                     ("data_batch_5", "482c414d41f54cd18b22e5b47cb7c3cb")),
        test_files=(("test_batch", "40351d587109b95175f43aff81a1287e"),),
        label_key="labels", num_classes=10,
        mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616), torchvision_class="CIFAR10"),
    "cifar100": CifarSpec(
        folder="cifar-100-python",
        train_files=(("train", "16019d7e3df5f24257cddd939b257f8d"),),
        test_files=(("test", "f0ef6b0ae62326f3e7ffdfab6717acfc"),),
        label_key="fine_labels", num_classes=100,
        mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762), torchvision_class="CIFAR100"),
}


def file_md5(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_batch(path: Path, label_key: str) -> tuple[torch.Tensor, torch.Tensor]:
    """One pickle -> images (N, 3, 32, 32) uint8 and labels (N,) int64."""
    try:
        with open(path, "rb") as handle:
            entry = pickle.load(handle, encoding="latin1")
    except (OSError, pickle.UnpicklingError, EOFError) as error:
        raise DataError(f"cannot read CIFAR pickle {path}: {error}") from None
    # Python-2 pickles may carry bytes keys; normalise to str.
    entry = {key.decode() if isinstance(key, bytes) else key: value for key, value in entry.items()}
    for key in ("data", label_key):
        if key not in entry:
            raise DataError(f"CIFAR pickle {path} has no key {key!r} (keys: {sorted(entry)})")
    data = np.asarray(entry["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise DataError(f"CIFAR pickle {path}: 'data' must have shape (N, 3072), got {data.shape}")
    images = torch.from_numpy(data.reshape(-1, 3, 32, 32).copy())
    labels = torch.as_tensor(np.asarray(entry[label_key], dtype=np.int64))
    return images, labels


def _read_files(spec: CifarSpec, folder: Path, files) -> tuple[torch.Tensor, torch.Tensor]:
    parts = [read_batch(folder / file_name, spec.label_key) for file_name, _ in files]
    return torch.cat([images for images, _ in parts]), torch.cat([labels for _, labels in parts])


def warn_unofficial(name: str, folder: Path, files) -> None:
    """One warning for the whole copy, naming every file whose md5 is not the official one."""
    differing = [file_name for file_name, expected_md5 in files if file_md5(folder / file_name) != expected_md5]
    if differing:
        logger.warning("%s: md5 of %d of %d files in %s differs from the official dataset (%s); loading them "
                       "anyway, but results are not comparable with the official %s", name, len(differing),
                       len(files), folder, ", ".join(differing), name)


def load_cifar(name: str, cfg, seed: int, device) -> Dataset:
    spec = SPECS[name]
    root = Path(cfg.root).expanduser()
    folder = root / spec.folder
    names = [file_name for file_name, _ in spec.train_files + spec.test_files]
    missing = [file_name for file_name in names if not (folder / file_name).is_file()]
    download_error = None
    if missing and cfg.download:
        download_error = torchvision_download(spec.torchvision_class, root)
        missing = [file_name for file_name in names if not (folder / file_name).is_file()]
    if missing:
        raise missing_files_error(name, folder, missing, f"{spec.folder}/", download_error)
    warn_unofficial(name, folder, spec.train_files + spec.test_files)
    train = _read_files(spec, folder, spec.train_files)
    test = _read_files(spec, folder, spec.test_files)
    return tensor_dataset(name, cfg, device, train, test, num_classes=spec.num_classes,
                          mean=spec.mean, std=spec.std, scale=1 / 255, default_augment=True)
