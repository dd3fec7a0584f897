"""The Ray executor: the same stages as Ray tasks on a running cluster (run.ray_address or $RAY_ADDRESS; with
neither, a local Ray instance). Each task asks for 1 / run.jobs_per_device GPUs (on a GPU cluster) and one CPU,
so Ray packs and places them; a stage's dependencies are passed to Ray as the results of the tasks it needs, so
Ray starts it when they are done. The run root must be on a filesystem every node sees.

A task whose node dies is retried by Ray (max_retries); whatever is still unfinished is retried by running the
same command again, because every stage skips itself when its DONE marker exists.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

from lottery.errors import ConfigError
from lottery.orchestrate.graph import Graph, Node
from lottery.orchestrate.progress import Progress
from lottery.orchestrate.scheduler import FINISHED
from lottery.orchestrate.worker import Outcome, Task, execute

logger = logging.getLogger(__name__)

RETRIES = 3  # Ray re-runs a task this many times when the worker or node running it dies


def stage_task(task: Task, *needed: Outcome) -> Outcome:
    """Run in a Ray worker: a stage whose needs all finished, waiting for any other process that holds it."""
    failed = [outcome for outcome in needed if outcome.status not in FINISHED]
    if failed:
        return Outcome(task.key, "blocked", error=f"needs {failed[0].key}, which {failed[0].status}")
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # Ray sets it per task; explicitly, MKL stops re-threading
        import torch

        torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    return execute(task, wait=True)


def _connect(config) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("run.executor=ray needs Ray: pip install -e '.[ray]'", "run.executor") from None
    if ray.is_initialized():
        return
    address = config.run.ray_address or os.environ.get("RAY_ADDRESS")
    root = str(Path(__file__).resolve().parent.parent.parent)  # workers import this checkout of lottery
    runtime = {"env_vars": {"PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
                            "OMP_WAIT_POLICY": "PASSIVE"}}
    if address:
        ray.init(address=address, runtime_env=runtime, log_to_driver=False)
    else:
        ray.init(num_cpus=max(1, config.run.workers), runtime_env=runtime, log_to_driver=False,
                 include_dashboard=False)


def run_ray(graph: Graph, task_of, config, progress: Progress) -> dict[Node, Outcome]:
    import ray

    _connect(config)
    gpus = ray.cluster_resources().get("GPU", 0)
    options = {"num_cpus": 1, "max_retries": RETRIES}
    if gpus:
        options["num_gpus"] = 1.0 / config.run.jobs_per_device
    remote = ray.remote(stage_task).options(**options)
    references = {}
    for node in graph.nodes:  # graph order: a stage's needs are submitted before it
        references[node] = remote.remote(task_of(node), *[references[need] for need in graph.needs[node]])
    pending = {reference: node for node, reference in references.items()}
    outcomes: dict[Node, Outcome] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        progress.running = min(len(pending), int(ray.cluster_resources().get("CPU", 1)))
        progress.update()
        for reference in ready:
            node = pending.pop(reference)
            try:
                outcome = ray.get(reference)
            except Exception as error:  # noqa: BLE001 - a task that failed after its retries fails its stage
                outcome = Outcome(node.key, "failed", error=f"Ray task failed ({type(error).__name__}: {error})")
            outcomes[node] = outcome
            progress.finished(node.key, outcome.status, outcome.seconds, outcome.row, outcome.log, outcome.error)
    return outcomes
