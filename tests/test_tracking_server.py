"""Tracking against a real `mlflow server` on 127.0.0.1, including the server dying mid-run.

One server per module (it takes ~9 s to start); the fixture always kills it in teardown.
"""
from __future__ import annotations

import logging
import time

import pytest
from matplotlib.figure import Figure

from lottery.config import flatten
from lottery.run.files import read_json
from lottery.tracking.sync import sync_run
from lottery.tracking.client import MlflowTracker
from tests.conftest_mlflow import (artifact_paths, clean_http_env, metric_steps, mlflow_server,  # noqa: F401
                                   runs_by_name, tiny_tracked_config)


def test_runs_metrics_and_artefacts_reach_a_real_server(mlflow_server, tmp_path, clean_http_env):
    config = tiny_tracked_config(mlflow_server.uri, "served")
    tracker = MlflowTracker(config, tmp_path / "run", command="lottery ticket")
    parent = tracker.parent("served", {"kind": "ticket"}, flatten(config))
    child = tracker.child("level_00", "level_00", {"level": 0, "density": 1.0})
    for step in (10, 20):
        child.log_metrics({"test_acc": step / 100, "train_loss": 1 / step}, step=step)
    child.log_metrics({"final_test_acc": 0.2})
    child.finish()
    (tmp_path / "results.json").write_text("[]\n")
    parent.log_artifact(tmp_path / "results.json")
    figure = Figure()
    figure.subplots().plot([0, 1], [1, 0])
    parent.log_figure(figure, "figures/x.png")
    tracker.close()
    assert not tracker.degraded, tracker.error

    runs = runs_by_name(mlflow_server.uri, "served")
    assert set(runs) == {"served", "level_00"}
    assert runs["level_00"].data.tags["mlflow.parentRunId"] == runs["served"].info.run_id
    assert metric_steps(mlflow_server.uri, runs["level_00"], "test_acc") == [(10, 0.1), (20, 0.2)]
    assert runs["level_00"].data.metrics["final_test_acc"] == 0.2
    assert artifact_paths(mlflow_server.uri, runs["served"]) == {"results.json", "figures/x.png"}
    assert runs["served"].info.status == "FINISHED"


@pytest.mark.slow
def test_a_ticket_run_outlives_the_server_and_sync_fills_the_gap(mlflow_server, tmp_path, caplog, monkeypatch,
                                                                 clean_http_env):
    from lottery.workflows.ticket import run_ticket

    config = tiny_tracked_config(mlflow_server.uri, "outage", **{"ticket.levels": 2, "data.val_size": 64,
                                                                 "run.root": str(tmp_path / "runs")})
    original_child = MlflowTracker.child
    killed = []

    def child_then_kill(self, key, name, params, *rest):
        if key == "level_01" and not killed:
            self.flush()  # level 0 is fully in MLflow; then the server dies
            mlflow_server.kill()
            killed.append(key)
        return original_child(self, key, name, params, *rest)

    monkeypatch.setattr(MlflowTracker, "child", child_then_kill)
    started = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="lottery.tracking"):
        outcome = run_ticket(config, command="lottery ticket --exp outage")
    assert time.monotonic() - started < 60
    assert not mlflow_server.alive()
    warnings = [r.getMessage() for r in caplog.records if r.name == "lottery.tracking" and r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "lottery sync" in warnings[0]

    run_dir = outcome.run_dir
    assert [row["level"] for row in read_json(run_dir / "results.json")["rows"]] == [0, 1, 2]
    for level in range(3):
        assert (run_dir / f"level_{level:02d}" / "DONE").exists()
    before = runs_by_name(mlflow_server.backend, "outage")  # the server's own store, read directly
    assert set(before) == {"seed 0", "level_00"}
    assert before["level_00"].info.status == "FINISHED"

    mlflow_server.start()
    assert sync_run(run_dir).error is None
    after = runs_by_name(mlflow_server.uri, "outage")
    assert set(after) == {"seed 0", "level_00", "level_01", "level_02"}
    assert after["seed 0"].info.run_id == before["seed 0"].info.run_id
    assert after["level_00"].info.run_id == before["level_00"].info.run_id
    assert after["seed 0"].info.status == "FINISHED"
    for level in range(3):
        history = read_json(run_dir / f"level_{level:02d}" / "metrics.json")["history"]
        points = metric_steps(mlflow_server.uri, after[f"level_{level:02d}"], "test_acc")
        assert [step for step, _ in points] == [record["step"] for record in history]
        assert [value for _, value in points] == pytest.approx([record["test_acc"] for record in history])
    assert {"results.json", "config.yaml", "figures/accuracy_vs_density.png", "masks/level_02/mask.pt"} <= \
        artifact_paths(mlflow_server.uri, after["seed 0"])
