"""Baselines: prune at initialisation (or at the rewind point) with each method at each density, and train
with the ticket's schedule.

Every registered method is a baseline (lottery/pruning/methods.py): scorers prune once and train with a
fixed mask; dynamic methods (rigl, set) start from a random mask and change it while they train; structured
methods train a physically smaller dense network (coreset: sampled neurons of θ0; small_dense: the same
architecture narrower, from scratch). The default densities are the ticket's level densities, computed
exactly from the layer sizes and IMP's counting rule (the same code the pruner runs), so a baseline never
waits for the ticket and its density equals its level's exactly. A method's folder is its name, plus a short
hash of its baseline.* settings when they differ from the defaults, so a knob that changes a baseline never
reuses another setting's results.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from lottery.config import BaselineConfig, Config, ConfigError
from lottery.pruning.collapse import compression_of
from lottery.pruning.mask import Mask
from lottery.pruning.methods import METHODS, get_method, method_names
from lottery.pruning.prune import PruneResult, PruneSpec, level_counts, prune
from lottery.run import distributed
from lottery.run.context import RunContext, make_model, open_run
from lottery.run.layout import StageRef
from lottery.run.stage import Stage, TrainingStage, run_stage
from lottery.workflows.ticket import InitStage, RewindStage, rewind_weights

logger = logging.getLogger(__name__)

STARTS = ("init", "rewind")
LATER_SETTINGS = {"scope": "prune", "fresh_weights": False}  # baseline.* keys added after folders were hashed


def settings_of(config: Config, method: str) -> dict:
    """The baseline.* settings `method` reads, with the method's own default rounds and BatchNorm mode filled in."""
    entry = get_method(method)
    values = {name: getattr(config.baseline, name) for name in entry.settings}
    if "rounds" in values and values["rounds"] is None:
        values["rounds"] = entry.default_rounds
    if values.get("bn_mode") == "auto":
        values["bn_mode"] = entry.bn_mode
    for name, default in LATER_SETTINGS.items():  # at their defaults they leave older folder hashes as they were
        if values.get(name, object()) == default:
            del values[name]
    return values


def method_folder(config: Config, method: str) -> str:
    """`method`, or `method-<hash6>` when its settings differ from their defaults."""
    settings = settings_of(config, method)
    defaults = settings_of(Config(baseline=BaselineConfig()), method)
    if settings == defaults:
        return method
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:6]
    return f"{method}-{digest}"


def variant_of(config: Config, method: str) -> str:
    """The settings that give `method` a hashed folder, as `key=value, ...` (empty at the defaults): what a
    table or a legend shows beside `snip-05b804`."""
    settings = settings_of(config, method)
    defaults = settings_of(Config(baseline=BaselineConfig()), method)
    return ", ".join(f"{name}={settings[name]}" for name in sorted(settings) if settings[name] != defaults.get(name))


def pruning_batches(config: Config, dataset) -> list:
    """SNIP's and GraSP's data: samples_per_class of every class (balanced), or as many drawn at random."""
    count = config.baseline.samples_per_class
    if config.baseline.batch == "random":
        return [dataset.random_examples(count * dataset.num_classes, config.seed)]
    return [dataset.class_balanced(count, config.seed)]


def prune_model(config: Config, dataset, model, method: str, density: float | None = None,
                compression: float | None = None) -> PruneResult:
    """Score the model as it is (θ0 or θk) with `method` and return the PruneResult at the target."""
    batches = pruning_batches(config, dataset) if get_method(method).needs_data else None
    start = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
    return prune(model, PruneSpec.from_config(config, method), density=density, compression=compression,
                 mask=start, batches=batches, input_shape=dataset.input_shape)


def ticket_densities(config: Config, model) -> list[float]:
    """The exact densities of the ticket's levels 1..L, known before any level trains."""
    mask = Mask.ones(model, ignore=config.prune.ignore, include=config.prune.include)
    sizes = {name: flags.numel() for name, flags in mask.items()}
    counts = level_counts(sizes, config.prune.fraction, config.ticket.levels, config.prune.scope,
                          config.prune.layer_rates)
    return [count / counts[0] for count in counts[1:]]


def _start(run: RunContext, at: str) -> tuple[dict, int]:
    return (run.theta0(), 0) if at == "init" else rewind_weights(run)


