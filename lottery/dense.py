"""`lottery train`: the dense model, trained once, in <run_dir>/dense/."""
from __future__ import annotations

import logging

from lottery import distributed
from lottery.config import Config
from lottery.experiment import load_data, open_run, run_directory
from lottery.levels import finished_row, format_table, train_level
from lottery.pruning.mask import Mask
from lottery.ticket import build_stage

logger = logging.getLogger(__name__)


def run_dense(config: Config, command: str = "lottery train") -> dict:
    dataset = load_data(config, distributed.device_for(config))
    run_dir = run_directory(config)
    with open_run(config, run_dir, command) as (tracker, parent):
        dense_dir = run_dir / "dense"
        row = finished_row(dense_dir)
        if row is None:
            stage, model = build_stage(config, run_dir, dataset, parent)
            mask = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
            handle = tracker.child("dense", "dense", {"density": 1.0})
            row = train_level(stage, model, mask, dense_dir, 0, {"level": "dense"}, handle)
            handle.finish()
    print(format_table([row]))
    print(f"test accuracy: {row['final_test_acc']:.4f}")
    print(f"run directory: {run_dir}")
    return row
