"""`lottery sync RUN_DIR`: a finished run directory mirrored to MLflow, idempotently."""
from __future__ import annotations

import json
import logging

import pytest

from lottery.cli import main
from lottery.config import flatten
from lottery.run.files import read_json
from lottery.report.run_report import find_stages
from lottery.tracking.sync import sync_run
from lottery.tracking.client import MlflowTracker
from lottery.tracking.protocol import resolve_uri
from tests.conftest_mlflow import (artifact_paths, clean_http_env, free_port, make_run_dir, metric_steps,  # noqa: F401
                                   runs_by_name, sqlite_uri, tiny_tracked_config)

# the parent by its name, stage runs by their key
EXPECTED_RUNS = {"seed 0", "dense", "level_00", "level_01", "level_02", "branch/reinit/level_01",
                 "branch/reinit/level_02"}


def _baseline_names(run_dir) -> set[str]:
    return {s.key for s in find_stages(run_dir) if s.key.startswith("baseline/")}


def _snapshot(uri: str, experiment: str) -> dict:
    """run name -> (run id, number of test_acc points, number of final_test_acc points)."""
    return {name: (run.info.run_id, len(metric_steps(uri, run, "test_acc")),
                   len(metric_steps(uri, run, "final_test_acc")))
            for name, run in runs_by_name(uri, experiment).items()}


def test_sync_uploads_every_stage_and_running_it_twice_changes_nothing(tmp_path, sqlite_uri, capsys):
    run_dir = make_run_dir(tmp_path, tiny_tracked_config("sqlite:///unused.db", "synced"))
    assert main(["sync", str(run_dir), f"track.uri={sqlite_uri}"]) == 0
    assert "synced 10 stages" in capsys.readouterr().out

    runs = runs_by_name(sqlite_uri, "synced")
    assert set(runs) == EXPECTED_RUNS | _baseline_names(run_dir)
    parent = runs["seed 0"]
    assert parent.info.status == "FINISHED" and parent.data.tags["synced"] == "true"
    by_key = {run.data.tags.get("key"): run for run in runs.values()}
    for stage in find_stages(run_dir):
        child = by_key[stage.key]
        assert child.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert child.info.status == "FINISHED"
        points = metric_steps(sqlite_uri, child, "test_acc")
        assert [step for step, _ in points] == [r["step"] for r in stage.history]
        assert [value for _, value in points] == pytest.approx([r["test_acc"] for r in stage.history])
        assert child.data.metrics["final_test_acc"] == pytest.approx(stage.row["final_test_acc"])
        assert child.data.metrics["density"] == pytest.approx(stage.row["density"])
        assert child.data.metrics["early_stop_step"] == stage.row["early_stop_step"]
    artefacts = artifact_paths(sqlite_uri, parent)
    assert {"config.yaml", "results.json",
            "masks/level_02/mask.pt", "masks/baselines/init/snip/density_0.800000/mask.pt",
            "figures/accuracy_vs_density.png", "figures/layer_density.png", "figures/accuracy_vs_step_ticket.png",
            "report/report.md", "report/sparsity.json"} <= artefacts

    before = _snapshot(sqlite_uri, "synced")
    assert main(["sync", str(run_dir), f"track.uri={sqlite_uri}"]) == 0
    assert capsys.readouterr().out.startswith(f"nothing to sync: {run_dir} is unchanged since its last sync")
    assert _snapshot(sqlite_uri, "synced") == before
    assert main(["sync", str(run_dir), f"track.uri={sqlite_uri}", "--force"]) == 0
    assert "synced 10 stages" in capsys.readouterr().out
    assert _snapshot(sqlite_uri, "synced") == before  # uploading again adds nothing either


@pytest.mark.slow
def test_sync_completes_what_live_tracking_left_and_can_mirror_to_a_second_store(tmp_path, sqlite_uri):
    config = tiny_tracked_config(sqlite_uri, "partial")
    run_dir = make_run_dir(tmp_path, config, branches=False, baselines=False, dense=False)
    live = MlflowTracker(config, run_dir)
    live.parent("partial", {}, flatten(config))
    first = read_json(run_dir / "level_00" / "metrics.json")
    handle = live.child("level_00", "level_00", {"level": 0, "density": first["row"]["density"]})
    handle.log_metrics({"test_acc": first["history"][0]["test_acc"]}, step=first["history"][0]["step"])
    live.close("FAILED")  # the server went away after one evaluation
    live_ids = json.loads((run_dir / "tracking.json").read_text())

    outcome = sync_run(run_dir)
    assert outcome.error is None
    runs = runs_by_name(sqlite_uri, "partial")
    assert set(runs) == {"partial", "level_00", "level_01", "level_02"}
    ids = live_ids[resolve_uri(config)]["partial"]["runs"]
    assert runs["partial"].info.run_id == ids["parent"] == outcome.parent_run_id
    assert runs["level_00"].info.run_id == ids["level_00"]
    assert all(run.info.status == "FINISHED" for run in runs.values())
    assert [s for s, _ in metric_steps(sqlite_uri, runs["level_00"], "test_acc")] == [10, 20, 30]

    other = "sqlite:///" + str(tmp_path / "other.db")
    assert sync_run(run_dir, [f"track.uri={other}", "track.experiment=copy"]).error is None
    stored = json.loads((run_dir / "tracking.json").read_text())
    assert set(stored) == {sqlite_uri, other}
    assert stored[sqlite_uri]["partial"]["runs"]["level_00"] == ids["level_00"]
    assert set(runs_by_name(other, "copy")) == {"seed 0", "level_00", "level_01", "level_02"}


def test_sync_reports_an_unreachable_server(tmp_path, capsys, caplog, clean_http_env):
    run_dir = make_run_dir(tmp_path, tiny_tracked_config("sqlite:///unused.db", "down"), branches=False, dense=False,
                           baselines=False)
    assert main(["sync", str(run_dir), f"track.uri=http://127.0.0.1:{free_port()}"]) == 1
    err = capsys.readouterr().err
    assert "sync to http://127.0.0.1" in err and "Connection refused" in err
    assert [r for r in caplog.records if r.levelno >= logging.WARNING and r.name == "lottery.tracking"] == []
    assert not (run_dir / "sync.json").exists()  # a failed sync is never recorded as done


def test_the_fingerprint_follows_every_record_a_sync_uploads(tmp_path):
    from lottery.run.files import write_json
    from lottery.run.layout import RunLayout
    from lottery.tracking.sync import fingerprint

    run_dir = make_run_dir(tmp_path, tiny_tracked_config("sqlite:///unused.db", "print"), branches=False,
                           baselines=False)
    layout = RunLayout.at(run_dir)
    first = fingerprint(layout, find_stages(run_dir))
    assert fingerprint(layout, find_stages(run_dir)) == first
    record = read_json(run_dir / "level_01" / "metrics.json")
    record["row"]["final_test_acc"] += 0.01
    write_json(run_dir / "level_01" / "metrics.json", record)
    second = fingerprint(layout, find_stages(run_dir))
    assert second != first
    (run_dir / "level_02" / "mask.pt").write_bytes((run_dir / "level_01" / "mask.pt").read_bytes())
    assert fingerprint(layout, find_stages(run_dir)) not in (first, second)
