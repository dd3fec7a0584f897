"""Packed training on CPU: K models trained as one pack against the same K trained one after another.

Each contender trains the same K masked jobs (K different θ0 and random masks at density 0.5, as IMP levels and
baselines are all masked) over the same segment of the experiment's schedule, starting afresh from θ0 on every
call, evaluating as the experiment does (every eval_every steps and at the segment's end):
- sequential: [train(job) for job in jobs], the solo loop (lottery.training.loop);
- packed:     train_packed(jobs), one forward and backward over the K models per step.
Both get the fast path resolved once beforehand (as a caller passing TrainJob.fast would), so the FLOP
count that train() otherwise runs per call is not charged to the sequential side; both run on the CPU
threads the solo loop picks for one model (a pack keeps them, whatever its size). Rounds are interleaved
(timing.py); value = median over rounds of sequential time / packed time = packed model-steps/s over
sequential model-steps/s.

Cases: the digits MLP (experiments/digits.yaml: lenet_128_64, Adam, batch 64) with each model's own data
order (the seeds of IMP levels differ) and with one shared data order (the baselines of one seed);
LeNet-300-100 as in the LTH paper (experiments/lenet300.yaml: Adam 1.2e-3, batch 60) on MNIST-shaped
random images.
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.timing import interleaved, load_average
from lottery.config import load_config
from lottery.data import Dataset, load_dataset
from lottery.models import build_model
from lottery.pruning.mask import Mask
from lottery.training.device import resolve_fast_path
from lottery.training.loop import TrainJob, train
from lottery.training.packed import train_packed

logger = logging.getLogger(__name__)

DENSITY = 0.5
MNIST_MEAN, MNIST_STD = 0.1307, 0.3081


@dataclass(frozen=True)
class PackingCase:
    name: str
    experiment: str  # the experiments/ config whose model and train settings are used
    pack: int
    steps: int  # the segment each contender trains, per model
    shared_order: bool  # one data seed for all models (one gather per step) or one seed each
    goal: Optional[Goal]
    rounds: int
    warmup_rounds: int = 1


def cases(quick: bool) -> list[PackingCase]:
    if quick:
        return [PackingCase("packing.digits_mlp", "digits", 4, 10, False, Goal(">=", 4.0), 2),
                PackingCase("packing.digits_mlp.shared_order", "digits", 4, 10, True, None, 2),
                PackingCase("packing.lenet_300_100", "lenet300", 2, 4, False, Goal(">=", 1.2), 2)]
    # digits: one whole level of the experiment (40 epochs of 20 steps, evaluated every 5 epochs)
    return [PackingCase("packing.digits_mlp", "digits", 8, 800, False, Goal(">=", 4.0), 7),
            PackingCase("packing.digits_mlp.shared_order", "digits", 8, 800, True, None, 7),
            PackingCase("packing.lenet_300_100", "lenet300", 8, 100, False, Goal(">=", 1.2), 7)]


def mnist_shaped_dataset(num_images: int, seed: int = 0) -> Dataset:
    """Random uint8 28x28 images with balanced labels and MNIST's statistics, in memory: speed needs no real data."""
    generator = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (num_images, 1, 28, 28), dtype=torch.uint8, generator=generator)
    labels = torch.arange(num_images) % 10
    test = min(num_images, 2000)
    return Dataset("mnist_shaped", {"train": (images, labels), "test": (images[:test], labels[:test])}, 10,
                   [MNIST_MEAN], [MNIST_STD], scale=1 / 255, device="cpu")


def case_config(case: PackingCase):
    config = load_config(case.experiment)
    config.train.device, config.train.progress = "cpu", "off"
    return config


def case_dataset(case: PackingCase, config) -> Dataset:
    if config.data.name == "digits":
        return load_dataset(config.data, seed=config.seed, device="cpu")
    return mnist_shaped_dataset(config.train.batch_size * 100)


def random_mask(model, density: float, seed: int) -> Mask:
    generator = torch.Generator().manual_seed(seed)
    return Mask({name: torch.rand(kept.shape, generator=generator) < density for name, kept in Mask.ones(model).items()})


