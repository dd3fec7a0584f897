"""Iterative magnitude pruning with rewinding (Frankle & Carbin 2019; Frankle et al. 2020).

θ0 -> train to k -> θk; then per level: train k..T with the mask, prune p of the remaining weights by
|w|, reset the survivors to θk. Each of θ0, θk and every level is a stage (lottery/run/stage.py): written
atomically and skipped when done, so re-running the same command resumes.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

from lottery.config import Config
from lottery.pruning.mask import Mask
from lottery.pruning.prune import prune_fraction
from lottery.run import distributed
from lottery.run.context import RunContext, open_run
from lottery.run.files import atomic_torch_save, torch_load, verify_torch_file
from lottery.run.layout import RunLayout, StageRef
from lottery.run.stage import Stage, TrainingStage, run_stage
from lottery.training.loop import TrainJob, train

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class InitStage(Stage):
    """θ0: the seeded network before any training (init.pt)."""

    @property
    def name(self) -> str:
        return "init"

    def done(self, layout: RunLayout) -> bool:
        return layout.init_file.exists()

    def verify(self, layout: RunLayout) -> None:
        verify_torch_file(layout.init_file, "θ0 file")

    def execute(self, run: RunContext) -> None:
        if run.is_main:
            atomic_torch_save(run.layout.init_file, run.new_model().state_dict())
        distributed.barrier()


@dataclass(frozen=True)
class RewindStage(Stage):
    """θk: θ0 itself for k = 0, else θ0 trained densely to k (rewind.pt)."""

    @property
    def name(self) -> str:
        return "rewind"

    def needs(self, config) -> tuple[Stage, ...]:
        return (InitStage(),)

    def done(self, layout: RunLayout) -> bool:
        return layout.rewind_file.exists()

    def verify(self, layout: RunLayout) -> None:
        verify_torch_file(layout.rewind_file, "θk file")

    def execute(self, run: RunContext) -> None:
        model = run.new_model()
        model.load_state_dict(run.theta0())
        rewind_step = run.plan.steps(run.config.ticket.rewind_step)
        if rewind_step > 0:
            train(TrainJob(
                model=model, dataset=run.dataset, train_cfg=run.config.train, seed=run.config.seed,
                start_step=0, end_step=rewind_step, checkpoint_path=run.layout.rewind_checkpoint,
                checkpoint_every=run.plan.steps(run.config.ticket.checkpoint_every), checkpoint_tag="rewind",
                desc="rewind", rank=run.rank, world_size=run.world_size,
            ))
        if run.is_main:
            atomic_torch_save(run.layout.rewind_file, {k: v.detach().cpu().clone() for k, v in model.state_dict().items()})
            run.layout.rewind_checkpoint.unlink(missing_ok=True)
        distributed.barrier()


def rewind_weights(run: RunContext) -> tuple[dict, int]:
    """(θk, k), from rewind.pt."""
    return torch_load(run.layout.rewind_file, what="θk file"), run.plan.steps(run.config.ticket.rewind_step)


@dataclass(frozen=True)
class LevelStage(TrainingStage):
    """IMP level L: level 0 is dense; level L prunes level L-1's trained weights. Trains k..T from θk."""

    level: int

    @property
    def ref(self) -> StageRef:
        return StageRef.for_level(self.level)

    def needs(self, config) -> tuple[Stage, ...]:
        return (RewindStage(),) + ((LevelStage(self.level - 1),) if self.level > 0 else ())

    def make_mask(self, run: RunContext, model) -> Mask:
        config = run.config
        if self.level == 0:
            return Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
        previous = run.layout.level_dir(self.level - 1)
        model.load_state_dict(torch_load(previous / "final.pt", what="level weights"))
        result = prune_fraction(model, Mask.load(previous / "mask.pt", model), config.prune.fraction,
                                scope=config.prune.scope, layer_rates=config.prune.layer_rates)
        if result.collapsed:
            logger.warning("level %d: layer collapse in %s", self.level, ", ".join(result.collapsed))
        return result.mask

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        weights, rewind_step = rewind_weights(run)
        model.load_state_dict(weights)
        return rewind_step

    def fields(self) -> dict:
        return {"level": self.level}



def ticket_stages(config: Config) -> list[Stage]:
    """θ0, θk and every level, in the order they can run."""
    return [InitStage(), RewindStage(), *(LevelStage(level) for level in range(config.ticket.levels + 1))]


@dataclass
class TicketOutcome:
    run_dir: Path
    rows: list[dict] = field(default_factory=list)


def run_ticket(config: Config, command: str = "lottery ticket",
               on_level: Optional[Callable[[dict], None]] = None,
               parent_tags: Optional[dict] = None) -> TicketOutcome:
    """Run (or resume) IMP. `on_level(row)` is called after each level, e.g. to report to a search;
    `parent_tags` go on the run directory's MLflow run (a search nests it under its trial's run)."""
    from lottery.report.tables import level_table
    from lottery.workflows.preflight import check_ticket

    dataset = check_ticket(config)  # everything is checked before anything is written
    stages = ticket_stages(config)
    with open_run(config, command, dataset, stages=stages, parent_tags=parent_tags) as run:
        outcome = TicketOutcome(run.run_dir)
        for stage in stages:
            result = run_stage(run, stage)
            if isinstance(stage, LevelStage):
                outcome.rows.append(result)
                if on_level is not None:
                    on_level(result)
    if distributed.rank_and_world()[0] == 0:
        print(level_table(outcome.rows))
        print(f"run directory: {outcome.run_dir}")
    return outcome
