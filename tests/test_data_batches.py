"""TrainBatches: batch(step) is a pure function of (seed, step), epochs cover the data, DDP shards."""
import pytest
import torch

from lottery.config import DataConfig
from lottery.data import DataError, Dataset, load_dataset


def indexed_dataset(count: int = 100) -> Dataset:
    """Flat features whose single value is the example's index, so batches reveal what they hold."""
    x = torch.arange(count, dtype=torch.float32).unsqueeze(1)
    y = torch.arange(count) % 4
    return Dataset("indexed", {"train": (x, y), "test": (x, y)}, num_classes=4, mean=[0.0], std=[1.0])


def image_dataset(count: int = 40, augment: bool = True) -> Dataset:
    generator = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (count, 3, 12, 12), dtype=torch.uint8, generator=generator)
    y = torch.arange(count) % 10
    return Dataset("images", {"train": (x, y), "test": (x, y)}, 10, [0.5, 0.4, 0.3], [0.2, 0.25, 0.3], 1 / 255, augment)


def test_batches_are_a_pure_function_of_seed_and_step():
    data = load_dataset(DataConfig(name="synthetic", augment=False))
    first = data.train_batches(64, seed=5)
    second = data.train_batches(64, seed=5)
    for step in (0, 3, 20, 7):
        x1, y1 = first.batch(step)
        x2, y2 = second.batch(step)
        assert torch.equal(x1, x2) and torch.equal(y1, y2)
    assert x1.dtype == torch.float32 and y1.dtype == torch.int64
    other = data.train_batches(64, seed=6).batch(7)[1]
    assert not torch.equal(y1, other)


def test_resuming_at_step_k_gives_the_same_batches():
    data = image_dataset(augment=True)
    from_start = data.train_batches(8, seed=1)
    reference = [from_start.batch(step) for step in range(12)]
    resumed = data.train_batches(8, seed=1)
    for step in range(7, 12):
        x, y = resumed.batch(step)
        assert torch.equal(x, reference[step][0]) and torch.equal(y, reference[step][1])


def test_one_epoch_covers_every_example_exactly_once():
    data = indexed_dataset(100)
    batches = data.train_batches(batch_size=30, seed=0)
    assert batches.iterations_per_epoch == 4
    for epoch in range(2):
        seen = [batches.batch(epoch * 4 + position)[0].flatten() for position in range(4)]
        assert [len(part) for part in seen] == [30, 30, 30, 10]
        assert sorted(torch.cat(seen).long().tolist()) == list(range(100))
    assert not torch.equal(batches.batch(0)[0], batches.batch(4)[0])  # each epoch has its own order


def test_labels_travel_with_their_examples():
    data = indexed_dataset(50)
    x, y = data.train_batches(16, seed=3).batch(2)
    assert torch.equal(y, x.flatten().long() % 4)


@pytest.mark.parametrize("world_size", [2, 3])
def test_ddp_shards_are_disjoint_and_union_to_the_single_process_batch(world_size):
    data = image_dataset(count=40, augment=True)
    single = data.train_batches(16, seed=2)
    ranks = [data.train_batches(16, seed=2, rank=rank, world_size=world_size) for rank in range(world_size)]
    for step in (0, 1, 2, 5):  # step 2 is the short last batch of epoch 0
        x, y = single.batch(step)
        shards = [rank.batch(step) for rank in ranks]
        assert torch.equal(torch.cat([shard_x for shard_x, _ in shards]), x)
        assert torch.equal(torch.cat([shard_y for _, shard_y in shards]), y)
        indices = [rank.indices(step) for rank in ranks]
        flat = torch.cat(indices)
        assert len(set(flat.tolist())) == len(flat) == len(y)
        assert max(len(part) for part in indices) - min(len(part) for part in indices) <= 1


def test_augmented_batches_differ_from_the_plain_ones_but_keep_labels():
    augmented = image_dataset(augment=True).train_batches(40, seed=0).batch(0)
    plain = image_dataset(augment=False).train_batches(40, seed=0).batch(0)
    assert torch.equal(augmented[1], plain[1])
    assert augmented[0].shape == plain[0].shape
    assert not torch.equal(augmented[0], plain[0])


def test_augmentation_defaults_and_override():
    assert not load_dataset(DataConfig(name="synthetic")).augment
    assert load_dataset(DataConfig(name="synthetic", augment=True)).augment


def test_augmentation_of_flat_features_is_refused():
    with pytest.raises(DataError, match="augment"):
        Dataset("flat", {"train": (torch.zeros(4, 3), torch.zeros(4)), "test": (torch.zeros(4, 3), torch.zeros(4))},
                2, [0.0] * 3, [1.0] * 3, augment=True)


def test_bad_arguments():
    data = indexed_dataset(10)
    with pytest.raises(DataError, match="batch size"):
        data.train_batches(0, seed=0)
    with pytest.raises(DataError, match="rank 2"):
        data.train_batches(4, seed=0, rank=2, world_size=2)
    with pytest.raises(DataError, match="step"):
        data.train_batches(4, seed=0).batch(-1)
