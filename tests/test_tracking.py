"""MlflowTracker against a real sqlite MLflow store: structure, params, resume, failures.

Every tracker starts an MLflow helper process (~3 s: mlflow's import and the store's start-up),
so each test uses as few trackers as its claim needs.
"""
from __future__ import annotations

import json
import logging
import subprocess
import sys
import time
from pathlib import Path

import pytest
from matplotlib.figure import Figure

from lottery.config import Config, config_hash, flatten
from lottery.run.files import read_json
from lottery.tracking.base import Tracker
from lottery.tracking.client import make_tracker
from lottery.tracking.server import git_state
from lottery.tracking.client import MlflowRunHandle, MlflowTracker, param_value
from lottery.tracking.protocol import DEFAULT_URI, PARAM_VALUE_LIMIT, resolve_uri
from tests.conftest_mlflow import (artifact_paths, clean_http_env, free_port, history, metric_steps,  # noqa: F401
                                   runs_by_name, sqlite_uri, tiny_tracked_config)


def _level(tracker, level: int, steps=(10, 20, 30), finish: bool = True):
    handle = tracker.child(f"level_{level:02d}", f"level_{level:02d}",
                           {"level": level, "density": 0.8 ** level, "compression": 0.1 * level})
    for record in history(steps):
        handle.log_metrics({k: v for k, v in record.items() if k != "step"}, step=record["step"])
    if finish:
        handle.log_metrics({"final_test_acc": 0.7, "best_test_acc": 0.71, "density": 0.8 ** level,
                            "early_stop_step": 20})
        handle.finish()
    return handle


def test_parent_and_nested_children_hold_tags_params_metrics_and_artefacts(tmp_path, sqlite_uri, caplog):
    config = tiny_tracked_config(sqlite_uri, "structure", seed=3)
    tracker = make_tracker(config, tmp_path / "run", command="lottery ticket --exp x")
    assert isinstance(tracker, MlflowTracker)
    extra = {f"group.key_{i:03d}": i for i in range(250)}  # three log_batch calls' worth
    params = {**flatten(config), **extra, "long": "x" * 10_000, "nested": {"inner": {"deep": 1}}}
    parent = tracker.parent("structure", {"kind": "ticket"}, params)
    for level in range(2):
        _level(tracker, level)
    (tmp_path / "results.json").write_text("[]")
    parent.log_artifact(tmp_path / "results.json")
    with caplog.at_level(logging.WARNING, logger="lottery.tracking"):
        parent.log_artifact(tmp_path / "missing.json")
    parent.log_metrics({"nan": float("nan"), "inf": float("inf"), "flag": True, "text": "x", "ok": 1.5}, step=4)
    figure = Figure()
    figure.subplots().plot([1, 2], [3, 4])
    parent.log_figure(figure, "figures/line.png")
    tracker.close()
    assert not tracker.degraded, tracker.error
    assert any("missing.json" in record.getMessage() for record in caplog.records)

    runs = runs_by_name(sqlite_uri, "structure")
    assert set(runs) == {"structure", "level_00", "level_01"}
    top = runs["structure"]
    assert top.info.status == "FINISHED"
    assert top.data.tags["exp"] == "structure"
    assert top.data.tags["config_hash"] == config_hash(config)
    assert top.data.tags["seed"] == "3"
    assert top.data.tags["command"] == "lottery ticket --exp x"
    assert top.data.tags["kind"] == "ticket"
    assert ("git_commit" in top.data.tags) == bool(git_state(Path(__file__).resolve().parent))
    expected = {**{k: param_value(v) for k, v in flatten(config).items()}, **{k: str(v) for k, v in extra.items()}}
    assert {k: v for k, v in top.data.params.items() if k not in ("long", "nested.inner")} == expected
    assert len(top.data.params["long"]) == PARAM_VALUE_LIMIT
    assert top.data.params["nested.inner"] == '{"deep": 1}'  # leaf mappings stay JSON, like prune.layer_rates
    assert top.data.metrics == {"ok": 1.5}  # NaN, inf, bools and text are not metrics
    for level in range(2):
        child = runs[f"level_{level:02d}"]
        assert child.data.tags["mlflow.parentRunId"] == top.info.run_id
        assert child.info.status == "FINISHED"
        assert child.data.params["level"] == str(level)
        assert float(child.data.params["density"]) == pytest.approx(0.8 ** level)
        assert [step for step, _ in metric_steps(sqlite_uri, child, "test_acc")] == [10, 20, 30]
        assert [v for _, v in metric_steps(sqlite_uri, child, "train_loss")] == pytest.approx([2.0, 1.0, 2 / 3])
        summary = {"lr", "test_loss", "val_loss", "final_test_acc", "best_test_acc", "early_stop_step"}
        assert summary <= set(child.data.metrics)
        assert child.data.metrics["final_test_acc"] == pytest.approx(0.7)
    assert artifact_paths(sqlite_uri, top) == {"results.json", "figures/line.png"}
    stored = json.loads((tmp_path / "run" / "tracking.json").read_text())
    ids = stored[resolve_uri(config)]["structure"]["runs"]
    assert ids == {"parent": top.info.run_id, "level_00": runs["level_00"].info.run_id,
                   "level_01": runs["level_01"].info.run_id}


