"""Which ready stages train together when run.pack is on: stages of one architecture, one schedule and one start
step, on one dataset (the baselines of a seed, a level or a branch across seeds). Their results do not depend on
what they were packed with (lottery.training.packed), so packs may form differently on every run."""
from __future__ import annotations

from typing import Optional

from lottery.orchestrate.graph import Node
from lottery.workflows.baselines import BaselineStage
from lottery.workflows.branches import BranchStage
from lottery.workflows.dense import DenseStage
from lottery.workflows.ticket import LevelStage

PACKABLE = (LevelStage, BranchStage, BaselineStage, DenseStage)  # exactly these types: not the structured or dynamic


def pack_key(node: Node, config, rewind_step: int) -> Optional[tuple]:
    """Stages with equal keys can share a pack; None: the stage trains alone."""
    stage = node.stage
    if type(stage) not in PACKABLE:
        return None
    from_rewind = isinstance(stage, (LevelStage, BranchStage)) or (
        isinstance(stage, BaselineStage) and stage.at == "rewind")
    start = rewind_step if from_rewind else 0
    dataset = node.seed if config.data.name == "synthetic" else None  # synthetic data is drawn from the seed
    return (start, dataset)


def pack_size(config, model, dataset) -> int:
    """run.pack as a number of stages: 0 and 1 mean off; auto asks what fits in the device's free memory."""
    if config.run.pack != "auto":
        return int(config.run.pack)
    from lottery.training.device import select_device
    from lottery.training.packed import choose_pack_size

    return choose_pack_size(model, config.train, dataset.input_shape, select_device(config.train.device),
                            jobs_per_device=config.run.jobs_per_device)


def take_pack(ready: list[Node], keys: dict[Node, Optional[tuple]], size: int, free_slots: int = 1) -> list[Node]:
    """The first ready node and up to size - 1 more ready nodes with its key (critical path order kept).

    The stages that could pack with it are shared out over the `free_slots` workers that are idle now: 9 such
    stages and 2 idle workers make packs of 5 and 4, not one of 8 and one of 1, which would leave a worker idle
    for most of the pack's training (a pack's step costs about K solo steps once a model is compute-bound)."""
    first = ready[0]
    if size <= 1 or keys[first] is None:
        return [first]
    mates = [node for node in ready[1:] if keys[node] == keys[first]]
    share = -(-(len(mates) + 1) // max(free_slots, 1))  # ceil: this pack's part of the packable stages
    return [first] + mates[:min(size, share) - 1]
