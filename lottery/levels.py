"""Shared pieces of every level-style stage: train a masked model from θk and write its artefacts."""
from __future__ import annotations

import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from lottery import distributed
from lottery.io import atomic_torch_save, read_json, write_json
from lottery.train import StepPlan, TrainJob, train

logger = logging.getLogger(__name__)

RESULT_KEYS = ("level", "density", "compression", "layers", "collapsed", "final_test_acc", "best_test_acc",
               "early_stop_step", "early_stop_test_acc", "wall_seconds")


def compression_of(density: float) -> float:
    """log10 compression (SynFlow's convention): density 10^-c."""
    return math.log10(1.0 / density) if density > 0 else math.inf


@dataclass
class Stage:
    """What a level needs to train: the run's shared objects."""

    config: object
    dataset: object
    plan: StepPlan
    run_dir: Path
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def train_level(stage: Stage, model, mask, level_dir: Path, start_step: int, row: dict, handle=None) -> dict:
    """Train [start_step, T) with `mask`, write final.pt, metrics.json and DONE, return the results row.

    The model must already hold the starting weights. Skipped work is the caller's concern.
    """
    config = stage.config
    checkpoint_every = stage.plan.steps(config.ticket.checkpoint_every)

    def on_eval(step: int, record: dict) -> None:
        if handle is not None:
            handle.log_metrics({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)

    job = TrainJob(
        model=model, dataset=stage.dataset, train_cfg=config.train, seed=config.seed,
        start_step=start_step, end_step=stage.plan.total, mask=mask,
        checkpoint_path=stage.run_dir / "checkpoint.pt", checkpoint_every=checkpoint_every,
        checkpoint_tag=str(level_dir.relative_to(stage.run_dir)), on_eval=on_eval,
        desc=str(level_dir.relative_to(stage.run_dir)), rank=stage.rank, world_size=stage.world_size,
    )
    result = train(job)
    distributed.check_replicas_agree(model, mask)
    density = mask.density()
    row = {
        "density": density,
        "compression": compression_of(density),
        "layers": {name: info["density"] for name, info in mask.layer_report().items()},
        "collapsed": mask.collapsed(),
        **row,  # the caller's fields win, e.g. a structured method's own density
        **{k: v for k, v in result.summary().items() if k != "final_step"},
    }
    if stage.is_main:
        atomic_torch_save(level_dir / "final.pt", {k: v.cpu() for k, v in model.state_dict().items()}, durable=False)
        write_json(level_dir / "metrics.json", {"row": row, "history": result.history}, durable=False)
        os.sync()  # one flush for the stage instead of an fsync per file; DONE only after it
        (level_dir / "DONE").touch()
        (stage.run_dir / "checkpoint.pt").unlink(missing_ok=True)
    if handle is not None:
        handle.log_metrics({k: row[k] for k in ("final_test_acc", "best_test_acc", "density", "compression")
                            if row.get(k) is not None})
        if row.get("early_stop_step") is not None:
            handle.log_metrics({"early_stop_step": row["early_stop_step"]})
    return row


def finished_row(level_dir: Path) -> Optional[dict]:
    """The stored results row of a finished stage, or None."""
    if not (level_dir / "DONE").exists():
        return None
    return read_json(level_dir / "metrics.json")["row"]


def format_table(rows: list[dict], label: str = "level") -> str:
    lines = [f"{label:>10}  {'density':>9}  {'compress':>8}  {'final acc':>9}  {'best acc':>9}  {'es step':>8}"]
    for row in rows:
        early = row.get("early_stop_step")
        lines.append(
            f"{str(row.get(label, row.get('level'))):>10}  {row['density']:>9.4f}  {row['compression']:>8.3f}  "
            f"{row['final_test_acc']:>9.4f}  {row['best_test_acc']:>9.4f}  {'-' if early is None else early:>8}"
        )
    return "\n".join(lines)
