"""Width scaling: the same architecture with fewer units, sized to a weight budget.

This is the small-dense control of Crowley et al. 2018 ("Pruning neural networks: is it time to nip it in
the bud?"): a dense network whose parameter count matches a pruned one's remaining weights. Every scalable
family registers its standard widths as one list (hidden widths of a LeNet; blocks and the two hidden fully
connected widths of Conv-2/4/6; the three stage widths of a CIFAR ResNet; every conv layer of a VGG).

The search: scale every width by one factor s (bisection on s for the budget), then adjust each width by a
few units to land on the budget: all combinations within ±2 units for up to four widths, single-unit greedy
steps otherwise. Among the candidates within the tolerance, the one closest to uniform scaling wins. A
network's weight count is a quadratic polynomial in its widths (every layer is in·out·k, or in·constant),
so the count is fitted exactly from 1 + 2G + G(G-1)/2 networks built on the meta device (no memory), the
search evaluates the polynomial, and the chosen widths are checked against a real count.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from fractions import Fraction
from typing import Callable, Sequence

import torch
from torch import nn

from lottery.models.init import is_weighted_layer
from lottery.models.registry import find_family

NEIGHBOURHOOD = 2  # units each width may move from uniform scaling in the exhaustive search
EXHAUSTIVE_UP_TO = 4  # widths; beyond this the search takes greedy single-unit steps
Counter = Callable[[nn.Module], int]


def count_weights(model: nn.Module) -> int:
    """Conv and linear weights: what a mask's density is measured against by default."""
    return sum(module.weight.numel() for module in model.modules() if is_weighted_layer(module))


def standard_widths(cfg) -> list[int]:
    """The model's widths as its family lists them; ValueError for a family without widths."""
    found = find_family(cfg.name)
    if found is None:
        raise ValueError(f"unknown model {cfg.name!r}")
    family, match = found
    if family.widths is None:
        raise ValueError(f"model {cfg.name!r} has no widths to scale (lenet_*, conv2/4/6, resnet*, vgg* do)")
    return list(family.widths(cfg, match))


def meta_model(cfg, input_shape: tuple[int, ...], num_classes: int, widths: Sequence[int]) -> nn.Module:
    """The architecture at `widths` on the meta device: shapes without memory or initialisation."""
    family, match = find_family(cfg.name)
    with torch.device("meta"):
        return family.build(cfg, match, tuple(input_shape), num_classes, widths=list(widths))


class QuadraticCount:
    """The weight count as an exact quadratic polynomial in the widths, fitted at widths 1 + δ with δ in
    {0, e_i, 2e_i, e_i + e_j}."""

    def __init__(self, measure: Callable[[Sequence[int]], int], groups: int):
        ones = [1] * groups

        def at(*units: int) -> int:
            point = list(ones)
            for index in units:
                point[index] += 1
            return measure(point)

        self.constant = Fraction(at())
        single = [Fraction(at(i)) for i in range(groups)]
        double = [Fraction(at(i, i)) for i in range(groups)]
        self.square = [(double[i] - 2 * single[i] + self.constant) / 2 for i in range(groups)]
        self.linear = [single[i] - self.constant - self.square[i] for i in range(groups)]
        self.cross = {(i, j): Fraction(at(i, j)) - self.constant - self.linear[i] - self.linear[j]
                      - self.square[i] - self.square[j] for i, j in itertools.combinations(range(groups), 2)}

    def __call__(self, widths: Sequence[int]) -> int:
        delta = [width - 1 for width in widths]
        value = self.constant + sum(b * d + a * d * d for b, a, d in zip(self.linear, self.square, delta))
        value += sum(a * delta[i] * delta[j] for (i, j), a in self.cross.items())
        return int(value)


@dataclass(frozen=True)
class ScaledWidths:
    widths: list[int]
    weights: int  # the counted weights of the network at `widths`
    target: int
    scale: float  # the uniform factor the widths started from

    @property
    def error(self) -> float:
        """(weights - target) / target."""
        return (self.weights - self.target) / self.target if self.target else 0.0


