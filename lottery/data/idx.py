"""MNIST and Fashion-MNIST from idx files in torchvision's layout.

Expected files: <data.root>/MNIST/raw/ (or FashionMNIST/raw/) with
train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and
t10k-labels-idx1-ubyte, each either plain or gzipped (".gz"). The files are parsed
directly with numpy (no PIL); missing ones are fetched by torchvision unless data.download=false.
"""
from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import torch

from lottery.data.dataset import DataError, Dataset
from lottery.data.fetch import missing_files_error, torchvision_download
from lottery.data.splits import tensor_dataset

FOLDERS = {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}
STATISTICS = {"mnist": (0.1307, 0.3081), "fashion_mnist": (0.2860, 0.3530)}
FILE_STEMS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
# idx type code -> numpy dtype (multi-byte types are big-endian in the format)
IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """Parse one idx file (plain or .gz) into an array of its declared shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as handle:
            data = handle.read()
    except OSError as error:
        raise DataError(f"cannot read idx file {path}: {error}") from None
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an idx file (bad magic number {data[:4].hex()})")
    dtype = np.dtype(IDX_TYPES[data[2]])
    ndim = data[3]
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{path} is truncated: its header is incomplete")
    shape = tuple(int(size) for size in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    count = int(np.prod(shape))
    if len(data) - header != count * dtype.itemsize:
        raise DataError(f"{path} is truncated or corrupt: header declares shape {shape} "
                        f"({count * dtype.itemsize} bytes) but {len(data) - header} bytes follow")
    return np.frombuffer(data, dtype=dtype, count=count, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def find_idx_file(raw_dir: Path, stem: str) -> Path | None:
    for candidate in (raw_dir / stem, raw_dir / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def load_idx_dataset(name: str, cfg, seed: int, device) -> Dataset:
    root = Path(cfg.root).expanduser()
    raw_dir = root / FOLDERS[name] / "raw"
    stems = [stem for pair in FILE_STEMS.values() for stem in pair]
    missing = [stem for stem in stems if find_idx_file(raw_dir, stem) is None]
    download_error = None
    if missing and cfg.download:
        download_error = torchvision_download(FOLDERS[name], root)
        missing = [stem for stem in stems if find_idx_file(raw_dir, stem) is None]
    if missing:
        expected = [f"{stem}[.gz]" for stem in missing]
        raise missing_files_error(name, raw_dir, expected, f"{FOLDERS[name]}/raw/", download_error)
    arrays = {}
    for split, (image_stem, label_stem) in FILE_STEMS.items():
        images = read_idx(find_idx_file(raw_dir, image_stem))
        labels = read_idx(find_idx_file(raw_dir, label_stem))
        if images.ndim != 3 or labels.ndim != 1:
            raise DataError(f"{name}: expected images (N, H, W) and labels (N,) in {raw_dir}, "
                            f"got {images.shape} and {labels.shape}")
        arrays[split] = (torch.from_numpy(images).unsqueeze(1), torch.from_numpy(labels.astype(np.int64)))
    mean, std = STATISTICS[name]
    return tensor_dataset(name, cfg, device, arrays["train"], arrays["test"], num_classes=10,
                          mean=[mean], std=[std], scale=1 / 255, default_augment=False)
