"""Search trials that are real (tiny) lottery runs: ticket and baselines runners, and MLflow tracking."""
import json
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

from lottery.run.files import read_json
from lottery.search.engine import run_search
from lottery.search.objective import steps_to_dense
from tests.search_helpers import make_request, one_thread  # noqa: F401 - an autouse fixture

optuna.logging.set_verbosity(optuna.logging.WARNING)

TINY = {"train.steps": "40it", "train.eval_every": "10it", "ticket.checkpoint_every": "20it"}


def test_ticket_trials_score_steps_to_dense_from_the_level_histories(tmp_path):
    request = make_request(tmp_path, trials=2, **TINY, **{"ticket.levels": 1, "search.objective": "steps_to_dense"})
    run_search(request)
    study = optuna.load_study(study_name=request.name, storage=request.storage)
    assert [t.state for t in study.get_trials()] == [TrialState.COMPLETE] * 2
    for trial in study.get_trials():
        run_dir = Path(trial.user_attrs["run_dir"])
        results = read_json(run_dir / "results.json")["rows"]
        assert [row["level"] for row in results] == [0, 1]
        assert results[1]["density"] == pytest.approx(1 - trial.params["prune.fraction"], abs=0.02)
        history = read_json(run_dir / "level_01" / "metrics.json")["history"]
        assert trial.value == steps_to_dense(history, results[0]["final_val_acc"])  # validation, not test
        assert trial.value in {float(r["step"]) for r in history} | {80.0}


def test_baselines_trials_prune_at_init_to_the_fixed_density(tmp_path):
    space = {"run": "baselines", "fixed": {"baseline.density": 0.3}, "params": {
        "baseline.method": {"type": "categorical", "choices": ["magnitude", "random"]},
        "baseline.rounds": {"type": "int", "low": 1, "high": 4, "when": {"baseline.method": "magnitude"}}}}
    request = make_request(tmp_path, trials=2, space=space, **TINY)
    run_search(request)
    study = optuna.load_study(study_name=request.name, storage=request.storage)
    for trial in study.get_trials():
        assert trial.state == TrialState.COMPLETE
        assert ("baseline.rounds" in trial.params) == (trial.params["baseline.method"] == "magnitude")
        rows = [row for row in read_json(Path(trial.user_attrs["run_dir"]) / "results.json")["rows"]
                if row["method"] == trial.params["baseline.method"] and row.get("stage") in trial.user_attrs["stages"]]
        assert len(rows) == 1
        assert rows[0]["density"] == pytest.approx(0.3, abs=0.01)
        assert trial.value == rows[0]["final_val_acc"]


@pytest.mark.slow
def test_the_search_is_a_parent_mlflow_run_with_a_child_per_trial(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    request = make_request(tmp_path, trials=2, **TINY, **{"ticket.levels": 1, "track.enabled": True,
                                                          "track.uri": uri, "track.experiment": "searches"})
    outcome = run_search(request)
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("searches")
    runs = client.search_runs([experiment.experiment_id])
    parents = [run for run in runs if run.data.tags.get("kind") == "search"]
    assert len(parents) == 1 and parents[0].data.tags["optuna_study"] == request.name
    assert parents[0].data.tags["selection"] == "validation"
    parent = parents[0]
    children = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == parent.info.run_id]
    study = optuna.load_study(study_name=request.name, storage=request.storage)
    by_trial = {int(run.data.tags["optuna_trial"]): run for run in children}
    assert sorted(by_trial) == [0, 1]
    for trial in study.get_trials():
        child = by_trial[trial.number]
        assert float(child.data.params["prune.fraction"]) == pytest.approx(trial.params["prune.fraction"])
        assert child.data.metrics["objective/val_accuracy"] == pytest.approx(trial.value)
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        [directory_run] = [run for run in runs if run.data.tags.get("mlflow.parentRunId") == child.info.run_id]
        assert directory_run.data.tags["run_dir"] == trial.user_attrs["run_dir"]  # the trial's run is tracked
        assert {"final_test_acc", "max_test_acc", "final_val_acc"} <= set(child.data.metrics)
        assert child.data.tags["selection"] == "validation"
        assert child.data.tags["state"] == "COMPLETE" and child.info.status == "FINISHED"
    artifacts = {item.path for item in client.list_artifacts(parent.info.run_id)}
    assert {"best.json", "trials.json", "plots"} <= artifacts
    plots = {item.path for item in client.list_artifacts(parent.info.run_id, "plots")}
    assert "plots/optimization_history.png" in plots
    best = json.loads((outcome.directory / "best.json").read_text())
    assert parent.data.metrics["best_val_accuracy"] == pytest.approx(best["values"]["val_accuracy"])
