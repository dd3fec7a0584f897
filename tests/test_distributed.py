"""DDP on CPU: torchrun with the gloo backend and 2 processes, against a 1-process run."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from lottery.config import to_dict
from tests.helpers import run_dir_of
from lottery.run.files import read_json, torch_load
from lottery.pruning.mask import Mask
from lottery.workflows.ticket import run_ticket
from tests.helpers import tiny_config, tiny_dataset, tiny_model

ROOT = Path(__file__).resolve().parents[1]


def _config(root, **overrides):
    # batch 30 over 2 ranks: shards of 15; 512 examples give a short last batch (uneven shards)
    settings = {"ticket.levels": 2, "train.steps": "40it", "train.batch_size": 30, "data.val_size": 32,
                "train.eval_every": "20it", "ticket.checkpoint_every": "10it", **overrides}
    config = tiny_config(root, **settings)
    config.exp = "ddp"
    return config


def _torchrun_ticket(config, folder: Path) -> subprocess.CompletedProcess:
    """`lottery ticket` under torchrun with 2 gloo ranks, on `config` written to a YAML file."""
    experiment = folder / "ddp.yaml"
    values = to_dict(config)
    values.pop("exp")
    experiment.write_text(yaml.safe_dump(values))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    completed = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
         "-m", "lottery", "ticket", "--exp", str(experiment)],
        env=env, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-3000:]
    return completed


@pytest.mark.slow
def test_two_process_gloo_ticket_matches_one_process(tmp_path):
    ddp_config = _config(tmp_path / "ddp")
    completed = _torchrun_ticket(ddp_config, tmp_path)
    assert "rank 1 of 2 joined (gloo)" in completed.stderr

    single = run_ticket(_config(tmp_path / "single"))
    ddp_dir = run_dir_of(ddp_config)
    ddp_rows = read_json(ddp_dir / "results.json")["rows"]
    assert len(ddp_rows) == len(single.rows) == 3
    model = tiny_model(ddp_config, tiny_dataset(ddp_config))
    for ddp_row, row in zip(ddp_rows, single.rows):
        assert ddp_row["density"] == row["density"]
        assert ddp_row["final_test_acc"] == pytest.approx(row["final_test_acc"], abs=0.02)
        level = f"level_{row['level']:02d}"
        ddp_mask = Mask.load(ddp_dir / level / "mask.pt", model)
        single_mask = Mask.load(single.run_dir / level / "mask.pt", model)
        agreement = sum(int((ddp_mask[n] == single_mask[n]).sum()) for n in ddp_mask.names)
        assert agreement / sum(t.numel() for _, t in ddp_mask.items()) > 0.999
        ddp_final, final = torch_load(ddp_dir / level / "final.pt"), torch_load(single.run_dir / level / "final.pt")
        for name in final:
            if final[name].is_floating_point():
                assert torch.allclose(ddp_final[name], final[name], atol=1e-4, rtol=1e-3), name


class _Interrupt(Exception):
    pass


@pytest.mark.slow
def test_ddp_resumes_a_level_from_a_checkpoint(tmp_path, monkeypatch):
    # Leave a mid-level checkpoint of level 1 behind (one process, interrupted in-process), then let
    # two gloo ranks resume it: they must load it, finish, and agree with an uninterrupted run.
    import lottery.run.stage as levels

    config = _config(tmp_path / "resume")
    original = levels.TrainJob

    def interrupted_job(**kwargs):
        if kwargs["checkpoint_tag"] == "level_01":  # level 1's training
            def stop(step):
                if step == 25:
                    raise _Interrupt
            kwargs["hooks"] = (stop,)
        return original(**kwargs)

    monkeypatch.setattr(levels, "TrainJob", interrupted_job)
    with pytest.raises(_Interrupt):
        run_ticket(config)
    monkeypatch.setattr(levels, "TrainJob", original)
    run_dir = run_dir_of(config)
    assert torch_load(run_dir / "level_01" / "checkpoint.pt")["tag"] == "level_01"

    completed = _torchrun_ticket(config, tmp_path)
    assert completed.stderr.count("resumed level_01 at step 20") == 2  # both ranks loaded it
    rows = read_json(run_dir / "results.json")["rows"]
    single = run_ticket(_config(tmp_path / "single"))
    for row, reference in zip(rows, single.rows):
        assert row["density"] == reference["density"]
        assert row["final_test_acc"] == pytest.approx(reference["final_test_acc"], abs=0.02)
