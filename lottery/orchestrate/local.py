"""The local executor: a pool of worker processes (spawn), one per visible GPU times run.jobs_per_device, or on a
CPU machine run.workers of them with the CPU threads split between them. Each worker sees only its device.

This process is the first slot: with a single slot the stages run here, in dependency order, with no pool to
start; with more, here in a thread beside the spawned workers, so work starts while they import torch.
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import multiprocessing
import os
import time
from typing import Callable, Optional

from lottery.orchestrate.graph import Graph, Node
from lottery.orchestrate.progress import Progress
from lottery.orchestrate.scheduler import Scheduler
from lottery.orchestrate.worker import Outcome, Slot, Task, execute, execute_pack, ready, start_worker

logger = logging.getLogger(__name__)

WORKER_DEATHS = 2  # a stage whose worker died more often than this fails


def slots_for(config, gpu_count: Optional[int] = None, cpu_count: Optional[int] = None) -> list[Slot]:
    """One slot per GPU per job (or run.workers CPU slots, threads split evenly); CUDA_VISIBLE_DEVICES respected."""
    if gpu_count is None:
        import torch

        gpu_count = torch.cuda.device_count() if config.train.device in ("auto", "cuda") else 0
    if gpu_count:
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        devices = visible.split(",")[:gpu_count] if visible else [str(index) for index in range(gpu_count)]
        return [Slot(device, None) for device in devices for _ in range(config.run.jobs_per_device)]
    cores = cpu_count or os.cpu_count() or 1
    workers = config.run.workers
    threads = max(1, cores // workers) if workers > 1 else None  # one worker keeps lottery's own thread choice
    return [Slot(None, threads) for _ in range(workers)]


class WorkerPool:
    """Spawned worker processes, one per slot, each importing torch and lottery as soon as it starts; an
    orchestrator starts them before it plans, so that happens while it works."""

    def __init__(self, slots: list[Slot]):
        context = multiprocessing.get_context("spawn")
        queue = context.Queue()
        for slot in slots:
            queue.put(slot)
        self.pool = concurrent.futures.ProcessPoolExecutor(len(slots), mp_context=context, initializer=start_worker,
                                                           initargs=(queue,))
        self.started = [self.pool.submit(ready) for _ in slots]  # start every worker at once

    def ready_count(self) -> int:
        return sum(future.done() for future in self.started)

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)


def start_pool(slots: list[Slot], in_process: bool) -> Optional[WorkerPool]:
    """The pool run_local will use for `slots` (this process being the first when `in_process`), or None."""
    spawned = slots[1:] if in_process else slots
    return WorkerPool(spawned) if spawned else None


def run_local(graph: Graph, task_of: Callable[[Node], Task], slots: list[Slot], progress: Progress,
              in_process: Optional[Callable[[Node], object]] = None, packs: Optional[Callable] = None,
              pool: Optional[WorkerPool] = None) -> dict[Node, Outcome]:
    """Run the graph; `in_process(node)` gives this process's run context of a node: with it, this process is the
    first slot (it has torch imported and the data loaded, so it starts at once while the spawned workers import),
    and with a single slot the only one. `packs(ready, idle_slots)` picks the ready nodes that train together next
    (default: the first alone). `pool`: workers started already (start_pool); run_local shuts it down."""
    scheduler = Scheduler(graph)
    packs = packs or (lambda ready, free_slots=1: ready[:1])
    if len(slots) == 1 and in_process is not None:
        return _sequential(scheduler, task_of, progress, in_process, packs)
    deaths: dict[Node, int] = {}
    while not scheduler.complete:  # a new pool after a worker died: the pool breaks with it
        pool = pool or start_pool(slots, in_process is not None)
        try:
            _drive_pool(scheduler, task_of, slots, progress, deaths, packs, in_process, pool)
        finally:
            if pool is not None:
                pool.shutdown()
            pool = None
    return scheduler.outcomes


def _submit(pool, task_of, nodes: list[Node]):
    if len(nodes) == 1:
        return pool.submit(execute, task_of(nodes[0]))
    return pool.submit(execute_pack, [task_of(node) for node in nodes])


def _run_here(task_of, in_process, nodes: list[Node]) -> list[Outcome]:
    if len(nodes) == 1:
        return [execute(task_of(nodes[0]), run=in_process(nodes[0]))]
    return execute_pack([task_of(node) for node in nodes], [in_process(node) for node in nodes])


def _outcomes(value) -> list[Outcome]:
    return value if isinstance(value, list) else [value]


def _drive_pool(scheduler: Scheduler, task_of, slots: list[Slot], progress: Progress, deaths: dict, packs,
                in_process, workers: Optional[WorkerPool]) -> None:
    """Run stages on a fresh pool until the graph is complete or a worker dies (which breaks the pool: the stages
    it and its siblings were running are queued again, up to WORKER_DEATHS times each, then failed).

    With `in_process`, slot 0 is a thread of this process and the pool has the other slots. A worker gets stages
    only once it has started (imported torch and lottery), so nothing waits in the pool's queue meanwhile."""
    here = in_process is not None
    pool = workers.pool if workers is not None else None
    started = workers.started if workers is not None else []
    with contextlib.ExitStack() as stack:
        thread = stack.enter_context(concurrent.futures.ThreadPoolExecutor(1, "lottery-stage")) if here else None
        if here:  # this process's share of the threads while it is one slot of several
            from lottery.training.device import cpu_threads

            stack.enter_context(cpu_threads(slots[0].threads))
        futures: dict[concurrent.futures.Future, tuple[list[Node], bool]] = {}  # -> (nodes, run here)
        while not scheduler.complete:
            while candidates := scheduler.ready():
                here_free = here and not any(local for _, local in futures.values())
                pool_free = (workers.ready_count() if workers else 0) - sum(not local for _, local in futures.values())
                if not here_free and pool_free <= 0:
                    break
                # share the packable stages over every idle slot, counting workers that are still starting
                idle = int(here_free) + len(slots) - int(here) - sum(not local for _, local in futures.values())
                nodes = packs(candidates, idle)
                for node in nodes:
                    scheduler.start(node)
                if here_free:
                    futures[thread.submit(_run_here, task_of, in_process, nodes)] = (nodes, True)
                    continue
                try:
                    futures[_submit(pool, task_of, nodes)] = (nodes, False)
                except concurrent.futures.process.BrokenProcessPool:  # a worker died while idle
                    _broken(nodes, futures, scheduler, progress, deaths)
                    return
            progress.running = sum(len(nodes) for nodes, _ in futures.values())
            progress.update()
            if not futures:
                time.sleep(max(scheduler.next_wakeup(), 0.05))
                continue
            waiting = [*futures, *(f for f in started if not f.done())]  # a worker that starts frees a slot
            finished, _ = concurrent.futures.wait(waiting, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                if future not in futures:
                    continue
                nodes, _ = futures.pop(future)
                try:
                    outcomes = _outcomes(future.result())
                except concurrent.futures.process.BrokenProcessPool:
                    _broken(nodes, futures, scheduler, progress, deaths)
                    return
                for node, outcome in zip(nodes, outcomes):
                    _record(scheduler, progress, node, outcome)
            progress.running = sum(len(nodes) for nodes, _ in futures.values())


def _broken(nodes: list[Node], futures: dict, scheduler: Scheduler, progress: Progress, deaths: dict) -> None:
    """A worker died: this process's own stage finishes and is recorded; every stage of the pool is queued again."""
    for future, (group, local) in list(futures.items()):
        if local:
            for node, outcome in zip(group, _outcomes(future.result())):
                _record(scheduler, progress, node, outcome)
            futures.pop(future)
    _requeue([*nodes, *[node for group, _ in futures.values() for node in group]], scheduler, progress, deaths)


def _requeue(nodes: list[Node], scheduler: Scheduler, progress: Progress, deaths: dict) -> None:
    logger.warning("a worker died (killed or out of memory); its pool restarts and %d running stage(s) are queued "
                   "again", len(nodes))
    for node in nodes:
        deaths[node] = deaths.get(node, 0) + 1
        if deaths[node] > WORKER_DEATHS:
            _record(scheduler, progress, node, Outcome(node.key, "failed", error=f"its worker died {deaths[node]} "
                                                                                 "times"))
        else:
            scheduler.running.discard(node)


def _sequential(scheduler: Scheduler, task_of, progress: Progress, in_process, packs) -> dict[Node, Outcome]:
    while not scheduler.complete:
        candidates = scheduler.ready()
        if not candidates:
            time.sleep(max(scheduler.next_wakeup(), 0.05))
            continue
        nodes = packs(candidates)
        for node in nodes:
            scheduler.start(node)
        progress.running = len(nodes)
        progress.update()
        outcomes = _run_here(task_of, in_process, nodes)
        progress.running = 0
        for node, outcome in zip(nodes, outcomes):
            _record(scheduler, progress, node, outcome)
    return scheduler.outcomes


def _record(scheduler: Scheduler, progress: Progress, node: Node, outcome: Outcome) -> None:
    blocked = scheduler.finish(node, outcome)
    if outcome.status != "busy":
        progress.finished(node.key, outcome.status, outcome.seconds, outcome.row, outcome.log, outcome.error)
    for other, reason in blocked:
        progress.finished(other.key, "blocked", 0.0, error=reason.error)
