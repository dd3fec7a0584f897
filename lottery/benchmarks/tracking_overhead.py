"""Tracking overhead: a digits ticket with MLflow tracking on, against the same ticket with it off.

Pairs of runs (tracked, untracked; the order alternates) share everything else, checkpoints
included, so a difference in wall time is what tracking costs: the helper process's start and its
CPU, the training thread's calls, and at the end the figures, artefacts and waiting for uploads.
A warm-up run creates the sqlite store first, as a user's first run does once.
value = median over pairs of (tracked levels - untracked levels) / untracked levels, in %, where the
levels of a run add up from its start to the end of its last level. Pairs, not single levels, are the
samples: machine noise drifts over seconds, so levels of one run are not independent; an A/A run of
this design (tracking off on both sides) gave -0.01 %, with single pairs spread over ±7 %.
The end of the run (report figures rendered for MLflow, artefacts, closing) is not part of any
level; it is reported on its own, with the whole-run difference.

Two direct accountings go in the details, as low-noise cross-checks:
- calls:  time the training thread spends inside Tracker and RunHandle methods;
- helper: CPU seconds used by the tracking process (which runs beside training, not in it).
"""
from __future__ import annotations

import contextlib
import functools
import io
import resource
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lottery.benchmarks.result import BenchEntry, Goal
from lottery.benchmarks.bookkeeping import EXPERIMENT, digits_config
from lottery.config import Config
from lottery.workflows.ticket import run_ticket
from lottery.tracking.client import MlflowRunHandle, MlflowTracker

GOAL = Goal("<=", 2.0)
TRACKER_METHODS = {MlflowTracker: ("__init__", "parent", "child", "replay", "flush", "close"),
                   MlflowRunHandle: ("log_params", "log_metrics", "log_artifact", "log_figure", "set_tags",
                                     "log_inputs", "log_model", "finish")}


@dataclass
class RunTime:
    wall: float
    level_seconds: list[float]
    tail_seconds: float = 0.0
    call_seconds: float = 0.0
    helper_cpu_seconds: float = 0.0
    calls_by_method: dict[str, float] = field(default_factory=dict)


def pair_config(folder: Path, name: str, tracked: bool, levels: int | None) -> Config:
    """Checkpoints as configured either way: tracking is the only difference within a pair."""
    return digits_config(folder / name, folder / "mlflow.db", tracked, levels)


class CallTimer:
    """Wraps the MLflow tracker's methods for the duration; sums the outermost calls on this thread."""

    def __init__(self):
        self.seconds = 0.0
        self.by_method: dict[str, float] = {}
        self._depth = 0
        self._thread = threading.get_ident()

    def _wrap(self, method):
        @functools.wraps(method)
        def timed(*args, **kwargs):
            if threading.get_ident() != self._thread:
                return method(*args, **kwargs)
            self._depth += 1
            start = time.perf_counter()
            try:
                return method(*args, **kwargs)
            finally:
                self._depth -= 1
                if self._depth == 0:
                    seconds = time.perf_counter() - start
                    self.seconds += seconds
                    self.by_method[method.__qualname__] = self.by_method.get(method.__qualname__, 0.0) + seconds
        return timed

    @contextlib.contextmanager
    def installed(self):
        originals = [(cls, name, cls.__dict__[name]) for cls, names in TRACKER_METHODS.items() for name in names]
        for cls, name, method in originals:
            setattr(cls, name, self._wrap(method))
        try:
            yield self
        finally:
            for cls, name, method in originals:
                setattr(cls, name, method)


def children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)  # reaped children: the tracking process, git
    return usage.ru_utime + usage.ru_stime


def timed_run(config: Config) -> RunTime:
    timer = CallTimer()
    helper_before = children_cpu_seconds()
    ends: list[float] = []
    with timer.installed(), contextlib.redirect_stdout(io.StringIO()):
        start = time.perf_counter()
        run_ticket(config, "lottery bench", on_level=lambda row: ends.append(time.perf_counter()))
        finished = time.perf_counter()
    levels = [end - begin for begin, end in zip([start, *ends], ends)]
    return RunTime(finished - start, levels, finished - ends[-1], timer.seconds,
                   children_cpu_seconds() - helper_before, timer.by_method)


def run(quick: bool = False) -> list[BenchEntry]:
    pairs, levels = (1, 1) if quick else (16, None)
    tracked: list[RunTime] = []
    bare: list[RunTime] = []
    with tempfile.TemporaryDirectory(prefix="lottery-bench-tracking-") as folder:
        timed_run(pair_config(Path(folder), "warmup", True, 1))  # creates the store, as a first run would
        for index in range(pairs):
            order = (True, False) if index % 2 == 0 else (False, True)
            for tracking in order:
                times = timed_run(pair_config(Path(folder), f"{'tracked' if tracking else 'bare'}_{index}",
                                              tracking, levels))
                (tracked if tracking else bare).append(times)
    return [entry(tracked, bare)]


def entry(tracked: list[RunTime], bare: list[RunTime]) -> BenchEntry:
    per_level = [100 * (with_tracking - without) / without
                 for run_with, run_without in zip(tracked, bare)
                 for with_tracking, without in zip(run_with.level_seconds, run_without.level_seconds)]
    per_pair = [100 * (sum(run_with.level_seconds) - sum(run_without.level_seconds)) / sum(run_without.level_seconds)
                for run_with, run_without in zip(tracked, bare)]
    per_run = [100 * (run_with.wall - run_without.wall) / run_without.wall
               for run_with, run_without in zip(tracked, bare)]
    median = statistics.median
    bare_wall = median(times.wall for times in bare)
    levels = len(tracked[0].level_seconds)
    details = {
        "experiment": EXPERIMENT, "pairs": len(per_run), "levels_per_run": levels,
        "tracking": "mlflow, sqlite in a temporary folder (created by a warm-up run)",
        "percent_per_pair": per_pair,
        "percent_per_level": per_level,
        "level_percent_median": median(per_level),
        "percent_per_run": per_run,
        "run_percent_median": median(per_run),
        "level_seconds_untracked": median(value for times in bare for value in times.level_seconds),
        "tail_seconds_tracked": median(times.tail_seconds for times in tracked),
        "tail_seconds_untracked": median(times.tail_seconds for times in bare),
        "calls_percent": 100 * median(times.call_seconds for times in tracked) / bare_wall,
        "calls_seconds_per_level": median(times.call_seconds / levels for times in tracked),
        "calls_seconds_by_method": {name: median(times.calls_by_method.get(name, 0.0) for times in tracked)
                                    for name in sorted({name for times in tracked for name in times.calls_by_method})},
        "helper_cpu_seconds_per_run": median(times.helper_cpu_seconds for times in tracked),
        "torch_threads": torch.get_num_threads(),
        "note": "value = median over pairs of the difference in the levels' wall time; percent_per_run includes "
                "the end of the run (report figures for MLflow, artefacts, close); calls_percent = training-"
                "thread time inside tracker methods over the untracked run's wall time",
    }
    return BenchEntry("tracking.digits", median(per_pair), "% of level time", GOAL, details)
