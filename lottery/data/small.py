"""Small in-memory datasets: scikit-learn digits, a user .npz file, and synthetic test data.

Their mean/std are computed from the train split (after subset and validation split).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from lottery.data.dataset import DataError, Dataset
from lottery.data.splits import tensor_dataset

DIGITS_TEST_SIZE = 360  # about 20% of the 1797 images
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
SYNTHETIC_SHAPE = (1, 8, 8)
SYNTHETIC_CLASSES = 4
SYNTHETIC_TRAIN, SYNTHETIC_TEST = 512, 256
SYNTHETIC_NOISE = 1.5


def load_digits(cfg, seed: int, device) -> Dataset:
    """sklearn's 8x8 digits, offline: images (1, 8, 8) scaled to [0, 1].

    The train/test split is fixed and independent of the run seed: a permutation from
    numpy's RandomState(0) (stable across numpy versions), whose last 360 images are test.
    """
    images_array, target = digits_arrays()
    images = torch.as_tensor(images_array, dtype=torch.float32).unsqueeze(1) / 16.0
    labels = torch.as_tensor(target, dtype=torch.int64)
    order = torch.as_tensor(np.random.RandomState(0).permutation(len(labels)))
    train_index, test_index = order[:-DIGITS_TEST_SIZE], order[-DIGITS_TEST_SIZE:]
    return tensor_dataset("digits", cfg, device, (images[train_index], labels[train_index]),
                          (images[test_index], labels[test_index]), num_classes=10)


def digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """(images (1797, 8, 8), labels) of sklearn's digits, read from the CSV it ships, as its load_digits does,
    without importing sklearn: that import costs 1.7 s, paid again by every worker process."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")  # locates the package without running it
    if spec is None or not spec.submodule_search_locations:
        raise DataError("data.name=digits needs scikit-learn's bundled digits: pip install scikit-learn")
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, mode="rt", encoding="utf-8") as text:
        data = np.loadtxt(text, delimiter=",")
    return data[:, :-1].reshape(-1, 8, 8), data[:, -1].astype(int, copy=False)


def _as_examples(array: np.ndarray, key: str, path: Path) -> tuple[torch.Tensor, float]:
    """Images to (N, C, H, W): NHWC (last axis 1, 3 or 4) is transposed, (N, H, W) gets C=1.

    uint8 is kept raw with scale 1/255; everything else becomes float32 with scale 1.
    Flat features (N, D) stay as they are.
    """
    if array.ndim < 2:
        raise DataError(f"{path}: {key} must have one row per example, got shape {array.shape}")
    if array.ndim == 4 and array.shape[-1] in (1, 3, 4) and array.shape[1] not in (1, 3, 4):
        array = array.transpose(0, 3, 1, 2)
    elif array.ndim == 3:
        array = array[:, None]
    if array.dtype == np.uint8:
        return torch.from_numpy(np.ascontiguousarray(array)), 1 / 255
    if not np.issubdtype(array.dtype, np.number) or np.issubdtype(array.dtype, np.complexfloating):
        raise DataError(f"{path}: {key} must be numeric, got dtype {array.dtype}")
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32)), 1.0


def _as_labels(array: np.ndarray, key: str, path: Path) -> torch.Tensor:
    if array.ndim == 2 and array.shape[1] == 1:
        array = array[:, 0]
    integral = np.issubdtype(array.dtype, np.integer) or (
        np.issubdtype(array.dtype, np.floating) and bool(np.all(np.mod(array, 1) == 0)))
    if array.ndim != 1 or not integral:
        raise DataError(f"{path}: {key} must be a vector of integer class labels, "
                        f"got shape {array.shape} dtype {array.dtype}")
    return torch.as_tensor(array.astype(np.int64))


def load_npz(cfg, seed: int, device) -> Dataset:
    """data.path: a .npz with x_train, y_train, x_test, y_test; num_classes = largest label + 1."""
    if not cfg.path:
        raise DataError("npz: set data.path to a .npz file with arrays x_train, y_train, x_test, y_test")
    path = Path(cfg.path).expanduser()
    if not path.is_file():
        raise DataError(f"npz: file {path} (data.path) not found; it must hold arrays {', '.join(NPZ_KEYS)}")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(f"npz: {path} has no array {missing[0]!r} (needs {', '.join(NPZ_KEYS)}; "
                                f"found {', '.join(archive.files) or 'nothing'})")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except (OSError, ValueError) as error:
        raise DataError(f"npz: cannot read {path}: {error}") from None
    x_train, scale = _as_examples(arrays["x_train"], "x_train", path)
    x_test, test_scale = _as_examples(arrays["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:] or scale != test_scale:
        raise DataError(f"npz: {path}: x_train and x_test differ in example shape or dtype "
                        f"({tuple(x_train.shape[1:])} {arrays['x_train'].dtype} vs "
                        f"{tuple(x_test.shape[1:])} {arrays['x_test'].dtype})")
    y_train = _as_labels(arrays["y_train"], "y_train", path)
    if len(y_train) == 0:
        raise DataError(f"npz: {path}: y_train is empty")
    y_test = _as_labels(arrays["y_test"], "y_test", path)
    num_classes = int(max(y_train.max(), y_test.max() if len(y_test) else 0)) + 1
    return tensor_dataset("npz", cfg, device, (x_train, y_train), (x_test, y_test), num_classes=num_classes, scale=scale)


def load_synthetic(cfg, seed: int, device) -> Dataset:
    """512 train / 256 test examples of shape (1, 8, 8) in 4 classes, generated from `seed`.

    Each class has a random mean image; examples are that mean plus Gaussian noise
    (std 1.5), so a small MLP learns it to high accuracy within a few hundred steps.
    """
    generator = torch.Generator().manual_seed(seed)
    class_means = torch.randn((SYNTHETIC_CLASSES, *SYNTHETIC_SHAPE), generator=generator)
    total = SYNTHETIC_TRAIN + SYNTHETIC_TEST
    labels = torch.randint(0, SYNTHETIC_CLASSES, (total,), generator=generator)
    noise = SYNTHETIC_NOISE * torch.randn((total, *SYNTHETIC_SHAPE), generator=generator)
    images = class_means[labels] + noise
    train = (images[:SYNTHETIC_TRAIN], labels[:SYNTHETIC_TRAIN])
    test = (images[SYNTHETIC_TRAIN:], labels[SYNTHETIC_TRAIN:])
    return tensor_dataset("synthetic", cfg, device, train, test, num_classes=SYNTHETIC_CLASSES)