@dataclass(frozen=True)
class BaselineStage(TrainingStage):
    """An unstructured method at one density, from θ0 (at=init) or θk (at=rewind)."""

    method: str
    density: float
    at: str = "init"
    folder: str = ""  # the method's folder (method_folder); empty means the method's name
    starts: ClassVar[tuple[str, ...]] = STARTS

    @property
    def ref(self) -> StageRef:
        return StageRef.for_baseline(self.folder or self.method, self.density, self.at)

    def needs(self, config) -> tuple[Stage, ...]:
        return (InitStage(),) if self.at == "init" else (RewindStage(),)

    def make_mask(self, run: RunContext, model) -> Mask:
        model.load_state_dict(_start(run, self.at)[0])
        return prune_model(run.config, run.dataset, model, self.method, density=self.density).mask

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        weights, start_step = _start(run, self.at)
        model.load_state_dict(weights)
        if run.config.baseline.fresh_weights and "fresh_weights" in get_method(self.method).settings:
            # the SNIP code scores one random draw and trains another under its mask (weights_bp / weights_ap)
            from lottery.models import initialize
            from lottery.pruning.ablations import reinitialize
            from lottery.seeds import mix_seed

            reinitialize(model, mask, lambda m: initialize(m, run.config.model.init,
                                                           mix_seed("baseline fresh weights", run.config.seed)))
        if run.config.baseline.isometry:
            from lottery.pruning.isometry import approximate_isometry

            mask.apply(model)
            error = approximate_isometry(model, mask, steps=run.config.baseline.isometry_steps)
            logger.info("approximate isometry: final error %.4g", error)
        return start_step

    def fields(self) -> dict:
        return {"level": None, "method": self.method, "at": self.at}

    def row_fields(self, run: RunContext, model, mask: Mask) -> dict:
        variant = variant_of(run.config, self.method)
        return {**self.fields(), **({"variant": variant} if variant else {})}

    def matched_level(self, run: RunContext) -> int | None:
        from lottery.tracking.schema import matched_level

        return matched_level(self.density, ticket_densities(run.config, run.new_model()))


@dataclass(frozen=True)
class DynamicBaselineStage(BaselineStage):
    """Dynamic sparse training (rigl, set) at one density: a random mask at the baseline.distribution's layer
    densities, trained from θ0 (or θk) and changed every baseline.update_every steps. mask.pt is the mask it
    started from (a restart needs it), final_mask.pt the one it ended with."""

    def make_mask(self, run: RunContext, model) -> Mask:
        from lottery.pruning.dynamic import initial_mask

        template = Mask.ones(model, ignore=run.config.prune.ignore, include=run.config.prune.include)
        return initial_mask(template, self.density, run.config.baseline.distribution, run.config.seed)

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        weights, start_step = _start(run, self.at)
        model.load_state_dict(weights)
        return start_step

    def mask_updater(self, run: RunContext, model, mask: Mask, handle):
        from lottery.pruning.dynamic import UpdateSchedule

        settings = run.config.baseline
        schedule = UpdateSchedule.for_training(run.plan.total, run.plan.steps(settings.update_every),
                                               settings.update_until, settings.drop_fraction)

        def on_update(step: int, record: dict) -> None:
            handle.log_metrics(update_metrics(record), step=step)

        return get_method(self.method).make_updater(mask, schedule, run.config.seed, on_update=on_update)


def update_metrics(record: dict) -> dict:
    """One mask update as MLflow metrics: totals, the drop fraction, and per layer."""
    metrics = {"mask_dropped": record["dropped"], "mask_grown": record["grown"],
               "drop_fraction": record["drop_fraction"]}
    for layer, change in record["layers"].items():
        metrics[f"mask_dropped/{layer}"] = change["dropped"]
        metrics[f"mask_grown/{layer}"] = change["grown"]
    return metrics


@dataclass(frozen=True)
class StructuredBaselineStage(BaselineStage):
    """A structured method (coreset): a physically smaller network, deterministic for the seed, trained dense.
    Its density is relative to the original network's conv and linear weights."""

    def build(self, run: RunContext):
        model = run.new_model()
        model.load_state_dict(_start(run, self.at)[0])
        return coreset_network(run.config, run.dataset, model, self.density)

    def make_mask(self, run: RunContext, model) -> Mask:
        return Mask.ones(model, ignore=run.config.prune.ignore, include=run.config.prune.include)

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        return _start(run, self.at)[1]  # the smaller network already holds its (reweighted) starting weights

    def row_fields(self, run: RunContext, model, mask: Mask) -> dict:
        from lottery.pruning.coreset import count_weights

        achieved = count_weights(model) / count_weights(run.new_model())
        return {**BaselineStage.row_fields(self, run, model, mask), "density": achieved, "compression": compression_of(achieved)}


