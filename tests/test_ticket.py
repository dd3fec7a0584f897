import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from lottery.config import to_dict
from lottery.run.files import read_json, torch_load
from tests.helpers import run_dir_of
from lottery.cli import main
from lottery.pruning.mask import Mask
from lottery.workflows.ticket import run_ticket
from lottery.training.loop import TrainJob, train
from tests.helpers import tiny_config, tiny_dataset, tiny_model

ROW_KEYS = {"level", "density", "compression", "layers", "final_test_acc", "best_test_acc", "early_stop_step",
            "wall_seconds", "collapsed"}


def _ticket_config(tmp_path, **overrides):
    base = {"ticket.levels": 3, "prune.fraction": 0.2, "data.val_size": 64, "train.steps": "40it"}
    return tiny_config(tmp_path, **{**base, **overrides})


def test_ticket_levels_reach_the_expected_densities_and_write_every_artefact(tmp_path):
    config = _ticket_config(tmp_path)
    outcome = run_ticket(config)
    run_dir = outcome.run_dir
    assert run_dir == run_dir_of(config)
    for name in ("config.yaml", "init.pt", "rewind.pt", "results.json"):
        assert (run_dir / name).is_file(), name
    rows = read_json(run_dir / "results.json")["rows"]
    assert [row["level"] for row in rows] == [0, 1, 2, 3]
    assert [row["stage"] for row in rows] == ["level_00", "level_01", "level_02", "level_03"]
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    total = sum(p.numel() for n, p in model.named_parameters() if n.endswith("weight"))
    for row in rows:
        assert ROW_KEYS <= set(row)
        level_dir = run_dir / f"level_{row['level']:02d}"
        for name in ("mask.pt", "final.pt", "metrics.json", "DONE"):
            assert (level_dir / name).is_file()
        expected = 0.8 ** row["level"]
        assert abs(row["density"] - expected) <= row["level"] * len(row["layers"]) / total + 1e-9
        mask = Mask.load(level_dir / "mask.pt", model)
        final = torch_load(level_dir / "final.pt")
        for name, keep in mask.items():
            assert torch.count_nonzero(final[name][~keep]) == 0, "pruned weights must stay exactly zero"
        assert row["early_stop_step"] in [h["step"] for h in read_json(level_dir / "metrics.json")["history"]]
        assert not (level_dir / "checkpoint.pt").exists()


def test_masks_are_nested_and_pruned_by_trained_magnitude(tmp_path):
    config = _ticket_config(tmp_path, **{"ticket.levels": 2})
    run_dir = run_ticket(config).run_dir
    model = tiny_model(config, tiny_dataset(config))
    masks = [Mask.load(run_dir / f"level_{l:02d}" / "mask.pt", model) for l in range(3)]
    for earlier, later in zip(masks, masks[1:]):
        for name, keep in later.items():
            assert not (keep & ~earlier[name]).any(), "a pruned weight came back"
    final_0 = torch_load(run_dir / "level_00" / "final.pt")
    for name, keep in masks[1].items():
        kept, pruned = final_0[name][keep].abs(), final_0[name][~keep].abs()
        assert kept.min() >= pruned.max(), f"{name}: level 1 must keep the largest trained weights"


def test_survivors_are_reset_to_rewind_weights(tmp_path):
    # With T = k, a level trains zero steps, so its final weights are exactly θk under the mask.
    config = _ticket_config(tmp_path, **{"ticket.rewind_step": "40it", "ticket.levels": 2})
    run_dir = run_ticket(config).run_dir
    rewind = torch_load(run_dir / "rewind.pt")
    init = torch_load(run_dir / "init.pt")
    assert any(not torch.equal(rewind[k], init[k]) for k in rewind)
    final_2 = torch_load(run_dir / "level_02" / "final.pt")
    mask = Mask.load(run_dir / "level_02" / "mask.pt", tiny_model(config, tiny_dataset(config)))
    for name, value in rewind.items():
        expected = value * mask[name] if name in mask.names else value
        assert torch.equal(final_2[name], expected), name


def test_rewind_weights_equal_dense_training_to_k(tmp_path):
    config = _ticket_config(tmp_path, **{"ticket.rewind_step": "15it", "ticket.levels": 0})
    run_dir = run_ticket(config).run_dir
    dataset = tiny_dataset(config)
    model = tiny_model(config, dataset)
    train(TrainJob(model=model, dataset=dataset, train_cfg=config.train, seed=config.seed, start_step=0, end_step=15))
    rewind = torch_load(run_dir / "rewind.pt")
    for name, value in model.state_dict().items():
        assert torch.equal(rewind[name], value), name


