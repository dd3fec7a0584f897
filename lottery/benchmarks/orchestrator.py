"""The experiment orchestrator: two local workers against one, and what orchestration costs per stage.

speedup: the digits experiment (IMP to 5 levels + 5 baselines at the 5 level densities, 1 seed, tracking off)
run with run.workers=2 against run.workers=1 (in-process), in fresh run folders, alternating which goes first;
value = median over pairs of (2-worker wall time) / (1-worker wall time). Goal: at most 0.6 on 2 cores.

per-stage cost: LeNet-300-100 baselines on MNIST-shaped random data (batch 60, Adam), one worker in this process:
per stage, (the stage's wall time as the orchestrator sees it - its training loop's wall time) / training time:
claiming its lock, its log file, building the network and mask, writing and flushing its files, its results row.
Goal: at most 2%. Starting the worker pool is a one-off cost, reported on its own.
"""
from __future__ import annotations

import contextlib
import io
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from lottery.benchmarks.result import BenchEntry, Goal
from lottery.config import load_config

SPEEDUP_GOAL = Goal("<=", 0.6)
COST_GOAL = Goal("<=", 2.0)
DIGITS = ["ticket.levels=5", "experiment.seeds=[0]", "experiment.baselines.methods=[synflow, snip, grasp, magnitude, "
          "random]", "experiment.branches={}", "track.enabled=false", "train.device=cpu"]


def _experiment(root: Path, overrides: list[str]) -> tuple[float, object]:
    from lottery.orchestrate.experiment import run_experiment

    config = load_config("digits", [*overrides, f"run.root={root}"])
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        outcome = run_experiment(config, "lottery bench")
    return time.perf_counter() - started, outcome


def speedup(pairs: int, folder: Path) -> BenchEntry:
    times = {1: [], 2: []}
    for pair in range(pairs):
        for workers in ((1, 2) if pair % 2 == 0 else (2, 1)):
            seconds, outcome = _experiment(folder / f"pair{pair}_w{workers}", [*DIGITS, f"run.workers={workers}"])
            assert not outcome.failed, outcome.failed
            times[workers].append(seconds)
    ratios = [two / one for one, two in zip(times[1], times[2])]
    stages = len(outcome.graph.nodes)
    return BenchEntry("orchestrator.two_workers", statistics.median(ratios), "x one worker's wall time",
                      SPEEDUP_GOAL, {"pairs": pairs, "ratios": ratios, "one_worker_seconds": times[1],
                                     "two_worker_seconds": times[2], "stages": stages,
                                     "experiment": "digits, 5 levels + 5 baselines x 5 densities, 1 seed"})


def _mnist_shaped(path: Path, train: int = 6000, test: int = 1000) -> Path:
    generator = np.random.default_rng(0)
    classes = generator.normal(size=(10, 28, 28))
    labels = generator.integers(0, 10, train + test)
    images = np.clip(128 + 40 * (classes[labels] + generator.normal(size=(train + test, 28, 28))), 0, 255)
    np.savez(path, x_train=images[:train].astype(np.uint8), y_train=labels[:train], x_test=images[train:].astype(
        np.uint8), y_test=labels[train:])
    return path


def per_stage_cost(folder: Path, steps: int) -> list[BenchEntry]:
    data = _mnist_shaped(folder / "mnist_shaped.npz")
    overrides = ["model.name=lenet_300_100", "data.name=npz", f"data.path={data}", "data.val_size=0",
                 f"train.steps={steps}it", f"train.eval_every={steps}it", "train.batch_size=60", "ticket.levels=3",
                 "train.optimizer=adam", "train.lr=0.0012", f"ticket.checkpoint_every={steps}it",
                 "experiment.seeds=[0]", "experiment.baselines.methods=[magnitude, random]", "track.enabled=false",
                 "train.device=cpu"]
    _, outcome = _experiment(folder / "lenet", overrides)
    costs, trained = [], []
    for result in outcome.outcomes.values():
        if result.row is not None and result.status == "done":
            costs.append(100 * (result.seconds - result.row["wall_seconds"]) / result.row["wall_seconds"])
            trained.append(result.row["wall_seconds"])
    started = time.perf_counter()
    _experiment(folder / "lenet_pool", [*overrides, "run.workers=2", "experiment.baselines.methods=[]",
                                        "ticket.levels=0", "train.steps=1it", "train.eval_every=1it"])
    pool_seconds = time.perf_counter() - started
    return [BenchEntry("orchestrator.cost_per_stage.lenet300", statistics.median(costs), "% of the stage's training",
                       COST_GOAL, {"stages": len(costs), "per_stage_percent": costs, "training_seconds": trained,
                                   "steps_per_stage": steps}),
            BenchEntry("orchestrator.two_worker_start", pool_seconds, "s, a 2-stage experiment on a fresh pool",
                       None, {"note": "starting two spawned workers (importing torch and lottery) and running θ0, "
                                      "θk and one 1-step level"})]


def run(quick: bool = False) -> list[BenchEntry]:
    with tempfile.TemporaryDirectory(prefix="lottery-bench-orchestrator-") as folder:
        folder = Path(folder)
        entries = [speedup(1 if quick else 5, folder)]
        entries += per_stage_cost(folder, 200 if quick else 2000)
    return entries
