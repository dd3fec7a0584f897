"""What a search trial is worth, computed from the rows of its levels. Knows no Optuna.

Single objective (search.objective):
- accuracy: the best test accuracy of the scored level (maximise);
- steps_to_dense: the first evaluated iteration at which the scored level's test accuracy reaches
  the dense level's final test accuracy (minimise). A level that never gets there scores twice its
  training length, so it ranks behind every level that does.

The scored level is the first one at or below search.target_density (the trial stops there),
or the last level when no target is set. Multi-objective searches score the last level as
(objective, density): maximise accuracy (or minimise steps) and minimise density.
"""
from __future__ import annotations

from typing import Callable, Optional

from lottery.config import Config

History = Callable[[dict], list[dict]]  # a results row -> its level's evaluation history


def direction(objective: str) -> str:
    return "minimize" if objective == "steps_to_dense" else "maximize"


def directions(config: Config) -> list[str]:
    first = direction(config.search.objective)
    return [first, "minimize"] if config.search.multi_objective else [first]


def objective_names(config: Config) -> list[str]:
    first = config.search.objective
    return [first, "density"] if config.search.multi_objective else [first]


def uses_target(config: Config) -> bool:
    """A target density only means something for a single objective: the Pareto front spans densities."""
    return config.search.target_density is not None and not config.search.multi_objective


def reaches_target(config: Config, row: dict) -> bool:
    return uses_target(config) and row["density"] <= config.search.target_density * (1 + 1e-9)


def is_last_level(config: Config, row: dict, runner: str) -> bool:
    """The run has no level after this one (a baselines run has a single stage)."""
    return runner != "ticket" or row.get("level") == config.ticket.levels


def steps_to_dense(history: list[dict], dense_accuracy: float) -> float:
    """First evaluated iteration with test accuracy >= the dense accuracy; 2 x the last step if never."""
    if not history:
        raise ValueError("a level without evaluations cannot be scored by steps_to_dense")
    for record in history:
        if record["test_acc"] >= dense_accuracy:
            return float(record["step"])
    return 2.0 * float(history[-1]["step"])


def row_value(config: Config, row: dict, dense_row: Optional[dict], history: History) -> float:
    """The objective for one level (reported to the pruner per level, and the trial's value when scored)."""
    if config.search.objective == "accuracy":
        return float(row["best_test_acc"])
    if dense_row is None:
        raise ValueError("steps_to_dense needs the dense level (level 0) first")
    return steps_to_dense(history(row), float(dense_row["final_test_acc"]))


def scored_row(config: Config, rows: list[dict]) -> Optional[dict]:
    """The level a trial is scored on, or None when a target density was set and never reached."""
    if not rows:
        return None
    if uses_target(config):
        return next((row for row in rows if reaches_target(config, row)), None)
    return rows[-1]


def trial_values(config: Config, rows: list[dict], history: History) -> list[float]:
    row = scored_row(config, rows)
    if row is None:
        raise ValueError("no level to score")
    value = row_value(config, row, rows[0] if rows[0].get("level") == 0 else None, history)
    return [value, float(row["density"])] if config.search.multi_objective else [value]
