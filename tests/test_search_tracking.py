"""A tracked search over a real sqlite MLflow store: each trial is a run with its run directory's runs nested
under it, tagged with its own config's hash, and every metric key a series with increasing steps."""
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from lottery.config import config_hash, from_yaml
from lottery.search.engine import run_search
from tests.conftest_mlflow import sqlite_uri  # noqa: F401
from tests.search_helpers import FakeRunner, make_request, one_thread  # noqa: F401 - an autouse fixture

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = {"train.steps": "40it", "train.eval_every": "10it", "ticket.checkpoint_every": "20it", "ticket.levels": 1}


def tracked(uri: str, experiment: str) -> dict:
    return {"track.enabled": True, "track.uri": uri, "track.experiment": experiment}


def all_runs(client: MlflowClient, experiment: str, filter_string: str = "") -> list:
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id], filter_string, max_results=1000)


def children(runs: list, parent) -> list:
    return [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]


@pytest.mark.slow
def test_each_trial_run_holds_its_run_directory_runs_levels_and_objective(tmp_path, sqlite_uri):
    request = make_request(tmp_path, trials=2, **TINY, **{"data.name": "digits", **tracked(sqlite_uri, "tracked")})
    run_search(request)
    client = MlflowClient(sqlite_uri)
    runs = all_runs(client, "tracked")
    study = optuna.load_study(study_name=request.name, storage=request.storage)
    [search] = [run for run in runs if run.data.tags.get("kind") == "search"]
    by_trial = {int(run.data.tags["optuna_trial"]): run for run in children(runs, search)}
    assert sorted(by_trial) == [0, 1]

    # (d) params.kind = 'trial' selects the search's children, and nothing else.
    selected = all_runs(client, "tracked", "params.kind = 'trial'")
    assert {run.info.run_id for run in selected} == {run.info.run_id for run in by_trial.values()}
    assert len(runs) > len(selected) + 1

    hashes = {}
    for trial in study.get_trials():
        run = by_trial[trial.number]
        assert run.info.run_name == f"trial {trial.number}" and run.data.params["kind"] == "trial"
        # (b) the trial's own config, as its run directory saved it, not the search's.
        run_dir = Path(trial.user_attrs["run_dir"])
        trial_config = from_yaml((run_dir / "config.yaml").read_text())
        assert trial_config.prune.fraction == pytest.approx(trial.params["prune.fraction"])
        assert run.data.tags["config_hash"] == config_hash(trial_config) == run_dir.parent.name
        hashes[trial.number] = run.data.tags["config_hash"]
        note = run.data.tags["mlflow.note.content"]
        assert "prune.fraction" in note and str(trial.params["prune.fraction"]) in note and str(run_dir) in note
        assert run.data.metrics["objective/val_accuracy"] == pytest.approx(trial.value)
        assert [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, "val_accuracy")] == \
            [(level, pytest.approx(trial.user_attrs[f"level_{level:02d}"]["val_accuracy"])) for level in (0, 1)]

        # (a) the run directory's run is nested under the trial's, and its levels under it, with curves and masks.
        [directory_run] = children(runs, run)
        assert directory_run.data.tags["run_dir"] == str(run_dir)
        assert directory_run.data.tags["config_hash"] == hashes[trial.number]
        levels = {level.data.tags["key"]: level for level in children(runs, directory_run)}
        assert {"level_00", "level_01"} <= set(levels)
        for level in levels.values():
            curve = client.get_metric_history(level.info.run_id, "test_acc")
            assert [m.step for m in curve] == [10, 20, 30, 40]
        masks = {item.path for item in client.list_artifacts(directory_run.info.run_id, "masks/level_01")}
        assert "masks/level_01/mask.pt" in masks
    assert trial_params_differ(study) and hashes[0] != hashes[1]

    # (c) every run's every metric key is a series: unique, increasing steps.
    for run in runs:
        for key in run.data.metrics:
            steps = [m.step for m in client.get_metric_history(run.info.run_id, key)]
            assert steps == sorted(set(steps)), (run.info.run_name, key, steps)


def trial_params_differ(study) -> bool:
    first, second = study.get_trials()
    return first.params != second.params


def test_an_untracked_search_leaves_its_trials_untracked(tmp_path):
    fake = FakeRunner()
    run_search(make_request(tmp_path, trials=2), fake.as_runner())
    assert [call["config"].track.enabled for call in fake.calls] == [False, False]
    assert [call["parent_tags"] for call in fake.calls] == [{}, {}]


def test_a_resumed_search_extends_its_series_and_nests_each_trial_by_its_run_id(tmp_path, sqlite_uri):
    fake = FakeRunner()
    settings = tracked(sqlite_uri, "resumed")
    run_search(make_request(tmp_path, trials=2, **settings), fake.as_runner())
    run_search(make_request(tmp_path, trials=3, **settings), fake.as_runner())
    client = MlflowClient(sqlite_uri)
    runs = all_runs(client, "resumed")
    [search] = [run for run in runs if run.data.tags.get("kind") == "search"]
    trials = {run.info.run_name: run for run in children(runs, search)}
    assert [call["parent_tags"] for call in fake.calls] == \
        [{"mlflow.parentRunId": trials[f"trial {n}"].info.run_id} for n in range(3)]
    assert all(call["config"].track.enabled for call in fake.calls)
    # One point per search command, at the number of finished trials it saw.
    for key in ("best_val_accuracy", "trials_complete"):
        assert [m.step for m in client.get_metric_history(search.info.run_id, key)] == [2, 3]
    assert [m.value for m in client.get_metric_history(search.info.run_id, "trials_complete")] == [2, 3]
