"""Masking cost: a masked train step divided by a plain PyTorch step, side by side, on CPU.

Copies of the same model train on the same fixed batch, each with its own optimizer (foreach,
as lottery.training builds them):
- plain:            forward, backward, optimizer.step(): the hand-written loop;
- ours:             the masked step lottery.training runs: for Adam/AdamW, MaskedAdam (the mask folded
                    into Adam's first-moment update, no extra pass); for SGD, the step followed by
                    Mask.enforcer's one fused multiply;
- enforcer:         (Adam cases) torch's Adam, then Mask.enforcer: the generic after-step multiply;
- forward_multiply: the mask multiplied into the weight on every forward (torch parametrize);
- prune_hooks:      torch.nn.utils.prune.custom_from_mask (weight_orig * weight_mask in a pre-hook).
The masked copies share one random mask. Steps are timed round by round, interleaved.
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
from lottery.config import ModelConfig, TrainConfig
from lottery.models.flops import forward_flops
from lottery.training.device import cpu_threads, resolve_cpu_threads
from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.training.optimizers import build_optimizer, mask_enforcer

logger = logging.getLogger(__name__)

GOAL = Goal("<=", 1.02)
DENSITY = 0.2
SEED = 0


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

    ResNet-20 takes about 0.3 s per step on 2 cores; what masking adds (~0.4 ms) is far below the
    round-to-round noise (±7%), so it gets 30 rounds of two steps to bring the median's error near 1%.
    """
    if quick:
        return [MaskingCase("lenet_300_100", (1, 28, 28), 60, "adam", 1.2e-3, 0.0, 0.0, 1, 5, 5),
                MaskingCase("resnet20", (3, 32, 32), 32, "sgd", 0.1, 0.9, 1e-4, 1, 3, 1)]
    return [MaskingCase("lenet_300_100", (1, 28, 28), 60, "adam", 1.2e-3, 0.0, 0.0, 3, 60, 10, cpu_time_check=True),
            MaskingCase("resnet20", (3, 32, 32), 128, "sgd", 0.1, 0.9, 1e-4, 3, 30, 2)]


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


def _train_config(case: MaskingCase) -> TrainConfig:
    return TrainConfig(optimizer=case.optimizer, lr=case.lr, momentum=case.momentum, weight_decay=case.weight_decay)


def _optimizer(case: MaskingCase, model: nn.Module, mask: Optional[Mask] = None) -> torch.optim.Optimizer:
    return build_optimizer(model, _train_config(case), mask)


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
    """The models (same θ0), their optimizers and step closures, the shared mask and the enforcer alone."""

    models: dict[str, nn.Module]
    optimizers: dict[str, torch.optim.Optimizer]
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

    def masked_copy() -> nn.Module:
        model = copy.deepcopy(base)
        mask.apply(model)
        return model

    plain, ours, enforced = copy.deepcopy(base), masked_copy(), masked_copy()
    models = {"plain": plain, "ours": ours}
    optimizers = {"plain": _optimizer(case, plain), "ours": _optimizer(case, ours, mask)}
    ours_enforce = mask_enforcer(optimizers["ours"], mask, ours)
    enforce = mask.enforcer(enforced)
    if ours_enforce is None:  # ours does not use the after-step multiply: time it as a contender too
        models["enforcer"], optimizers["enforcer"] = enforced, _optimizer(case, enforced)
    for name, wrap in (("forward_multiply", with_forward_multiply), ("prune_hooks", with_prune_hooks)):
        models[name] = wrap(copy.deepcopy(base), mask)
        optimizers[name] = _optimizer(case, models[name])
    after_step = {"ours": ours_enforce, "enforcer": enforce}
    steps = {name: train_step(model, optimizers[name], inputs, labels, after_step.get(name))
             for name, model in models.items()}
    return Contenders(models, optimizers, steps, mask, enforce)


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
        "enforcer_from_components": (plain_seconds + enforce_seconds) / plain_seconds,
        "ours": ("MaskedAdam (mask in the first-moment update)" if "enforcer" in contestants.steps
                 else "plain step + Mask.enforcer (one fused _foreach_mul_ after optimizer.step)"),
        "note": "ours = the masked step lottery.training runs; value = median over rounds of ours/plain wall time "
                "per step; enforce_seconds = Mask.enforcer alone, cache-hot; cpu_time_ratios (if present) = "
                "the same race timed on this process's CPU time",
    })]
    for name in [name for name in contestants.steps if name not in ("plain", "ours")]:
        entries.append(BenchEntry(f"masking.{case.model}.{name}", timings.ratio(name, "plain"), "x plain step",
                                  None, {**setup, "median_seconds": timings.median(name),
                                         "plain_median_seconds": plain_seconds, "compared_with": "plain"}))
    logger.info("masking %s: %s (x plain step)", case.model,
                ", ".join(f"{entry.name.rpartition('.')[2]} {entry.value:.4f}" for entry in entries))
    return entries


def run(quick: bool = False) -> list[BenchEntry]:
    entries: list[BenchEntry] = []
    for case in cases(quick):
        # The CPU threads lottery.training would pick for this model and batch.
        model = build_model(ModelConfig(name=case.model), case.input_shape, 10, SEED)
        threads = resolve_cpu_threads(torch.device("cpu"), forward_flops(model, case.input_shape, case.batch_size))
        with cpu_threads(threads):
            entries.extend(measure(case))
    return entries
