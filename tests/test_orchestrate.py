"""The experiment orchestrator: the graph, the executors, failures, kills and concurrent launches.

Every scheduling (one process, two local workers, killed and resumed, two launches at once; Ray in
tests/test_orchestrate_ray.py) must give bit-identical stages on CPU: stages are deterministic given their inputs
and skip themselves when done.
"""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lottery.cli import main
from lottery.errors import StagesFailedError
from lottery.orchestrate.experiment import parse_seeds, plan, run_experiment
from lottery.orchestrate.graph import Node
from lottery.run.files import read_json
from lottery.run.layout import RunLayout
from lottery.workflows.baselines import BaselineStage
from lottery.workflows.ticket import InitStage, LevelStage, RewindStage
from tests.orchestrate_helpers import (OVERRIDES, digits, fingerprint, launch_ticket,  # noqa: F401 - a fixture
                                       reference)


def test_the_graph_waits_only_for_what_each_stage_reads(tmp_path):
    graph = plan(digits(tmp_path))
    assert len(graph.nodes) == 20 and graph.counts() == {"init": 2, "rewind": 2, "level": 6, "baseline": 8,
                                                           "branch": 2}
    for node in graph.nodes:
        needs = {need.stage for need in graph.needs[node]}
        assert all(need.seed == node.seed for need in graph.needs[node])  # seeds are independent graphs
        if isinstance(node.stage, BaselineStage):
            assert needs == {InitStage()}  # the densities are known before any level trains
        if isinstance(node.stage, LevelStage) and node.stage.level > 0:
            assert needs == {RewindStage(), LevelStage(node.stage.level - 1)}
    branch = next(node for node in graph.nodes if node.kind == "branch")
    assert LevelStage(2) in {need.stage for need in graph.needs[branch]}
    assert not (tmp_path / "runs").exists()


def test_plan_and_dry_run_print_the_stages_and_run_nothing(tmp_path, capsys):
    for command in (["plan", "--exp", "digits"], ["ticket", "--exp", "digits", "--dry-run"]):
        assert main([*command, *OVERRIDES, f"run.root={tmp_path / 'runs'}"]) == 0
        out = capsys.readouterr().out
        assert "seed_1/baseline/init/snip/density_0.646382" in out and "after init" in out
        assert "seed_0/level_02" in out and "after rewind, level_01" in out
        assert "20 stages over 2 seed(s)" in out and "nothing was run" in out
    assert not (tmp_path / "runs").exists()


def test_seeds_flag():
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4] and parse_seeds("3,0,7") == [0, 3, 7]


def test_the_experiment_aggregates_the_seeds_side_by_side(reference, capsys):
    outcome, _ = reference
    assert {o.status for o in outcome.outcomes.values()} == {"done"}
    report = outcome.report
    assert report.aggregate.seeds == [0, 1]
    assert {"ticket", "magnitude", "snip", "branch reinit"} <= set(report.aggregate.series())
    assert "± " in report.table and "(2)" in report.table
    assert (outcome.directory / "report" / "aggregate.md").is_file()


def test_two_local_workers_give_bit_identical_stages(reference, tmp_path):
    outcome = run_experiment(digits(tmp_path, "run.workers=2"), "test")
    assert fingerprint(outcome.directory) == reference[1]


def test_a_failing_stage_stops_only_its_dependents_and_a_rerun_retries_it(reference, tmp_path, monkeypatch):
    original = LevelStage.make_mask

    def broken(self, run, model):
        if self.level == 1 and run.config.seed == 1:
            raise RuntimeError("injected failure")
        return original(self, run, model)

    monkeypatch.setattr(LevelStage, "make_mask", broken)
    with pytest.raises(StagesFailedError) as error:
        run_experiment(digits(tmp_path), "test")
    assert "seed_1/level_01: RuntimeError: injected failure" in str(error.value)
    assert "level_01/stage.log" in str(error.value)  # where to look
    layout = RunLayout.of(digits(tmp_path)).for_seed(1)
    assert "injected failure" in (layout.level_dir(1) / "stage.log").read_text()
    assert not (layout.level_dir(2) / "DONE").exists()  # blocked: it needs level 1
    assert (layout.directory(BaselineStage("snip", 0.646382, "init").ref).parent).is_dir()  # independent: ran
    assert all((RunLayout.of(digits(tmp_path)).level_dir(level) / "DONE").exists() for level in range(3))  # seed 0
    monkeypatch.setattr(LevelStage, "make_mask", original)
    again = run_experiment(digits(tmp_path), "test")
    ran = {node.key for node, outcome in again.outcomes.items() if outcome.status == "done"}
    assert ran == {"seed_1/level_01", "seed_1/level_02", "seed_1/branch/reinit/level_02"}
    assert fingerprint(again.directory) == reference[1]


