"""Stages and the one function that runs them.

A stage is deterministic given its inputs, writes its outputs atomically, ends with DONE and is skipped
when DONE exists; so however stages are scheduled (one process, several, a cluster), the results are the
same. `run_stage` is the only place that knows the sequence: skip if done, claim the stage's lock (waiting
while another process runs it), compute the mask on rank 0 and broadcast it, open the tracking child run,
train, write mask.pt, final.pt and metrics.json, flush them to disk, then DONE and the results row.

Stage kinds live with their workflows (lottery/workflows/): a TrainingStage says only how to build its
model, make its mask, set its starting weights, and which fields its row carries.
"""
from __future__ import annotations

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from torch import nn

from lottery.errors import CorruptFileError, LotteryError
from lottery.pruning.collapse import compression_of
from lottery.pruning.mask import Mask
from lottery.run import distributed
from lottery.run.context import RunContext
from lottery.run.files import atomic_torch_save, fsync_paths, read_json, verify_torch_file, write_json
from lottery.run.layout import DONE, LEVEL, RunLayout, StageRef
from lottery.run.locks import FileLock
from lottery.run.results import record_row
from lottery.tracking.base import log_history, summary_metrics
from lottery.tracking.protocol import now_ms
from lottery.tracking.schema import stage_run
from lottery.training.loop import TrainJob, train

logger = logging.getLogger(__name__)


class Stage:
    """Something a run directory computes once. Subclasses are frozen dataclasses (picklable, hashable)."""

    @property
    def name(self) -> str:
        raise NotImplementedError

    @property
    def kind(self) -> str:
        """What the stage is, for counts and displays: init, rewind, level, dense, branch, baseline."""
        return self.name

    def needs(self, config) -> tuple["Stage", ...]:
        """The stages whose outputs this one reads (for the experiment graph)."""
        return ()

    def lock_path(self, layout: RunLayout) -> Path:
        return layout.lock_file(self.name.replace("/", "_"))

    def log_file(self, layout: RunLayout) -> Path:
        """Where a scheduled run of this stage logs."""
        return layout.run_dir / f"{self.name.replace('/', '_')}.log"

    def done(self, layout: RunLayout) -> bool:
        raise NotImplementedError

    def verify(self, layout: RunLayout) -> None:
        """Check a finished stage's files against their checksums; CorruptFileError naming a damaged one."""

    def redo_hint(self, layout: RunLayout) -> str:
        """How to make the stage run again."""
        return "delete it to compute it again"

    def check_record(self, layout: RunLayout) -> bool:
        """Whether the stage is done. A finished stage's files are the record, not a cache: a damaged one is a
        CorruptFileError naming the file, never a silently wrong result."""
        if not self.done(layout):
            return False
        try:
            self.verify(layout)
        except LotteryError as error:  # damaged, truncated or missing
            raise CorruptFileError(f"{error} ({self.name} is finished: restore the file, or "
                                   f"{self.redo_hint(layout)})") from None
        return True

    def result(self, run: RunContext):
        """What a finished stage returns (its results row, or None)."""
        return None

    def execute(self, run: RunContext):
        raise NotImplementedError


class StageBusy(Exception):
    """Another process holds the stage's lock (and this caller asked not to wait)."""


def run_stage(run: RunContext, stage: Stage):
    """Run `stage` unless it is done; return its result. Waits while another process runs it."""
    return claim_and_run(run, stage, wait=True)[0]


def claim_and_run(run: RunContext, stage: Stage, wait: bool = True) -> tuple[object, bool]:
    """(result, whether this call computed it). Every rank calls this; rank 0 decides and locks.

    With wait=False, StageBusy is raised at once when another process holds the stage's lock, so a scheduler
    can run something else meanwhile; the lock is the claim, so no two processes ever run one stage.
    """
    with claim(run, stage, wait) as finished:
        if finished is not None:
            return finished[0], False
        return stage.execute(run), True


@contextmanager
def claim(run: RunContext, stage: Stage, wait: bool = True):
    """Hold the stage's lock for the block; yields (result,) when the stage is already done, else None."""
    if _finished(run, stage):
        yield (_result(run, stage),)
        return
    lock = FileLock(stage.lock_path(run.layout), wait=wait, what=f"stage {stage.name} of {run.run_dir}")
    claimed = lock.acquire() if run.is_main else True
    if not distributed.broadcast_object(claimed):
        raise StageBusy(stage.name)
    try:
        if _finished(run, stage):
            logger.info("%s: finished by another process", stage.name)
            yield (_result(run, stage),)
        else:
            yield None
    finally:
        lock.release()


