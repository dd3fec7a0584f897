"""Ablations of a pruning method (Frankle et al. 2021, "Pruning at initialization: why are we missing the mark?").

- shuffle the mask within each layer (same per-layer counts, new positions);
- a random mask with the same per-layer densities;
- invert the scores (keep what the method would prune);
- reinitialise the weights, keeping the mask.
All randomness comes from a local generator seeded by `seed`: the global RNG is untouched.
"""
from __future__ import annotations

import zlib
from typing import Callable

import torch
from torch import nn

from lottery.pruning.mask import Mask


def _layer_generator(seed: int, name: str) -> torch.Generator:
    """One generator per (seed, layer), so a layer's draw does not depend on the other layers."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(name.encode()))


def shuffle_within_layers(mask: Mask, seed: int) -> Mask:
    """Permute each layer's mask entries at random: same per-layer counts, new positions."""
    shuffled = {}
    for name, flags in mask.items():
        order = torch.randperm(flags.numel(), generator=_layer_generator(seed, name))
        shuffled[name] = flags.flatten().cpu()[order].reshape(flags.shape).to(flags.device)
    return Mask(shuffled)


def random_same_layerwise(mask: Mask, seed: int) -> Mask:
    """A fresh uniformly random mask with each layer's kept count equal to `mask`'s."""
    drawn = {}
    for name, flags in mask.items():
        kept = int(torch.count_nonzero(flags))
        chosen = torch.randperm(flags.numel(), generator=_layer_generator(seed + 1, name))[:kept]
        layer = torch.zeros(flags.numel(), dtype=torch.bool)
        layer[chosen] = True
        drawn[name] = layer.reshape(flags.shape).to(flags.device)
    return Mask(drawn)


def invert_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Negated scores: pruning then keeps exactly what the method would have removed."""
    return {name: -score for name, score in scores.items()}


def reinitialize(model: nn.Module, mask: Mask, init: Callable[[nn.Module], None] | int) -> None:
    """New random weights, same mask: `init(model)` re-initialises in place, or an int seed re-runs
    every module's own reset_parameters under that seed. The mask is applied afterwards.

    For this project's models pass e.g. `lambda m: lottery.models.initialize(m, "kaiming_normal", seed)`.
    """
    if callable(init):
        init(model)
    else:
        devices = sorted({p.device.index or 0 for p in model.parameters() if p.device.type == "cuda"})
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(int(init))
            for module in model.modules():
                if callable(getattr(module, "reset_parameters", None)):
                    module.reset_parameters()
    mask.apply(model)
