"""`lottery ticket --exp EXP`: the whole experiment the config declares, on every device at once.

For each seed: θ0, θk, the IMP levels, the declared baselines and control branches (lottery.orchestrate.graph),
run by the local executor (worker processes) or on a Ray cluster, then the seeds aggregated into one report
with a table of IMP and its baselines side by side at each density. The orchestrator owns the MLflow runs of the
experiment and of each seed; the stage runs nest below them.
"""
from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from lottery.config import Config, ConfigError, config_hash, flatten, replace, to_dict
from lottery.errors import StagesFailedError
from lottery.orchestrate.graph import Graph, Node, describe, experiment_graph, seeds_of
from lottery.orchestrate.progress import Progress, quiet_console
from lottery.orchestrate.worker import Outcome, Task
from lottery.run import distributed
from lottery.run.context import RunContext, attach_run, close_run, make_directory, make_model
from lottery.run.layout import RunLayout
from lottery.run.stage import run_stage
from lottery.tracking.schema import DESCRIPTION_TAG, experiment_run_name

logger = logging.getLogger(__name__)


@dataclass
class ExperimentOutcome:
    directory: Path
    graph: Graph
    outcomes: dict[Node, Outcome] = field(default_factory=dict)
    report: Optional[object] = None

    @property
    def failed(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes.values() if outcome.status == "failed"]

    def rows(self, seed: int) -> list[dict]:
        return [outcome.row for node, outcome in self.outcomes.items() if node.seed == seed and outcome.row]


def check_experiment(config: Config):
    """The ticket's checks plus the experiment's own (method and branch names, branch levels); returns the data."""
    from lottery.pruning.methods import METHODS
    from lottery.workflows.branches import BRANCHES
    from lottery.workflows.preflight import check_ticket, fail

    dataset = check_ticket(config)
    plan = config.experiment
    unknown = [method for method in plan.baselines.methods if method not in METHODS]
    if unknown:
        fail(config, "experiment.baselines.methods", f"unknown method(s) {', '.join(unknown)}; valid: "
             f"{', '.join(METHODS)}")
    for name, levels in plan.branches.items():
        if name not in BRANCHES:
            fail(config, "experiment.branches", f"unknown branch {name!r}; valid: {', '.join(BRANCHES)}")
        late = [level for level in levels if level > config.ticket.levels]
        if late:
            fail(config, f"experiment.branches.{name}", f"levels {late} are beyond ticket.levels="
                 f"{config.ticket.levels}")
    return dataset


def seed_config(config: Config, seed: int) -> Config:
    return replace(config, seed=seed)


def parse_seeds(text: str) -> list[int]:
    """--seeds: "0-4" or "0,3,7"."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                first, last = (int(x) for x in part.split("-"))
                seeds.extend(range(first, last + 1))
            elif part.strip():
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"expected seeds like '0-4' or '0,3,7', got {text!r}", "--seeds", "command line") from None
    if not seeds or min(seeds) < 0:
        raise ConfigError(f"expected seeds like '0-4' or '0,3,7', got {text!r}", "--seeds", "command line")
    return sorted(set(seeds))


def plan(config: Config) -> Graph:
    """The experiment's graph, after every check; writes nothing."""
    return _plan(config)[0]


def _plan(config: Config):
    from lottery.orchestrate.worker import remember_dataset

    dataset = check_experiment(config)
    remember_dataset(config, dataset)  # the seeds' run contexts reuse it
    return experiment_graph(config, make_model(config, dataset)), dataset


def run_experiment(config: Config, command: str = "lottery ticket", dry_run: bool = False,
                   stream=None) -> ExperimentOutcome:
    stream = stream or sys.stdout
    rank, world_size = distributed.rank_and_world()
    pool = _early_pool(config, world_size) if not dry_run else None
    try:
        return _run(config, command, dry_run, stream, rank, world_size, pool)
    finally:
        if pool is not None:
            pool.shutdown()  # a no-op once the executor has used it


def _early_pool(config: Config, world_size: int):
    """The local workers, started now: they import torch and lottery while this process plans and attaches."""
    from lottery.orchestrate.local import slots_for, start_pool

    if config.run.executor != "local" or world_size > 1:
        return None
    return start_pool(slots_for(config), in_process=True)


