"""The schema's own rules: required keys, choices, step strings and ranges. Registry names (models,
datasets, pruning methods) are checked by lottery.workflows.preflight, which may import the registries."""
from __future__ import annotations

import math
from typing import Any, Callable

from lottery.config.tree import flatten, source_of
from lottery.config.schema import CHOICES, REQUIRED, STEP_KEYS, Config
from lottery.errors import ConfigError
from lottery.steps import is_step_string, parse_steps

# The largest seed every generator here takes (torch.Generator.manual_seed takes 64 bits; numpy 32).
MAX_SEED = 2**32 - 1


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:g}"


def _between(low: float, high: float, low_open: bool = False, high_open: bool = False) -> Callable:
    valid = f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"

    def check(value) -> str | None:
        above = value > low if low_open else value >= low
        below = value < high if high_open else value <= high
        return None if above and below else f"must be {valid}, got {value!r}"
    check.valid = valid  # what the help shows
    return check


def _at_least(bound: float, strict: bool = False) -> Callable:
    valid = f"{'>' if strict else '>='} {_number(bound)}"

    def check(value) -> str | None:
        if value is None or (value > bound if strict else value >= bound):
            return None
        return f"must be {valid}, got {value!r}"
    check.valid = valid
    return check


RANGES: dict[str, Callable[[Any], str | None]] = {
    "seed": _between(0, MAX_SEED),
    "train.batch_size": _at_least(1),
    "train.eval_batch_size": _at_least(1),
    "train.lr": _at_least(0, strict=True),
    "train.momentum": _between(0, 1, high_open=True),
    "train.weight_decay": _at_least(0),
    "train.gamma": _at_least(0, strict=True),
    "data.val_size": _at_least(0),
    "data.subset": _at_least(1),
    "data.test_subset": _at_least(1),
    "model.width": _at_least(0),
    "ticket.levels": _at_least(0),
    "prune.fraction": _between(0, 1, low_open=True, high_open=True),
    "baseline.rounds": _at_least(1),
    "baseline.samples_per_class": _at_least(1),
    "baseline.grasp_temperature": _at_least(0, strict=True),
    "baseline.isometry_steps": _at_least(0),
    "baseline.density": _between(0, 1, low_open=True),
    "baseline.drop_fraction": _between(0, 1, low_open=True),
    "baseline.update_until": _between(0, 1, low_open=True),
    "search.target_density": _between(0, 1, low_open=True),
    "search.heartbeat_seconds": _at_least(1),
    "search.max_retries": _at_least(0),
    "search.startup_trials": _at_least(0),
    "run.workers": _at_least(1),
    "run.jobs_per_device": _at_least(1),
}


def validate(config: Config, source: str | None = None) -> None:
    """Raise ConfigError naming the key and where its value came from (the command line or a file)."""
    flat = flatten(config)

    def fail(key: str, message: str) -> None:
        raise ConfigError(message, key, source_of(config, key, source))

    if not config.exp.strip() or config.exp in (".", "..") or any(c in config.exp for c in "/\\\0"):
        fail("exp", f"must be a folder name (no '/', not empty, '.' or '..'), got {config.exp!r}")
    for key, value in flat.items():
        if value == REQUIRED:
            fail(key, "is required but missing")
    for key in STEP_KEYS:
        if not is_step_string(flat[key]):
            fail(key, f"bad step string {flat[key]!r}: use forms like '160ep', '500it' or '2ep100it'")
    if is_step_string(flat["baseline.update_every"]) and parse_steps(flat["baseline.update_every"], 1) == 0:
        fail("baseline.update_every", f"must be at least one iteration, got {flat['baseline.update_every']!r}")
    for index, milestone in enumerate(config.train.milestones):
        if not is_step_string(milestone):
            fail("train.milestones", f"bad step string {milestone!r} at position {index}")
    for key, options in CHOICES.items():
        if flat[key] not in options:
            fail(key, f"{flat[key]!r} is not one of {', '.join(options)}")
    for key, check in RANGES.items():
        value = flat[key]
        if value is None:
            continue
        if isinstance(value, float) and not math.isfinite(value):
            fail(key, f"must be a finite number, got {value!r}")
        problem = check(value)
        if problem:
            fail(key, problem)
    for name, rate in config.prune.layer_rates.items():
        if not 0.0 <= rate < 1.0:
            fail(f"prune.layer_rates.{name}", f"must be in [0, 1), got {rate}")
    if config.run.pack != "auto" and not (config.run.pack.isdigit()):
        fail("run.pack", f"must be 0 (off), a number of stages, or auto, got {config.run.pack!r}")
    for seed in config.experiment.seeds:
        if not 0 <= seed <= MAX_SEED:
            fail("experiment.seeds", f"seeds must be in [0, {MAX_SEED}], got {seed}")
    if len(set(config.experiment.seeds)) != len(config.experiment.seeds):
        fail("experiment.seeds", f"a seed is listed twice: {config.experiment.seeds}")
    for density in config.experiment.baselines.densities:
        if not 0 < density <= 1:
            fail("experiment.baselines.densities", f"densities must be in (0, 1], got {density}")
    if config.track.system_metrics_seconds < 0:
        fail("track.system_metrics_seconds", f"must be >= 0 seconds (0: off), got {config.track.system_metrics_seconds}")
    evaluation = config.experiment.evaluate
    if any(not 1 <= severity <= 5 for severity in evaluation.severities) or not evaluation.severities:
        fail("experiment.evaluate.severities", f"severities must be in 1..5, got {evaluation.severities}")
    if not 0 <= evaluation.margin < 100:
        fail("experiment.evaluate.margin", f"must be in [0, 100) accuracy points, got {evaluation.margin}")
    for branch, levels in config.experiment.branches.items():
        if any(level < 0 for level in levels):
            fail(f"experiment.branches.{branch}", f"levels must be >= 0, got {levels}")
    if config.data.name == "npz" and not config.data.path:
        fail("data.path", "the npz dataset needs data.path (a .npz file)")
