"""Builders for search tests: spaces, requests, and a fast fake runner that stands in for IMP."""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from lottery.search.request import Runner, SearchRequest
from lottery.search.space import load_space, search_config
from tests.helpers import tiny_config

FRACTION_SPACE = {"params": {"prune.fraction": {"type": "float", "low": 0.1, "high": 0.5}}}


def make_request(tmp_path: Path, trials: int, space: dict | None = None, study: str = "study", **overrides):
    path = tmp_path / "space.yaml"
    path.write_text(yaml.safe_dump(space or FRACTION_SPACE))
    loaded = load_space(path)
    base = {"ticket.levels": 2, "search.pruner": "none", "search.heartbeat_seconds": 1, "data.val_size": 64,
            **overrides}
    config = search_config(tiny_config(tmp_path, **{k.replace(".", "__"): v for k, v in base.items()}), loaded)
    return SearchRequest(config, loaded, trials, f"sqlite:///{tmp_path / 'optuna.db'}", study)


class FakeRunner:
    """Levels with density (1-p)^L and validation accuracy from `accuracy(call, level, config)`; records every
    call. Test accuracies differ from the validation ones (so a test can tell which split a value came from).

    `fail_on` maps a call index to an exception to raise before any level.
    """

    def __init__(self, accuracy=None, fail_on: dict | None = None):
        self.accuracy = accuracy or (lambda call, level, config: 0.9 - 0.1 * config.prune.fraction * level)
        self.fail_on = fail_on or {}
        self.calls: list[dict] = []  # per call: the config and the levels it reached

    def run(self, config, on_row, parent_tags=None) -> None:
        call = len(self.calls)
        record = {"config": config, "levels": [], "parent_tags": parent_tags}
        self.calls.append(record)
        if call in self.fail_on:
            raise self.fail_on[call]
        for level in range(config.ticket.levels + 1):
            acc = self.accuracy(call, level, config)
            record["levels"].append(level)
            on_row({"stage": f"level_{level:02d}", "level": level, "density": (1 - config.prune.fraction) ** level,
                    "final_val_acc": acc, "best_test_acc": acc + 0.02, "final_test_acc": acc - 0.01})

    def history(self, config, row) -> list[dict]:
        val = row["final_val_acc"]
        return [{"step": 10, "val_acc": val - 0.05, "test_acc": val + 0.02},
                {"step": 20, "val_acc": val, "test_acc": row["final_test_acc"]}]

    def as_runner(self) -> Runner:
        return Runner(self.run, self.history)


REPO = Path(__file__).resolve().parent.parent


def write_experiment(tmp_path: Path, name: str = "tiny_search", steps: str = "40it", levels: int = 1,
                     eval_every: str = "20it") -> Path:
    """A tiny digits experiment YAML for `lottery search` subprocesses (seconds per trial, offline)."""
    experiment = {
        "model": {"name": "lenet_32", "init": "kaiming_normal"},
        "data": {"name": "digits", "val_size": 200},
        "train": {"steps": steps, "batch_size": 32, "optimizer": "sgd", "lr": 0.05, "momentum": 0.9,
                  "eval_every": eval_every, "device": "cpu", "progress": "off"},
        "ticket": {"levels": levels, "checkpoint_every": eval_every},
        "track": {"enabled": False},
        "search": {"pruner": "none", "heartbeat_seconds": 1},
        "run": {"root": str(tmp_path / "runs")},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(experiment, sort_keys=False))
    return path


def start_worker(tmp_path: Path, experiment: Path, storage: str, trials: int, study: str, log_name: str,
                 *overrides: str):
    """`python -m lottery search ...` in the background; its output goes to tmp_path/log_name."""
    import os
    import subprocess
    import sys

    space = tmp_path / "worker_space.yaml"
    space.write_text(yaml.safe_dump(FRACTION_SPACE))
    # One thread each: workers share the cores, and oversubscribed torch threads slow tiny models down a lot.
    env = {**os.environ, "PYTHONPATH": str(REPO), "MPLBACKEND": "Agg", "OMP_NUM_THREADS": "1"}
    argv = [sys.executable, "-m", "lottery", "search", "--exp", str(experiment), "--space", str(space),
            "--trials", str(trials), "--storage", storage, "--study", study, *overrides]
    with open(tmp_path / log_name, "w") as log:  # the child keeps its own copy of the descriptor
        return subprocess.Popen(argv, cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT)


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models train several times faster on one thread when other processes share the cores."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
