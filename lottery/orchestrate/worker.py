"""What runs one stage wherever it is scheduled: in the orchestrator's process, a local worker process or a Ray
task. A task is plain data (the config as a dict, the seed, the stage), so it pickles to any of them.

A worker keeps one run context per run directory (data on its device, tracking attached to the parent run the
orchestrator owns) for all the stages it runs, and logs each stage to the stage's own log file.

This module imports nothing heavy at module level: a fresh worker process sets its environment (one visible GPU,
its share of the CPU threads) in `start_worker` before torch is first imported.
"""
from __future__ import annotations

import logging
import os
import threading
import time
import traceback
from dataclasses import dataclass
from typing import Optional

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Slot:
    """What one worker may use: a GPU index (None: the CPU) and, on the CPU, a number of threads. Defined here, in
    a module without torch, because a fresh worker unpickles it before it may import torch."""

    device: Optional[str]
    threads: Optional[int]


@dataclass(frozen=True)
class Task:
    config: dict  # lottery.config.to_dict of the experiment config
    seed: int
    stage: object  # a lottery.run.stage.Stage (frozen dataclass)
    command: str
    passive: bool = True  # attach to parent runs the orchestrator owns

    @property
    def key(self) -> str:
        return f"seed_{self.seed}/{self.stage.name}"


@dataclass
class Outcome:
    key: str
    status: str  # "done" (ran here), "skipped" (already done), "busy" (another process holds it), "failed"
    row: Optional[dict] = None
    seconds: float = 0.0
    log: Optional[str] = None
    error: Optional[str] = None


_CONTEXTS: dict = {}  # run directory -> RunContext, for the life of this process
_DATASETS: dict = {}


def start_worker(slots) -> None:
    """The pool's initializer: take a slot (device, threads) from the queue and configure this process."""
    slot = slots.get()
    configure_worker(slot.device, slot.threads)
    import torch

    import lottery.orchestrate.graph  # noqa: F401 - torch and the workflows, now, while the first stages queue

    if slot.threads is not None:
        # Explicitly, not only through OMP_NUM_THREADS: set_num_threads also turns MKL's dynamic threading off, and
        # training leaves threads alone when OMP_NUM_THREADS is set. Without it a digits stage took 2.5x longer here.
        torch.set_num_threads(slot.threads)


def ready() -> bool:
    """A no-op task: submitting one per slot makes the pool start every worker at once."""
    return True


