"""Masking cost: a masked train step divided by a plain PyTorch step, side by side, on CPU.

Four copies of the same model train on the same fixed batch, each with its own optimizer:
- plain:            forward, backward, optimizer.step(): the hand-written loop;
- ours:             the same step, then Mask.enforcer's one fused multiply (what lottery.train does);
- forward_multiply: the mask multiplied into the weight on every forward (torch parametrize);
- prune_hooks:      torch.nn.utils.prune.custom_from_mask (weight_orig * weight_mask in a pre-hook).
The three masked copies share one random mask. Steps are timed round by round, interleaved.
"""
from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize
from torch.nn.utils import prune as torch_prune

from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.timing import interleaved
from lottery.config import ModelConfig
from lottery.models import build_model
from lottery.pruning.mask import Mask

logger = logging.getLogger(__name__)

GOAL = Goal("<=", 1.02)
DENSITY = 0.2
SEED = 0
COMPARISONS = ("forward_multiply", "prune_hooks")


@dataclass(frozen=True)
class MaskingCase:
    model: str
    input_shape: tuple[int, ...]
    batch_size: int
    optimizer: str  # "adam" or "sgd"
    lr: float
    momentum: float
    weight_decay: float
    warmup_rounds: int
    rounds: int
    steps_per_sample: int
    cpu_time_check: bool = False  # repeat the race on process CPU time, which other processes do not inflate


def cases(quick: bool) -> list[MaskingCase]:
    """LeNet-300-100 as in the LTH paper (Adam, batch 60) and ResNet-20 as in OpenLTH (SGD momentum, 128).

    ResNet-20 takes about 0.5 s per step on 2 cores, so it gets one step per sample and few rounds.
    """
    if quick:
        return [MaskingCase("lenet_300_100", (1, 28, 28), 60, "adam", 1.2e-3, 0.0, 0.0, 1, 5, 5),
                MaskingCase("resnet20", (3, 32, 32), 32, "sgd", 0.1, 0.9, 1e-4, 1, 3, 1)]
    return [MaskingCase("lenet_300_100", (1, 28, 28), 60, "adam", 1.2e-3, 0.0, 0.0, 3, 60, 10, cpu_time_check=True),
            MaskingCase("resnet20", (3, 32, 32), 128, "sgd", 0.1, 0.9, 1e-4, 5, 15, 1)]


def random_mask(model: nn.Module, density: float, seed: int) -> Mask:
    """Every prunable weight kept with probability `density`."""
    generator = torch.Generator().manual_seed(seed)
    return Mask({name: torch.rand(tensor.shape, generator=generator) < density
                 for name, tensor in Mask.ones(model).items()})


class _MultiplyByMask(nn.Module):
    """A parametrization: the weight seen by the forward is the stored weight times the mask."""

    def __init__(self, mask: torch.Tensor):
        super().__init__()
        self.register_buffer("mask", mask)

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        return weight * self.mask


def _owner(model: nn.Module, parameter_name: str) -> tuple[nn.Module, str]:
    module_name, _, attribute = parameter_name.rpartition(".")
    return model.get_submodule(module_name), attribute


def with_forward_multiply(model: nn.Module, mask: Mask) -> nn.Module:
    for name, kept in mask.items():
        module, attribute = _owner(model, name)
        parametrize.register_parametrization(module, attribute, _MultiplyByMask(kept.to(torch.float32)))
    return model


def with_prune_hooks(model: nn.Module, mask: Mask) -> nn.Module:
    for name, kept in mask.items():
        module, attribute = _owner(model, name)
        torch_prune.custom_from_mask(module, attribute, kept)
    return model


def _optimizer(case: MaskingCase, model: nn.Module) -> torch.optim.Optimizer:
    if case.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=case.lr, weight_decay=case.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=case.lr, momentum=case.momentum, weight_decay=case.weight_decay)


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, inputs: torch.Tensor, labels: torch.Tensor,
               after_step: Optional[Callable[[], None]] = None) -> Callable[[], None]:
    """One plain training step as a closure; `after_step` runs right after optimizer.step()."""
    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), labels)
        loss.backward()
        optimizer.step()
        if after_step is not None:
            after_step()

    return step


