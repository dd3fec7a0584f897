"""MLflow for an orchestrated experiment: one parent run per experiment, a child per seed, the stages below."""
from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

from lottery.config import config_hash, load_config
from lottery.orchestrate.experiment import run_experiment
from tests.conftest_mlflow import sqlite_uri  # noqa: F401

OVERRIDES = ["train.steps=2ep", "train.eval_every=1ep", "ticket.levels=1", "experiment.seeds=[0, 1]",
             "experiment.baselines.methods=[magnitude]", "train.device=cpu"]


def _runs(uri: str, name: str) -> list:
    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(name)
    return client.search_runs([experiment.experiment_id], max_results=1000)


@pytest.mark.slow
def test_an_experiment_is_a_parent_run_with_a_child_per_seed_and_the_stages_below(tmp_path, sqlite_uri):  # noqa: F811
    for workers in (1, 2):  # in this process, then on worker processes attached to the same runs
        config = load_config("digits", [*OVERRIDES, f"run.root={tmp_path / 'runs'}", f"track.uri={sqlite_uri}",
                                        f"run.workers={workers}"])
        run_experiment(config, "test")
    runs = _runs(sqlite_uri, "digits")
    by_id = {run.info.run_id: run for run in runs}
    parents = [run for run in runs if run.data.tags.get("kind") == "experiment"]
    assert len(parents) == 1 and parents[0].info.run_name == f"digits {config_hash(config)}"
    seeds = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parents[0].info.run_id]
    assert sorted(run.data.tags["seed"] for run in seeds) == ["0", "1"]
    stages = [run for run in runs if run not in parents and run not in seeds]
    # per seed: 2 levels and 1 baseline at level 1's density; re-running attached to them, no duplicates
    assert len(stages) == 6
    for stage in stages:
        seed_run = by_id[stage.data.tags["mlflow.parentRunId"]]
        assert seed_run in seeds and stage.data.tags["seed"] == seed_run.data.tags["seed"]
        assert stage.info.status == "FINISHED"
    assert all(run.info.status == "FINISHED" for run in [*parents, *seeds])
    artifacts = {item.path for item in MlflowClient(sqlite_uri).list_artifacts(parents[0].info.run_id, "figures")}
    assert "figures/accuracy_vs_density_final_test_acc.png" in artifacts