def configure_worker(device: Optional[str], threads: Optional[int]) -> None:
    """Run in a fresh worker process before torch is imported: one visible GPU, or a share of the CPU threads."""
    if device is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = device
    if threads is not None:
        os.environ["OMP_NUM_THREADS"] = str(threads)
        os.environ["MKL_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    logging.basicConfig(handlers=[logging.NullHandler()])  # workers log to stage files; the console is the display's
    _die_with_parent()
    from multiprocessing.util import Finalize

    Finalize(None, close_contexts, exitpriority=10)  # multiprocessing workers skip atexit


def _die_with_parent() -> None:
    """A worker whose orchestrator was killed must not run on: its stage's lock frees and a re-run redoes it."""
    import ctypes
    import signal

    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG (Linux)
    except (OSError, AttributeError):
        import threading

        parent = os.getppid()

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(1.0)
            os._exit(1)

        threading.Thread(target=watch, name="lottery-parent-watch", daemon=True).start()


def close_contexts(status: str = "FINISHED") -> None:
    """Close the trackers of this process's run contexts (their parent runs belong to the orchestrator)."""
    while _CONTEXTS:
        _, run = _CONTEXTS.popitem()
        run.tracker.close(status)


def _config(task: Task):
    from lottery.config import from_dict

    config = from_dict(task.config)
    config.seed = task.seed
    config.train.progress = "off"  # one progress display for the whole experiment, not one per worker
    return config


def _dataset_key(config) -> tuple:
    return repr(config.data), config.seed if config.data.name == "synthetic" else None, config.train.device


def remember_dataset(config, dataset) -> None:
    """Keep a dataset this process loaded already (the preflight's) for the run contexts that need it."""
    _DATASETS.setdefault(_dataset_key(config), dataset)


def _dataset(config):
    from lottery.run.context import load_data

    key = _dataset_key(config)
    if key not in _DATASETS:
        _DATASETS[key] = load_data(config)
    return _DATASETS[key]


def context_for(task: Task):
    from lottery.run.context import attach_run
    from lottery.run.layout import RunLayout

    config = _config(task)
    run_dir = RunLayout.of(config).run_dir
    if run_dir not in _CONTEXTS:
        _CONTEXTS[run_dir] = attach_run(config, task.command, _dataset(config), passive=task.passive)
    return _CONTEXTS[run_dir]


def execute(task: Task, run=None, wait: bool = False) -> Outcome:
    """Run one stage; every failure becomes an Outcome. With wait=False a stage another process holds comes back
    "busy" at once (the local scheduler runs something else meanwhile); with wait=True this call waits for it."""
    from lottery.run.stage import StageBusy, claim_and_run

    started = time.perf_counter()
    try:
        run = run or context_for(task)
    except Exception as error:  # noqa: BLE001 - reported per stage; the orchestrator goes on
        return Outcome(task.key, "failed", error=f"{type(error).__name__}: {error}")
    path = task.stage.log_file(run.layout)
    try:
        with _stage_log(path):
            try:
                result, ran = claim_and_run(run, task.stage, wait=wait)
            except StageBusy:
                return Outcome(task.key, "busy", seconds=time.perf_counter() - started, log=str(path))
            except Exception as error:  # noqa: BLE001 - reported per stage; the orchestrator goes on
                logging.getLogger(__name__).error("%s failed:\n%s", task.key, traceback.format_exc())
                return Outcome(task.key, "failed", seconds=time.perf_counter() - started, log=str(path),
                               error=f"{type(error).__name__}: {error}")
        if task.passive:
            run.tracker.flush()  # a worker may be stopped at any time: MLflow has this stage's runs before it returns
        return Outcome(task.key, "done" if ran else "skipped", result if isinstance(result, dict) else None,
                       time.perf_counter() - started, str(path))
    except OSError as error:  # its log file cannot be written
        return Outcome(task.key, "failed", error=f"{type(error).__name__}: {error}")


def execute_pack(tasks: list, runs: Optional[list] = None) -> list:
    """Run several training stages in one packed step (lottery.training.packed): claim each, begin each, train
    them together, finish each. Stages that are done, or held by another process, drop out of the pack; if the
    pack as a whole fails, each of its stages fails with the error."""
    from contextlib import ExitStack

    from lottery.run.stage import StageBusy, claim
    from lottery.training.packed import train_packed

    started = time.perf_counter()
    outcomes: dict[int, Outcome] = {}
    begun: dict[int, object] = {}
    with ExitStack() as claims:
        for index, task in enumerate(tasks):
            try:
                run = runs[index] if runs is not None else context_for(task)
                finished = claims.enter_context(claim(run, task.stage, wait=False))
                if finished is not None:
                    outcomes[index] = Outcome(task.key, "skipped", finished[0])
                else:
                    with _stage_log(task.stage.log_file(run.layout)):
                        begun[index] = task.stage.begin(run)
            except StageBusy:
                outcomes[index] = Outcome(task.key, "busy")
            except Exception as error:  # noqa: BLE001 - one stage's failure to begin: the rest of the pack goes on
                outcomes[index] = Outcome(task.key, "failed", error=f"{type(error).__name__}: {error}")
        if begun:
            order = list(begun)
            try:
                with _stage_log(*(begun[i].stage.log_file(begun[i].run.layout) for i in order)):
                    logging.getLogger(__name__).info("training %d stages packed: %s", len(order),
                                                     ", ".join(tasks[i].key for i in order))
                    results = train_packed([begun[i].job for i in order])
                    rows = [begun[i].stage.finish(begun[i], result) for i, result in zip(order, results)]
            except Exception as error:  # noqa: BLE001 - the pack failed: every stage in it did
                logging.getLogger(__name__).error("packed training failed:\n%s", traceback.format_exc())
                for i in order:
                    outcomes[i] = Outcome(tasks[i].key, "failed", error=f"{type(error).__name__}: {error}",
                                          log=str(begun[i].stage.log_file(begun[i].run.layout)))
            else:
                seconds = time.perf_counter() - started
                for i, row in zip(order, rows):
                    outcomes[i] = Outcome(tasks[i].key, "done", row, seconds,
                                          str(begun[i].stage.log_file(begun[i].run.layout)))
                    if tasks[i].passive:
                        begun[i].run.tracker.flush()
    return [outcomes[index] for index in range(len(tasks))]


class _stage_log:
    """Log to the given stage log files (all of them: a pack's lines belong to each of its stages) for the block."""

    def __init__(self, *paths):
        self.paths = paths

    def __enter__(self):
        root = logging.getLogger()
        self.level, self.handlers = root.level, []
        for path in self.paths:
            path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(path, mode="a")
            thread = threading.get_ident()  # the orchestrator runs stages in a thread too: only this one's lines
            handler.addFilter(lambda record, thread=thread: record.thread == thread)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S"))
            root.addHandler(handler)
            self.handlers.append(handler)
        root.setLevel(logging.INFO)
        return self

    def __exit__(self, *exc_info):
        root = logging.getLogger()
        for handler in self.handlers:
            root.removeHandler(handler)
            handler.close()
        root.setLevel(self.level)