def _launch(tmp_path: Path, name: str, *extra: str) -> tuple[subprocess.Popen, Path]:
    process, config = launch_ticket(digits(tmp_path / name, *extra), tmp_path / f"{name}.yaml")
    return process, RunLayout.of(config).experiment_dir


def _wait_for(condition, process: subprocess.Popen, seconds: float = 120) -> None:
    deadline = time.time() + seconds
    while time.time() < deadline and process.poll() is None and not condition():
        time.sleep(0.01)
    assert process.poll() is None, "the experiment ended before the kill: " + process.communicate()[0][-2000:]


def _done(experiment_dir: Path) -> int:
    return len(list(experiment_dir.glob("seed_*/**/DONE")))


@pytest.mark.slow
@pytest.mark.parametrize("point", ["during a level", "between stages"])
def test_sigkill_the_orchestrator_then_rerun_is_bit_identical(reference, tmp_path, point):
    process, experiment_dir = _launch(tmp_path, "killed", "run.workers=2")
    if point == "during a level":
        _wait_for(lambda: any(experiment_dir.glob("seed_*/level_0[12]/checkpoint.pt")), process)
    else:
        _wait_for(lambda: _done(experiment_dir) >= 7, process)
    process.send_signal(signal.SIGKILL)
    process.wait()
    time.sleep(0.5)  # the workers die with their orchestrator (PR_SET_PDEATHSIG)
    assert _done(experiment_dir) < 18
    rerun, _ = _launch(tmp_path, "killed", "run.workers=2")
    output = rerun.communicate(timeout=300)[0]
    assert rerun.returncode == 0, output
    assert fingerprint(experiment_dir) == reference[1]  # keys are relative to the experiment folder


@pytest.mark.slow
def test_sigkill_one_worker_and_the_experiment_still_completes_bit_identical(reference, tmp_path):
    process, experiment_dir = _launch(tmp_path, "worker", "run.workers=2")
    _wait_for(lambda: _done(experiment_dir) >= 5, process)
    children = subprocess.run(["pgrep", "-P", str(process.pid)], capture_output=True, text=True).stdout.split()
    workers = [pid for pid in children if "spawn_main" in Path(f"/proc/{pid}/cmdline").read_text()]
    assert workers, "no worker processes found"
    os.kill(int(workers[0]), signal.SIGKILL)
    output = process.communicate(timeout=300)[0]
    assert process.returncode == 0, output
    assert "a worker died" in output
    assert fingerprint(experiment_dir) == reference[1]


@pytest.mark.slow
def test_two_launches_at_once_finish_together_and_train_each_stage_once(reference, tmp_path):
    launches = [_launch(tmp_path, "shared") for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process, _ in launches]
    assert [process.returncode for process, _ in launches] == [0, 0], outputs
    experiment_dir = launches[0][1]
    trainings = [log.read_text().count("training steps") for log in experiment_dir.glob("seed_*/**/stage.log")]
    assert len(trainings) == 16 and set(trainings) == {1}  # every trained stage once, across both launches
    assert fingerprint(experiment_dir) == reference[1]


def test_nodes_are_keyed_by_seed_and_stage():
    assert Node(3, LevelStage(2)).key == "seed_3/level_02"


def test_experiment_evaluate_adds_a_robustness_stage_after_every_trained_stage(tmp_path):
    config = digits(tmp_path, "experiment.seeds=[0]", "experiment.branches={}", "experiment.evaluate.corruptions=[noise]",
                    "experiment.evaluate.severities=[2]")
    graph = plan(config)
    evaluations = [node for node in graph.nodes if node.kind == "evaluate"]
    assert len(evaluations) == 7  # 3 levels and 4 baselines
    for node in evaluations:
        assert [need.stage for need in graph.needs[node]] == [node.stage.target]
    outcome = run_experiment(config, "test")
    layout = RunLayout.of(config)
    assert all((directory / "robustness.json").is_file() for _, directory in layout.stage_dirs())
    summary = read_json(layout.run_dir / "robustness" / "robustness.json")
    assert summary["corruptions"] == ["noise"] and summary["severities"] == [2]
    assert set(summary["prune_potential"]) == {"ticket", "magnitude", "snip"}
    assert set(summary["prune_potential"]["ticket"]) >= {"clean", "noise"}
    again = run_experiment(config, "test")
    assert {o.status for node, o in again.outcomes.items() if node.kind == "evaluate"} == {"skipped"}
    assert outcome.outcomes.keys() == again.outcomes.keys()
