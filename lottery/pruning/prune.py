"""From scores to masks: target densities, IMP fractions, iterative schedules, collapse reports.

Conventions (see DESIGN.md, "Pruning at initialisation"):
- densities are fractions of all the mask's weights; compression c means density 10^-c;
- pruning is global unless scope="layerwise";
- exact counts (round half up), ties broken deterministically, masked weights never revive;
- `layer_rates` {pattern: rate} prunes matching layers ("output" = the last mask layer) at their
  own rate: the fraction of that layer's *remaining* weights removed in each pruning step.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable

import torch
from torch import nn

from lottery.pruning.collapse import compression_of, critical_compression, density_of, report_collapse
from lottery.pruning.mask import Mask, MaskError, join_flat
from lottery.pruning.scores import SCORERS, SynFlow, grasp, infer_input_shape, magnitude, random, snip
from lottery.pruning.selection import keep_top, layerwise_quotas, rate_overrides, round_half_up

__all__ = ["PruneResult", "mask_from_scores", "prune_fraction", "make_scorer", "schedule_density", "prune",
           "critical_compression", "target_density"]

logger = logging.getLogger(__name__)

DEFAULT_ROUNDS = {"synflow": 100}
SCHEDULES = ("exponential", "linear")
SCOPES = ("global", "layerwise")


@dataclass
class PruneResult:
    mask: Mask
    density: float
    compression: float
    layers: dict = field(default_factory=dict)
    collapsed: list[str] = field(default_factory=list)

    @classmethod
    def of(cls, mask: Mask, context: str = "") -> "PruneResult":
        density = mask.density()
        return cls(mask, density, compression_of(density), mask.layer_report(), report_collapse(mask, context))

    def summary(self) -> dict:
        """The JSON-ready record: density, compression, per-layer report, collapsed layers."""
        return {"density": self.density, "compression": self.compression,
                "layers": self.layers, "collapsed": self.collapsed}


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"prune.scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def _alive(mask: Mask, name: str) -> int:
    return int(torch.count_nonzero(mask[name]))


def _alive_in(mask: Mask, names: list[str]) -> int:
    """Unpruned weights in `names`, counted in one pass over the joined flags."""
    return int(torch.count_nonzero(join_flat([mask[name] for name in names]))) if names else 0


Group = tuple[list[str], int, int | None]  # layers selected jointly, kept count, alive count if known


def _select(scores: dict, mask: Mask, groups: list[Group]) -> Mask:
    kept: dict[str, torch.Tensor] = {}
    for names, count, available in groups:
        kept.update(keep_top(scores, mask, names, count, available))
    return Mask({name: kept[name] for name in mask.names})


def _rest_groups(rest: list[str], mask: Mask, count: int, available: int, scope: str) -> list[Group]:
    """Groups for the layers without their own rate, keeping `count` weights in total."""
    if scope == "global":
        return [(rest, count, available)]
    sizes = {name: mask[name].numel() for name in rest}
    alive = {name: _alive(mask, name) for name in rest}
    quotas = layerwise_quotas(sizes, alive, count)
    return [([name], quotas[name], alive[name]) for name in rest]


def mask_from_scores(scores: dict, mask: Mask, density: float, scope: str = "global",
                     layer_rates: dict | None = None) -> Mask:
    """Keep the highest scores so that exactly round(density * total) weights survive.

    Layers with a rate in `layer_rates` lose that fraction of their remaining weights; the other
    layers share what is left of the target, jointly (global) or in proportion to size (layerwise).
    """
    _check_scope(scope)
    if not 0.0 <= density <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {density}")
    total = sum(mask[name].numel() for name in mask.names)
    target = round_half_up(density * total)
    rates = rate_overrides(mask.names, layer_rates)
    groups: list[Group] = []
    for name, rate in rates.items():
        alive = _alive(mask, name)
        groups.append(([name], alive - round_half_up(alive * rate), alive))
    rest = [name for name in mask.names if name not in rates]
    count = target - sum(group[1] for group in groups)
    available = _alive_in(mask, rest)
    if not 0 <= count <= available:
        raise MaskError(f"density {density:.6g} is unreachable: layers with their own rate keep "
                        f"{target - count} weights, the other {len(rest)} layers would need {count} of {available}")
    if rest:
        groups += _rest_groups(rest, mask, count, available, scope)
    return _select(scores, mask, groups)


def prune_fraction(model: nn.Module, mask: Mask, fraction: float, scope: str = "global",
                   layer_rates: dict | None = None, scores: dict | None = None) -> PruneResult:
    """One IMP step: remove round(remaining * fraction) of the remaining weights, lowest |w| first.

    Global scope pools all layers without their own rate; layers in `layer_rates` use their rate.
    """
    _check_scope(scope)
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prune.fraction must be in [0, 1], got {fraction}")
    scores = scores if scores is not None else magnitude(model, mask)
    rates = rate_overrides(mask.names, layer_rates)

    def survivors(remaining: int, rate: float) -> int:
        return remaining - round_half_up(remaining * rate)

    groups: list[Group] = [([name], survivors(_alive(mask, name), rate), None) for name, rate in rates.items()]
    rest = [name for name in mask.names if name not in rates]
    if scope == "global" and rest:
        available = _alive_in(mask, rest)
        groups.append((rest, survivors(available, fraction), available))
    else:
        groups += [([name], survivors(_alive(mask, name), fraction), None) for name in rest]
    return PruneResult.of(_select(scores, mask, groups), f"pruning {fraction:.3g} of the remaining weights")


def make_scorer(method: str | Callable, model: nn.Module, batches=None, input_shape=None, seed: int = 0,
                temperature: float = 200.0) -> Callable[[Mask], dict]:
    """mask -> scores for `method`, with any per-run preparation (SynFlow's |θ| copy) done once."""
    if callable(method):
        return lambda mask: method(model, mask, batches, input_shape=input_shape, seed=seed, temperature=temperature)
    if method == "synflow":
        # The loop scores, selects, then rescores: each round's scores may overwrite the last's.
        return SynFlow(model, infer_input_shape(batches, input_shape, "synflow"), reuse_scores=True)
    if method == "random":
        generator = torch.Generator().manual_seed(seed)
        return lambda mask: random(model, mask, generator=generator)
    if method == "snip":
        return lambda mask: snip(model, mask, batches)
    if method == "grasp":
        return lambda mask: grasp(model, mask, batches, temperature=temperature)
    if method == "magnitude":
        return lambda mask: magnitude(model, mask)
    raise ValueError(f"unknown pruning method {method!r}; valid: {', '.join(SCORERS)}")


def schedule_density(start: float, target: float, step: int, rounds: int, schedule: str = "exponential") -> float:
    """Density after `step` of `rounds`: exponential start·(target/start)^(step/rounds), or linear."""
    if schedule not in SCHEDULES:
        raise ValueError(f"prune.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
    if step >= rounds:
        return target
    if schedule == "linear" or target <= 0:
        return start - (start - target) * step / rounds
    return start * (target / start) ** (step / rounds)


def target_density(density: float | None, compression: float | None) -> float:
    if (density is None) == (compression is None):
        raise ValueError("give exactly one of density or compression")
    value = density if density is not None else density_of(compression)
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"density must be in [0, 1], got {value}")
    return value


def prune(model: nn.Module, method: str | Callable, density: float | None = None, compression: float | None = None,
          mask: Mask | None = None, batches=None, input_shape=None, scope: str = "global", rounds: int | None = None,
          schedule: str = "exponential", layer_rates: dict | None = None, seed: int = 0,
          temperature: float = 200.0) -> PruneResult:
    """Prune at initialisation to a density (or log10 compression), rescoring with the current mask each round.

    The model is not changed: apply `result.mask` to it yourself.
    """
    target = target_density(density, compression)
    mask = mask if mask is not None else Mask.ones(model)
    start = mask.density()
    if target > start:
        raise MaskError(f"target density {target:.6g} is above the mask's current density {start:.6g}")
    rounds = rounds if rounds is not None else DEFAULT_ROUNDS.get(method, 1)
    if rounds < 1:
        raise ValueError(f"prune.rounds must be >= 1, got {rounds}")
    scorer = make_scorer(method, model, batches, input_shape, seed, temperature)
    for step in range(1, rounds + 1):
        mask = mask_from_scores(scorer(mask), mask, schedule_density(start, target, step, rounds, schedule),
                                scope, layer_rates)
    kept, total = mask.counts()
    if kept != round_half_up(target * total):
        raise MaskError(f"pruning missed its target: kept {kept} of {total}, wanted {round_half_up(target * total)}")
    name = getattr(method, "__name__", method)
    result = PruneResult.of(mask, f"{name}, {rounds} round(s)")
    logger.info("%s: density %.6g (compression %.3f), %d rounds, %s scope", name, result.density,
                result.compression, rounds, scope)
    return result