def widths_for_weights(cfg, input_shape: tuple[int, ...], num_classes: int, target: int,
                       count: Counter = count_weights, tolerance: float = 0.02) -> ScaledWidths:
    """Widths of `cfg`'s architecture whose `count` of weights is as close to `target` as the search gets;
    within `tolerance` (relative) whenever the widths' granularity allows (check `.error`). The standard widths are the upper
    bound: a target at or above their count gets them unchanged."""
    base = standard_widths(cfg)
    counted: dict[tuple[int, ...], int] = {}

    def measure(widths: Sequence[int]) -> int:
        key = tuple(widths)
        if key not in counted:
            counted[key] = count(meta_model(cfg, input_shape, num_classes, key))
        return counted[key]

    full = measure(base)
    if target >= full:
        return ScaledWidths(base, full, target, 1.0)
    polynomial = QuadraticCount(measure, len(base))

    def uniform(scale: float) -> list[int]:
        return [max(1, round(width * scale)) for width in base]

    low, high = 0.0, 1.0
    for _ in range(50):
        middle = (low + high) / 2
        low, high = (middle, high) if polynomial(uniform(middle)) < target else (low, middle)
    scale = (low + high) / 2

    def error(widths: Sequence[int]) -> int:
        return abs(polynomial(widths) - target)

    def departure(widths: Sequence[int]) -> float:  # how far from uniform scaling, in relative width
        return sum(abs(width - b * scale) / b for width, b in zip(widths, base))

    start = min((uniform(low), uniform(high)), key=error)
    if len(base) <= EXHAUSTIVE_UP_TO:
        ranges = [range(max(1, w - NEIGHBOURHOOD), min(b, w + NEIGHBOURHOOD) + 1) for w, b in zip(start, base)]
        candidates = [list(widths) for widths in itertools.product(*ranges)]
    else:
        candidates = _greedy_path(start, base, error)
    close = [widths for widths in candidates if error(widths) <= tolerance * target]
    if not close:  # tiny budgets: a unit of the widest layer is over 2 %, so let one width move as far as needed
        candidates += [solved for widths in candidates for i in range(len(base))
                       for solved in [_solve_one(widths, i, base[i], polynomial, target)]]
        close = [widths for widths in candidates if error(widths) <= tolerance * target]
    best = min(close, key=departure) if close else min(candidates, key=lambda widths: (error(widths),
                                                                                       departure(widths)))
    weights = count(meta_model(cfg, input_shape, num_classes, best))
    if weights != polynomial(best):
        raise RuntimeError(f"{cfg.name}: the weight count is not quadratic in the widths "
                           f"({weights} counted, {polynomial(best)} fitted)")
    return ScaledWidths(best, weights, target, scale)


def _greedy_path(start: list[int], base: list[int], error: Callable) -> list[list[int]]:
    """Single-unit steps that lower the error, best first, until none does; every visited point."""
    path, current = [list(start)], list(start)
    while True:
        moves = [current[:i] + [current[i] + step] + current[i + 1:]
                 for i in range(len(current)) for step in (-1, 1) if 1 <= current[i] + step <= base[i]]
        better = min(moves, key=error, default=None)
        if better is None or error(better) >= error(current):
            return path
        current = better
        path.append(current)


def _solve_one(widths: list[int], i: int, most: int, polynomial: Callable, target: int) -> list[int]:
    """`widths` with width i set, in 1..most, to bring the count nearest `target` (the count grows with it)."""
    def at(width: int) -> list[int]:
        return widths[:i] + [width] + widths[i + 1:]

    low, high = 1, most
    while low < high:  # the smallest width whose count reaches the target
        middle = (low + high) // 2
        low, high = (middle + 1, high) if polynomial(at(middle)) < target else (low, middle)
    return min((at(low), at(max(1, low - 1))), key=lambda found: abs(polynomial(found) - target))
