"""Side-by-side timing: contenders interleaved round by round, reported as medians.

Every round times each contender once, right after the others, so machine noise (other
processes, frequency changes) hits all of them alike. The order rotates from round to round
(A,B,C / B,C,A / C,A,B ...) so no contender always runs right after the same neighbour.
A ratio is the median of the per-round ratios: each round is a matched pair.
"""
from __future__ import annotations

import os
import statistics
import time
from dataclasses import dataclass
from typing import Any, Callable

Clock = Callable[[], float]


@dataclass
class Timings:
    """Seconds per call, one sample per timed round, for each contender (in contender order)."""

    names: list[str]
    samples: dict[str, list[float]]
    calls_per_sample: int

    def median(self, name: str) -> float:
        return statistics.median(self.samples[name])

    def ratios(self, name: str, baseline: str) -> list[float]:
        """Per-round time ratios name / baseline."""
        return [value / base for value, base in zip(self.samples[name], self.samples[baseline])]

    def ratio(self, name: str, baseline: str) -> float:
        """Median over rounds of name's time / baseline's time (above 1: `name` is slower)."""
        return statistics.median(self.ratios(name, baseline))

    def ratio_spread(self, name: str, baseline: str) -> tuple[float, float]:
        """The lowest and highest per-round ratio: how much the rounds disagree."""
        values = self.ratios(name, baseline)
        return min(values), max(values)

    def summary(self) -> dict:
        """JSON-ready: median, min and max seconds per call for each contender, and the counts."""
        return {
            "rounds": len(next(iter(self.samples.values()), [])),
            "calls_per_sample": self.calls_per_sample,
            "seconds_per_call": {name: {"median": self.median(name), "min": min(values), "max": max(values)}
                                 for name, values in self.samples.items()},
        }


def rotated(names: list[str], round_index: int) -> list[str]:
    """The contender order for one round: the list rotated left by round_index."""
    if not names:
        return []
    shift = round_index % len(names)
    return names[shift:] + names[:shift]


def interleaved(contenders: dict[str, Callable[[], Any]], rounds: int, warmup_rounds: int = 1,
                calls_per_sample: int = 1, clock: Clock = time.perf_counter) -> Timings:
    """Run `warmup_rounds` untimed rounds, then `rounds` timed ones, interleaving the contenders.

    A sample is the time of `calls_per_sample` consecutive calls, divided by that count: several
    calls per sample keep the clock's resolution and call overhead out of short steps.
    """
    if not contenders:
        raise ValueError("interleaved timing needs at least one contender")
    if rounds < 1 or warmup_rounds < 0 or calls_per_sample < 1:
        raise ValueError(f"need rounds >= 1, warmup_rounds >= 0 and calls_per_sample >= 1; got "
                         f"{rounds}, {warmup_rounds} and {calls_per_sample}")
    names = list(contenders)
    for round_index in range(warmup_rounds):
        for name in rotated(names, round_index):
            for _ in range(calls_per_sample):
                contenders[name]()
    samples: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        for name in rotated(names, round_index):
            function = contenders[name]
            start = clock()
            for _ in range(calls_per_sample):
                function()
            samples[name].append((clock() - start) / calls_per_sample)
    return Timings(names, samples, calls_per_sample)


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages, or None where the OS has none."""
    try:
        return [round(value, 2) for value in os.getloadavg()]
    except (AttributeError, OSError):
        return None