def _finished(run: RunContext, stage: Stage) -> bool:
    """Whether `stage` is done, decided on rank 0; a damaged record is an error on every rank."""
    state = None
    if run.is_main:
        try:
            state = stage.done(run.layout) if stage.name in run.verified else stage.check_record(run.layout)
        except CorruptFileError as error:
            state = str(error)
    state = distributed.broadcast_object(state)
    if isinstance(state, str):
        raise CorruptFileError(state)
    return state


def _result(run: RunContext, stage: Stage):
    return distributed.broadcast_object(stage.result(run) if run.is_main else None)


def finished_row(directory: Path) -> Optional[dict]:
    """The stored results row of a finished stage folder, or None."""
    if not (directory / DONE).exists():
        return None
    return read_json(directory / "metrics.json", "stage record")["row"]


@dataclass(frozen=True)
class TrainingStage(Stage):
    """A stage that trains a masked network from some start to T and leaves a results row."""

    @property
    def ref(self) -> StageRef:
        raise NotImplementedError

    @property
    def name(self) -> str:
        return self.ref.key

    @property
    def kind(self) -> str:
        return self.ref.kind

    def lock_path(self, layout: RunLayout) -> Path:
        return layout.directory(self.ref) / ".lock"

    def log_file(self, layout: RunLayout) -> Path:
        return RunLayout.stage_files(layout.directory(self.ref))["stage.log"]

    def done(self, layout: RunLayout) -> bool:
        return (layout.directory(self.ref) / DONE).exists()

    def verify(self, layout: RunLayout) -> None:
        files = RunLayout.stage_files(layout.directory(self.ref))
        Mask.load(files["mask.pt"])
        verify_torch_file(files["final.pt"], "stage weights")
        read_json(files["metrics.json"], "stage record")

    def redo_hint(self, layout: RunLayout) -> str:
        return f"delete its folder {self.ref.relative}/ to train it again"

    def result(self, run: RunContext) -> dict:
        """The finished stage's row; MLflow is made to hold its run too, in case a kill cut its upload short."""
        directory = run.layout.directory(self.ref)
        if run.tracker.enabled and not run.tracker.is_complete(self.ref.key):
            record = read_json(directory / "metrics.json", "stage record")
            name, params, tags = self.tracked_as(run, record["row"]["density"])
            times = record.get("times", {})
            run.tracker.replay(self.ref.key, name, params, tags, record["history"], summary_metrics(record["row"]),
                               times.get("start_ms"), times.get("end_ms"))
            return record["row"]
        return finished_row(directory)

    # -- what a kind says ---------------------------------------------------------------------
    def build(self, run: RunContext) -> nn.Module:
        """The network to train (θ0's architecture unless the stage changes it)."""
        return run.new_model()

    def make_mask(self, run: RunContext, model: nn.Module) -> Mask:
        """The stage's mask, on rank 0 only; `model` may be changed, `prepare` sets the weights afterwards."""
        raise NotImplementedError

    def prepare(self, run: RunContext, model: nn.Module, mask: Mask) -> int:
        """Load the starting weights into `model` (every rank); return the step training starts at."""
        raise NotImplementedError

    def fields(self) -> dict:
        """The stage's own fields of its results row (level, method, at, branch)."""
        return {}

    def row_fields(self, run: RunContext, model: nn.Module, mask: Mask) -> dict:
        """The fields of the results row that the stage sets itself; they win over the measured ones."""
        return self.fields()

    def mask_updater(self, run: RunContext, model: nn.Module, mask: Mask, handle):
        """What changes `mask` during training (dynamic sparse training), or None: the mask is fixed."""
        return None

    def matched_level(self, run: RunContext) -> Optional[int]:
        """The IMP level a baseline is compared with (its density equals that level's); levels carry their own."""
        return None

    def tracked_as(self, run: RunContext, density: float) -> tuple[str, dict, dict]:
        """(name, params, tags) of the stage's MLflow run, by the one schema (lottery.tracking.schema)."""
        return stage_run(self.ref, density, run.config.seed, run.config.exp, run.command, self.matched_level(run))

    def log_start(self, mask: Mask, start_step: int, end_step: int) -> None:
        logger.info("%s: density %.4f, training steps %d..%d", self.name, mask.density(), start_step, end_step)

    # -- the one sequence ---------------------------------------------------------------------
    def execute(self, run: RunContext) -> dict:
        begun = self.begin(run)
        return self.finish(begun, train(begun.job))

    def begin(self, run: RunContext) -> "Begun":
        """Everything before training: the network, the mask (made on rank 0, saved, broadcast), the starting
        weights, the tracking run and the training job. Packed training begins several stages, trains their jobs
        together, then finishes each."""
        directory = run.layout.directory(self.ref)
        model = self.build(run)
        mask = None
        if run.is_main:
            mask_path = directory / "mask.pt"
            if mask_path.exists():
                try:
                    mask = Mask.load(mask_path, model)
                except CorruptFileError as error:  # the stage is unfinished: its mask is a cache, made again
                    logger.warning("%s; making the mask of %s again", error, self.name)
            if mask is None:
                mask = self.make_mask(run, model)
                mask.save(mask_path)
        distributed.barrier()
        mask = distributed.broadcast_mask(mask)
        start_step = self.prepare(run, model, mask)
        self.log_start(mask, start_step, run.plan.total)
        started_ms = now_ms()
        name, params, tags = self.tracked_as(run, mask.density()) if run.tracker.enabled else ("", {}, {})
        handle = run.tracker.child(self.ref.key, name, params, tags, started_ms)
        handle.log_inputs(list(run.inputs))

        def on_eval(step: int, record: dict) -> None:
            handle.log_metrics({k: v for k, v in record.items() if k != "step" and v is not None}, step=step)

        config, files = run.config, RunLayout.stage_files(directory)
        updater = self.mask_updater(run, model, mask, handle)
        job = TrainJob(
            model=model, dataset=run.dataset, train_cfg=config.train, seed=config.seed,
            start_step=start_step, end_step=run.plan.total, mask=mask,
            checkpoint_path=files["checkpoint.pt"], checkpoint_every=run.plan.steps(config.ticket.checkpoint_every),
            checkpoint_tag=self.ref.relative, on_eval=on_eval, desc=self.ref.relative, rank=run.rank,
            world_size=run.world_size, mask_updater=updater,
        )
        return Begun(self, run, model, mask, handle, job, started_ms)

    def finish(self, begun: "Begun", result) -> dict:
        """After training: final.pt, metrics.json (flushed to disk), then DONE and the results row."""
        run, model, mask, handle, updater = begun.run, begun.model, begun.mask, begun.handle, begun.job.mask_updater
        files = RunLayout.stage_files(run.layout.directory(self.ref))
        distributed.check_replicas_agree(model, mask)
        density = mask.density()
        row = {
            "stage": self.ref.key, "kind": self.ref.kind,
            "density": density,
            "compression": compression_of(density),
            "layers": {name: info["density"] for name, info in mask.layer_report().items()},
            "collapsed": mask.collapsed(),
            **self.row_fields(run, model, mask),  # e.g. a structured method's own density
            **{k: v for k, v in result.summary().items() if k != "final_step"},
        }
        times = {"start_ms": begun.started_ms, "end_ms": now_ms()}  # this attempt's training, for MLflow's run times
        if run.is_main:
            atomic_torch_save(files["final.pt"], {k: v.cpu() for k, v in model.state_dict().items()}, durable=False)
            record = {"row": row, "history": result.history, "times": times}
            written = [files["mask.pt"], files["final.pt"]]
            if updater is not None:  # mask.pt stays the mask training started from; a restart needs it
                record["mask_updates"] = updater.history
                mask.save(files["final_mask.pt"])
                written.append(files["final_mask.pt"])
            write_json(files["metrics.json"], record, durable=False)
            fsync_paths([*written, files["metrics.json"]])  # DONE only after they are on disk
            files[DONE].touch()
            files["checkpoint.pt"].unlink(missing_ok=True)
            record_row(run.layout, row)
        # Points streamed before a kill may be lost: the whole history again, of which the handle sends the rest.
        log_history(handle, result.history, begun.started_ms, times["end_ms"], begun.job.start_step,
                    begun.job.end_step)
        handle.log_metrics(summary_metrics(row))
        if row["collapsed"]:
            handle.set_tags({"collapsed": ", ".join(row["collapsed"])})
        if run.config.track.log_model and self.ref.kind == LEVEL and self.ref.level == run.config.ticket.levels:
            handle.log_model(model)  # the ticket's last level; off by default, its weights are an artefact anyway
        handle.finish("FINISHED", times["end_ms"])
        return row


@dataclass
class Begun:
    """A training stage between begin and finish."""

    stage: TrainingStage
    run: RunContext
    model: nn.Module
    mask: Mask
    handle: object
    job: TrainJob
    started_ms: Optional[int] = None  # when training began, for the MLflow run's start time
