"""MLflow's side of tracking: the helper process that applies the training process's messages.

The only module that imports mlflow, and only inside the helper process (`serve`); the training
process talks to it through lottery.tracking.client.MlflowTracker. Never imports torch.
"""
from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import tempfile
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Optional

from lottery.run.files import atomic_write_text
from lottery.run.locks import FileLock
from lottery.tracking.protocol import (COMMANDS_TAG, COMPLETE, IDS_FILE, METRICS_PER_BATCH, PARAMS_PER_BATCH,
                                       PARENT_KEY, TAG_VALUE_LIMIT, sqlite_path)

logger = logging.getLogger(__name__)

INPUT_ATTEMPTS = 4  # log_inputs tries: a lost race for a new dataset row is retried


def duplicate_key(error: BaseException) -> bool:
    """The store refused an insert on a unique key (sqlite, PostgreSQL, MySQL wording, or a server relaying it)."""
    text = str(error).lower()
    return any(words in text for words in ("unique constraint", "duplicate key", "duplicate entry", "integrityerror"))


def git_state(directory: Path) -> dict[str, str]:
    """Commit and dirtiness of the repository holding `directory`; empty when git is unavailable."""
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=directory, capture_output=True,
                                text=True, timeout=5)
        if commit.returncode != 0:
            return {}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=directory,
                                capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return {}
    state = {"git_commit": commit.stdout.strip(), "mlflow.source.git.commit": commit.stdout.strip()}
    if status.returncode == 0:
        state["git_dirty"] = str(bool(status.stdout.strip())).lower()
    return state


def standard_tags() -> dict[str, str]:
    """MLflow's user and source fields, which the UI shows in its runs table."""
    import getpass

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = "unknown"
    return {"mlflow.user": user, "mlflow.source.name": "lottery", "mlflow.source.type": "LOCAL"}


def serve(inbox_fd: int, outbox_fd: int) -> None:
    """Apply the training process's messages to MLflow, in order, until "stop" or end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches training, which then closes the runs
    os.nice(10)  # background work: where cores are scarce, training goes first
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("urllib3").setLevel(logging.ERROR)  # retries of a dead server: the one warning says it
    inbox, outbox = Connection(inbox_fd, writable=False), Connection(outbox_fd, readable=False)
    store: Optional[_Store] = None
    failed = False
    try:
        while True:
            kind, *args = inbox.recv()
            if kind == "stop":
                break
            if kind == "drain":
                outbox.send(("drained", *args))
            elif not failed:
                try:
                    if kind == "open":
                        uri, experiment, run_dir, system_seconds = args
                        store = _Store(uri, experiment, run_dir, outbox, system_seconds)
                    else:
                        getattr(store, kind)(*args)
                except Exception as error:  # noqa: BLE001 - reported; the training process turns tracking off
                    failed = True
                    outbox.send(("failed", failure_reason(error)))
    except (EOFError, OSError):
        pass  # the training process is gone
    for monitor in (store.monitors.values() if store is not None else ()):
        monitor.finish()  # runs left open (a killed trainer): their last samples are kept
    # Everything is committed. Skip interpreter shutdown: MLflow's exit hooks (telemetry) cost ~1 s.
    logging.shutdown()
    os._exit(0)


def failure_reason(error: BaseException) -> str:
    """What went wrong, in a few words: the OS error of a connection when there is one (MLflow wraps it in
    several layers of retry messages), else the error's first line."""
    text = " ".join(str(error).split())
    errno_at = text.find("[Errno ")
    if errno_at >= 0:
        return text[errno_at:].split("'")[0].split('"')[0].rstrip(")")
    for phrase in ("timed out", "Name or service not known", "Temporary failure in name resolution"):
        if phrase in text:
            return phrase
    return f"{type(error).__name__}: {text[:200]}"