class Contenders:
    """The K jobs' starting points, and the two ways of training them."""

    def __init__(self, case: PackingCase, config, dataset: Dataset):
        self.case, self.config, self.dataset = case, config, dataset
        self.theta0 = [build_model(config.model, dataset.input_shape, dataset.num_classes, seed)
                       for seed in range(case.pack)]
        self.masks = [random_mask(model, DENSITY, seed) for seed, model in enumerate(self.theta0)]
        self.seeds = [config.seed] * case.pack if case.shared_order else list(range(case.pack))
        self.fast = resolve_fast_path(config.train, self.theta0[0], sample_shape=dataset.input_shape)

    def jobs(self) -> list[TrainJob]:
        return [TrainJob(model=copy.deepcopy(model), dataset=self.dataset, train_cfg=self.config.train, seed=seed,
                         start_step=0, end_step=self.case.steps, mask=mask, fast=self.fast, desc=f"model {index}")
                for index, (model, mask, seed) in enumerate(zip(self.theta0, self.masks, self.seeds))]

    def calls(self) -> dict[str, Callable[[], object]]:
        return {"sequential": lambda: [train(job) for job in self.jobs()],
                "packed": lambda: train_packed(self.jobs())}


def measure(case: PackingCase) -> BenchEntry:
    config = case_config(case)
    contenders = Contenders(case, config, case_dataset(case, config))
    before = load_average()
    timings = interleaved(contenders.calls(), case.rounds, case.warmup_rounds)
    speedup = timings.ratio("sequential", "packed")  # equal work, so the time ratio is the throughput ratio
    low, high = timings.ratio_spread("sequential", "packed")
    model_steps = case.pack * case.steps
    details = {
        "pack": case.pack, "steps_per_model": case.steps, "shared_data_order": case.shared_order,
        "model": config.model.name, "optimizer": config.train.optimizer, "batch_size": config.train.batch_size,
        "density": DENSITY, "data": contenders.dataset.name,
        "packed_model_steps_per_s": model_steps / timings.median("packed"),
        "sequential_model_steps_per_s": model_steps / timings.median("sequential"),
        "speedup_min": low, "speedup_max": high, "cpu_threads": contenders.fast.cpu_threads,
        "load_average_before": before, "load_average_after": load_average(), **timings.summary(),
        "eval_every": config.train.eval_every,
        "note": "value = median over interleaved rounds of sequential / packed time for the same K jobs "
                "(each from θ0, evaluated as the experiment does, fast paths resolved once beforehand)",
    }
    logger.info("%s: packed %.0f model-steps/s, sequential %.0f, %.2fx", case.name,
                details["packed_model_steps_per_s"], details["sequential_model_steps_per_s"], speedup)
    return BenchEntry(case.name, speedup, "x sequential", case.goal, details)


EXPERIMENT_GOAL = Goal(">=", 2.0)


def experiment_speedup(pairs: int) -> BenchEntry:
    """The whole digits experiment (IMP + 5 baselines x 5 densities, 2 seeds: 62 stages) end to end, as
    `lottery ticket` runs it, with run.pack=auto against run.pack=0 on one worker, in fresh run folders,
    alternating which goes first; value = median over pairs of unpacked time / packed time."""
    import contextlib
    import io
    import statistics
    import tempfile
    import time
    from pathlib import Path

    from lottery.orchestrate.experiment import run_experiment

    times: dict[str, list[float]] = {"0": [], "auto": []}
    with tempfile.TemporaryDirectory(prefix="lottery-bench-packing-") as folder:
        for pair in range(pairs):
            for pack in (("0", "auto") if pair % 2 == 0 else ("auto", "0")):
                config = load_config("digits", ["track.enabled=false", "train.device=cpu", f"run.pack={pack}",
                                                f"run.root={Path(folder) / f'{pair}_{pack}'}"])
                started = time.perf_counter()
                with contextlib.redirect_stdout(io.StringIO()):
                    outcome = run_experiment(config, "lottery bench")
                times[pack].append(time.perf_counter() - started)
                if outcome.failed:
                    raise RuntimeError(f"packing bench: stages failed: {outcome.failed}")
    ratios = [unpacked / packed for unpacked, packed in zip(times["0"], times["auto"])]
    return BenchEntry("packing.digits_experiment", statistics.median(ratios), "x unpacked, end to end",
                      EXPERIMENT_GOAL, {"pairs": pairs, "ratios": ratios, "unpacked_seconds": times["0"],
                                        "packed_seconds": times["auto"], "stages": len(outcome.graph.nodes),
                                        "load_average": load_average()})


def run(quick: bool = False) -> list[BenchEntry]:
    return [measure(case) for case in cases(quick)] + [experiment_speedup(1 if quick else 3)]
