"""Deterministic data order: seeds mixed from named parts, epoch permutations, rank shards.

Everything here is a pure function of its arguments, so a batch can be rebuilt from
(seed, step) alone: resuming at step k needs no saved sampler state.
"""
from __future__ import annotations

import torch

from lottery.seeds import mix_seed


def cpu_generator(*parts) -> torch.Generator:
    """A CPU generator seeded from parts; CPU so the stream is the same on every device."""
    return torch.Generator().manual_seed(mix_seed(*parts))


def epoch_permutation(num_examples: int, seed: int, epoch: int) -> torch.Tensor:
    """The order in which epoch `epoch` visits the training examples (CPU int64)."""
    return torch.randperm(num_examples, generator=cpu_generator("order", seed, epoch))


def shard_bounds(size: int, rank: int, world_size: int) -> tuple[int, int]:
    """Contiguous [start, stop) of a batch of `size` owned by `rank`.

    Shard sizes differ by at most one (the first `size % world_size` ranks get the
    extra example), the shards are disjoint and together cover the whole batch.
    """
    base, extra = divmod(size, world_size)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)
