"""Ablations of a pruning method (Frankle et al. 2021, "Pruning at initialization: why are we missing the mark?").

- shuffle the mask within each layer (same per-layer counts, new positions);
- a random mask with the same per-layer densities;
- invert the scores (keep what the method would prune), at given per-layer counts;
- reinitialise the weights, keeping the mask.
All randomness comes from local generators seeded with lottery.seeds.mix_seed: the global RNG is untouched.
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from lottery.pruning.mask import Mask
from lottery.pruning.selection import keep_top
from lottery.seeds import mix_seed


def _layer_generator(stream: str, seed: int, name: str) -> torch.Generator:
    """One generator per (stream, seed, layer), so a layer's draw does not depend on the other layers."""
    return torch.Generator().manual_seed(mix_seed(stream, seed, name))


def shuffle_within_layers(mask: Mask, seed: int) -> Mask:
    """Permute each layer's mask entries at random: same per-layer counts, new positions."""
    shuffled = {}
    for name, flags in mask.items():
        order = torch.randperm(flags.numel(), generator=_layer_generator("shuffle", seed, name))
        shuffled[name] = flags.flatten().cpu()[order].reshape(flags.shape).to(flags.device)
    return Mask(shuffled)


def random_same_layerwise(mask: Mask, seed: int) -> Mask:
    """A fresh uniformly random mask with each layer's kept count equal to `mask`'s."""
    drawn = {}
    for name, flags in mask.items():
        kept = int(torch.count_nonzero(flags))
        chosen = torch.randperm(flags.numel(), generator=_layer_generator("random", seed, name))[:kept]
        layer = torch.zeros(flags.numel(), dtype=torch.bool)
        layer[chosen] = True
        drawn[name] = layer.reshape(flags.shape).to(flags.device)
    return Mask(drawn)


def invert_scores(scores: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Negated scores: pruning then keeps exactly what the method would have removed."""
    return {name: -score for name, score in scores.items()}


def keep_per_layer(scores: dict[str, torch.Tensor], alive: Mask, counts: Mask) -> Mask:
    """Per layer, the `counts` mask's number of weights among `alive`'s, highest scores first (exact, ties to
    lower indices), e.g. the inverted ticket: the smallest trained weights at the ticket's layer densities."""
    kept = {}
    for name in alive.names:
        kept.update(keep_top(scores, alive, [name], int(torch.count_nonzero(counts[name]))))
    return Mask(kept)


def reinitialize(model: nn.Module, mask: Mask, init: Callable[[nn.Module], None]) -> None:
    """New random weights, same mask: `init(model)` re-initialises in place, then the mask is applied.

    For this project's models pass e.g. `lambda m: lottery.models.initialize(m, "kaiming_normal", seed)`.
    """
    init(model)
    mask.apply(model)
