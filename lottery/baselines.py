"""Pruning at initialisation (or at the rewind point) for each method x density, trained like a ticket."""
from __future__ import annotations

import logging
from pathlib import Path

from lottery import distributed
from lottery.cli import register
from lottery.config import Config, ConfigError, load_config
from lottery.experiment import load_data, open_run, run_directory
from lottery.io import read_json, torch_load, write_json
from lottery.levels import compression_of, finished_row, format_table, train_level

logger = logging.getLogger(__name__)

ALL_METHODS = ("synflow", "snip", "grasp", "magnitude", "random", "coreset")


def pruning_batches(config: Config, dataset) -> list:
    """Class-balanced samples (samples_per_class of every class), as SNIP and GraSP use."""
    inputs, labels = dataset.class_balanced(config.prune.samples_per_class, config.seed)
    return [(inputs, labels)]


def prune_model(config: Config, dataset, model, method: str, density: float | None = None,
                compression: float | None = None):
    """Score the model as it is (θ0 or θk) and return the PruneResult at the target."""
    from lottery.pruning.isometry import approximate_isometry
    from lottery.pruning.mask import Mask
    from lottery.pruning.prune import prune

    needs_data = method in ("snip", "grasp")
    start = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
    result = prune(
        model, method, density=density, compression=compression, mask=start,
        batches=pruning_batches(config, dataset) if needs_data else None,
        input_shape=dataset.input_shape, scope=config.prune.scope, rounds=config.prune.rounds,
        schedule=config.prune.schedule, seed=config.seed, temperature=config.prune.grasp_temperature,
    )
    if config.prune.isometry:
        result.mask.apply(model)
        error = approximate_isometry(model, result.mask, steps=config.prune.isometry_steps)
        logger.info("approximate isometry: final error %.4g", error)
    return result


def default_densities(config: Config, run_dir: Path) -> list[float]:
    """The densities of the ticket's levels: measured ones if the ticket ran, else (1-p)^L."""
    results = run_dir / "results.json"
    if results.exists():
        return [row["density"] for row in read_json(results) if row["level"] != 0]
    return [(1 - config.prune.fraction) ** level for level in range(1, config.ticket.levels + 1)]


def stage_name(method: str, density: float) -> str:
    return f"{method}/density_{density:.6f}"


def run_baselines(config: Config, methods: list[str], densities: list[float] | None = None, at: str = "init",
                  command: str = "lottery baselines") -> list[dict]:
    from lottery.ticket import build_stage, rewind_weights

    unknown = [m for m in methods if m not in ALL_METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(ALL_METHODS)}", "--methods")
    dataset = load_data(config, distributed.device_for(config))
    run_dir = run_directory(config)
    densities = densities or default_densities(config, run_dir)
    with open_run(config, run_dir, command) as (tracker, parent):
        stage, model = build_stage(config, run_dir, dataset, parent)
        if at == "init":
            start_weights, start_step = torch_load(run_dir / "init.pt"), 0
        else:
            start_weights, start_step = rewind_weights(stage, model)
        rows = []
        for method in methods:
            for density in densities:
                rows.append(_baseline(stage, model, tracker, method, density, start_weights, start_step, at))
                if stage.is_main:
                    write_json(run_dir / "baselines" / "results.json", rows, durable=False)
        if stage.is_main:
            parent.log_artifact(run_dir / "baselines" / "results.json")
    if distributed.rank_and_world()[0] == 0:
        print(format_table(rows, label="method"))
        print(f"run directory: {run_dir}")
    return rows


def _baseline(stage, model, tracker, method: str, density: float, start_weights: dict, start_step: int,
              at: str) -> dict:
    from lottery.pruning.mask import Mask

    name = stage_name(method, density)
    stage_dir = stage.run_dir / "baselines" / at / name
    row = distributed.broadcast_object(finished_row(stage_dir) if stage.is_main else None)
    if row is not None:
        return row
    model.load_state_dict(start_weights)
    handle = tracker.child(f"baseline/{at}/{name}", f"{method} d={density:.4f}",
                           {"method": method, "density": density, "at": at})
    if method == "coreset":
        row = _coreset_baseline(stage, model, stage_dir, density, start_step, at, handle)
        handle.finish()
        return row
    mask_path = stage_dir / "mask.pt"
    if stage.is_main and mask_path.exists():
        mask = Mask.load(mask_path, model)
    elif stage.is_main:
        mask = prune_model(stage.config, stage.dataset, model, method, density=density).mask
        mask.save(mask_path)
    distributed.barrier()
    mask = distributed.broadcast_mask(mask if stage.is_main else None)
    row = train_level(stage, model, mask, stage_dir, start_step, {"level": None, "method": method, "at": at},
                      handle)
    handle.finish()
    return row


def _coreset_baseline(stage, model, stage_dir, density: float, start_step: int, at: str, handle) -> dict:
    """Structured: a physically smaller network (deterministic for the seed), trained dense."""
    from lottery.pruning.coreset import coreset_prune, count_weights
    from lottery.pruning.mask import Mask

    smaller = coreset_prune(stage.config, stage.dataset, model, density=density)
    mask = Mask.ones(smaller, ignore=stage.config.prune.ignore, include=stage.config.prune.include)
    # the smaller net is dense; its density is relative to the original network's weights
    achieved = count_weights(smaller) / count_weights(model)
    fields = {"level": None, "method": "coreset", "at": at, "density": achieved,
              "compression": compression_of(achieved)}
    return train_level(stage, smaller, mask, stage_dir, start_step, fields, handle)


def parse_floats(text: str | None, flag: str) -> list[float] | None:
    if not text:
        return None
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}", flag) from None
    if any(not 0 < value <= 1 for value in values):
        raise ConfigError(f"densities must be in (0, 1], got {text!r}", flag)
    return values


@register("baselines")
def baselines_command(args, argv) -> int:
    from lottery.cli import _command_line

    config = load_config(args.exp, args.overrides)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    run_baselines(config, methods, parse_floats(args.densities, "--densities"), args.at, _command_line(argv))
    return 0
