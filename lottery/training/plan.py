"""A run's schedule in iterations: the step strings resolved for a dataset, and the learning rate as a pure
function of the global step, so a loop started at k matches an uninterrupted run."""
from __future__ import annotations

import math
from dataclasses import dataclass

from lottery.steps import parse_steps


@dataclass(frozen=True)
class LRSchedule:
    base_lr: float
    total_steps: int
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    warmup_steps: int = 0
    kind: str = "step"  # step | cosine | constant

    def __call__(self, step: int) -> float:
        if self.warmup_steps and step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        if self.kind == "cosine":
            span = max(self.total_steps - self.warmup_steps, 1)
            progress = min(max(step - self.warmup_steps, 0) / span, 1.0)
            return self.base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))
        if self.kind == "step":
            passed = sum(1 for milestone in self.milestones if step >= milestone)
            return self.base_lr * self.gamma**passed
        return self.base_lr


@dataclass(frozen=True)
class StepPlan:
    """The config's step strings resolved to iterations for one dataset and batch size."""

    iterations_per_epoch: int
    total: int
    eval_every: int
    warmup: int
    milestones: tuple[int, ...]

    @classmethod
    def from_config(cls, train_cfg, iterations_per_epoch: int) -> "StepPlan":
        convert = lambda text: parse_steps(text, iterations_per_epoch)  # noqa: E731
        return cls(
            iterations_per_epoch=iterations_per_epoch,
            total=convert(train_cfg.steps),
            eval_every=max(convert(train_cfg.eval_every), 1),
            warmup=convert(train_cfg.warmup),
            milestones=tuple(sorted(convert(m) for m in train_cfg.milestones)),
        )

    def steps(self, text) -> int:
        return parse_steps(text, self.iterations_per_epoch)

    def lr_schedule(self, train_cfg) -> LRSchedule:
        return LRSchedule(train_cfg.lr, self.total, self.milestones, train_cfg.gamma, self.warmup, train_cfg.schedule)
