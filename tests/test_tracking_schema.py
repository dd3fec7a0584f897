"""The MLflow side of an experiment, read back from a real sqlite store as the UI would: one param schema that
filters and groups IMP against its baselines, readable names, series whose steps are steps, true run times,
every results.json number, the accuracy-vs-density curve on the experiment parent, and the runs-table URL."""
from __future__ import annotations

import io
import json
import math
import re
from collections import defaultdict

import pytest
from mlflow.tracking import MlflowClient

from lottery.config import config_hash, load_config
from lottery.orchestrate.experiment import run_experiment
from lottery.report.aggregate import aggregate, collect
from lottery.run.files import read_json
from lottery.run.layout import RunLayout
from tests.conftest_mlflow import sqlite_uri  # noqa: F401

OVERRIDES = ["train.steps=2ep", "train.eval_every=1ep", "ticket.levels=2", "experiment.seeds=[0, 1]",
             "experiment.baselines.methods=[magnitude, snip]", "experiment.branches={reinit: [2]}",
             "train.device=cpu"]
EXPERIMENT = "schema"


@pytest.fixture(scope="module")
def store(tmp_path_factory, sqlite_uri):  # noqa: F811
    root = tmp_path_factory.mktemp("schema")
    config = load_config("digits", [*OVERRIDES, f"run.root={root / 'runs'}", f"track.uri={sqlite_uri}",
                                    f"track.experiment={EXPERIMENT}"])
    printed = io.StringIO()
    outcome = run_experiment(config, "lottery ticket --exp digits", stream=printed)
    client = MlflowClient(sqlite_uri)
    experiment = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([experiment.experiment_id], max_results=1000)
    return config, outcome, client, experiment.experiment_id, runs, printed.getvalue()


def search(store, text: str) -> list:
    _, _, client, experiment_id, _, _ = store
    return client.search_runs([experiment_id], filter_string=text, max_results=1000)


def stage_runs(runs) -> list:
    return [run for run in runs if "key" in run.data.tags]


def test_params_filter_imp_baselines_and_a_level_and_group_by_series(store):
    config, outcome, _, _, runs, _ = store
    stages = stage_runs(runs)
    assert len(stages) == 2 * (3 + 4 + 1)  # per seed: levels 0-2, 2 methods x 2 densities, reinit at level 2
    imp = search(store, "params.method = 'imp'")
    assert sorted((r.data.params["seed"], r.data.params["level"]) for r in imp) == \
        [(s, str(level)) for s in ("0", "1") for level in range(3)]
    assert all(r.data.params["kind"] == "imp" for r in imp)
    baselines = search(store, "params.kind = 'baseline'")
    assert len(baselines) == 8 and {r.data.params["method"] for r in baselines} == {"magnitude", "snip"}
    # a baseline carries the level whose exact density it has, so one filter gives a level's comparison
    level_1 = search(store, "params.level = '1'")
    assert sorted(r.data.params["kind"] for r in level_1) == ["baseline"] * 4 + ["imp"] * 2
    assert len({r.data.params["density"] for r in level_1}) == 1
    groups = defaultdict(set)
    for run in stages:
        groups[run.data.params["method"]].add(run.data.params["kind"])
    assert groups == {"imp": {"imp"}, "magnitude": {"baseline"}, "snip": {"baseline"}, "reinit": {"branch"}}
    for run in stages:  # 4 significant figures as a param, the exact value as a metric
        assert run.data.params["density"] == f"{run.data.metrics['density']:.4g}"
        assert run.data.tags["kind"] == run.data.params["kind"]


def test_runs_have_names_descriptions_commands_user_and_source(store):
    config, outcome, _, _, runs, _ = store
    names = {run.info.run_name for run in runs}
    assert f"digits {config_hash(config)}" in names and {"seed 0", "seed 1"} <= names
    density_1 = read_json(outcome.directory / "seed_0" / "level_01" / "metrics.json")["row"]["density"]
    density_2 = read_json(outcome.directory / "seed_0" / "level_02" / "metrics.json")["row"]["density"]
    assert {f"IMP L1 d={density_1:.3g}", f"SNIP d={density_1:.3g}", f"magnitude d={density_2:.3g}",
            f"reinit L2 d={density_2:.3g}", "IMP L0 d=1"} <= names
    for run in runs:
        assert run.data.tags.get("mlflow.note.content"), run.info.run_name
        assert run.data.tags["mlflow.user"] and run.data.tags["mlflow.source.name"] == "lottery"
    seed_run = next(run for run in runs if run.info.run_name == "seed 0")
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d  lottery ticket --exp digits",
                        seed_run.data.tags["commands"])