def test_a_resumed_process_reattaches_without_duplicate_runs_or_points(tmp_path, sqlite_uri):
    config = tiny_tracked_config(sqlite_uri, "resume")
    first = MlflowTracker(config, tmp_path / "run")
    first.parent("resume", {}, flatten(config))
    _level(first, 0)
    _level(first, 1, steps=(10, 20), finish=False)  # the process dies during level 1
    first.close("FAILED")
    interrupted = runs_by_name(sqlite_uri, "resume")
    assert interrupted["level_01"].info.status == "FAILED"

    config.ticket.levels = 4  # an unhashed key changed on resume: MLflow params are immutable
    second = MlflowTracker(config, tmp_path / "run")
    second.parent("resume", {}, flatten(config))
    _level(second, 0)  # a finished child stays one run
    _level(second, 1, steps=(10, 20, 30))  # resumed: replays 10 and 20, then goes on
    second.close()
    assert not second.degraded, second.error
    assert sorted(second.reattached) == ["level_00", "level_01", "parent"]

    runs = runs_by_name(sqlite_uri, "resume")
    assert set(runs) == {"resume", "level_00", "level_01"}
    for name, run in runs.items():
        assert run.info.run_id == interrupted[name].info.run_id
        assert run.info.status == "FINISHED"
    assert [s for s, _ in metric_steps(sqlite_uri, runs["level_01"], "test_acc")] == [10, 20, 30]
    assert [s for s, _ in metric_steps(sqlite_uri, runs["level_00"], "test_acc")] == [10, 20, 30]
    assert len(metric_steps(sqlite_uri, runs["level_00"], "final_test_acc")) == 1
    assert runs["resume"].data.params["ticket.levels"] == "1"
    assert runs["resume"].data.tags["changed_param.ticket.levels"] == "4"


def test_a_dead_server_costs_seconds_warns_once_and_never_raises(tmp_path, caplog, clean_http_env):
    config = tiny_tracked_config(f"http://127.0.0.1:{free_port()}", "dead")
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lottery.tracking"):
        tracker = MlflowTracker(config, tmp_path / "run")
        parent = tracker.parent("dead", {}, flatten(config))
        _level(tracker, 0)
        assert tracker.flush(timeout=30)
        _level(tracker, 1)
        parent.log_artifact(Path(__file__))
        tracker.close()
    assert time.monotonic() - started < 20
    assert tracker.degraded
    warnings = [r for r in caplog.records if r.name == "lottery.tracking" and r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "lottery sync" in warnings[0].getMessage()
    assert not (tmp_path / "run" / "tracking.json").exists()


def test_the_training_process_never_imports_mlflow_nor_the_tracking_process_torch():
    probe = "import sys, lottery.tracking.server, lottery.tracking.protocol; print('mlflow' in sys.modules, 'torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True,
                            cwd=Path(__file__).resolve().parent.parent)
    assert result.stdout.split() == ["False", "False"]


def test_uri_resolution_order(tmp_path, monkeypatch):
    config = Config()
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert DEFAULT_URI == "sqlite:///mlflow.db"
    assert resolve_uri(config) == "sqlite:///" + str(tmp_path.resolve() / "mlflow.db")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    assert resolve_uri(config) == "http://127.0.0.1:9"
    config.track.uri = "sqlite:///sub/x.db?timeout=5"
    assert resolve_uri(config) == "sqlite:///" + str(tmp_path.resolve() / "sub" / "x.db") + "?timeout=5"


def test_tracking_off_gives_the_noop_tracker(tmp_path):
    config = tiny_tracked_config("sqlite:///unused.db", "off")
    config.track.enabled = False
    assert type(make_tracker(config, tmp_path)) is Tracker


def test_git_state_reads_the_commit_of_a_repository(tmp_path):
    assert git_state(tmp_path) == {}
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "commit.gpgsign=false"]
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "a.txt").write_text("a")
    subprocess.run(["git", "-C", str(tmp_path), "add", "a.txt"], check=True)
    subprocess.run(git + ["-C", str(tmp_path), "commit", "-q", "-m", "a"], check=True)
    state = git_state(tmp_path)
    assert len(state["git_commit"]) == 40 and state["git_dirty"] == "false"
    (tmp_path / "a.txt").write_text("b")
    assert git_state(tmp_path)["git_dirty"] == "true"


