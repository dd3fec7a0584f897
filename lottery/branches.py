"""Ablations on the masks of a finished ticket run (Frankle et al. 2021, "missing the mark").

reinit:  keep the mask, draw new random weights.
shuffle: keep each layer's count, shuffle the positions (seeded).
random:  a random mask with the ticket's per-layer densities.
invert:  keep the weights IMP would have pruned at that level (inverted magnitude scores).
"""
from __future__ import annotations

import logging

import torch

from lottery import distributed
from lottery.cli import register
from lottery.config import Config, ConfigError, load_config
from lottery.experiment import load_data, make_model, open_run, run_directory
from lottery.io import torch_load, write_json
from lottery.levels import finished_row, format_table, train_level
from lottery.pruning.mask import Mask

logger = logging.getLogger(__name__)

BRANCHES = ("reinit", "shuffle", "random", "invert")
REINIT_SEED_OFFSET = 1_000_003  # a seed no ticket run shares


def parse_levels(text: str) -> list[int]:
    """"1-5" -> [1..5]; "3,7,12" -> [3, 7, 12]."""
    levels: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part:
                first, last = (int(x) for x in part.split("-"))
                levels.extend(range(first, last + 1))
            elif part.strip():
                levels.append(int(part))
    except ValueError:
        raise ConfigError(f"expected levels like '1-5' or '3,7,12', got {text!r}", "--levels") from None
    if not levels or min(levels) < 0:
        raise ConfigError(f"expected levels like '1-5' or '3,7,12', got {text!r}", "--levels")
    return sorted(set(levels))


def inverted_mask(previous_mask: Mask, previous_weights: dict, target: Mask) -> Mask:
    """Per layer, keep as many weights as `target` does, choosing the smallest trained magnitudes."""
    kept = {}
    for name, survivors in previous_mask.items():
        count = int(target[name].sum())
        scores = -previous_weights[name].abs().flatten().double()
        scores[~survivors.flatten()] = -torch.inf
        order = torch.argsort(scores, descending=True, stable=True)
        keep = torch.zeros_like(survivors.flatten())
        keep[order[:count]] = True
        kept[name] = keep.view_as(survivors)
    return Mask(kept)


def branch_mask(name: str, config: Config, run_dir, level: int, model) -> Mask:
    from lottery.pruning.ablations import random_same_layerwise, shuffle_within_layers

    level_dir = run_dir / f"level_{level:02d}"
    if not (level_dir / "mask.pt").exists():
        raise FileNotFoundError(f"{level_dir / 'mask.pt'} not found: run `lottery ticket` to level {level} first")
    mask = Mask.load(level_dir / "mask.pt", model)
    seed = config.seed * 1000 + level
    if name == "shuffle":
        return shuffle_within_layers(mask, seed)
    if name == "random":
        return random_same_layerwise(mask, seed)
    if name == "invert" and level > 0:
        previous = run_dir / f"level_{level - 1:02d}"
        return inverted_mask(Mask.load(previous / "mask.pt", model), torch_load(previous / "final.pt"), mask)
    return mask


def start_weights(name: str, config: Config, dataset, run_dir) -> dict:
    if name == "reinit":
        return make_model(config, dataset, seed=config.seed + REINIT_SEED_OFFSET).state_dict()
    return torch_load(run_dir / "rewind.pt")


def run_branch(config: Config, name: str, levels: list[int], command: str = "lottery branch") -> list[dict]:
    from lottery.ticket import build_stage

    if name not in BRANCHES:
        raise ConfigError(f"unknown branch {name!r}; valid: {', '.join(BRANCHES)}", "--name")
    dataset = load_data(config, distributed.device_for(config))
    run_dir = run_directory(config)
    if not (run_dir / "rewind.pt").exists():
        raise FileNotFoundError(f"no ticket run at {run_dir}: run `lottery ticket` with the same config first")
    branch_dir = run_dir / "branches" / name
    with open_run(config, run_dir, command) as (tracker, parent):
        stage, model = build_stage(config, run_dir, dataset, parent)
        rewind_step = stage.plan.steps(config.ticket.rewind_step)
        weights = start_weights(name, config, dataset, run_dir)
        rows = []
        for level in levels:
            level_dir = branch_dir / f"level_{level:02d}"
            row = distributed.broadcast_object(finished_row(level_dir) if stage.is_main else None)
            if row is None:
                mask = branch_mask(name, config, run_dir, level, model) if stage.is_main else None
                mask = distributed.broadcast_mask(mask)
                if stage.is_main:
                    mask.save(level_dir / "mask.pt")
                model.load_state_dict(weights)
                handle = tracker.child(f"branch/{name}/level_{level:02d}", f"{name} level {level}",
                                       {"branch": name, "level": level, "density": mask.density()})
                row = train_level(stage, model, mask, level_dir, rewind_step, {"level": level, "branch": name},
                                  handle)
                handle.finish()
            rows.append(row)
            if stage.is_main:
                write_json(branch_dir / "results.json", rows, durable=False)
        if stage.is_main:
            parent.log_artifact(branch_dir / "results.json")
    if distributed.rank_and_world()[0] == 0:
        print(format_table(rows))
        print(f"branch directory: {branch_dir}")
    return rows


@register("branch")
def branch_command(args, argv) -> int:
    from lottery.cli import _command_line

    config = load_config(args.exp, args.overrides)
    run_branch(config, args.name, parse_levels(args.levels), _command_line(argv))
    return 0
