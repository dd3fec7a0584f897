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
from typing import Optional

import torch
from torch import nn

from lottery.pruning.collapse import CriticalSearch, bisect_critical, compression_of, density_of, report_collapse
from lottery.pruning.mask import Mask, MaskError, join_flat
from lottery.pruning.methods import BN_MODES, ScoringContext, get_method
from lottery.pruning.scores import magnitude
from lottery.pruning.selection import keep_top, layerwise_quotas, rate_overrides, round_half_up

logger = logging.getLogger(__name__)

SCHEDULES = ("exponential", "linear")
SCOPES = ("global", "layerwise")


@dataclass(frozen=True)
class PruneSpec:
    """How one pruning-at-initialisation run scores and selects: built once from the config."""

    method: str
    scope: str = "global"
    rounds: Optional[int] = None  # None: the method's default
    schedule: str = "exponential"
    layer_rates: dict = field(default_factory=dict)
    seed: int = 0
    temperature: float = 200.0
    bn_mode: str = "auto"  # "train" | "eval" | "auto": the method's own (methods.Method.bn_mode)

    @classmethod
    def from_config(cls, config, method: Optional[str] = None) -> "PruneSpec":
        """The spec for `method` (default baseline.method) under a lottery Config. Baselines never use
        prune.layer_rates: those are IMP's per-level rates."""
        scope = config.prune.scope if config.baseline.scope == "prune" else config.baseline.scope
        return cls(method=method or config.baseline.method, scope=scope, rounds=config.baseline.rounds,
                   schedule=config.baseline.schedule, seed=config.seed, temperature=config.baseline.grasp_temperature,
                   bn_mode=config.baseline.bn_mode)

    @property
    def effective_rounds(self) -> int:
        return self.rounds if self.rounds is not None else get_method(self.method).default_rounds

    @property
    def effective_bn_mode(self) -> Optional[str]:
        """The BatchNorm mode the scorer runs in; None for a method that takes no mode."""
        default = get_method(self.method).bn_mode
        if default is None or self.bn_mode == "auto":
            return default
        if self.bn_mode not in BN_MODES:
            raise ValueError(f"baseline.bn_mode must be one of auto, {', '.join(BN_MODES)}, got {self.bn_mode!r}")
        return self.bn_mode


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


def _check_scope(scope: str) -> None:
    if scope not in SCOPES:
        raise ValueError(f"prune.scope must be one of {', '.join(SCOPES)}, got {scope!r}")


def _alive(mask: Mask, name: str) -> int:
    return int(torch.count_nonzero(mask[name]))


def _alive_in(mask: Mask, names: list[str]) -> int:
    """Unpruned weights in `names`, counted in one pass over the joined flags."""
    return int(torch.count_nonzero(join_flat([mask[name] for name in names]))) if names else 0


Group = tuple[list[str], int, Optional[int]]  # layers selected jointly, kept count, alive count if known


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


def survivors(remaining: int, rate: float) -> int:
    """What one IMP step keeps of `remaining` weights pruned at `rate`."""
    return remaining - round_half_up(remaining * rate)


def fraction_groups(names: list[str], alive: dict[str, int], fraction: float, scope: str = "global",
                    layer_rates: dict | None = None) -> list[tuple[list[str], int]]:
    """IMP's counting rule: (layers selected jointly, how many of them survive) for one step.

    Layers with their own rate keep survivors(alive, rate) each; the rest keep survivors(alive, fraction)
    pooled (global) or each (layerwise). It depends only on the alive counts, so the density of every
    level is known before any level trains (`level_counts`).
    """
    _check_scope(scope)
    rates = rate_overrides(names, layer_rates)
    groups = [([name], survivors(alive[name], rate)) for name, rate in rates.items()]
    rest = [name for name in names if name not in rates]
    if scope == "global" and rest:
        groups.append((rest, survivors(sum(alive[name] for name in rest), fraction)))
    else:
        groups += [([name], survivors(alive[name], fraction)) for name in rest]
    return groups


def imp_counts(sizes: dict[str, int], fraction: float, scope: str = "global", layer_rates: dict | None = None):
    """Kept weights at levels 0, 1, 2, ... of IMP from a full mask (an endless generator), by the same rule
    prune_fraction runs. With global scope the per-layer split depends on the trained weights; the total does not.
    """
    names = list(sizes)
    alive = dict(sizes)
    yield sum(sizes.values())
    while True:
        step = fraction_groups(names, alive, fraction, scope, layer_rates)
        # Layers pooled with others have unknown individual counts, but the next step only needs their sum.
        alive = {}
        for members, count in step:
            alive.update({name: 0 for name in members})
            alive[members[0]] = count
        yield sum(count for _, count in step)


