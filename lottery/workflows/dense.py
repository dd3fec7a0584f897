"""`lottery train`: the dense model, trained once from θ0 to T, in <run_dir>/dense/."""
from __future__ import annotations

import logging
from dataclasses import dataclass

from lottery.config import Config
from lottery.pruning.mask import Mask
from lottery.run import distributed
from lottery.run.context import RunContext, open_run
from lottery.run.layout import DENSE, StageRef
from lottery.run.stage import Stage, TrainingStage, run_stage
from lottery.workflows.ticket import InitStage

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseStage(TrainingStage):
    @property
    def ref(self) -> StageRef:
        return StageRef(DENSE)

    def needs(self, config) -> tuple[Stage, ...]:
        return (InitStage(),)

    def make_mask(self, run: RunContext, model) -> Mask:
        return Mask.ones(model, ignore=run.config.prune.ignore, include=run.config.prune.include)

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        model.load_state_dict(run.theta0())
        return 0

    def fields(self) -> dict:
        return {"level": "dense"}


def run_dense(config: Config, command: str = "lottery train") -> dict:
    from lottery.report.tables import level_table
    from lottery.workflows.preflight import check_config

    dataset = check_config(config)
    with open_run(config, command, dataset, stages=(InitStage(), DenseStage())) as run:
        run_stage(run, InitStage())
        row = run_stage(run, DenseStage())
    if distributed.rank_and_world()[0] == 0:
        print(level_table([row]))
        print(f"test accuracy: {row['final_test_acc']:.4f}")
        print(f"run directory: {run.run_dir}")
    return row