def test_a_ticket_is_mirrored_level_by_level_and_an_interrupted_one_resumes_into_the_same_runs(
        tmp_path, sqlite_uri, monkeypatch):
    from lottery.workflows.ticket import run_ticket

    config = tiny_tracked_config(sqlite_uri, "ticket_e2e", **{"data.val_size": 64, "run.root": str(tmp_path / "runs"),
                                                              "ticket.checkpoint_every": "10it"})
    log_metrics = MlflowRunHandle.log_metrics

    def interrupt_level_1(handle, metrics, step=None, **rest):
        log_metrics(handle, metrics, step, **rest)
        if handle.key == "level_01" and step == 10:
            raise KeyboardInterrupt  # Ctrl-C during level 1, after its first evaluation

    monkeypatch.setattr(MlflowRunHandle, "log_metrics", interrupt_level_1)
    with pytest.raises(KeyboardInterrupt):
        run_ticket(config, command="lottery ticket --exp tiny")
    first = runs_by_name(sqlite_uri, "ticket_e2e")
    assert first["level_01"].info.status == "FAILED" and first["seed 0"].info.status == "FAILED"
    assert [s for s, _ in metric_steps(sqlite_uri, first["level_01"], "test_acc")] == [10]

    monkeypatch.setattr(MlflowRunHandle, "log_metrics", log_metrics)
    outcome = run_ticket(config, command="lottery ticket --exp tiny")
    runs = runs_by_name(sqlite_uri, "ticket_e2e")
    assert {n: r.info.run_id for n, r in runs.items()} == {n: r.info.run_id for n, r in first.items()}
    parent = runs["seed 0"]
    assert set(runs) == {"seed 0", "level_00", "level_01"}
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert parent.data.tags["command"] == "lottery ticket --exp tiny"
    assert parent.data.tags["config_hash"] == config_hash(config)
    assert parent.data.params["train.steps"] == "20it"
    assert {"results.json", "config.yaml"} <= artifact_paths(sqlite_uri, parent)
    for row in outcome.rows:
        child = runs[f"level_{row['level']:02d}"]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.data.params["density"] == f"{row['density']:.4g}"  # the exact density is the metric
        assert child.data.metrics["density"] == row["density"]
        history_ = read_json(outcome.run_dir / f"level_{row['level']:02d}" / "metrics.json")["history"]
        for key in ("test_acc", "train_loss", "test_loss", "lr", "val_loss"):
            points = metric_steps(sqlite_uri, child, key)
            assert [step for step, _ in points] == [record["step"] for record in history_] == [10, 20], key
            assert [value for _, value in points] == pytest.approx([record[key] for record in history_]), key
        for key, name in (("final_test_acc", "final_test_acc"), ("early_stop_test_acc", "early_stop_test_acc"),
                          ("best_test_acc", "max_test_acc"), ("density", "density"),
                          ("early_stop_step", "early_stop_step"), ("final_val_acc", "final_val_acc")):
            assert child.data.metrics[name] == pytest.approx(row[key]), key
        assert "best_test_acc" not in child.data.metrics  # the optimistic maximum is never called "best"


class _Outbox:
    def __init__(self):
        self.sent = []

    def send(self, message):
        self.sent.append(message)


DIGITS_INPUT = {"name": "digits", "digest": "0123abcd", "source": "sklearn", "profile": {"train": 1437},
                "context": "training"}


def _store_with_runs(uri: str, tmp_path: Path, keys: tuple[str, ...]):
    from lottery.tracking.server import _Store

    store = _Store(uri, "inputs-race", str(tmp_path), _Outbox())
    for key in keys:
        store.attach(key, key, {}, {}, None)
    return store


def test_a_dataset_insert_lost_to_another_process_is_retried_and_tracking_stays_on(tmp_path, sqlite_uri):  # noqa: F811
    """Two workers logging one dataset at once: MLflow's store looks it up, finds none in either, and the second
    insert breaks the unique key (seen under load in a 2-worker experiment). The loser's retry links the row."""
    from mlflow.exceptions import MlflowException

    store = _store_with_runs(sqlite_uri, tmp_path, ("seed_0", "seed_1"))
    real, calls = store.client.log_inputs, []

    def lose_the_race(run_id, datasets):
        calls.append(run_id)
        if len(calls) == 1:  # the other worker inserts the row between this one's lookup and its insert
            real(store.runs["seed_0"], datasets=datasets)
            raise MlflowException("(sqlite3.IntegrityError) UNIQUE constraint failed: datasets.experiment_id, "
                                  "datasets.name, datasets.digest")
        return real(run_id, datasets=datasets)

    store.client.log_inputs = lose_the_race
    store.inputs("seed_1", [DIGITS_INPUT])
    assert calls == [store.runs["seed_1"]] * 2
    for key in ("seed_0", "seed_1"):
        inputs = store.client.get_run(store.runs[key]).inputs.dataset_inputs
        assert [(i.dataset.name, i.dataset.digest) for i in inputs] == [("digits", "0123abcd")]


def test_any_other_failure_of_log_inputs_is_raised_at_once(tmp_path, sqlite_uri):  # noqa: F811
    from mlflow.exceptions import MlflowException

    store = _store_with_runs(sqlite_uri, tmp_path, ("seed_0",))
    calls = []

    def refuse(run_id, datasets):
        calls.append(run_id)
        raise MlflowException("API request failed: connection refused")

    store.client.log_inputs = refuse
    with pytest.raises(MlflowException, match="connection refused"):
        store.inputs("seed_0", [DIGITS_INPUT])
    assert len(calls) == 1
