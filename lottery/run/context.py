"""The run context: what every stage of one run directory shares (config, layout, data, schedule, tracking).

`open_run` makes one per command and process. Under torchrun only rank 0 writes and tracks.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from lottery.config import Config, flatten, from_yaml, to_yaml
from lottery.errors import CorruptFileError, LotteryError, NotFoundError
from lottery.run import distributed
from lottery.run.files import read_checked_text, remove_stale_temporaries, torch_load, write_checked_text
from lottery.run.layout import RunLayout
from lottery.run.locks import FileLock
from lottery.run.results import repair_results
from lottery.tracking.base import RunHandle, Tracker, run_tags
from lottery.tracking.schema import seed_run_name
from lottery.training.device import resolve_fast_path
from lottery.training.plan import StepPlan

logger = logging.getLogger(__name__)


@dataclass
class RunContext:
    config: Config
    layout: RunLayout
    dataset: object
    plan: StepPlan
    tracker: Tracker
    parent: RunHandle
    command: str
    rank: int = 0
    world_size: int = 1
    verified: frozenset = frozenset()  # names of the stages whose records open_run checked
    inputs: tuple = ()  # the dataset as MLflow dataset inputs (tracking on, rank 0)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def run_dir(self) -> Path:
        return self.layout.run_dir

    def new_model(self, seed: Optional[int] = None) -> nn.Module:
        """The seeded θ0 architecture for this config (the same seed gives the same weights, bit for bit)."""
        return make_model(self.config, self.dataset, seed)

    def theta0(self) -> dict:
        return torch_load(self.layout.init_file, what="θ0 file")


def load_data(config: Config, device=None):
    from lottery.data import load_dataset

    return load_dataset(config.data, seed=config.seed, device=device or distributed.device_for(config))


def make_model(config: Config, dataset, seed: Optional[int] = None) -> nn.Module:
    from lottery.models import build_model

    return build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed if seed is None else seed)


def step_plan(config: Config, dataset, rank: int = 0, world_size: int = 1) -> StepPlan:
    batches = dataset.train_batches(config.train.batch_size, config.seed, rank, world_size)
    return StepPlan.from_config(config.train, batches.iterations_per_epoch)


def write_config(layout: RunLayout, config: Config) -> None:
    """Save the resolved config first, so every run directory says what it is (rewritten only when it changed)."""
    text = to_yaml(config)
    with FileLock(layout.lock_file("config")):
        try:
            if read_checked_text(layout.config_file, "config file") == text:
                return
        except NotFoundError:
            pass
        except CorruptFileError as error:  # it only says what the last command ran, which this one knows
            logger.warning("%s; written again from this command's config", error)
        write_checked_text(layout.config_file, text)


def read_config(run_dir) -> Config:
    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        raise NotFoundError(f"{path} not found: is {run_dir} a run directory?")
    return from_yaml(read_checked_text(path, "config file"), str(path))


def make_directory(path: Path, config: Config) -> None:
    """mkdir -p, or one error line naming the folder and run.root."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise LotteryError(f"cannot create the run directory {path} (run.root={config.run.root}): "
                           f"{error.strerror or error}") from None


def attach_run(config: Config, command: str, dataset=None, passive: bool = False,
               parent_tags: Optional[dict] = None, stages=()) -> RunContext:
    """The RunContext of config's run directory: checks the records of the finished ones among `stages`, then
    writes config.yaml and opens tracking (rank 0 only).

    `passive`: another process owns the run directory's parent MLflow run (an orchestrator, while this is one
    of its workers), so it is attached without touching its status. Call only after every other check has
    passed; nothing is written before the records are checked.
    """
    from lottery.tracking.client import make_tracker

    rank, world_size = distributed.rank_and_world()
    dataset = dataset if dataset is not None else load_data(config)
    layout = RunLayout.of(config)
    tracker = Tracker()
    verified = frozenset()
    if rank == 0:
        verified = frozenset(stage.name for stage in stages if stage.check_record(layout))  # before any write
        make_directory(layout.run_dir, config)
        for path in remove_stale_temporaries(layout.run_dir):
            logger.info("removed %s, left by a process that died", path)
        write_config(layout, config)
        repair_results(layout)
        tracker = make_tracker(config, layout.run_dir, command=command)
    parent = tracker.parent(seed_run_name(config.seed), {**run_tags(config, command), **(parent_tags or {})},
                            flatten(config), passive=passive)
    inputs = dataset_inputs(config, dataset) if tracker.enabled else ()
    parent.log_inputs(list(inputs))
    run = RunContext(config, layout, dataset, step_plan(config, dataset, rank, world_size), tracker, parent, command,
                     rank, world_size, verified, inputs)
    if rank == 0 and not passive:
        fast = resolve_fast_path(config.train, run.new_model(), distributed.device_for(config), dataset.input_shape)
        parent.log_params(fast.as_params())
    return run


def dataset_inputs(config: Config, dataset) -> tuple:
    """The data a run trains and evaluates on, as MLflow dataset inputs: name, source, digest, split sizes."""
    source = config.data.path or (f"{config.data.root}/{config.data.name}" if config.data.name not in
                                  ("digits", "synthetic") else config.data.name)
    profile = {split: dataset.split_size(split) for split in ("train", "val", "test")}
    profile.update(input_shape=list(dataset.input_shape), classes=dataset.num_classes)
    return ({"name": dataset.name, "digest": dataset.digest(), "source": source, "profile": profile,
             "context": "training"},)


def close_run(run: RunContext, status: str, announce: bool = True) -> None:
    """Publish the run directory's report to its parent run (when finished, rank 0) and close tracking;
    `announce`: print where the MLflow UI shows the runs (an experiment prints it once for all its seeds)."""
    from lottery.report.run_report import publish

    if run.is_main and status == "FINISHED":
        publish(run.layout, run.tracker, run.parent, run.config.experiment.evaluate.margin)  # figures, masks and the report; never raises
    url = run.tracker.ui_url()
    run.tracker.close(status)
    if url and announce and run.is_main:
        print(f"MLflow runs table: {url}")


@contextmanager
def open_run(config: Config, command: str, dataset=None, stages=(), parent_tags: Optional[dict] = None):
    """attach_run, then close_run FINISHED (or FAILED on an exception) around a command's `stages`."""
    run = attach_run(config, command, dataset, parent_tags=parent_tags, stages=stages)
    status = "FAILED"
    try:
        yield run
        status = "FINISHED"
    finally:
        close_run(run, status)
