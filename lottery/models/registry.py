"""The model registry: a name pattern per architecture family, filled by `@register_model` in each family's module.

A builder takes (cfg, match, input_shape, num_classes) and returns the network; `match` is the pattern's
match on cfg.name, so one entry serves lenet_300_100 and lenet_128_64 alike. A family whose widths can be
scaled (the small-dense control, lottery/models/scaling.py) also registers `widths(cfg, match)`, its
standard widths as one list, and its builder takes `widths=` (a list of that length) to build it narrower.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Optional

from torch import nn

Builder = Callable[..., nn.Module]


@dataclass(frozen=True)
class ModelFamily:
    pattern: re.Pattern
    names: str  # how the family's names read, for help and error messages
    example: str  # one small name and input shape that builds, for the registry's shared tests
    example_shape: tuple[int, ...]
    build: Builder
    accepts: Callable[[re.Match], bool]
    widths: Optional[Callable[..., list[int]]] = None  # (cfg, match) -> the standard widths; None: not scalable


MODELS: list[ModelFamily] = []


def register_model(pattern: str, names: str, example: str, example_shape: tuple[int, ...],
                   accepts: Optional[Callable[[re.Match], bool]] = None,
                   widths: Optional[Callable[..., list[int]]] = None):
    """Register `build(cfg, match, input_shape, num_classes)` for names matching `pattern` (and `accepts`);
    with `widths`, the builder also takes `widths=`."""
    def decorate(build: Builder) -> Builder:
        MODELS.append(ModelFamily(re.compile(pattern), names, example, tuple(example_shape), build,
                                  accepts or (lambda match: True), widths))
        return build
    return decorate


def find_family(name) -> Optional[tuple[ModelFamily, re.Match]]:
    if not isinstance(name, str):
        return None
    for family in MODELS:
        match = family.pattern.match(name)
        if match and family.accepts(match):
            return family, match
    return None


def model_names() -> str:
    """A human-readable list of valid model names, for help and error messages."""
    return ", ".join(family.names for family in MODELS)


def refuse_width(name: str, width: int) -> None:
    if width != 0:
        raise ValueError(f"model.width={width} has no meaning for model {name!r}; leave it 0")


def check_image_shape(name: str, input_shape: tuple[int, ...]) -> None:
    if len(input_shape) != 3:
        raise ValueError(f"model {name!r} needs image inputs (channels, height, width), got shape {input_shape}")
