"""Dynamic sparse training: RigL (Evci et al. 2020) and SET (Mocanu et al. 2018).

A sparse network trains from scratch at a fixed density. Every ΔT steps until T_end, each layer drops
the share α_t of its active weights with the smallest magnitude and grows as many: RigL those with the
largest magnitude of the dense gradient, SET at random. α_t = α/2 · (1 + cos(π t / T_end)).

As in the RigL paper (Algorithm 1) and its reference code (google-research/rigl, sparse_optimizers.py):
- the initial mask is random within each layer, at ERK or uniform per-layer densities;
- updates happen at steps t = 0, ΔT, 2ΔT, ... while t < T_end, and k = floor(α_t · active) per layer;
- the grow candidates are every weight not kept after the drop, the dropped ones included (Algorithm 1
  grows among i ∉ θ \\ I_drop). A weight dropped and grown again keeps its value and optimizer state, as in
  the reference (reinit_when_same=False): it simply was not dropped. The counts logged are the real changes;
- grown weights start at 0 and all their optimizer state (momentum, Adam's moments) is reset to 0;
- RigL's update takes the place of that step's weight update (the reference's cond(update, mask update,
  optimizer update)); SET updates after the step's weight update;
- each layer keeps its count, so the density is the target exactly after every update.
Ties go to the lower flat index (the reference breaks them with 1e-5 noise on the magnitudes).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from torch import nn

from lottery.pruning.mask import Mask
from lottery.pruning.masked_adam import MaskedAdam
from lottery.pruning.methods import register_method
from lottery.pruning.selection import round_half_up, top_k
from lottery.seeds import mix_seed

logger = logging.getLogger(__name__)

DISTRIBUTIONS = ("erk", "uniform")
DYNAMIC_SETTINGS = ("distribution", "update_every", "drop_fraction", "update_until")


# -- the initial mask ------------------------------------------------------------------------------

def erk_densities(shapes: dict[str, tuple[int, ...]], kept: int) -> dict[str, float]:
    """Erdős–Rényi-Kernel densities (Evci et al. 2020): ε · Σ dims / Π dims per layer, ε chosen so the layers
    keep `kept` weights in all. A layer that would exceed density 1 is dense and the rest share what is left
    (the reference's loop: the layers with the largest ratio are made dense, one ratio at a time). For a
    linear layer the ratio is (n_in + n_out) / (n_in · n_out), Mocanu et al.'s Erdős–Rényi."""
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    ratios = {name: sum(shape) / sizes[name] for name, shape in shapes.items()}
    dense: set[str] = set()
    scale = 0.0
    while len(dense) < len(sizes):
        free = [name for name in sizes if name not in dense]
        budget = kept - sum(sizes[name] for name in dense)
        scale = budget / sum(ratios[name] * sizes[name] for name in free)
        highest = max(ratios[name] for name in free)
        if scale * highest <= 1:
            break
        dense |= {name for name in free if ratios[name] == highest}
    return {name: 1.0 if name in dense else scale * ratios[name] for name in sizes}


def layer_counts(shapes: dict[str, tuple[int, ...]], kept: int, distribution: str = "erk") -> dict[str, int]:
    """Weights kept per layer, summing to `kept` exactly: the distribution's ideal counts, floored, with the
    remainder given to the largest fractional parts (the earlier layer on ties)."""
    if distribution not in DISTRIBUTIONS:
        raise ValueError(f"baseline.distribution must be one of {', '.join(DISTRIBUTIONS)}, got {distribution!r}")
    sizes = {name: math.prod(shape) for name, shape in shapes.items()}
    if not 0 <= kept <= sum(sizes.values()):
        raise ValueError(f"cannot keep {kept} of {sum(sizes.values())} weights")
    if distribution == "erk":
        densities = erk_densities(shapes, kept)
    else:
        densities = {name: kept / sum(sizes.values()) for name in sizes}
    ideal = {name: min(densities[name] * sizes[name], sizes[name]) for name in sizes}
    counts = {name: int(math.floor(ideal[name])) for name in sizes}
    leftover = kept - sum(counts.values())
    by_remainder = sorted(sizes, key=lambda name: -(ideal[name] - counts[name]))
    while leftover > 0:  # one pass normally; more only if float error left a layer without room
        for name in by_remainder:
            if leftover > 0 and counts[name] < sizes[name]:
                counts[name] += 1
                leftover -= 1
    return counts


def _top(values: torch.Tensor, candidates: torch.Tensor, count: int) -> torch.Tensor:
    """Flags for exactly `count` of the candidates, those with the highest values (ties to the lower index)."""
    available = int(torch.count_nonzero(candidates))
    if count == 0:
        return torch.zeros_like(candidates)
    if count == available:
        return candidates.clone()
    return top_k(values, candidates, count, available)


def initial_mask(template: Mask, density: float, distribution: str, seed: int) -> Mask:
    """A random mask over `template`'s layers with round(density · total) weights in all, spread by
    `distribution` (erk or uniform) and uniformly at random within each layer. The stream depends only on the
    seed, so RigL and SET at one density start from the same mask."""
    total = sum(flags.numel() for _, flags in template.items())
    counts = layer_counts({name: tuple(flags.shape) for name, flags in template.items()},
                          round_half_up(density * total), distribution)
    generator = torch.Generator().manual_seed(mix_seed("dynamic-initial-mask", seed))
    kept = {}
    for name, flags in template.items():
        scores = torch.rand(flags.numel(), generator=generator)
        kept[name] = _top(scores, torch.ones_like(scores, dtype=torch.bool), counts[name]).view(flags.shape)
    return Mask(kept)


# -- the updates -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class UpdateSchedule:
    """When the mask changes and by how much: steps 0, ΔT, 2ΔT, ... before `stop`, with cosine-decayed α."""

    every: int  # ΔT, in iterations
    stop: int  # T_end: no update at or after this step
    drop_fraction: float  # α

    @classmethod
    def for_training(cls, total_steps: int, every: int, until: float, drop_fraction: float) -> "UpdateSchedule":
        if every < 1:
            raise ValueError(f"baseline.update_every must be at least one iteration, got {every}")
        return cls(every, round_half_up(until * total_steps), drop_fraction)

    def due(self, step: int) -> bool:
        return step < self.stop and step % self.every == 0

    def fraction(self, step: int) -> float:
        """α_t = α/2 · (1 + cos(π t / T_end)) (Evci et al. 2020, eq. 1)."""
        return self.drop_fraction / 2 * (1 + math.cos(math.pi * step / self.stop))


UpdateCallback = Callable[[int, dict], None]


class MaskUpdater:
    """Drops and grows the weights of `mask` (changed in place) during training; see the module docstring.

    The training loop asks `due(step)` after the step's backward pass; when due it skips that step's weight
    update if `replaces_step`, then calls `update(step, model, optimizer)` with the step's gradients still in
    `.grad`. `history` holds one record per update; `on_update(step, record)` is told each one.
    """

    def __init__(self, method: str, mask: Mask, schedule: UpdateSchedule, grow: str, seed: int,
                 replaces_step: bool, on_update: Optional[UpdateCallback] = None):
        if grow not in ("gradient", "random"):
            raise ValueError(f"grow must be 'gradient' or 'random', got {grow!r}")
        self.method, self.mask, self.schedule, self.grow, self.seed = method, mask, schedule, grow, seed
        self.replaces_step = replaces_step
        self.on_update = on_update
        self.history: list[dict] = []

    def due(self, step: int) -> bool:
        return self.schedule.due(step)

    @torch.no_grad()
    def update(self, step: int, model: nn.Module, optimizer: torch.optim.Optimizer) -> dict:
        """Exchange the share α_t of every layer's active weights; return (and record) what changed."""
        fraction = self.schedule.fraction(step)
        generator = torch.Generator().manual_seed(mix_seed(self.method, self.seed, step))
        layers = {}
        for name, parameter in zip(self.mask.names, self.mask.parameters_of(model)):
            flags = self.mask[name]
            active = flags.reshape(-1).to(parameter.device, copy=True)
            count = int(torch.count_nonzero(active))
            exchanged = int(fraction * count)  # floor, as in the reference
            if exchanged == 0:
                layers[name] = {"dropped": 0, "grown": 0, "kept": count}
                continue
            keep = _top(parameter.detach().abs().reshape(-1), active, count - exchanged)
            new = keep | _top(self._grow_scores(parameter, generator), ~keep, exchanged)
            dropped = (active & ~new).view(parameter.shape)
            grown = (new & ~active).view(parameter.shape)
            flags.copy_(new.view(flags.shape))
            parameter.masked_fill_(dropped, 0)  # grown weights are pruned weights, so already exactly 0
            _reset_state(optimizer, parameter, grown)
            changed = int(torch.count_nonzero(grown))
            layers[name] = {"dropped": changed, "grown": changed, "kept": count}
        _tell_optimizer(optimizer, model, self.mask)
        moved = sum(layer["grown"] for layer in layers.values())
        record = {"step": step, "drop_fraction": fraction, "dropped": moved, "grown": moved, "layers": layers}
        self.history.append(record)
        logger.info("%s step %d: %d weights dropped and %d grown (α_t %.4f)", self.method, step, moved, moved,
                    fraction)
        if self.on_update is not None:
            self.on_update(step, record)
        return record

    def _grow_scores(self, parameter: nn.Parameter, generator: torch.Generator) -> torch.Tensor:
        if self.grow == "random":
            return torch.rand(parameter.numel(), generator=generator).to(parameter.device)
        if parameter.grad is None:  # a layer outside the graph: no signal, ties go to the lower index
            return torch.zeros(parameter.numel(), device=parameter.device)
        # Under fp16 the gradient is scaled by one positive factor: the order within a layer is the same.
        return torch.nan_to_num(parameter.grad.detach().abs().reshape(-1).float(), nan=0.0)

    # -- checkpoints: the mask changes, so a resumed segment needs it ---------------------------------
    def state_dict(self) -> dict:
        return {"mask": {name: flags.clone() for name, flags in self.mask.items()}, "history": list(self.history)}

    def load_state_dict(self, state: dict, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        for name, flags in self.mask.items():
            flags.copy_(state["mask"][name].to(flags.device))
        self.history = list(state["history"])
        _tell_optimizer(optimizer, model, self.mask)


def _reset_state(optimizer: torch.optim.Optimizer, parameter: nn.Parameter, grown: torch.Tensor) -> None:
    """Zero every per-weight optimizer state (momentum buffer, Adam's moments) at the grown weights."""
    for value in optimizer.state.get(parameter, {}).values():
        if torch.is_tensor(value) and value.shape == parameter.shape:
            value.masked_fill_(grown, 0)


def _tell_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, mask: Mask) -> None:
    """MaskedAdam caches its masked lerp weights: give it the new flags. (SGD's enforcer is rebuilt by the loop.)"""
    if isinstance(optimizer, MaskedAdam):
        optimizer.set_kept(dict(zip(mask.parameters_of(model), (mask[name] for name in mask.names))))


# -- the methods -----------------------------------------------------------------------------------

@register_method("rigl", "RigL (Evci et al. 2020): sparse from scratch; every ΔT steps drop the smallest |θ| and "
                 "grow the largest |dense gradient| (baseline.distribution, update_every, drop_fraction, "
                 "update_until)", settings=DYNAMIC_SETTINGS, dynamic=True)
def rigl(mask: Mask, schedule: UpdateSchedule, seed: int, on_update: Optional[UpdateCallback] = None) -> MaskUpdater:
    return MaskUpdater("rigl", mask, schedule, "gradient", seed, replaces_step=True, on_update=on_update)


@register_method("set", "SET (Mocanu et al. 2018): as RigL, but grow at random", settings=DYNAMIC_SETTINGS,
                 dynamic=True)
def sparse_evolutionary_training(mask: Mask, schedule: UpdateSchedule, seed: int,
                                 on_update: Optional[UpdateCallback] = None) -> MaskUpdater:
    return MaskUpdater("set", mask, schedule, "random", seed, replaces_step=False, on_update=on_update)