def test_every_metric_series_has_unique_increasing_steps(store):
    _, _, client, _, runs, _ = store
    for run in runs:
        for key in run.data.metrics:
            steps = [point.step for point in client.get_metric_history(run.info.run_id, key)]
            assert steps == sorted(set(steps)), (run.info.run_name, key, steps)


def test_run_times_are_the_trainings_and_every_results_number_is_a_metric(store):
    _, outcome, client, _, runs, _ = store
    for run in stage_runs(runs):
        record = _record(outcome, int(run.data.params["seed"]), run.data.tags["key"])
        row, times = record["row"], record["times"]
        assert run.info.start_time == times["start_ms"] and run.info.end_time == times["end_ms"]
        # the run lasts as long as its training (wall_seconds), not the helper process's few milliseconds
        assert run.info.end_time - run.info.start_time >= 1000 * row["wall_seconds"] - 50
        stamps = [p.timestamp for key in ("test_acc", "train_loss")
                  for p in client.get_metric_history(run.info.run_id, key)]
        assert stamps and min(stamps) >= run.info.start_time and max(stamps) <= run.info.end_time + 1000
        metrics = run.data.metrics
        for key in ("final_test_acc", "early_stop_test_acc", "early_stop_step", "wall_seconds"):
            assert metrics[key] == pytest.approx(row[key]), key
        assert metrics["collapsed_layers"] == len(row["collapsed"])
        assert {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("layer_density/")} == \
            pytest.approx(row["layers"])
        assert run.info.status == "FINISHED"


def _record(outcome, seed: int, key: str) -> dict:
    layout = RunLayout.at(outcome.directory / f"seed_{seed}")
    for ref, directory in layout.stage_dirs():
        if ref.key == key:
            return read_json(directory / "metrics.json")
    raise AssertionError(f"no stage {key}")


def test_the_experiment_parent_draws_accuracy_against_density_and_holds_the_headline_numbers(store):
    config, outcome, client, _, runs, _ = store
    parent = next(run for run in runs if run.data.tags.get("kind") == "experiment")
    result = aggregate(collect(outcome.directory))
    densities = sorted(result.densities.values(), reverse=True)
    curve = client.get_metric_history(parent.info.run_id, "curve/density")
    assert [(p.step, p.value) for p in curve] == list(enumerate(densities))
    log_curve = client.get_metric_history(parent.info.run_id, "curve/log10_density")
    assert [p.value for p in log_curve] == pytest.approx([math.log10(d) for d in densities])
    for series, metric in (("ticket", "imp"), ("snip", "snip"), ("branch reinit", "reinit")):
        history = client.get_metric_history(parent.info.run_id, f"curve/{metric}/final_test_acc")
        by_density = result.summaries["final_test_acc"][series]
        expected = [(index, by_density[key].mean) for index, key in
                    enumerate(sorted(result.densities, key=lambda k: -result.densities[k])) if key in by_density]
        assert [p.step for p in history] == [step for step, _ in expected]
        assert [p.value for p in history] == pytest.approx([value for _, value in expected])
    assert parent.data.metrics["summary/dense/final_test_acc"] == pytest.approx(result.dense["final_test_acc"].mean)
    assert "summary/imp/sparsest_matching_density" in parent.data.metrics or \
        all(s.mean < result.dense["final_test_acc"].mean - 0.005
            for s in result.summaries["final_test_acc"]["ticket"].values())


def test_runs_have_dataset_inputs(store):
    _, outcome, client, _, runs, _ = store
    for run in runs:
        if run.data.tags.get("kind") == "experiment":
            continue
        (found,) = client.get_run(run.info.run_id).inputs.dataset_inputs
        assert found.dataset.name == "digits" and len(found.dataset.digest) == 16
        profile = json.loads(found.dataset.profile)
        assert (profile["train"], profile["val"], profile["test"]) == (1237, 200, 360)
        assert [(tag.key, tag.value) for tag in found.tags] == [("mlflow.data.context", "training")]


