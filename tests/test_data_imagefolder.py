"""imagefolder: PNG class folders streamed from disk behind the same Dataset / TrainBatches interface."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from lottery.config import DataConfig
from lottery.data import DataError, load_dataset

CLASSES = ("cat", "dog", "eel")


def write_folder(root: Path, per_class: dict[str, int], size: int = 12, seed: int = 0) -> None:
    rng = np.random.RandomState(seed)
    for split, count in per_class.items():
        for label, name in enumerate(CLASSES):
            folder = root / split / name
            folder.mkdir(parents=True)
            for index in range(count):
                # The red channel encodes the class so labels can be checked from pixels.
                pixels = rng.randint(0, 256, (size, size, 3)).astype(np.uint8)
                pixels[..., 0] = 50 * (label + 1)
                Image.fromarray(pixels).save(folder / f"{index}.png")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    write_folder(root, {"train": 8, "val": 3})
    return root


def red_levels(x, data):
    raw = x * data.std + data.mean
    return (raw[:, 0].mean(dim=(1, 2)) * 255 / 50).round().long() - 1


def test_imagefolder_loads_with_shape_from_first_image(folder):
    data = load_dataset(DataConfig(name="imagefolder", path=str(folder)))
    assert (data.input_shape, data.num_classes, data.num_train, data.has_val) == ((3, 12, 12), 3, 24, False)
    x, y = next(data.eval_batches("test", batch_size=100))
    assert x.shape == (9, 3, 12, 12) and sorted(y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert torch.equal(red_levels(x, data), y)


def test_imagefolder_batches_are_deterministic_and_cover_an_epoch(folder):
    data = load_dataset(DataConfig(name="imagefolder", path=str(folder), val_size=6))
    assert data.num_train == 18 and data.has_val
    batches = data.train_batches(batch_size=5, seed=3)
    assert batches.iterations_per_epoch == 4
    sequential = [batches.batch(step) for step in range(8)]
    resumed = data.train_batches(batch_size=5, seed=3)
    for step in (6, 7, 2):
        x, y = resumed.batch(step)
        assert torch.equal(x, sequential[step][0]) and torch.equal(y, sequential[step][1])
    epoch_indices = torch.cat([batches.indices(step) for step in range(4)])
    assert sorted(epoch_indices.tolist()) == list(range(18))
    for x, y in sequential:
        assert torch.equal(red_levels(x, data), y)
    assert sum(len(y) for _, y in data.eval_batches("val")) == 6


def test_imagefolder_augmentation_and_class_balanced(folder):
    data = load_dataset(DataConfig(name="imagefolder", path=str(folder), augment=True))
    x, y = data.train_batches(batch_size=24, seed=0).batch(0)
    assert x.shape == (24, 3, 12, 12) and data.augment
    x, y = data.class_balanced(per_class=2, seed=0)
    assert y.tolist() == [0, 1, 2, 0, 1, 2]


def test_imagefolder_missing_folders(tmp_path):
    with pytest.raises(DataError) as caught:
        load_dataset(DataConfig(name="imagefolder", path=str(tmp_path)))
    assert str(tmp_path / "train") in str(caught.value) and "val" in str(caught.value)