@dataclass(frozen=True)
class SmallDenseBaselineStage(StructuredBaselineStage):
    """The small-dense control (Crowley et al. 2018) at one density: the architecture with its widths scaled so
    it has as many weights as the density keeps (within 2%), initialised from the run's seed and trained dense
    from step 0 with the ticket's schedule. Its density is its counted weights over the full network's."""

    starts: ClassVar[tuple[str, ...]] = ("init",)

    def build(self, run: RunContext):
        return small_dense_network(run.config, run.dataset, self.density)[0]

    def prepare(self, run: RunContext, model, mask: Mask) -> int:
        return 0  # its own fresh initialisation, from scratch

    def row_fields(self, run: RunContext, model, mask: Mask) -> dict:
        from lottery.pruning.small_dense import counted_weights

        patterns = {"ignore": run.config.prune.ignore, "include": run.config.prune.include}
        achieved = counted_weights(model, **patterns) / counted_weights(run.new_model(), **patterns)
        widths = small_dense_network(run.config, run.dataset, self.density, build=False)[1]
        return {**BaselineStage.row_fields(self, run, model, mask), "density": achieved,
                "compression": compression_of(achieved), "target_density": self.density, "widths": widths.widths}


def coreset_network(config: Config, dataset, model, density: float) -> nn.Module:
    """Coreset's physically smaller network, sampled from `model`'s weights (θ0 or θk)."""
    from lottery.pruning.coreset import coreset_prune

    return coreset_prune(model, dataset.input_shape, config.seed, density=density)


def small_dense_network(config: Config, dataset, density: float, build: bool = True):
    """(the small-dense network initialised from the seed, or None without `build`; its ScaledWidths)."""
    from lottery.models import build_model
    from lottery.pruning.small_dense import TOLERANCE, small_dense_widths

    widths = small_dense_widths(config.model, dataset.input_shape, dataset.num_classes, density,
                                config.prune.ignore, config.prune.include)
    if not build:
        return None, widths
    if abs(widths.error) > TOLERANCE:
        logger.warning("small_dense at density %.6g: the closest widths %s give %d weights, %+.1f%% from the target "
                       "%d (%s is too narrow for finer steps)", density, widths.widths, widths.weights,
                       100 * widths.error, widths.target, config.model.name)
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed, widths=widths.widths)
    return model, widths


STRUCTURED_KINDS = {"coreset": StructuredBaselineStage, "small_dense": SmallDenseBaselineStage}


def stage_kind(method: str) -> type[BaselineStage]:
    entry = get_method(method)
    if entry.dynamic:
        return DynamicBaselineStage
    if entry.structured:
        return STRUCTURED_KINDS[method]
    return BaselineStage


def baseline_stage(config: Config, method: str, density: float, at: str) -> BaselineStage:
    return stage_kind(method)(method, density, at, method_folder(config, method))


def check_starts(methods: list[str], at: str) -> None:
    """Every method can start at `at` (small_dense trains from scratch: init only)."""
    if at not in STARTS:
        raise ConfigError(f"{at!r} is not one of {', '.join(STARTS)}", "--at", "command line")
    for method in methods:
        if at not in stage_kind(method).starts:
            raise ConfigError(f"{method} trains from scratch: it starts only at {', '.join(stage_kind(method).starts)}",
                              "--at", "command line")


def parse_methods(text: str | None) -> list[str]:
    """--methods: comma-separated registered names; the default is every unstructured method (the scorers, then
    the dynamic ones)."""
    if text is None:
        return method_names(structured=False)
    methods = [m.strip() for m in text.split(",") if m.strip()]
    if not methods:
        raise ConfigError(f"no method given; valid: {', '.join(METHODS)}", "--methods", "command line")
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ConfigError(f"unknown method(s) {', '.join(unknown)}; valid: {', '.join(METHODS)}", "--methods",
                          "command line")
    return methods


def parse_densities(text: str | None, flag: str = "--densities") -> list[float] | None:
    if text is None:
        return None
    try:
        values = [float(item) for item in text.split(",") if item.strip()]
    except ValueError:
        raise ConfigError(f"expected comma-separated numbers, got {text!r}", flag, "command line") from None
    if not values or any(not 0 < value <= 1 for value in values):
        raise ConfigError(f"densities must be in (0, 1], got {text!r}", flag, "command line")
    return values


def run_baselines(config: Config, methods: list[str], densities: list[float] | None = None, at: str = "init",
                  command: str = "lottery baselines", parent_tags: dict | None = None) -> list[dict]:
    from lottery.report.tables import level_table
    from lottery.workflows.preflight import check_ticket

    check_starts(methods, at)
    dataset = check_ticket(config)  # the default densities are the ticket's levels; at=rewind needs its k
    densities = densities or ticket_densities(config, make_model(config, dataset))
    starts = [InitStage()] + ([RewindStage()] if at == "rewind" else [])
    stages = [baseline_stage(config, method, density, at) for method in methods for density in densities]
    with open_run(config, command, dataset, stages=[*starts, *stages], parent_tags=parent_tags) as run:
        for start in starts:
            run_stage(run, start)
        rows = [run_stage(run, stage) for stage in stages]
    if distributed.rank_and_world()[0] == 0:
        print(level_table(rows, label="method"))
        print(f"run directory: {run.run_dir}")
    return rows