def _run(config: Config, command: str, dry_run: bool, stream, rank: int, world_size: int, pool) -> ExperimentOutcome:
    from lottery.orchestrate.worker import _dataset
    from lottery.tracking.client import make_tracker

    graph, _ = _plan(config)
    layout = RunLayout.of(config)
    outcome = ExperimentOutcome(layout.experiment_dir, graph)
    if dry_run:
        print(describe(graph), file=stream)
        return outcome
    if rank == 0:
        make_directory(layout.experiment_dir, config)
    tracker = make_tracker(config, layout.experiment_dir, command) if rank == 0 else None
    experiment_run = None
    if tracker is not None:
        description = (f"Experiment {config.exp} (config {config_hash(config)}), seeds {seeds_of(config)}: the seed "
                       "runs below hold the IMP levels, baselines and branches. Metrics curve/<series>/<metric> at "
                       "X axis curve/density draw accuracy against density; summary/* are the headline numbers.")
        parent = tracker.parent(experiment_run_name(config.exp, config_hash(config)),
                                {"kind": "experiment", "seed": ",".join(map(str, seeds_of(config))),
                                 DESCRIPTION_TAG: description}, flatten(config))
        tracker.flush()
        experiment_run = parent
    seeds = seeds_of(config)
    tags = {"mlflow.parentRunId": experiment_run.run_id} if experiment_run is not None and experiment_run.run_id \
        else {}
    contexts: dict[int, RunContext] = {  # each seed's finished stages are checked before anything is written
        seed: attach_run(seed_config(config, seed), command, _dataset(seed_config(config, seed)), parent_tags=tags,
                         stages=[node.stage for node in graph.nodes if node.seed == seed])
        for seed in seeds}
    status = "FAILED"
    try:
        outcome.outcomes = _execute(config, graph, contexts, command, stream, world_size, pool)
        status = "FINISHED" if not outcome.failed else "FAILED"
    finally:
        for seed, run in contexts.items():
            finished = all(o.status in ("done", "skipped") for n, o in outcome.outcomes.items() if n.seed == seed)
            if finished and outcome.outcomes and config.experiment.evaluate.corruptions and rank == 0:
                from lottery.workflows.evaluate import summarize_evaluations

                summarize_evaluations(run)  # <run_dir>/robustness/: per series and density, prune potential
            close_run(run, "FINISHED" if finished and outcome.outcomes else "FAILED", announce=False)
    if rank == 0:
        outcome.report = _report(layout, experiment_run, stream, config.experiment.evaluate.margin)
        url = tracker.ui_url()
        tracker.close(status)
        if url:
            print(f"MLflow runs table: {url}", file=stream)
        _summary(outcome, contexts, stream)
    return outcome


def _execute(config: Config, graph: Graph, contexts: dict[int, RunContext], command: str, stream,
             world_size: int, pool=None) -> dict[Node, Outcome]:
    from lottery.orchestrate.local import run_local, slots_for
    from lottery.orchestrate.ray_cluster import run_ray

    tree = to_dict(config)
    owner = lambda node: contexts[node.seed]  # noqa: E731 - the stages run in this process use the owned runs
    if world_size > 1:  # torchrun: every rank runs every stage in the same order; a failure stops them all
        return {node: Outcome(node.key, "done", run_stage(contexts[node.seed], node.stage)) for node in graph.nodes}
    slots = slots_for(config)
    in_process = config.run.executor == "local" and len(slots) == 1

    def task_of(node: Node) -> Task:
        return Task(tree, node.seed, node.stage, command, passive=not in_process)

    packs, size = _packing(config, graph, contexts)
    progress = Progress(len(graph.nodes), len(slots), stream)
    print(f"experiment {config.exp} {config_hash(config)}: {len(graph.nodes)} stages over {len(contexts)} seed(s), "
          f"{config.run.executor} executor, {len(slots)} worker(s)" + (f", packs of up to {size}" if size > 1 else ""),
          file=stream)
    with quiet_console():
        try:
            if config.run.executor == "ray":
                return run_ray(graph, task_of, config, progress)
            return run_local(graph, task_of, slots, progress, owner, packs, pool)
        finally:
            progress.close()


def _packing(config: Config, graph: Graph, contexts: dict[int, RunContext]):
    """(ready nodes -> the nodes to train together, the pack size) for run.pack."""
    from lottery.orchestrate.packing import pack_key, pack_size, take_pack

    run = next(iter(contexts.values()))
    size = pack_size(config, run.new_model(), run.dataset)
    if size <= 1:
        return None, 1
    if config.run.executor == "ray":
        logger.warning("run.pack: the Ray executor trains each stage alone (Ray places every task itself)")
        return None, 1
    rewind_step = run.plan.steps(config.ticket.rewind_step)
    keys = {node: pack_key(node, config, rewind_step) for node in graph.nodes}
    return (lambda ready, free_slots=1: take_pack(ready, keys, size, free_slots)), size


def _report(layout: RunLayout, experiment_run, stream, margin: float):
    from lottery.errors import NotFoundError
    from lottery.report.aggregate import build_experiment_report, log_curves

    try:
        report = build_experiment_report(layout.experiment_dir)
    except (NotFoundError, ValueError) as error:
        logger.warning("no experiment report: %s", error)
        return None
    if experiment_run is not None:
        for name, figure in report.figures.items():
            experiment_run.log_figure(figure, f"figures/{name}")
        for path in report.files:
            if path.suffix != ".png":
                experiment_run.log_artifact(path, "report")
        log_curves(experiment_run, report.aggregate, margin)
    return report


def _summary(outcome: ExperimentOutcome, contexts: dict[int, RunContext], stream) -> None:
    if outcome.report is not None:
        print("\nfinal test accuracy, mean ± std (n seeds), IMP and its baselines at equal density:", file=stream)
        print(outcome.report.table, file=stream)
        print(f"experiment report: {outcome.report.directory}", file=stream)
    for seed, run in contexts.items():
        print(f"run directory (seed {seed}): {run.run_dir}", file=stream)
    if outcome.failed:
        lines = [f"{failed.key}: {failed.error} (log: {failed.log})" for failed in outcome.failed]
        raise StagesFailedError(f"{len(lines)} stage(s) failed; run the same command again to retry what is "
                                "unfinished:\n  " + "\n  ".join(lines))

