"""The dataset registry and the Dataset interface on the offline datasets (synthetic, digits)."""
import numpy as np
import pytest
import torch

from lottery.config import DataConfig
from lottery.errors import ConfigError
from lottery.data import DataError, Dataset, dataset_names, is_dataset_name, load_dataset


def test_registry_names():
    assert dataset_names() == ["cifar10", "cifar100", "digits", "fashion_mnist", "imagefolder", "mnist", "npz", "synthetic"]
    assert is_dataset_name("mnist")
    assert not is_dataset_name("imagenet")


def test_unknown_name_is_a_data_error_listing_valid_names():
    with pytest.raises(DataError, match="imagenet.*synthetic"):
        load_dataset(DataConfig(name="imagenet"))


def test_synthetic_defaults():
    data = load_dataset(DataConfig(name="synthetic"))
    assert isinstance(data, Dataset)
    assert (data.input_shape, data.num_classes, data.num_train) == ((1, 8, 8), 4, 512)
    assert not data.has_val and not data.augment
    assert sum(len(y) for _, y in data.eval_batches("test", batch_size=100)) == 256


def test_synthetic_is_deterministic_in_seed():
    first = load_dataset(DataConfig(name="synthetic"), seed=3).class_balanced(2, seed=0)[0]
    again = load_dataset(DataConfig(name="synthetic"), seed=3).class_balanced(2, seed=0)[0]
    other = load_dataset(DataConfig(name="synthetic"), seed=4).class_balanced(2, seed=0)[0]
    assert torch.equal(first, again)
    assert not torch.equal(first, other)


def test_digits_loads_with_fixed_split():
    data = load_dataset(DataConfig(name="digits"), seed=0)
    other_seed = load_dataset(DataConfig(name="digits"), seed=7)
    assert (data.input_shape, data.num_classes, data.num_train) == ((1, 8, 8), 10, 1437)
    x, y = next(data.eval_batches("test", batch_size=1000))
    x_other, y_other = next(other_seed.eval_batches("test", batch_size=1000))
    assert len(y) == 360 and torch.equal(y, y_other) and torch.equal(x, x_other)
    assert set(y.tolist()) == set(range(10))


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_train_split_is_normalised(name):
    data = load_dataset(DataConfig(name=name))
    x = torch.cat([x for x, _ in data.eval_batches("train", batch_size=256)])
    assert x.dtype == torch.float32
    assert abs(x.mean().item()) < 1e-3
    assert abs(x.std().item() - 1) < 0.02


def test_subset_and_val_size():
    data = load_dataset(DataConfig(name="synthetic", subset=200, val_size=50))
    assert data.num_train == 150 and data.has_val
    val_x, val_y = next(data.eval_batches("val", batch_size=1000))
    assert len(val_y) == 50
    full = load_dataset(DataConfig(name="synthetic"))
    # The validation split is the last val_size examples of the subset (raw values compared).
    assert torch.equal(data.raw("val", slice(None))[0], full.raw("train", slice(150, 200))[0])
    assert torch.equal(data.raw("train", slice(None))[0], full.raw("train", slice(0, 150))[0])


def test_subset_larger_than_the_data_warns_and_uses_everything(caplog):
    data = load_dataset(DataConfig(name="synthetic", subset=10_000))
    assert data.num_train == 512
    assert any("data.subset=10000" in record.getMessage() for record in caplog.records)


def test_test_subset_limits_only_the_test_split():
    data = load_dataset(DataConfig(name="synthetic", test_subset=30))
    assert sum(len(y) for _, y in data.eval_batches("test", batch_size=7)) == 30
    assert data.num_train == 512


def test_val_size_must_be_smaller_than_train():
    with pytest.raises(ConfigError, match="data.val_size.*100 must be smaller than the 100 training examples"):
        load_dataset(DataConfig(name="synthetic", subset=100, val_size=100))


def test_asking_for_val_without_val_split_fails_clearly():
    data = load_dataset(DataConfig(name="synthetic"))
    with pytest.raises(DataError, match="val_size"):
        next(data.eval_batches("val"))
    with pytest.raises(DataError, match="unknown split"):
        next(data.eval_batches("validation"))


def test_class_balanced_counts_and_determinism():
    data = load_dataset(DataConfig(name="digits"))
    x, y = data.class_balanced(per_class=10, seed=1)
    assert x.shape == (100, 1, 8, 8)
    assert torch.equal(torch.bincount(y, minlength=10), torch.full((10,), 10))
    assert torch.equal(y[:10], torch.arange(10))  # interleaved: every leading chunk is balanced
    again_x, _ = data.class_balanced(per_class=10, seed=1)
    other_x, _ = data.class_balanced(per_class=10, seed=2)
    assert torch.equal(x, again_x)
    assert not torch.equal(x, other_x)


def test_class_balanced_draws_from_train_split_only():
    data = load_dataset(DataConfig(name="synthetic", val_size=100))
    train_x = data.raw("train", slice(None))[0].flatten(1)
    x, _ = data.class_balanced(per_class=5, seed=0)
    raw = (x * data.std + data.mean).flatten(1)
    val_x = data.raw("val", slice(None))[0].flatten(1)
    assert (raw[:, None] - train_x[None]).abs().amax(dim=2).min(dim=1).values.max() < 1e-4
    assert (raw[:, None] - val_x[None]).abs().amax(dim=2).min(dim=1).values.min() > 0.1


def test_class_balanced_too_many_per_class():
    data = load_dataset(DataConfig(name="synthetic", subset=20))
    with pytest.raises(DataError, match="per class"):
        data.class_balanced(per_class=50, seed=0)


def test_synthetic_is_learnable_by_a_tiny_mlp():
    torch.manual_seed(0)
    data = load_dataset(DataConfig(name="synthetic"))
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    batches = data.train_batches(batch_size=32, seed=0)
    for step in range(300):
        x, y = batches.batch(step)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        correct = sum((model(x).argmax(1) == y).sum().item() for x, y in data.eval_batches("test"))
    assert correct / 256 > 0.9


def test_digits_read_without_sklearn_equal_sklearns_load_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    from lottery.data.small import digits_arrays

    images, labels = digits_arrays()
    reference = sklearn_digits()
    assert np.array_equal(images, reference.images) and np.array_equal(labels, reference.target)