def test_finished_stages_are_skipped(tmp_path):
    config = _ticket_config(tmp_path, **{"ticket.levels": 1})
    first = run_ticket(config)
    stamp = (first.run_dir / "level_01" / "final.pt").stat().st_mtime_ns
    config.ticket.levels = 2  # more levels continue the same run
    second = run_ticket(config)
    assert second.run_dir == first.run_dir
    assert (first.run_dir / "level_01" / "final.pt").stat().st_mtime_ns == stamp
    assert second.rows[:2] == first.rows
    assert len(second.rows) == 3


def test_two_processes_share_a_run_and_train_each_stage_once(tmp_path):
    """Stages are claimed with their locks: a second launch waits for what the first runs and never repeats it."""
    config = _ticket_config(tmp_path, **{"train.steps": "300it", "model.name": "lenet_128", "ticket.levels": 2})
    experiment = _write_experiment(tmp_path, config)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    processes = [subprocess.Popen([sys.executable, "-m", "lottery", "ticket", "--exp", str(experiment)], env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for _ in range(2)]
    outputs = [process.communicate(timeout=300)[0] for process in processes]
    assert [process.returncode for process in processes] == [0, 0], outputs
    config.exp = "tiny"
    run_dir = run_dir_of(config)
    trainings = {level: (run_dir / f"level_{level:02d}" / "stage.log").read_text().count("training steps")
                 for level in range(3)}
    assert trainings == {0: 1, 1: 1, 2: 1}, outputs
    assert [row["level"] for row in read_json(run_dir / "results.json")["rows"]] == [0, 1, 2]


def _write_experiment(tmp_path, config) -> Path:
    path = tmp_path / "tiny.yaml"
    values = to_dict(config)
    values.pop("exp")
    path.write_text(yaml.safe_dump(values))
    return path


@pytest.mark.slow
def test_sigkill_mid_level_then_resume_is_bit_identical(tmp_path):
    settings = {"ticket.levels": 2, "train.steps": "600it", "ticket.checkpoint_every": "50it",
                "train.eval_every": "100it", "model.name": "lenet_256_256", "train.batch_size": 64}
    killed_root, clean_root = tmp_path / "killed", tmp_path / "clean"
    killed = _write_experiment(tmp_path, _ticket_config(killed_root, **settings))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    process = subprocess.Popen([sys.executable, "-m", "lottery", "ticket", "--exp", str(killed)], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    config = _ticket_config(killed_root, **settings)
    config.exp = "tiny"
    run_dir = run_dir_of(config)
    checkpoint = run_dir / "level_01" / "checkpoint.pt"
    deadline = time.time() + 120
    while time.time() < deadline and process.poll() is None:
        # level 0's checkpoint is deleted when it finishes, so this one belongs to level 1
        if (run_dir / "level_01" / "mask.pt").exists() and checkpoint.exists():
            break
        time.sleep(0.005)
    assert process.poll() is None, "the run finished before it could be killed: " + process.stderr.read().decode()
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert not (run_dir / "level_01" / "DONE").exists()

    assert main(["ticket", "--exp", str(killed)]) == 0
    clean_config = _ticket_config(clean_root, **settings)
    clean_config.exp = "tiny"
    clean = run_ticket(clean_config)
    resumed_rows = read_json(run_dir / "results.json")["rows"]
    strip = lambda rows: [{k: v for k, v in row.items() if k != "wall_seconds"} for row in rows]  # noqa: E731
    assert strip(resumed_rows) == strip(clean.rows)
    for level in range(3):
        name = f"level_{level:02d}"
        assert (run_dir / name / "mask.pt").read_bytes() == (clean.run_dir / name / "mask.pt").read_bytes()
        ours, theirs = torch_load(run_dir / name / "final.pt"), torch_load(clean.run_dir / name / "final.pt")
        assert all(torch.equal(ours[k], theirs[k]) for k in ours)
        history = lambda d: read_json(d / name / "metrics.json")["history"]  # noqa: E731
        assert history(run_dir) == history(clean.run_dir)


def test_rewind_after_the_end_of_training_is_refused_before_writing(tmp_path, capsys):
    config = _ticket_config(tmp_path, **{"ticket.rewind_step": "41it"})
    experiment = _write_experiment(tmp_path, config)
    assert main(["ticket", "--exp", str(experiment)]) == 2
    assert "ticket.rewind_step" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