@pytest.mark.parametrize("seconds", [0.2, 0.0])
def test_a_live_stage_run_samples_system_metrics_unless_they_are_off(tmp_path, sqlite_uri, seconds):  # noqa: F811
    import time

    from lottery.tracking.client import MlflowTracker

    config = load_config("digits", [f"track.uri={sqlite_uri}", f"track.experiment=system_{seconds}",
                                    f"track.system_metrics_seconds={seconds}"])
    tracker = MlflowTracker(config, tmp_path / "run")
    tracker.parent("seed 0", {}, {})
    handle = tracker.child("level_00", "IMP L0 d=1", {"kind": "imp"})
    assert tracker.flush()  # the run is open in the store: sampling runs while "training" goes on
    time.sleep(1.5)
    handle.finish()
    tracker.close()
    run = MlflowClient(sqlite_uri).get_run(handle.run_id)
    sampled = {key: value for key, value in run.data.metrics.items() if key.startswith("system/")}
    if seconds:
        assert 0 <= sampled["system/cpu_utilization_percentage"] <= 100
        assert sampled["system/system_memory_usage_megabytes"] > 0
    else:
        assert not sampled


def test_the_runs_table_url_is_printed(store):
    _, _, _, experiment_id, _, printed = store
    assert f"MLflow runs table: http://127.0.0.1:5000/#/experiments/{experiment_id}/runs?workflowType=" \
           "machine_learning" in printed


def test_rerunning_a_finished_experiment_touches_no_run(store):
    config, outcome, client, experiment_id, runs, _ = store
    run_experiment(config, "lottery ticket --exp digits", stream=io.StringIO())
    again = {run.info.run_id: run for run in client.search_runs([experiment_id], max_results=1000)}
    assert set(again) == {run.info.run_id for run in runs}  # no duplicates
    for run in runs:
        assert (again[run.info.run_id].info.start_time, again[run.info.run_id].info.end_time,
                again[run.info.run_id].info.status) == (run.info.start_time, run.info.end_time, run.info.status)


@pytest.mark.slow
def test_track_log_model_logs_the_tickets_last_level_as_an_mlflow_model(tmp_path, sqlite_uri):  # noqa: F811
    import mlflow
    import torch

    from lottery.run.files import torch_load

    config = load_config("digits", ["train.steps=1ep", "ticket.levels=1", "experiment.seeds=[0]",
                                    "experiment.baselines.methods=[]", "train.device=cpu", "track.log_model=true",
                                    f"run.root={tmp_path / 'runs'}", f"track.uri={sqlite_uri}",
                                    "track.experiment=models"])
    outcome = run_experiment(config, "test", stream=io.StringIO())
    client = MlflowClient(sqlite_uri)
    experiment = client.get_experiment_by_name("models")
    mlflow.set_tracking_uri(sqlite_uri)
    (logged,) = mlflow.search_logged_models(experiment_ids=[experiment.experiment_id], output_format="list")
    source = client.get_run(logged.source_run_id)
    assert source.data.tags["key"] == "level_01" and source.info.status == "FINISHED"
    network = mlflow.pytorch.load_model(f"models:/{logged.model_id}")
    weights = torch_load(outcome.directory / "seed_0" / "level_01" / "final.pt")
    assert all(torch.equal(value, weights[name]) for name, value in network.state_dict().items())


def test_make_ui_prints_the_runs_table_url_of_each_tracked_experiment(store, capsys):
    from lottery.tracking.urls import main

    _, outcome, _, experiment_id, _, _ = store
    uri = store[0].track.uri
    assert main([uri, "5001", str(outcome.directory.parent.parent)]) == 0
    assert capsys.readouterr().out == f"  {EXPERIMENT}: http://127.0.0.1:5001/#/experiments/{experiment_id}/runs?" \
                                      "workflowType=machine_learning\n"
    assert main([uri, "5001", str(outcome.directory / "nothing")]) == 0
    assert "no tracked run" in capsys.readouterr().out
