"""The registry of pruning methods: one record per method, filled by `@register_method` where the method lives.

A record says how to build the method's scorer for one pruning run, whether it needs data, its default
number of scoring rounds, whether it is structured (removes whole units, so it has no scorer), whether it is
dynamic (trains a sparse network whose mask changes during training: no scorer, a mask updater instead;
lottery/pruning/dynamic.py), the BatchNorm mode its reference code scores in (`bn_mode`, for methods that run
the network on data) and which `baseline.*` settings it reads (a baseline stage whose settings differ from the
defaults gets its own folder). Config validation, `lottery baselines --methods`, `lottery prune --method`, the help text and the
search spaces all read this registry, so adding a method is one function plus one registration.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Optional

from torch import nn

# Settings every unstructured method reads: the scoring schedule and the isometry step after pruning.
COMMON_SETTINGS = ("rounds", "schedule", "isometry", "isometry_steps", "scope", "fresh_weights")
BN_MODES = ("train", "eval")  # BatchNorm on batch statistics / on running statistics while scoring


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
    # Structured methods: (model, input_shape, seed, density=...) -> the physically smaller network.
    make_structured: Optional[Callable] = None
    needs_data: bool = False
    default_rounds: int = 1
    structured: bool = False
    settings: tuple[str, ...] = field(default=())  # the baseline.* keys this method reads
    bn_mode: Optional[str] = None  # the BatchNorm mode of its reference code; None: it takes no mode
    make_updater: Optional[UpdaterFactory] = None  # dynamic sparse training only

    @property
    def dynamic(self) -> bool:
        return self.make_updater is not None


METHODS: dict[str, Method] = {}


def register_method(name: str, description: str, needs_data: bool = False, default_rounds: int = 1,
                    structured: bool = False, settings: tuple[str, ...] = (), bn_mode: Optional[str] = None,
                    dynamic: bool = False):
    """Decorator for a scorer factory `make(context) -> (mask -> scores)`. Structured methods decorate their
    pruning function `(model, input_shape, seed, density=...) -> smaller model` instead, dynamic methods their
    mask-updater factory. A method with a `bn_mode` reads baseline.bn_mode ("auto" meaning that default)."""
    def decorate(function):
        if name in METHODS:
            raise ValueError(f"pruning method {name!r} is registered twice")
        if bn_mode is not None and bn_mode not in BN_MODES:
            raise ValueError(f"bn_mode of {name!r} must be one of {', '.join(BN_MODES)}, got {bn_mode!r}")
        scored = not (structured or dynamic)
        own = (*COMMON_SETTINGS, *settings) if scored else settings
        if bn_mode is not None:
            own = (*own, "bn_mode")
        METHODS[name] = Method(name, function if scored else None, description,
                               make_structured=function if structured else None, needs_data=needs_data,
                               default_rounds=default_rounds, structured=structured, settings=own, bn_mode=bn_mode,
                               make_updater=function if dynamic else None)
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
