"""Bookkeeping per level: what a ticket level spends outside its training steps (checkpoints, files, tracking).

`lottery ticket --exp digits` runs with MLflow tracking on (sqlite in a temporary folder) and
its default mid-level checkpoints (ticket.checkpoint_every). For every level after the dense one:
- level time:  from one level's end (run_ticket's on_level callback) to the next's;
- train time:  train()'s own wall clock (steps and evaluations, the result's wall_seconds);
- checkpoints: the mid-level checkpoint saves inside train(), timed by wrapping
               lottery.training.loop._save_checkpoint for the duration of the benchmark;
- outside:     level time - train time: pruning, mask.pt, final.pt, metrics.json, results.json,
               opening and finishing the level's MLflow run;
- tail:        after the last level, closing the tracker (waiting for queued MLflow uploads),
               shared out over the levels.
value = (outside + checkpoints + tail share) / (train time - checkpoints), in %, median over levels.

Everything above is measured inside one run, so it does not depend on how loaded the machine
is from one run to the next. It misses one cost: the MLflow thread competing with training for
the GIL and the cores. The full benchmark therefore also runs the ticket with tracking and
mid-level checkpoints off, interleaved with the tracked runs, and reports the level-by-level
difference as a second, noisier estimate.
"""
from __future__ import annotations

import contextlib
import io
import logging
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

import lottery.training.loop
from lottery.benchmarks.result import BenchEntry, Goal
from lottery.config import Config, load_config
from lottery.workflows.ticket import run_ticket

logger = logging.getLogger(__name__)

GOAL = Goal("<=", 2.0)
EXPERIMENT = "digits"


@dataclass
class RunTimes:
    """Seconds, per level from level 1 on (level 0 also holds the run's start-up)."""

    level: list[float] = field(default_factory=list)
    train: list[float] = field(default_factory=list)
    checkpoints: list[float] = field(default_factory=list)
    checkpoint_count: list[int] = field(default_factory=list)
    tail: float = 0.0
    total: float = 0.0

    def ratios(self, with_tail: bool = True) -> list[float]:
        """Per level: overhead / pure training time."""
        share = self.tail / (len(self.level) + 1) if with_tail else 0.0  # +1: level 0 shares the tail too
        return [(level - train + saved + share) / (train - saved)
                for level, train, saved in zip(self.level, self.train, self.checkpoints)]


def digits_config(run_root: Path, store: Path, tracked: bool, levels: int | None) -> Config:
    """The digits experiment on CPU, quiet, with runs under run_root and MLflow's sqlite store at `store`."""
    config = load_config(EXPERIMENT)
    config.run.root = str(run_root)
    config.track.enabled = tracked
    config.track.uri = f"sqlite:///{store}"
    config.train.progress = "off"
    config.train.device = "cpu"
    if levels is not None:
        config.ticket.levels = levels
    return config


def ticket_config(folder: Path, tracked: bool, levels: int | None) -> Config:
    config = digits_config(folder / "runs", folder / "mlflow.db", tracked, levels)
    if not tracked:
        config.ticket.checkpoint_every = "0it"  # no mid-level checkpoints
    return config


@contextlib.contextmanager
def _replaced(module, name: str, replacement):
    if not hasattr(module, name):
        raise RuntimeError(f"bookkeeping benchmark: {module.__name__}.{name} no longer exists; update the benchmark")
    original = getattr(module, name)
    setattr(module, name, replacement)
    try:
        yield original
    finally:
        setattr(module, name, original)


def timed_ticket(config: Config) -> RunTimes:
    """Run the ticket once and split its time as described in the module docstring."""
    level_ends: list[float] = []
    saves: list[tuple[float, float]] = []  # (finished at, seconds)
    original = lottery.training.loop._save_checkpoint

    def timed_save(*args, **kwargs):
        start = time.perf_counter()
        original(*args, **kwargs)
        finished = time.perf_counter()
        saves.append((finished, finished - start))

    with _replaced(lottery.training.loop, "_save_checkpoint", timed_save), contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        outcome = run_ticket(config, "lottery bench", on_level=lambda row: level_ends.append(time.perf_counter()))
        finished = time.perf_counter()
    times = RunTimes(tail=finished - level_ends[-1], total=finished - start)
    for level in range(1, len(level_ends)):
        window = [seconds for at, seconds in saves if level_ends[level - 1] < at <= level_ends[level]]
        times.level.append(level_ends[level] - level_ends[level - 1])
        times.train.append(outcome.rows[level]["wall_seconds"])
        times.checkpoints.append(sum(window))
        times.checkpoint_count.append(len(window))
    return times


def run(quick: bool = False) -> list[BenchEntry]:
    repeats, levels = (1, 1) if quick else (2, None)
    tracked: list[RunTimes] = []
    bare: list[RunTimes] = []
    with tempfile.TemporaryDirectory(prefix="lottery-bench-bookkeeping-") as folder:
        for repeat in range(repeats):
            tracked.append(timed_ticket(ticket_config(Path(folder) / f"tracked_{repeat}", True, levels)))
            if not quick:
                bare.append(timed_ticket(ticket_config(Path(folder) / f"bare_{repeat}", False, levels)))
    return [_entry(tracked, bare, quick)]


def _median_percent(values: list[float]) -> float:
    return 100 * statistics.median(values)


def _entry(tracked: list[RunTimes], bare: list[RunTimes], quick: bool) -> BenchEntry:
    config = load_config(EXPERIMENT)
    flat = lambda runs, attribute: [value for times in runs for value in getattr(times, attribute)]  # noqa: E731
    ratios = [ratio for times in tracked for ratio in times.ratios()]
    details = {
        "experiment": EXPERIMENT, "levels_measured": len(ratios), "repeats": len(tracked),
        "checkpoint_every": config.ticket.checkpoint_every, "tracking": "mlflow, sqlite in a temporary folder",
        "percent_without_tail": _median_percent([r for times in tracked for r in times.ratios(with_tail=False)]),
        "level_seconds_median": statistics.median(flat(tracked, "level")),
        "train_seconds_median": statistics.median(flat(tracked, "train")),
        "checkpoint_seconds_median": statistics.median(flat(tracked, "checkpoints")),
        "checkpoints_per_level": statistics.median(flat(tracked, "checkpoint_count")),
        "outside_train_seconds_median": statistics.median(
            [level - train for level, train in zip(flat(tracked, "level"), flat(tracked, "train"))]),
        "tail_seconds": [times.tail for times in tracked],
        "run_seconds": [times.total for times in tracked],
        "torch_threads": torch.get_num_threads(),
    }
    if bare:
        differences = [(with_tracking - without) / train
                       for run_with, run_without in zip(tracked, bare)
                       for with_tracking, without, train in zip(run_with.level, run_without.level, run_without.train)]
        details["ab_estimate_percent"] = _median_percent(differences)
        details["ab_note"] = ("median over levels of (tracked level time - untracked level time without "
                              "mid-level checkpoints) / untracked training time; includes the MLflow thread's "
                              "competition for the cores, and machine noise between the runs")
        details["bare_run_seconds"] = [times.total for times in bare]
    value = _median_percent(ratios)
    logger.info("bookkeeping: %.2f%% of level training time (checkpoints %.3f s/level, outside train %.3f s/level)",
                value, details["checkpoint_seconds_median"], details["outside_train_seconds_median"])
    return BenchEntry("bookkeeping.digits", value, "% of level training time", GOAL, details)
