"""Datasets read from disk: idx (MNIST), CIFAR pickles, .npz; missing files, checksums, real MNIST."""
import gzip
import logging
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from lottery.config import DataConfig
from lottery.data import DataError, load_dataset
from lottery.data.idx import read_idx


def write_idx(path: Path, array: np.ndarray, compress: bool = False) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}i", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    opener = gzip.open if compress else open
    with opener(str(path) + (".gz" if compress else ""), "wb") as handle:
        handle.write(payload)


def fake_mnist(root: Path, folder: str = "MNIST", train: int = 30, test: int = 12, compress: bool = False):
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    rng = np.random.RandomState(0)
    arrays = {
        "train-images-idx3-ubyte": rng.randint(0, 256, (train, 28, 28)),
        "train-labels-idx1-ubyte": np.arange(train) % 10,
        "t10k-images-idx3-ubyte": rng.randint(0, 256, (test, 28, 28)),
        "t10k-labels-idx1-ubyte": np.arange(test) % 10,
    }
    for name, array in arrays.items():
        write_idx(raw / name, array, compress)
    return arrays


@pytest.mark.parametrize("compress", [False, True])
def test_fake_mnist_loads_plain_or_gzipped(tmp_path, compress):
    arrays = fake_mnist(tmp_path, compress=compress)
    data = load_dataset(DataConfig(name="mnist", root=str(tmp_path)))
    assert (data.input_shape, data.num_classes, data.num_train, data.augment) == ((1, 28, 28), 10, 30, False)
    x, y = next(data.eval_batches("test"))
    assert torch.equal(y, torch.as_tensor(arrays["t10k-labels-idx1-ubyte"]))
    expected = (torch.as_tensor(arrays["t10k-images-idx3-ubyte"], dtype=torch.float32) / 255 - 0.1307) / 0.3081
    assert torch.allclose(x[:, 0], expected, atol=1e-5)


def test_fake_fashion_mnist_uses_its_folder_and_statistics(tmp_path):
    fake_mnist(tmp_path, folder="FashionMNIST")
    data = load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path), val_size=5))
    assert data.num_train == 25 and data.has_val
    assert data.mean.flatten().tolist() == pytest.approx([0.2860]) and data.std.flatten().tolist() == pytest.approx([0.3530])


def test_missing_mnist_names_files_and_remedies(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))
    message = str(caught.value)
    assert str(tmp_path / "MNIST" / "raw") in message
    assert "train-images-idx3-ubyte" in message and "t10k-labels-idx1-ubyte" in message
    assert "data.root" in message and "DATA_ROOT" in message and "data.download" in message


def test_truncated_idx_file_is_reported(tmp_path):
    path = tmp_path / "broken-idx3-ubyte"
    path.write_bytes(struct.pack(">BBBBiii", 0, 0, 8, 3, 5, 28, 28) + b"\0" * 100)
    with pytest.raises(DataError, match="truncated"):
        read_idx(path)
    path.write_bytes(b"PK\x03\x04garbage")
    with pytest.raises(DataError, match="not an idx file"):
        read_idx(path)


def fake_cifar(root: Path, name: str, per_file: int = 20):
    rng = np.random.RandomState(1)
    if name == "cifar10":
        folder, files, label_key, classes = root / "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"], "labels", 10
    else:
        folder, files, label_key, classes = root / "cifar-100-python", ["train", "test"], "fine_labels", 100
    folder.mkdir(parents=True)
    for file_name in files:
        entry = {"data": rng.randint(0, 256, (per_file, 3072)).astype(np.uint8), label_key: list(rng.randint(0, classes, per_file))}
        with open(folder / file_name, "wb") as handle:
            pickle.dump(entry, handle)
    return folder


def test_fake_cifar10_loads_with_checksum_warning(tmp_path, caplog):
    folder = fake_cifar(tmp_path, "cifar10")
    with caplog.at_level(logging.WARNING, logger="lottery.data"):
        data = load_dataset(DataConfig(name="cifar10", root=str(tmp_path)))
    warned = [record for record in caplog.records if record.levelno == logging.WARNING and "md5" in record.getMessage()]
    assert len(warned) == 1  # one warning for the copy, not one per file
    message = warned[0].getMessage()
    assert str(folder) in message and "6 of 6 files" in message
    assert all(name in message for name in ("data_batch_1", "data_batch_5", "test_batch"))
    assert (data.input_shape, data.num_classes, data.num_train, data.augment) == ((3, 32, 32), 10, 100, True)
    with open(folder / "test_batch", "rb") as handle:
        entry = pickle.load(handle)
    x, y = next(data.eval_batches("test"))
    assert torch.equal(y, torch.as_tensor(entry["labels"]))
    mean = torch.tensor([0.4914, 0.4822, 0.4465]).view(3, 1, 1)
    std = torch.tensor([0.2470, 0.2435, 0.2616]).view(3, 1, 1)
    expected = (torch.as_tensor(entry["data"]).view(-1, 3, 32, 32).float() / 255 - mean) / std
    assert torch.allclose(x, expected, atol=1e-5)
    batch_x, _ = data.train_batches(32, seed=0).batch(0)
    assert batch_x.shape == (32, 3, 32, 32)


