"""The Ray executor on a local Ray instance: the same stages, bit-identical, and a worker killed mid-stage.

Every test takes the `ray` fixture (tests/conftest.py): skipped without Ray, failed with LOTTERY_REQUIRE_RAY=1.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from lottery.errors import StagesFailedError
from lottery.orchestrate import ray_cluster
from lottery.orchestrate.experiment import run_experiment
from lottery.orchestrate.ray_cluster import RETRIES
from lottery.run.layout import DONE, RunLayout
from tests.orchestrate_helpers import digits, fingerprint, reference  # noqa: F401 - a fixture

TITLE = b"ray::stage_task"  # the process title Ray gives a worker while it executes stage_task


def test_a_local_ray_instance_gives_bit_identical_stages(ray, reference, tmp_path):
    outcome = run_experiment(digits(tmp_path, "run.executor=ray", "run.workers=2"), "test")
    assert {o.status for o in outcome.outcomes.values()} == {"done"}
    assert fingerprint(outcome.directory) == reference[1]


def _stage_tasks() -> set[int]:
    """Pids of every process on this machine whose title says it is running a stage task."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if (entry / "cmdline").read_bytes().startswith(TITLE):
                    pids.add(int(entry.name))
            except OSError:  # it exited meanwhile
                pass
    return pids


def _kill_mid_training(experiment_dir: Path, killed: list, stop: threading.Event) -> None:
    """SIGKILL the Ray worker training a stage that has a checkpoint and no DONE yet. The stage's lock file names
    its holder, so only a worker of this test is killed (other Ray instances may run on the machine)."""
    while not stop.is_set():
        running = _stage_tasks()
        for checkpoint in experiment_dir.glob("seed_*/**/checkpoint.pt"):
            directory = checkpoint.parent
            try:
                pid = int((directory / ".lock").read_text())
            except (OSError, ValueError):
                continue
            if pid in running and not (directory / DONE).exists():
                os.kill(pid, signal.SIGKILL)
                killed.append((directory, pid))
                return
        time.sleep(0.01)


def _key(experiment_dir: Path, directory: Path) -> str:
    """The graph key (seed_0/level_01) of a stage folder."""
    seed_dir = experiment_dir / directory.relative_to(experiment_dir).parts[0]
    keys = {found: f"{seed_dir.name}/{ref.key}" for ref, found in RunLayout.at(seed_dir).stage_dirs()}
    return keys[directory]


@pytest.mark.slow
@pytest.mark.parametrize("retries", [RETRIES, 0], ids=["ray-retries-it", "no-retries-run-again"])
def test_sigkill_a_ray_worker_mid_stage_and_the_experiment_completes_bit_identical(ray, reference, tmp_path,
                                                                                   monkeypatch, retries):
    monkeypatch.setattr(ray_cluster, "RETRIES", retries)
    config = digits(tmp_path, "run.executor=ray", "run.workers=2")
    experiment_dir = RunLayout.of(config).experiment_dir
    killed: list = []
    stop = threading.Event()
    killer = threading.Thread(target=_kill_mid_training, args=(experiment_dir, killed, stop), daemon=True)
    killer.start()
    try:
        if retries:
            outcome = run_experiment(config, "test")  # Ray retries the killed task within this command
        else:
            with pytest.raises(StagesFailedError, match="Ray task failed"):
                run_experiment(config, "test")
    finally:
        stop.set()
        killer.join()
    assert killed, "no Ray worker was killed mid-stage"
    directory = killed[0][0]
    if not retries:
        assert not (directory / DONE).exists()
        outcome = run_experiment(config, "test")  # the same command again finishes what is left
        assert "skipped" in {o.status for o in outcome.outcomes.values()}
    statuses = {node.key: o.status for node, o in outcome.outcomes.items()}
    assert statuses[_key(experiment_dir, directory)] == "done"
    assert set(statuses.values()) == ({"done"} if retries else {"done", "skipped"})
    log = (directory / "stage.log").read_text()
    assert log.count("training steps") == 2 and "resumed" in log  # the second try resumed from the checkpoint
    assert fingerprint(experiment_dir) == reference[1]
