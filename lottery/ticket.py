"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

θ0 -> train to k -> θk; then per level: train k..T with the mask, prune p of the remaining
weights by |w|, reset survivors to θk. Every stage writes its outputs atomically and is
skipped when they exist, so re-running the same command resumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from lottery import distributed
from lottery.config import Config, ConfigError
from lottery.device import resolve_fast_path
from lottery.experiment import load_data, make_model, open_run, run_directory
from lottery.io import atomic_torch_save, torch_load, write_json
from lottery.levels import Stage, compression_of, finished_row, format_table, train_level
from lottery.pruning.mask import Mask
from lottery.pruning.prune import prune_fraction
from lottery.train import StepPlan, TrainJob, train

logger = logging.getLogger(__name__)


def level_name(level: int) -> str:
    return f"level_{level:02d}"


@dataclass
class TicketOutcome:
    run_dir: Path
    rows: list[dict] = field(default_factory=list)


def build_stage(config: Config, run_dir: Path, dataset, parent=None) -> tuple[Stage, torch.nn.Module]:
    """The plan and θ0 (created, or loaded from init.pt). Records the fast-path decisions on `parent`."""
    rank, world = distributed.rank_and_world()
    batches = dataset.train_batches(config.train.batch_size, config.seed, rank, world)
    plan = StepPlan.from_config(config.train, batches.iterations_per_epoch)
    model = make_model(config, dataset)
    init_path = run_dir / "init.pt"
    if init_path.exists():
        model.load_state_dict(torch_load(init_path))
    elif rank == 0:
        atomic_torch_save(init_path, model.state_dict())
    distributed.barrier()
    if parent is not None:
        fast = resolve_fast_path(config.train, model, distributed.device_for(config), dataset.input_shape)
        parent.log_params(fast.as_params())
    return Stage(config, dataset, plan, run_dir, rank, world), model


def check_rewind_step(config: Config, dataset) -> None:
    """k must lie within training; checked before anything is written."""
    batches = dataset.train_batches(config.train.batch_size, config.seed)
    plan = StepPlan.from_config(config.train, batches.iterations_per_epoch)
    rewind_step = plan.steps(config.ticket.rewind_step)
    if rewind_step > plan.total:
        raise ConfigError(f"rewind step {config.ticket.rewind_step} ({rewind_step} iterations) is after the end of "
                          f"training, train.steps={config.train.steps} ({plan.total} iterations)",
                          "ticket.rewind_step")


def rewind_weights(stage: Stage, model) -> tuple[dict, int]:
    """θk: θ0 itself for k = 0, else θ0 trained densely to k (saved as rewind.pt)."""
    config, run_dir = stage.config, stage.run_dir
    rewind_step = stage.plan.steps(config.ticket.rewind_step)
    path = run_dir / "rewind.pt"
    # Rank 0 decides: a rank that saw rank 0's fresh file would skip the barrier below and deadlock.
    if distributed.broadcast_object(path.exists() if stage.is_main else None):
        return torch_load(path), rewind_step
    if rewind_step > 0:
        job = TrainJob(
            model=model, dataset=stage.dataset, train_cfg=config.train, seed=config.seed,
            start_step=0, end_step=rewind_step, checkpoint_path=run_dir / "checkpoint.pt",
            checkpoint_every=stage.plan.steps(config.ticket.checkpoint_every), checkpoint_tag="rewind",
            desc="rewind", rank=stage.rank, world_size=stage.world_size,
        )
        train(job)
    weights = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if stage.is_main:
        atomic_torch_save(path, weights)
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
    distributed.barrier()
    return weights, rewind_step


def level_mask(stage: Stage, model, level: int) -> Mask:
    """Level 0 is dense. Level L prunes level L-1's trained weights; its mask.pt is the record.

    Rank 0 computes (or loads) the mask and every other rank receives it.
    """
    mask = _compute_level_mask(stage, model, level) if stage.is_main else None
    distributed.barrier()
    return distributed.broadcast_mask(mask)


def _compute_level_mask(stage: Stage, model, level: int) -> Mask:
    config = stage.config
    path = stage.run_dir / level_name(level) / "mask.pt"
    if path.exists():
        return Mask.load(path, model)
    if level == 0:
        mask = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
    else:
        previous = stage.run_dir / level_name(level - 1)
        model.load_state_dict(torch_load(previous / "final.pt"))
        result = prune_fraction(model, Mask.load(previous / "mask.pt", model), config.prune.fraction,
                                scope=config.prune.scope, layer_rates=config.prune.layer_rates)
        mask = result.mask
        if result.collapsed:
            logger.warning("level %d: layer collapse in %s", level, ", ".join(result.collapsed))
    mask.save(path)
    return mask


def run_ticket(config: Config, command: str = "lottery ticket", on_level=None) -> TicketOutcome:
    """Run (or resume) IMP. `on_level(row)` is called after each level, e.g. to report to a search."""
    dataset = load_data(config, distributed.device_for(config))  # bad data fails before anything is written
    check_rewind_step(config, dataset)
    run_dir = run_directory(config)
    with open_run(config, run_dir, command) as (tracker, parent):
        outcome = _run_levels(config, run_dir, dataset, tracker, parent, on_level)
    if distributed.rank_and_world()[0] == 0:
        print(format_table(outcome.rows))
        print(f"run directory: {run_dir}")
    return outcome


def _run_levels(config: Config, run_dir: Path, dataset, tracker, parent, on_level=None) -> TicketOutcome:
    stage, model = build_stage(config, run_dir, dataset, parent)
    rewind, rewind_step = rewind_weights(stage, model)
    outcome = TicketOutcome(run_dir)
    for level in range(config.ticket.levels + 1):
        level_dir = run_dir / level_name(level)
        row = distributed.broadcast_object(finished_row(level_dir) if stage.is_main else None)
        if row is None:
            mask = level_mask(stage, model, level)
            model.load_state_dict(rewind)
            handle = tracker.child(level_name(level), level_name(level),
                                   {"level": level, "density": mask.density(),
                                    "compression": compression_of(mask.density())})
            logger.info("level %d: density %.4f, training steps %d..%d", level, mask.density(),
                        rewind_step, stage.plan.total)
            row = train_level(stage, model, mask, level_dir, rewind_step, {"level": level}, handle)
            handle.finish()
        outcome.rows.append(row)
        if stage.is_main:
            write_json(run_dir / "results.json", outcome.rows, durable=False)
        if on_level is not None:
            on_level(row)
    if stage.is_main:
        parent.log_artifact(run_dir / "results.json")
        parent.log_artifact(run_dir / "config.yaml")
    return outcome


