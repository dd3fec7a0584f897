"""What a search trial is worth, computed from the rows of its levels. Knows no Optuna.

Trials are selected on the validation split, never on the test set (search.objective):
- val_accuracy (default): the scored level's validation accuracy at the end of its training (the final
  evaluation; maximise). Not the maximum over evaluations: picking the best evaluation would select on
  the same numbers twice;
- steps_to_dense: the first evaluated iteration at which the scored level's validation accuracy reaches
  the dense level's final validation accuracy (minimise). A level that never gets there scores twice
  its training length, so it ranks behind every level that does;
- test_accuracy: the scored level's final test accuracy (maximise). This selects on the test set, so the
  best trial's test accuracy is optimistic. Only by name; the study, its files and its MLflow runs are
  tagged `selection: test_set`.
Both validation objectives need a validation split (data.val_size > 0); without one the search refuses
to start. Test accuracy is reported for every trial whatever the objective.

The scored level is the first one at or below search.target_density (the trial stops there),
or the last level when no target is set. Multi-objective searches score the last level as
(objective, density): maximise accuracy (or minimise steps) and minimise density.
"""
from __future__ import annotations

from typing import Callable, Optional

from lottery.config import Config, ConfigError

History = Callable[[dict], list[dict]]  # a results row -> its level's evaluation history

TEST_OBJECTIVES = ("test_accuracy",)  # select on the test set: only when asked for by name


def selection(config: Config) -> str:
    """Which split the search selects on: "validation", or "test_set" for search.objective=test_accuracy."""
    return "test_set" if config.search.objective in TEST_OBJECTIVES else "validation"


def check_selection(config: Config, source: Optional[str] = None) -> None:
    """Refuse a validation objective without a validation split (it would have nothing to select on)."""
    if selection(config) == "validation" and config.data.val_size <= 0:
        raise ConfigError(f"search.objective={config.search.objective} selects on the validation split, but the "
                          "experiment holds out none: add data.val_size=N (on CIFAR e.g. data.val_size=5000, 5,000 of "
                          "the 50,000 training images, no longer trained on); search.objective=test_accuracy would "
                          "select on the test set instead", "data.val_size", source)


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


def steps_to_dense(history: list[dict], dense_accuracy: float, key: str = "val_acc") -> float:
    """First evaluated iteration with accuracy `key` >= the dense accuracy; 2 x the last step if never."""
    if not history:
        raise ValueError("a level without evaluations cannot be scored by steps_to_dense")
    for record in history:
        if _split_accuracy(record, key) >= dense_accuracy:
            return float(record["step"])
    return 2.0 * float(history[-1]["step"])


def _split_accuracy(record: dict, key: str) -> float:
    if record.get(key) is None:
        raise ValueError(f"the evaluation at step {record.get('step')} has no {key}: the run holds out no "
                         "validation split (data.val_size)")
    return float(record[key])


def final_val_acc(row: dict, history: History) -> float:
    """The level's validation accuracy at its last evaluation (rows written before final_val_acc existed
    are read from the level's history)."""
    if row.get("final_val_acc") is not None:
        return float(row["final_val_acc"])
    return _split_accuracy(history(row)[-1], "val_acc")


def row_value(config: Config, row: dict, dense_row: Optional[dict], history: History) -> float:
    """The objective for one level (reported to the pruner per level, and the trial's value when scored)."""
    objective = config.search.objective
    if objective == "test_accuracy":
        return float(row["final_test_acc"])
    if objective == "val_accuracy":
        return final_val_acc(row, history)
    if dense_row is None:
        raise ValueError("steps_to_dense needs the dense level (level 0) first")
    return steps_to_dense(history(row), final_val_acc(dense_row, history))


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
