"""`lottery search` worker processes: a worker killed mid-trial is detected by heartbeat and its trial retried."""
import signal
import time
import warnings
from pathlib import Path

import optuna
import pytest
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from tests.search_helpers import start_worker, write_experiment

optuna.logging.set_verbosity(optuna.logging.WARNING)
pytestmark = pytest.mark.slow


def wait_for(condition, timeout: float, what: str, worker=None, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if worker is not None and worker.poll() is not None:
            pytest.fail(f"worker exited ({worker.returncode}) before {what}:\n{log.read_text() if log else ''}")
        time.sleep(0.1)
    pytest.fail(f"timed out waiting for {what}:\n{log.read_text() if log else ''}")


def running_trial(storage: str, study: str):
    try:
        trials = optuna.load_study(study_name=study, storage=storage).get_trials(states=(TrialState.RUNNING,))
    except KeyError:  # the study does not exist yet
        return None
    return trials[0] if trials else None


def test_a_killed_worker_is_detected_by_heartbeat_and_its_trial_retried_from_its_run_directory(tmp_path):
    # The kill lands as soon as level 0 is on disk, while levels 1 and 2 still have 1200 steps to train.
    experiment = write_experiment(tmp_path, steps="600it", levels=2, eval_every="200it")
    storage, study = f"sqlite:///{tmp_path / 'optuna.db'}", "heartbeat"
    first = start_worker(tmp_path, experiment, storage, 1, study, "first.log")
    try:
        # The trial is RUNNING a moment before it records its run directory.
        wait_for(lambda: "run_dir" in getattr(running_trial(storage, study), "user_attrs", {}), 60,
                 "a running trial with its run directory", first, tmp_path / "first.log")
        trial = running_trial(storage, study)
        level_zero = Path(trial.user_attrs["run_dir"]) / "level_00" / "DONE"
        wait_for(level_zero.exists, 60, "level 0 to finish", first, tmp_path / "first.log")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        if first.poll() is None:
            first.kill()
    assert running_trial(storage, study).number == 0  # nobody has noticed yet
    level_zero_stamp = (level_zero.parent / "metrics.json").stat().st_mtime_ns

    second = start_worker(tmp_path, experiment, storage, 1, study, "second.log")
    assert second.wait(120) == 0, (tmp_path / "second.log").read_text()

    trials = optuna.load_study(study_name=study, storage=storage).get_trials()
    assert [t.state for t in trials] == [TrialState.FAIL, TrialState.COMPLETE]
    killed, retry = trials
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        assert RetryHeartbeatStaleTrialCallback.retried_trial_number(retry) == 0
    assert retry.params == killed.params
    assert retry.user_attrs["run_dir"] == killed.user_attrs["run_dir"]
    assert retry.user_attrs["worker"] != killed.user_attrs["worker"]
    # The retry resumed the run directory: level 0 was not trained again.
    assert (level_zero.parent / "metrics.json").stat().st_mtime_ns == level_zero_stamp
    assert (level_zero.parent.parent / "level_02" / "DONE").exists()
