"""The local executor: a pool of worker processes (spawn), one per visible GPU times run.jobs_per_device, or on a
CPU machine run.workers of them with the CPU threads split between them. Each worker sees only its device.

With a single slot the stages run in this process, in dependency order, with no pool to start.
"""
from __future__ import annotations

import concurrent.futures
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


def run_local(graph: Graph, task_of: Callable[[Node], Task], slots: list[Slot], progress: Progress,
              in_process: Optional[Callable[[Node], object]] = None, packs: Optional[Callable] = None
              ) -> dict[Node, Outcome]:
    """Run the graph; `in_process(node)` gives the run context to use when there is a single slot; `packs(ready)`
    picks the ready nodes that train together next (default: the first alone)."""
    scheduler = Scheduler(graph)
    packs = packs or (lambda ready: ready[:1])
    if len(slots) == 1 and in_process is not None:
        return _sequential(scheduler, task_of, progress, in_process, packs)
    deaths: dict[Node, int] = {}
    while not scheduler.complete:  # a new pool after a worker died: the pool breaks with it
        _drive_pool(scheduler, task_of, slots, progress, deaths, packs)
    return scheduler.outcomes


def _submit(pool, task_of, nodes: list[Node]):
    if len(nodes) == 1:
        return pool.submit(execute, task_of(nodes[0]))
    return pool.submit(execute_pack, [task_of(node) for node in nodes])


def _outcomes(value) -> list[Outcome]:
    return value if isinstance(value, list) else [value]


def _drive_pool(scheduler: Scheduler, task_of, slots: list[Slot], progress: Progress, deaths: dict, packs) -> None:
    """Run stages on a fresh pool until the graph is complete or a worker dies (which breaks the pool: the stages
    it and its siblings were running are queued again, up to WORKER_DEATHS times each, then failed)."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    for slot in slots:
        queue.put(slot)
    with concurrent.futures.ProcessPoolExecutor(len(slots), mp_context=context, initializer=start_worker,
                                                initargs=(queue,)) as pool:
        for warm in [pool.submit(ready) for _ in slots]:  # start (and import in) every worker at once
            warm.result()
        futures: dict[concurrent.futures.Future, list[Node]] = {}
        while not scheduler.complete:
            while len(futures) < len(slots) and (candidates := scheduler.ready()):
                nodes = packs(candidates)
                for node in nodes:
                    scheduler.start(node)
                futures[_submit(pool, task_of, nodes)] = nodes
            progress.running = sum(len(nodes) for nodes in futures.values())
            progress.update()
            if not futures:
                time.sleep(max(scheduler.next_wakeup(), 0.05))
                continue
            finished, _ = concurrent.futures.wait(futures, timeout=1.0, return_when=concurrent.futures.FIRST_COMPLETED)
            for future in finished:
                nodes = futures.pop(future)
                try:
                    outcomes = _outcomes(future.result())
                except concurrent.futures.process.BrokenProcessPool:
                    _requeue([*nodes, *[n for group in futures.values() for n in group]], scheduler, progress, deaths)
                    return
                for node, outcome in zip(nodes, outcomes):
                    _record(scheduler, progress, node, outcome)
            progress.running = sum(len(nodes) for nodes in futures.values())


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
        if len(nodes) == 1:
            outcomes = [execute(task_of(nodes[0]), run=in_process(nodes[0]))]
        else:
            outcomes = execute_pack([task_of(node) for node in nodes], [in_process(node) for node in nodes])
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
