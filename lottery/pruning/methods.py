"""The registry of pruning methods: one record per method, filled by `@register_method` where the method lives.

A record says how to build the method's scorer for one pruning run, whether it needs data, its default
number of scoring rounds, whether it is structured (removes whole units, so it has no scorer), whether it is
dynamic (trains a sparse network whose mask changes during training: no scorer, a mask updater instead;
lottery/pruning/dynamic.py) and which `baseline.*` settings it reads (a baseline stage whose settings differ from the defaults gets its own
folder). Config validation, `lottery baselines --methods`, `lottery prune --method`, the help text and the
search spaces all read this registry, so adding a method is one function plus one registration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

# Settings every unstructured method reads: the scoring schedule and the isometry step after pruning.
COMMON_SETTINGS = ("rounds", "schedule", "isometry", "isometry_steps")


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer factory may use: the model (never changed), the pruning batches, the input shape, the spec."""

    model: nn.Module
    batches: Optional[list]
    input_shape: Optional[tuple]
    spec: object  # lottery.pruning.prune.PruneSpec


ScorerFactory = Callable[[ScoringContext], Callable]
UpdaterFactory = Callable[..., object]  # (mask, schedule, seed) -> lottery.pruning.dynamic.MaskUpdater


@dataclass(frozen=True)
class Method:
    name: str
    make_scorer: Optional[ScorerFactory]  # None for structured methods
    description: str
    needs_data: bool = False
    default_rounds: int = 1
    structured: bool = False
    settings: tuple[str, ...] = field(default=())  # the baseline.* keys this method reads
    make_updater: Optional[UpdaterFactory] = None  # dynamic sparse training only

    @property
    def dynamic(self) -> bool:
        return self.make_updater is not None


METHODS: dict[str, Method] = {}


def register_method(name: str, description: str, needs_data: bool = False, default_rounds: int = 1,
                    structured: bool = False, settings: tuple[str, ...] = (), dynamic: bool = False):
    """Decorator for a scorer factory `make(context) -> (mask -> scores)`; structured methods decorate their
    pruning function instead (it is stored but never called as a scorer); dynamic methods decorate their
    mask-updater factory."""
    def decorate(function):
        if name in METHODS:
            raise ValueError(f"pruning method {name!r} is registered twice")
        scored = not (structured or dynamic)
        own = (*COMMON_SETTINGS, *settings) if scored else settings
        METHODS[name] = Method(name, function if scored else None, description, needs_data, default_rounds,
                               structured, own, make_updater=function if dynamic else None)
        return function
    return decorate


def method_names(structured: Optional[bool] = None) -> list[str]:
    """Registered names in registration order; structured=False/True keeps only those kinds (dynamic methods
    are unstructured)."""
    return [name for name, method in METHODS.items() if structured is None or method.structured == structured]


def get_method(name: str) -> Method:
    if name not in METHODS:
        raise ValueError(f"unknown pruning method {name!r}; valid: {', '.join(METHODS)}")
    return METHODS[name]
