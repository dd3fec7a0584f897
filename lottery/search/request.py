"""What a search is asked to do, and how one trial config is run (ticket or baselines). Knows no Optuna."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lottery.config import Config
from lottery.run.files import read_json
from lottery.run.layout import RunLayout, StageRef
from lottery.search.space import SearchSpace

DEFAULT_STORAGE = "sqlite:///optuna.db"


@dataclass(frozen=True)
class Runner:
    """How a trial config runs: `run(config, on_row, parent_tags)` calls on_row after each level and puts
    parent_tags on the run directory's MLflow run; `history(config, row)` is a level's evaluations."""

    run: Callable[[Config, Callable[[dict], None], dict], object]
    history: Callable[[Config, dict], list[dict]]


def ticket_runner(command: str) -> Runner:
    from lottery.workflows.ticket import run_ticket

    def run(config: Config, on_row, parent_tags: dict) -> None:
        run_ticket(config, command, on_level=on_row, parent_tags=parent_tags)

    def history(config: Config, row: dict) -> list[dict]:
        return read_json(RunLayout.of(config).level_dir(row["level"]) / "metrics.json", "stage record")["history"]

    return Runner(run, history)


def baselines_runner(command: str) -> Runner:
    from lottery.workflows.baselines import run_baselines

    def run(config: Config, on_row, parent_tags: dict) -> None:
        for row in run_baselines(config, [config.baseline.method], [config.baseline.density], "init", command,
                                 parent_tags):
            on_row(row)

    def history(config: Config, row: dict) -> list[dict]:
        directory = RunLayout.of(config).directory(StageRef.from_key(row["stage"]))
        return read_json(directory / "metrics.json", "stage record")["history"]

    return Runner(run, history)


@dataclass
class SearchRequest:
    config: Config  # the search config: experiment + the space's fixed keys + command-line overrides
    space: SearchSpace
    trials: int
    storage: str = DEFAULT_STORAGE
    study_name: Optional[str] = None
    command: str = "lottery search"

    @property
    def name(self) -> str:
        return self.study_name or f"{self.config.exp}-{self.space.name}"

    @property
    def directory(self) -> Path:
        """<run.root>/<exp>/search/<study>: the search's artefacts and its MLflow ids."""
        return Path(self.config.run.root) / self.config.exp / "search" / self.name


@dataclass
class SearchOutcome:
    study_name: str
    directory: Path
    counts: dict[str, int]
    best: Optional[dict] = None
    pareto: list[dict] = field(default_factory=list)


