"""Everything checked before a command writes its first file: registry names, the device, the data, layer
patterns, the level count, the rewind step. Each problem is one ConfigError (exit 2) naming the key and where
its value came from, or a DataError (exit 1); values that run but are surely not meant get a warning.

This is where the config meets the registries (models, datasets, pruning methods), so the config package
itself imports none of them.
"""
from __future__ import annotations

import logging
from typing import Optional

from lottery.config import Config, source_of
from lottery.errors import ConfigError
from lottery.pruning.mask import Mask, MaskError, prunable_parameters
from lottery.pruning.prune import fraction_groups
from lottery.pruning.selection import rate_overrides
from lottery.run.context import load_data, make_model, step_plan

logger = logging.getLogger(__name__)


def fail(config: Config, key: str, message: str, source: Optional[str] = None):
    raise ConfigError(message, key, source or source_of(config, key, _experiment_file(config)))


def _experiment_file(config: Config) -> Optional[str]:
    from lottery.config import experiment_path

    return str(experiment_path(config.exp)) if config.exp != "default" else None


def with_source(config: Config, error: ConfigError) -> ConfigError:
    """The same error, naming where its key's value came from if it did not say."""
    if error.source is not None or error.key is None:
        return error
    return ConfigError(error.reason, error.key, source_of(config, error.key, _experiment_file(config)))


def check_names(config: Config) -> None:
    """model.name, model.init, data.name and baseline.method against their registries."""
    from lottery.data import dataset_names, is_dataset_name
    from lottery.models import INITIALIZERS, is_model_name, model_names
    from lottery.pruning.methods import METHODS

    if not is_model_name(config.model.name):
        fail(config, "model.name", f"unknown model {config.model.name!r}; valid: {model_names()}")
    if config.model.init not in INITIALIZERS:
        fail(config, "model.init", f"unknown initialisation {config.model.init!r}; valid: {', '.join(INITIALIZERS)}")
    if not is_dataset_name(config.data.name):
        fail(config, "data.name", f"unknown dataset {config.data.name!r}; valid: {', '.join(dataset_names())}")
    if config.baseline.method not in METHODS:
        fail(config, "baseline.method", f"unknown method {config.baseline.method!r}; valid: {', '.join(METHODS)}")


def check_config(config: Config):
    """The checks every training command shares; returns the loaded dataset."""
    from lottery.run.distributed import device_for

    check_names(config)
    try:
        device = device_for(config)
        dataset = load_data(config, device)
    except ConfigError as error:
        raise with_source(config, error) from None
    plan = step_plan(config, dataset)
    _warn_unlikely(config, dataset, plan)
    try:
        model = make_model(config, dataset)
    except ValueError as error:
        fail(config, "model.name", str(error))
    _check_patterns(config, model)
    return dataset


def _warn_unlikely(config: Config, dataset, plan) -> None:
    if config.train.batch_size > dataset.num_train:
        logger.warning("train.batch_size=%d is larger than the %d training examples: every step sees the whole "
                       "training set", config.train.batch_size, dataset.num_train)
    if plan.total == 0:
        logger.warning("train.steps=%s is 0 iterations: nothing is trained, each stage is only evaluated",
                       config.train.steps)
    if plan.steps(config.train.eval_every) == 0:
        logger.warning("train.eval_every=%s is 0 iterations: evaluating every iteration", config.train.eval_every)


def _check_patterns(config: Config, model) -> None:
    """prune.ignore, prune.include and prune.layer_rates patterns must each match a layer."""
    everything = list(prunable_parameters(model))
    for key, patterns in (("prune.ignore", {"ignore": config.prune.ignore}),
                          ("prune.include", {"include": config.prune.include})):
        try:
            prunable_parameters(model, **patterns)
        except MaskError as error:
            fail(config, key, str(error))
    names = list(prunable_parameters(model, config.prune.ignore, config.prune.include))
    if not names:
        fail(config, "prune.ignore", f"no prunable layer is left; the prunable layers are {', '.join(everything)}")
    try:
        rate_overrides(names, config.prune.layer_rates)
    except MaskError as error:
        fail(config, "prune.layer_rates", f"{error}")


def possible_levels(config: Config, model, wanted: int) -> tuple[int, str]:
    """How many of `wanted` IMP levels can prune, and why the next one could not. A level is impossible when it
    would empty a layer counted on its own (layerwise scope or a prune.layer_rates entry), empty the pooled
    layers (global scope), or remove no weight at all (round-half-up counts stop shrinking at a few weights)."""
    mask = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
    names = list(mask.names)
    alive = {name: flags.numel() for name, flags in mask.items()}
    total = sum(alive.values())
    for level in range(1, wanted + 1):
        step = fraction_groups(names, alive, config.prune.fraction, config.prune.scope, config.prune.layer_rates)
        emptied = [members[0] if len(members) == 1 else "the pooled layers" for members, count in step if count < 1]
        if emptied:
            return level - 1, f"level {level} would leave no weight in {', '.join(emptied)}"
        kept = sum(count for _, count in step)
        if kept == total:
            return level - 1, f"level {level} would remove no weight ({kept} are left)"
        alive = {name: 0 for name in names}  # pooled layers: only their sum matters for the next step
        alive.update({members[0]: count for members, count in step})
        total = kept
    return wanted, ""


def check_ticket(config: Config):
    """check_config, plus the level count and the rewind step; returns the dataset."""
    dataset = check_config(config)
    plan = step_plan(config, dataset)
    rewind_step = plan.steps(config.ticket.rewind_step)
    if rewind_step > plan.total:
        fail(config, "ticket.rewind_step",
             f"rewind step {config.ticket.rewind_step} ({rewind_step} iterations) is after the end of training, "
             f"train.steps={config.train.steps} ({plan.total} iterations)")
    most, reason = possible_levels(config, make_model(config, dataset), config.ticket.levels)
    if config.ticket.levels > most:
        fail(config, "ticket.levels",
             f"{config.ticket.levels} levels are more than pruning can do: {reason}, so at most {most} levels are "
             f"possible with prune.fraction={config.prune.fraction:g} and {config.prune.scope} scope")
    return dataset
