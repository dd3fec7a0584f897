"""`experiment.evaluate` in MLflow: each stage's robustness accuracies on its own run, and the seed's
robustness.json, robustness figure and prune potentials on the seed's parent run, read back from sqlite."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from lottery.config import load_config
from lottery.orchestrate.experiment import run_experiment
from tests.conftest_mlflow import sqlite_uri  # noqa: F401


@pytest.mark.slow
def test_robustness_results_and_figure_reach_mlflow(tmp_path, sqlite_uri):  # noqa: F811
    config = load_config("digits", ["train.steps=2ep", "train.eval_every=1ep", "ticket.levels=1",
                                    "experiment.seeds=[0]", "experiment.baselines.methods=[magnitude]",
                                    "experiment.branches={}", "experiment.evaluate.corruptions=[noise]",
                                    "experiment.evaluate.severities=[1, 3]", "train.device=cpu",
                                    f"run.root={tmp_path / 'runs'}", f"track.uri={sqlite_uri}",
                                    "track.experiment=robustness"])
    assert not run_experiment(config, "test").failed
    client = MlflowClient(sqlite_uri)
    runs = client.search_runs([client.get_experiment_by_name("robustness").experiment_id], max_results=100)
    stages = [run for run in runs if "robustness/clean/acc" in run.data.metrics]
    assert len(stages) == 3  # levels 0 and 1, one magnitude baseline
    for run in stages:
        assert {"robustness/noise/1/acc", "robustness/noise/3/acc"} <= set(run.data.metrics)
    parents = [run for run in runs if any(key.startswith("prune_potential/") for key in run.data.metrics)]
    assert len(parents) == 1
    parent = parents[0]
    assert {"prune_potential/ticket/clean", "prune_potential/ticket/noise"} <= set(parent.data.metrics)
    artifacts = {item.path for folder in ("robustness", "figures")
                 for item in client.list_artifacts(parent.info.run_id, folder)}
    assert "robustness/robustness.json" in artifacts and "figures/robustness.png" in artifacts