@dataclass
class Contenders:
    """The four models (same θ0), their step closures, the shared mask and our enforcer alone."""

    models: dict[str, nn.Module]
    steps: dict[str, Callable[[], None]]
    mask: Mask
    enforce: Callable[[], None]


def contenders(case: MaskingCase) -> Contenders:
    base = build_model(ModelConfig(name=case.model), case.input_shape, 10, SEED)
    base.train()
    mask = random_mask(base, DENSITY, SEED)
    generator = torch.Generator().manual_seed(SEED)
    inputs = torch.randn((case.batch_size, *case.input_shape), generator=generator)
    labels = torch.randint(0, 10, (case.batch_size,), generator=generator)

    ours = copy.deepcopy(base)
    mask.apply(ours)
    enforce = mask.enforcer(ours)
    models = {"plain": copy.deepcopy(base), "ours": ours,
              "forward_multiply": with_forward_multiply(copy.deepcopy(base), mask),
              "prune_hooks": with_prune_hooks(copy.deepcopy(base), mask)}
    steps = {name: train_step(model, _optimizer(case, model), inputs, labels, enforce if name == "ours" else None)
             for name, model in models.items()}
    return Contenders(models, steps, mask, enforce)


def measure(case: MaskingCase) -> list[BenchEntry]:
    contestants = contenders(case)
    timings = interleaved(contestants.steps, case.rounds, case.warmup_rounds, case.steps_per_sample)
    # The enforcer alone, timed the same way: a low-noise estimate of what it adds to a step.
    enforce_timings = interleaved({"enforce": contestants.enforce}, case.rounds, 1, max(case.steps_per_sample, 5))
    plain_seconds, enforce_seconds = timings.median("plain"), enforce_timings.median("enforce")
    setup = {"model": case.model, "input_shape": list(case.input_shape), "batch_size": case.batch_size,
             "optimizer": case.optimizer, "mask_density": DENSITY, "device": "cpu",
             "torch_threads": torch.get_num_threads(), "warmup_rounds": case.warmup_rounds}
    ratio_low, ratio_high = timings.ratio_spread("ours", "plain")
    if case.cpu_time_check:
        cpu = interleaved(contestants.steps, case.rounds, 1, case.steps_per_sample, clock=time.process_time)
        setup["cpu_time_ratios"] = {name: cpu.ratio(name, "plain") for name in cpu.names if name != "plain"}
    entries = [BenchEntry(f"masking.{case.model}", timings.ratio("ours", "plain"), "x plain step", GOAL, {
        **setup, **timings.summary(),
        "ratio_min": ratio_low, "ratio_max": ratio_high,
        "enforce_seconds": enforce_seconds,
        "ratio_from_components": (plain_seconds + enforce_seconds) / plain_seconds,
        "note": "ours = plain step + Mask.enforcer (one fused _foreach_mul_ after optimizer.step), "
                "as lottery.train runs it; value = median over rounds of ours/plain wall time per step; "
                "cpu_time_ratios (if present) = the same race timed on this process's CPU time",
    })]
    for name in COMPARISONS:
        entries.append(BenchEntry(f"masking.{case.model}.{name}", timings.ratio(name, "plain"), "x plain step",
                                  None, {**setup, "median_seconds": timings.median(name),
                                         "plain_median_seconds": plain_seconds, "compared_with": "plain"}))
    logger.info("masking %s: ours %.4f, forward multiply %.4f, prune hooks %.4f (x plain step)", case.model,
                entries[0].value, entries[1].value, entries[2].value)
    return entries


def run(quick: bool = False) -> list[BenchEntry]:
    entries: list[BenchEntry] = []
    for case in cases(quick):
        entries.extend(measure(case))
    return entries
