"""A kill loses nothing in MLflow either: after SIGKILL at several points and a re-run, the store holds every
stage's run, every metric point of the run directory's records, and no run left RUNNING, exactly as an
uninterrupted run's store does (wall times aside)."""
from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from lottery.config import load_config
from lottery.orchestrate.experiment import run_experiment
from lottery.run.layout import RunLayout
from tests.orchestrate_helpers import launch_ticket

OVERRIDES = ["train.steps=6ep", "train.eval_every=1ep", "ticket.levels=2", "ticket.checkpoint_every=1ep",
             "experiment.seeds=[0]", "experiment.baselines.methods=[magnitude]", "train.device=cpu"]
TIMED = {"wall_seconds"}  # differs between any two runs


def _config(tmp_path: Path, uri: str, experiment: str):
    return load_config("digits", [*OVERRIDES, f"run.root={tmp_path / experiment}", f"track.uri={uri}",
                                  f"track.experiment={experiment}"])


def _store(uri: str, experiment: str) -> dict:
    """run (by key, or name for parents) -> (status, {metric: [(step, value), ...]})."""
    client = MlflowClient(uri)
    found = client.get_experiment_by_name(experiment)
    snapshot = {}
    for run in client.search_runs([found.experiment_id], max_results=1000):
        name = run.data.tags.get("key", "experiment" if run.data.tags.get("kind") == "experiment"
                                 else run.info.run_name)
        assert name not in snapshot, f"duplicate run {name}"
        metrics = {key: [(p.step, p.value) for p in client.get_metric_history(run.info.run_id, key)]
                   for key in run.data.metrics if key not in TIMED and not key.startswith("system/")}
        snapshot[name] = (run.info.status, metrics)
    return snapshot


@pytest.fixture(scope="module")
def uri(tmp_path_factory) -> str:
    return "sqlite:///" + str(tmp_path_factory.mktemp("kill_store") / "mlflow.db")


@pytest.fixture(scope="module")
def reference(tmp_path_factory, uri) -> dict:
    run_experiment(_config(tmp_path_factory.mktemp("reference"), uri, "reference"), "test")
    return _store(uri, "reference")


def _launch(tmp_path: Path, uri: str, experiment: str) -> tuple[subprocess.Popen, Path]:
    process, config = launch_ticket(_config(tmp_path, uri, experiment), tmp_path / f"{experiment}.yaml")
    return process, RunLayout.of(config).for_seed(0).run_dir


POINTS = {  # where the kill lands: what must exist in the seed's run directory first
    "during a level, with points still buffered": lambda seed: (seed / "level_01" / "checkpoint.pt").exists(),
    "just after a level's DONE": lambda seed: (seed / "level_01" / "DONE").exists(),
    "between stages": lambda seed: len(list(seed.glob("**/DONE"))) >= 4,
}


@pytest.mark.slow
@pytest.mark.parametrize("point", list(POINTS))
def test_a_kill_then_a_rerun_leaves_the_store_as_an_uninterrupted_run_does(tmp_path, uri, reference, point):
    experiment = "killed_" + point.split(",")[0].replace(" ", "_").replace("'", "")
    process, seed_dir = _launch(tmp_path, uri, experiment)
    deadline = time.time() + 180
    while time.time() < deadline and process.poll() is None and not POINTS[point](seed_dir):
        time.sleep(0.005)
    assert process.poll() is None, "the run ended before the kill: " + process.communicate()[0][-2000:]
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(1.0)  # the tracking helper applies what reached its pipe, then exits
    rerun, _ = _launch(tmp_path, uri, experiment)
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    found = _store(uri, experiment)
    assert found.keys() == reference.keys()
    assert all(status == "FINISHED" for status, _ in found.values())
    for name, (_, metrics) in reference.items():
        assert found[name][1] == metrics, name