def test_fake_cifar100_loads_fine_labels(tmp_path, caplog):
    fake_cifar(tmp_path, "cifar100", per_file=50)
    data = load_dataset(DataConfig(name="cifar100", root=str(tmp_path), augment=False, subset=40, val_size=10))
    assert (data.num_classes, data.num_train, data.augment) == (100, 30, False)
    assert any("md5" in record.getMessage() for record in caplog.records)


def test_missing_cifar_names_the_folder(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(name="cifar10", root=str(tmp_path), download=False))
    assert str(tmp_path / "cifar-10-batches-py") in str(caught.value)
    assert "data_batch_1" in str(caught.value) and "data.download" in str(caught.value)


def test_npz_images_nhwc_uint8(tmp_path):
    rng = np.random.RandomState(0)
    path = tmp_path / "set.npz"
    x_train = rng.randint(0, 256, (40, 6, 6, 3)).astype(np.uint8)
    np.savez(path, x_train=x_train, y_train=np.arange(40) % 3,
             x_test=rng.randint(0, 256, (10, 6, 6, 3)).astype(np.uint8), y_test=np.arange(10) % 3)
    data = load_dataset(DataConfig(name="npz", path=str(path)))
    assert (data.input_shape, data.num_classes, data.num_train) == ((3, 6, 6), 3, 40)
    x = torch.cat([x for x, _ in data.eval_batches("train")])
    raw = torch.as_tensor(x_train).permute(0, 3, 1, 2).float() / 255
    assert torch.allclose(x * data.std + data.mean, raw, atol=1e-5)
    assert abs(x.mean().item()) < 1e-4


def test_npz_flat_features_are_standardised_per_feature(tmp_path):
    rng = np.random.RandomState(0)
    path = tmp_path / "flat.npz"
    scales = np.array([1.0, 100.0, 0.01, 0.0])  # the last feature is constant
    np.savez(path, x_train=rng.randn(200, 4) * scales + 5, y_train=rng.randint(0, 2, 200),
             x_test=rng.randn(20, 4), y_test=rng.randint(0, 2, 20))
    data = load_dataset(DataConfig(name="npz", path=str(path)))
    assert data.input_shape == (4,)
    x = next(data.eval_batches("train"))[0]
    assert torch.allclose(x.std(dim=0)[:3], torch.ones(3), atol=1e-3)
    assert torch.all(x[:, 3] == 0)


def test_npz_missing_key_names_key_and_file(tmp_path):
    path = tmp_path / "partial.npz"
    np.savez(path, x_train=np.zeros((4, 2)), y_train=np.zeros(4), x_test=np.zeros((2, 2)))
    with pytest.raises(DataError, match=r"partial\.npz.*'y_test'"):
        load_dataset(DataConfig(name="npz", path=str(path)))
    with pytest.raises(DataError, match="not found"):
        load_dataset(DataConfig(name="npz", path=str(tmp_path / "absent.npz")))


def test_real_mnist():
    root = os.environ.get("DATA_ROOT")
    if not root or not (Path(root) / "MNIST" / "raw").is_dir():
        pytest.skip("DATA_ROOT with MNIST/raw is not available")
    data = load_dataset(DataConfig(name="mnist", root=root))
    assert (data.num_train, data.input_shape, data.num_classes) == (60000, (1, 28, 28), 10)
    assert sum(len(y) for _, y in data.eval_batches("test")) == 10000
    x = torch.cat([x for x, _ in data.eval_batches("train", batch_size=10000)])
    assert abs(x.mean().item()) < 0.01 and abs(x.std().item() - 1) < 0.01


def test_download_is_tried_only_when_asked_and_its_failure_is_reported(tmp_path, monkeypatch):
    calls = []

    def failing_download(class_name, root):
        calls.append((class_name, root))
        return "URLError: no network"

    monkeypatch.setattr("lottery.data.idx.torchvision_download", failing_download)
    with pytest.raises(DataError, match="set data.download=true"):
        load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=False))
    assert calls == []
    with pytest.raises(DataError, match=r"torchvision download \(data.download=true\) failed: URLError: no network"):
        load_dataset(DataConfig(name="fashion_mnist", root=str(tmp_path)))  # on by default
    assert calls == [("FashionMNIST", tmp_path)]


def test_files_fetched_by_the_download_are_then_parsed(tmp_path, monkeypatch):
    def fake_download(class_name, root):
        fake_mnist(root, folder=class_name, compress=True)
        return None

    monkeypatch.setattr("lottery.data.idx.torchvision_download", fake_download)
    data = load_dataset(DataConfig(name="mnist", root=str(tmp_path), download=True))
    assert data.num_train == 30


@pytest.mark.parametrize("name, folder, first_file", [
    ("mnist", "MNIST/raw", "train-images-idx3-ubyte"),
    ("fashion_mnist", "FashionMNIST/raw", "train-images-idx3-ubyte"),
    ("cifar10", "cifar-10-batches-py", "data_batch_1"),
    ("cifar100", "cifar-100-python", "train"),
])
def test_offline_download_says_what_is_missing_where_and_that_the_download_failed(
        tmp_path, offline_dataset_mirrors, name, folder, first_file):
    """The real torchvision download path, pointed at 127.0.0.1 where nothing listens (tests/conftest.py)."""
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(name=name, root=str(tmp_path / "data")))
    message = str(caught.value)
    assert "\n" not in message
    assert str(tmp_path / "data" / folder) in message and first_file in message
    assert "data.root" in message and "download (data.download=true) failed" in message
    assert offline_dataset_mirrors.rstrip("/") in message and "Connection refused" in message