class _Store:
    """The MLflow side: one client, the experiment, run ids by key, metric steps already stored.

    <run_dir>/tracking.json holds {uri: {experiment: {"experiment_id": ..., "runs": {key: run_id},
    "complete": [key, ...]}}}: the stage runs known to hold every point of their stage's record.
    """

    def __init__(self, uri: str, experiment: str, run_dir: str, outbox: Connection, system_seconds: float = 0.0):
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.client, self.uri, self.outbox = MlflowClient(tracking_uri=uri), uri, outbox
        self.experiment_id = self._experiment(experiment)
        self.runs: dict[str, str] = {}
        self.stored: dict[str, set] = {}  # per key: the (metric, step, value) points MLflow already has
        self.was_finished: set[str] = set()  # keys whose run was FINISHED when this process re-attached to it
        self.changed: set[str] = set()  # keys this process logged new points or created child runs for
        self.created: set[str] = set()  # keys whose run this process created
        self.system_seconds, self.monitors = system_seconds, {}  # key -> mlflow's SystemMetricsMonitor
        self.ids_path, self.experiment = Path(run_dir) / IDS_FILE, experiment
        self.saved = self._entry(self._read_ids())
        outbox.send(("opened", self.experiment_id))

    def _read_ids(self) -> dict:
        try:
            ids = json.loads(self.ids_path.read_text()) if self.ids_path.exists() else {}
        except (OSError, ValueError) as error:
            logger.warning("%s is unreadable (%s); new MLflow runs will be created", self.ids_path, error)
            ids = {}
        return ids if isinstance(ids, dict) else {}

    def _entry(self, ids: dict) -> dict:
        return ids.setdefault(self.uri, {}).setdefault(self.experiment, {"experiment_id": None, "runs": {}})

    def _find_or_create(self, key: str, name: str, tags: dict, start_ms: Optional[int]):
        """(run, created): the key's run from tracking.json, or a new one recorded there. Under the ids lock, so
        processes sharing a run directory (workers, concurrent launches) never create the same run twice."""
        with FileLock(self.ids_path.parent / f".{IDS_FILE}.lock"):
            ids = self._read_ids()
            self.saved = self._entry(ids)
            run = self._existing_run(self.saved["runs"].get(key))
            if run is not None:
                return run, False
            run = self.client.create_run(self.experiment_id, start_time=start_ms, run_name=name, tags=tags)
            self.saved["experiment_id"], self.saved["runs"][key] = self.experiment_id, run.info.run_id
            if key in self.saved.get(COMPLETE, []):  # its old run is gone: the new one is not complete yet
                self.saved[COMPLETE].remove(key)
            self.ids_path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_text(self.ids_path, json.dumps(ids, indent=2) + "\n")
            return run, True

    def _experiment(self, name: str) -> str:
        from mlflow.exceptions import MlflowException

        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            path = sqlite_path(self.uri)  # artefacts beside the database; not ./mlruns, a legacy store's name
            location = None if path is None else (path.parent / "mlartifacts" / re.sub(r"[^\w.-]+", "_", name)).as_uri()
            try:
                return self.client.create_experiment(name, location)
            except MlflowException as error:
                if error.error_code != "RESOURCE_ALREADY_EXISTS":
                    raise
                experiment = self.client.get_experiment_by_name(name)
        if experiment.lifecycle_stage == "deleted":
            self.client.restore_experiment(experiment.experiment_id)
        return experiment.experiment_id

    def attach(self, key: str, name: str, tags: dict, params: dict, parent_key: Optional[str],
               passive: bool = False, start_ms: Optional[int] = None, live: bool = False) -> None:
        """Re-attach to the key's run in tracking.json, or create it (starting at `start_ms`); then log tags and
        new params. `passive`: another process owns the run, so its status is left as it is. A FINISHED run
        stays FINISHED, with its times, unless this process adds to it (see finish)."""
        if parent_key in self.runs:
            tags = {**tags, "mlflow.parentRunId": self.runs[parent_key]}
            self.changed.add(parent_key)
        if key == PARENT_KEY:  # here, not in training: two git calls cost the first level ~9 ms
            tags = {**git_state(Path(__file__).resolve().parent), **tags}
        tags = {**standard_tags(), **{k: str(v)[:TAG_VALUE_LIMIT] for k, v in tags.items()}}
        run, created = self._find_or_create(key, name, tags, start_ms)
        if live and key != PARENT_KEY and self.system_seconds > 0:
            self._monitor(key, run.info.run_id, resume=not created)
        if created:
            self.runs[key] = run.info.run_id
            self.created.add(key)
            self.params(key, params)
            self.outbox.send(("attached", key, run.info.run_id, False))
            return
        run_id = self.runs[key] = run.info.run_id
        if run.info.status == "FINISHED":
            self.was_finished.add(key)
        elif not passive:
            self.client.update_run(run_id, status="RUNNING")
        self.stored[key] = {(metric, m.step, m.value) for metric in run.data.metrics
                            for m in self.client.get_metric_history(run_id, metric)}
        if COMMANDS_TAG in tags and COMMANDS_TAG in run.data.tags:  # the list of commands grows, newest last
            lines = (run.data.tags[COMMANDS_TAG] + "\n" + tags[COMMANDS_TAG]).splitlines()
            while len("\n".join(lines)) > TAG_VALUE_LIMIT:
                lines.pop(0)
            self.tags(key, {COMMANDS_TAG: "\n".join(lines)})
        # A run keeps its identity: re-attaching adds missing tags, never rewrites stored ones.
        # Params are immutable in MLflow: the missing ones are logged, changed ones become tags.
        stored = run.data.params
        self.tags(key, {k: v for k, v in tags.items() if k not in run.data.tags})
        self.tags(key, {f"changed_param.{k}": v for k, v in params.items() if k in stored and stored[k] != v})
        self.params(key, {k: v for k, v in params.items() if k not in stored})
        self.outbox.send(("attached", key, run_id, True))

    def _existing_run(self, run_id: Optional[str]):
        """The stored run to re-attach to; None if it was deleted, moved or never existed."""
        from mlflow.exceptions import MlflowException

        try:
            run = self.client.get_run(run_id) if run_id else None
        except MlflowException as error:
            if error.error_code != "RESOURCE_DOES_NOT_EXIST":
                raise
            run = None
        usable = run is not None and run.info.lifecycle_stage != "deleted"
        return run if usable and run.info.experiment_id == self.experiment_id else None

    def _batch(self, key: str, kind: str, items: list, size: int) -> None:
        """log_batch within MLflow's limits: 100 params or tags, 1000 metrics per call."""
        for start in range(0, len(items), size):
            self.client.log_batch(self.runs[key], **{kind: items[start:start + size]})

    def params(self, key: str, params: dict[str, str]) -> None:
        from mlflow.entities import Param

        self._batch(key, "params", [Param(k, v) for k, v in params.items()], PARAMS_PER_BATCH)

    def tags(self, key: str, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._batch(key, "tags", [RunTag(k, str(v)[:TAG_VALUE_LIMIT]) for k, v in tags.items()], PARAMS_PER_BATCH)

    def points(self, key: str, points: list[tuple[str, float, int, int]]) -> None:
        from mlflow.entities import Metric

        stored = self.stored.setdefault(key, set())  # a resumed or replayed run sends points MLflow already has
        fresh = [Metric(name, value, stamp, step) for name, value, step, stamp in points
                 if (name, step, value) not in stored]
        self._batch(key, "metrics", fresh, METRICS_PER_BATCH)
        stored.update((metric.key, metric.step, metric.value) for metric in fresh)
        if fresh:
            self.changed.add(key)

    def _monitor(self, key: str, run_id: str, resume: bool) -> None:
        """MLflow's own sampler of CPU, memory, disk, network (and GPU, with nvidia-ml-py) as system/* metrics."""
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        monitor = SystemMetricsMonitor(run_id, sampling_interval=self.system_seconds, samples_before_logging=1,
                                       resume_logging=resume, tracking_uri=self.uri)
        monitor.start()
        self.monitors[key] = monitor

    def inputs(self, key: str, datasets: list[dict]) -> None:
        """Dataset inputs, once per run: when this process created it.

        MLflow's store looks a dataset up and inserts it when it is not found, in two steps: two processes logging
        one dataset at once (the workers of one experiment) can both miss it, and the second insert then breaks
        the (experiment, name, digest) key. That attempt is retried: by then the dataset exists and is linked."""
        from mlflow.entities import Dataset, DatasetInput, InputTag
        from mlflow.exceptions import MlflowException

        if key not in self.created:
            return
        inputs = [DatasetInput(Dataset(name=d["name"], digest=d["digest"], source_type="local",
                                       source=json.dumps({"uri": d["source"]}), profile=json.dumps(d["profile"])),
                               tags=[InputTag("mlflow.data.context", d["context"])]) for d in datasets]
        for attempt in range(1, INPUT_ATTEMPTS + 1):
            try:
                self.client.log_inputs(self.runs[key], datasets=inputs)
                return
            except MlflowException as error:
                if attempt == INPUT_ATTEMPTS or not duplicate_key(error):
                    raise
                time.sleep(0.05 * attempt)

    def model(self, key: str, path: str) -> None:
        """mlflow.pytorch.log_model of a pickled network (track.log_model); the only place torch is imported here."""
        import mlflow
        import torch

        try:
            network = torch.load(path, weights_only=False)
            mlflow.set_tracking_uri(self.uri)
            with mlflow.start_run(run_id=self.runs[key]):  # re-opens the run; its finish message sets the times
                mlflow.pytorch.log_model(network, name="model", serialization_format="pickle")
        finally:
            os.unlink(path)

    def artifact(self, key: str, path: str, artifact_path: Optional[str]) -> None:
        log = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
        log(self.runs[key], path, artifact_path)

    def image(self, key: str, data: bytes, name: str) -> None:
        with tempfile.TemporaryDirectory(prefix="lottery-artifact-") as directory:
            path = Path(directory) / Path(name).name
            path.write_bytes(data)
            self.client.log_artifact(self.runs[key], str(path), str(Path(name).parent) if "/" in name else None)

    def finish(self, key: str, status: str, end_ms: Optional[int] = None) -> None:
        """End the run at `end_ms`. A run that was already FINISHED and got nothing new keeps its end time, so
        re-running a finished command does not stretch it. A finished stage run is marked complete in
        tracking.json: it holds every point, and a later resume need not replay it."""
        monitor = self.monitors.pop(key, None)
        if monitor is not None:
            monitor.finish()
        if not (key in self.was_finished and key not in self.changed and status == "FINISHED"):
            self.client.set_terminated(self.runs[key], status, end_time=end_ms)
        if status == "FINISHED" and key != PARENT_KEY:
            with FileLock(self.ids_path.parent / f".{IDS_FILE}.lock"):
                ids = self._read_ids()
                entry = self._entry(ids)
                entry[COMPLETE] = sorted({*entry.get(COMPLETE, []), key})
                atomic_write_text(self.ids_path, json.dumps(ids, indent=2) + "\n")
