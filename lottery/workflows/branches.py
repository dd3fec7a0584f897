"""Control branches on the masks of a ticket run (Frankle et al. 2021, "missing the mark").

reinit:  keep the mask, draw new random weights.
shuffle: keep each layer's count, shuffle the positions (seeded).
random:  a random mask with the ticket's per-layer densities.
invert:  keep the weights IMP would have pruned at that level (inverted magnitude scores).

Each branch is one registry entry: how it makes its mask from level L's, and where its weights start.
The ablations themselves live in lottery/pruning/ablations.py.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

from lottery.config import Config, ConfigError
from lottery.errors import NotFoundError
from lottery.pruning.ablations import (invert_scores, keep_per_layer, random_same_layerwise, reinitialize,
                                       shuffle_within_layers)
from lottery.pruning.mask import Mask
from lottery.pruning.scores import magnitude
from lottery.run import distributed
from lottery.run.context import RunContext, open_run
from lottery.run.files import torch_load
from lottery.run.layout import StageRef
from lottery.run.stage import Stage, TrainingStage, run_stage
from lottery.seeds import mix_seed
from lottery.workflows.ticket import LevelStage, RewindStage, rewind_weights

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Branch:
    name: str
    description: str
    mask: Callable[[RunContext, int, Mask, object], Mask]  # (run, level, level mask, model) -> branch mask
    fresh_weights: bool = False  # start from new random weights instead of θk


BRANCHES: dict[str, Branch] = {}


def register_branch(name: str, description: str, fresh_weights: bool = False):
    def decorate(function):
        BRANCHES[name] = Branch(name, description, function, fresh_weights)
        return function
    return decorate


def branch_seed(name: str, config: Config, level: int) -> int:
    return mix_seed("branch", name, config.seed, level)


@register_branch("reinit", "the level's mask, new random weights", fresh_weights=True)
def _reinit(run: RunContext, level: int, mask: Mask, model) -> Mask:
    return mask


@register_branch("shuffle", "each layer's kept count, positions shuffled")
def _shuffle(run: RunContext, level: int, mask: Mask, model) -> Mask:
    return shuffle_within_layers(mask, branch_seed("shuffle", run.config, level))


@register_branch("random", "a random mask with the level's per-layer densities")
def _random(run: RunContext, level: int, mask: Mask, model) -> Mask:
    return random_same_layerwise(mask, branch_seed("random", run.config, level))


@register_branch("invert", "what IMP pruned at this level: the smallest trained weights of level L-1")
def _invert(run: RunContext, level: int, mask: Mask, model) -> Mask:
    if level == 0:
        return mask  # nothing was pruned to get to level 0
    previous = run.layout.level_dir(level - 1)
    model.load_state_dict(torch_load(previous / "final.pt", what="level weights"))
    survivors = Mask.load(previous / "mask.pt", model)
    return keep_per_layer(invert_scores(magnitude(model, survivors)), survivors, mask)


@dataclass(frozen=True)
class BranchStage(TrainingStage):
    branch: str
    level: int

    @property
    def ref(self) -> StageRef:
        return StageRef.for_branch(self.branch, self.level)

    def needs(self, config) -> tuple[Stage, ...]:
        return (RewindStage(), LevelStage(self.level)) + ((LevelStage(self.level - 1),) if self.level > 0 else ())

    def make_mask(self, run: RunContext, model) -> Mask:
        level_mask = run.layout.level_dir(self.level) / "mask.pt"
        if not level_mask.exists():
            raise NotFoundError(f"{level_mask} not found: run `lottery ticket` to level {self.level} first")
        return BRANCHES[self.branch].mask(run, self.level, Mask.load(level_mask, model), model)

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        weights, rewind_step = rewind_weights(run)
        if BRANCHES[self.branch].fresh_weights:
            from lottery.models import initialize

            reinitialize(model, mask, lambda m: initialize(m, run.config.model.init,
                                                           mix_seed("reinit", run.config.seed)))
        else:
            model.load_state_dict(weights)
        return rewind_step

    def fields(self) -> dict:
        return {"level": self.level, "branch": self.branch}


def parse_levels(text: str, flag: str = "--levels") -> list[int]:
    """"1-5" -> [1..5]; "3,7,12" -> [3, 7, 12]."""
    levels: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                first, last = (int(x) for x in part.split("-"))
                levels.extend(range(first, last + 1))
            elif part.strip():
                levels.append(int(part))
    except ValueError:
        raise ConfigError(f"expected levels like '1-5' or '3,7,12', got {text!r}", flag, "command line") from None
    if not levels or min(levels) < 0:
        raise ConfigError(f"expected levels like '1-5' or '3,7,12', got {text!r}", flag, "command line")
    return sorted(set(levels))


def check_branch(config: Config, name: str, levels: list[int]):
    """The branch, its levels and the ticket run it needs, checked before anything is written."""
    from lottery.run.layout import RunLayout
    from lottery.workflows.preflight import check_ticket

    if name not in BRANCHES:
        raise ConfigError(f"unknown branch {name!r}; valid: {', '.join(BRANCHES)}", "--name", "command line")
    dataset = check_ticket(config)
    layout = RunLayout.of(config)
    if not layout.rewind_file.exists():
        raise NotFoundError(f"no ticket run at {layout.run_dir}: run `lottery ticket` with the same config first")
    missing = [level for level in levels if not (layout.level_dir(level) / "mask.pt").exists()
               or (name == "invert" and level > 0 and not (layout.level_dir(level - 1) / "final.pt").exists())]
    if missing:
        done = [ref.level for ref, _ in layout.stage_dirs() if ref.kind == "level"]
        raise ConfigError(f"levels {missing} have no ticket mask in {layout.run_dir} (finished levels: "
                          f"{', '.join(map(str, done)) or 'none'}); run `lottery ticket` with ticket.levels="
                          f"{max(missing)} first", "--levels", "command line")
    return dataset


def run_branch(config: Config, name: str, levels: list[int], command: str = "lottery branch") -> list[dict]:
    from lottery.report.tables import level_table

    dataset = check_branch(config, name, levels)
    stages = [BranchStage(name, level) for level in levels]
    with open_run(config, command, dataset, stages=[RewindStage(), *stages]) as run:
        rows = [run_stage(run, stage) for stage in stages]
    if distributed.rank_and_world()[0] == 0:
        print(level_table(rows))
        print(f"branch directory: {run.layout.branch_dir(name)}")
    return rows