def level_counts(sizes: dict[str, int], fraction: float, levels: int, scope: str = "global",
                 layer_rates: dict | None = None) -> list[int]:
    """Kept weights at levels 0..levels (see imp_counts)."""
    counts = imp_counts(sizes, fraction, scope, layer_rates)
    return [next(counts) for _ in range(levels + 1)]


def prune_fraction(model: nn.Module, mask: Mask, fraction: float, scope: str = "global",
                   layer_rates: dict | None = None, scores: dict | None = None) -> PruneResult:
    """One IMP step: remove round(remaining * fraction) of the remaining weights, lowest |w| first."""
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"prune.fraction must be in [0, 1], got {fraction}")
    scores = scores if scores is not None else magnitude(model, mask)
    alive = {name: _alive(mask, name) for name in mask.names}
    groups = [(names, count, sum(alive[name] for name in names))
              for names, count in fraction_groups(mask.names, alive, fraction, scope, layer_rates)]
    return PruneResult.of(_select(scores, mask, groups), f"pruning {fraction:.3g} of the remaining weights")


def schedule_density(start: float, target: float, step: int, rounds: int, schedule: str = "exponential") -> float:
    """Density after `step` of `rounds`: exponential start·(target/start)^(step/rounds), or linear."""
    if schedule not in SCHEDULES:
        raise ValueError(f"baseline.schedule must be one of {', '.join(SCHEDULES)}, got {schedule!r}")
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


def prune(model: nn.Module, spec: PruneSpec, density: float | None = None, compression: float | None = None,
          mask: Mask | None = None, batches=None, input_shape=None) -> PruneResult:
    """Prune at initialisation to a density (or log10 compression), rescoring with the current mask each round.

    The model is not changed: apply `result.mask` to it yourself.
    """
    method = get_method(spec.method)
    if method.structured:
        raise ValueError(f"{spec.method} is structured: it removes whole units and has no mask to select")
    if method.dynamic:
        raise ValueError(f"{spec.method} is dynamic sparse training: its mask changes while it trains, so there is "
                         "no mask to select at initialisation (lottery.pruning.dynamic.initial_mask is the one it "
                         "starts from)")
    target = target_density(density, compression)
    mask = mask if mask is not None else Mask.ones(model)
    start = mask.density()
    if target > start:
        raise MaskError(f"target density {target:.6g} is above the mask's current density {start:.6g}")
    rounds = spec.effective_rounds
    if rounds < 1:
        raise ValueError(f"baseline.rounds must be >= 1, got {rounds}")
    scorer = method.make_scorer(ScoringContext(model, batches, input_shape, spec))
    for step in range(1, rounds + 1):
        mask = mask_from_scores(scorer(mask), mask, schedule_density(start, target, step, rounds, spec.schedule),
                                spec.scope, spec.layer_rates)
    kept, total = mask.counts()
    if kept != round_half_up(target * total):
        raise MaskError(f"pruning missed its target: kept {kept} of {total}, wanted {round_half_up(target * total)}")
    result = PruneResult.of(mask, f"{spec.method}, {rounds} round(s)")
    mode = f", BatchNorm in {spec.effective_bn_mode} mode" if spec.effective_bn_mode else ""
    logger.info("%s: density %.6g (compression %.3f), %d rounds, %s scope%s", spec.method, result.density,
                result.compression, rounds, spec.scope, mode)
    return result


def critical_compression(model: nn.Module, spec: PruneSpec, batches=None, input_shape=None,
                         mask: Mask | None = None, tol: float = 0.05) -> CriticalSearch:
    """The largest log10 compression at which `spec` (pruning from scratch each time) collapses no layer.

    Bisection between dense (never a collapse) and one weight left (a collapse whenever there are two or
    more layers), to within `tol`. A single-layer mask cannot collapse short of density 0.
    """
    mask = mask if mask is not None else Mask.ones(model)
    kept, total = mask.counts()
    if kept < total:
        raise MaskError("critical compression starts from a full mask")
    top = compression_of(1 / total)
    if len(mask) < 2:
        logger.info("one prunable layer: no collapse before the last weight goes")
        return CriticalSearch(top, 0.0)

    def collapses(compression: float) -> bool:
        return bool(prune(model, spec, compression=compression, mask=mask, batches=batches,
                          input_shape=input_shape).collapsed)

    search = bisect_critical(collapses, 0.0, top, tol)
    logger.info("critical compression of %s: %.3f (precision %.3f, %d probes)", spec.method, search.compression,
                search.precision, len(search.probes))
    return search
