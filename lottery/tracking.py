"""MLflow behind the Tracker interface. The only module that imports mlflow.

MLflow runs in a helper process (`serve`) fed through a pipe: training never waits on the store,
never shares the GIL with it and never pays for importing mlflow. The first MLflow failure
(server down, timeout, bad URI) logs one warning and turns tracking off for the rest of the run;
the run directory stays the complete record and `lottery sync RUN_DIR` uploads it later.

Run ids live in <run_dir>/tracking.json, per tracking URI and experiment, under stable keys
("parent", "level_03", ...). A resumed process re-attaches to those runs, and metric points
already stored are not logged twice, so resuming or syncing again leaves no duplicates.
"""
from __future__ import annotations

import fcntl
import io
import json
import logging
import math
import os
import queue
import re
import signal
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

from lottery.config import config_hash
from lottery.tracker import RunHandle, Tracker

logger = logging.getLogger(__name__)

DEFAULT_URI = "sqlite:///mlflow.db"
IDS_FILE = "tracking.json"
PARENT_KEY = "parent"
PARAMS_PER_BATCH = 100
METRICS_PER_BATCH = 1000
PARAM_VALUE_LIMIT = 6000
TAG_VALUE_LIMIT = 8000
CLOSE_TIMEOUT_SECONDS = 120.0
# Metric points wait in the handle and cross the pipe together every few seconds and at finish.
METRIC_UPLOAD_SECONDS = 10.0
# A dead server should cost seconds, not MLflow's default of minutes of retries. Set for the
# tracking process only, and only where the user has not set them.
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "1", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER": "0.5", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
SERVE = "import sys; from lottery.tracking import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"


def resolve_uri(config) -> str:
    """track.uri, else $MLFLOW_TRACKING_URI, else sqlite:///mlflow.db; relative sqlite paths made absolute."""
    uri = config.track.uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_URI
    path = sqlite_path(uri)
    if path is not None and not path.is_absolute():
        query = uri[uri.index("?"):] if "?" in uri else ""
        uri = "sqlite:///" + str(path.resolve()) + query
    return uri


def sqlite_path(uri: str) -> Optional[Path]:
    """The database file of a sqlite:/// URI, or None for other stores."""
    return Path(uri[len("sqlite:///"):].split("?", 1)[0]) if uri.startswith("sqlite:///") else None


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


def param_value(value: Any) -> str:
    """A config value as an MLflow param: JSON for containers, at most 6000 characters."""
    text = json.dumps(value) if isinstance(value, (list, dict, tuple)) else str(value)
    return text if len(text) <= PARAM_VALUE_LIMIT else text[:PARAM_VALUE_LIMIT - 3] + "..."


def flat_params(params: dict[str, Any], prefix: str = "") -> dict[str, str]:
    flat: dict[str, str] = {}
    for key, value in params.items():
        if isinstance(value, dict) and any(isinstance(item, dict) for item in value.values()):
            flat.update(flat_params(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = param_value(value)
    return flat


def metric_values(metrics: dict[str, Any]) -> dict[str, float]:
    """Finite numbers only: MLflow stores floats, and a missing point beats a bad one."""
    return {key: float(value) for key, value in metrics.items()
            if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)}


# -- the training process ---------------------------------------------------------------------------

class MlflowRunHandle(RunHandle):
    """One MLflow run, as seen by training: every method returns at once."""

    def __init__(self, tracker: "MlflowTracker", key: str):
        self.tracker, self.key = tracker, key
        self.run_id: Optional[str] = None  # filled in when the tracking process reports the run
        self.finished = False
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, step, ms timestamp)
        self._uploaded_at = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker._send("params", self.key, flat_params(params))

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None) -> None:
        stamp = int(time.time() * 1000)
        self._pending += [(key, value, int(step or 0), stamp) for key, value in metric_values(metrics).items()]
        if self.finished or time.monotonic() - self._uploaded_at >= METRIC_UPLOAD_SECONDS:
            self.upload_metrics()

    def upload_metrics(self) -> None:
        if self._pending:
            self.tracker._send("points", self.key, self._pending)
        self._pending, self._uploaded_at = [], time.monotonic()

    def log_artifact(self, path: Path, artifact_path: Optional[str] = None) -> None:
        path = Path(path)
        if not path.exists():
            logger.warning("artifact %s does not exist; not logged", path)
            return
        self.tracker._send("artifact", self.key, str(path.resolve()), artifact_path)

    def log_figure(self, figure, name: str) -> None:
        buffer = io.BytesIO()
        figure.savefig(buffer, format=Path(name).suffix.lstrip(".") or "png", dpi=110)
        self.tracker._send("image", self.key, buffer.getvalue(), name)

    def set_tags(self, tags: dict[str, str]) -> None:
        self.tracker._send("tags", self.key, {key: str(value) for key, value in tags.items()})

    def finish(self, status: str = "FINISHED") -> None:
        self.tracker._open.pop(self.key, None)
        self.upload_metrics()
        if not self.finished:
            self.finished = True
            self.tracker._send("finish", self.key, status)


class MlflowTracker(Tracker):
    """A parent run per run directory, nested child runs per level / method / branch."""

    enabled = True

    def __init__(self, config, run_dir: Path, command: str = ""):
        self.config, self.run_dir, self.command = config, Path(run_dir), command
        self.uri = resolve_uri(config)
        self.experiment = config.track.experiment or config.exp
        self.error: Optional[str] = None
        self.reattached: list[str] = []
        self._parent: Optional[MlflowRunHandle] = None
        self._handles: dict[str, MlflowRunHandle] = {}
        self._open: dict[str, MlflowRunHandle] = {}
        self._closed = False
        self._lock = threading.Lock()
        self._drains: dict[int, threading.Event] = {}
        self._outgoing: queue.Queue = queue.Queue()
        self._process: Optional[subprocess.Popen] = None
        self._threads: list[threading.Thread] = []
        self._start()  # now: mlflow's import and the store's start-up overlap the run's own

    @property
    def degraded(self) -> bool:
        return self.error is not None

    def parent(self, name: str, tags: dict[str, str], params: dict[str, Any]) -> RunHandle:
        if self._parent is None:
            base = {"exp": self.config.exp, "config_hash": config_hash(self.config), "seed": str(self.config.seed),
                    "command": self.command, "run_dir": str(self.run_dir.resolve()),
                    **git_state(Path(__file__).resolve().parent)}
            self._parent = self._handle(PARENT_KEY)
            self._send("attach", PARENT_KEY, name, {**base, **tags}, flat_params(params), None)
        return self._parent

    def child(self, key: str, name: str, params: dict[str, Any]) -> RunHandle:
        if key not in self._open:
            tags = {"key": key, "exp": self.config.exp, "config_hash": config_hash(self.config),
                    "seed": str(self.config.seed)}
            self._open[key] = self._handle(key)
            self._send("attach", key, name, tags, flat_params(params), PARENT_KEY if self._parent else None)
        return self._open[key]

    def flush(self, timeout: float = CLOSE_TIMEOUT_SECONDS) -> bool:
        """Send buffered metrics and wait until MLflow has everything sent so far (or tracking failed)."""
        if self._closed or self._process is None:
            return True
        for handle in [*self._open.values(), *([self._parent] if self._parent else [])]:
            handle.upload_metrics()
        done = threading.Event()
        with self._lock:
            self._drains[id(done)] = done
        self._send("drain", id(done))
        if self.degraded:
            done.set()
        return done.wait(timeout)

    def close(self, status: str = "FINISHED") -> None:
        if self._closed:
            return
        for handle in list(self._open.values()):
            handle.finish(status)
        if self._parent is not None:
            self._parent.finish(status)
        self._closed = True
        if self._process is None:
            return
        self._outgoing.put(("stop",))
        self._outgoing.put(None)
        try:
            self._process.wait(CLOSE_TIMEOUT_SECONDS)
        except subprocess.TimeoutExpired:
            logger.warning("MLflow uploads still pending after %.0f s; stopped. The run directory %s is complete: "
                           "upload it with `lottery sync %s`", CLOSE_TIMEOUT_SECONDS, self.run_dir, self.run_dir)
            self._process.kill()
            self._process.wait()
        for thread in self._threads:
            thread.join(5)

    def _handle(self, key: str) -> MlflowRunHandle:
        self._handles[key] = MlflowRunHandle(self, key)
        return self._handles[key]

    def _send(self, *message) -> None:
        if not (self._closed or self.degraded or self._process is None):
            self._outgoing.put(message)

    def _start(self) -> None:
        """The tracking process, with a pipe each way; a writer and a reader thread serve them here."""
        child_in, parent_out = os.pipe()
        parent_in, child_out = os.pipe()
        env = dict(os.environ)
        if self.uri.startswith(("http://", "https://")):
            env = {**HTTP_DEFAULTS, **env}
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
        try:
            self._process = subprocess.Popen([sys.executable, "-c", SERVE, str(child_in), str(child_out)],
                                             pass_fds=(child_in, child_out), env=env, stdin=subprocess.DEVNULL,
                                             start_new_session=True)
        except OSError as error:
            os.close(parent_out)
            os.close(parent_in)
            self._fail(f"could not start the tracking process: {error}")
            return
        finally:
            os.close(child_in)
            os.close(child_out)
        outbox, inbox = Connection(parent_out, readable=False), Connection(parent_in, writable=False)
        self._threads = [threading.Thread(target=self._write, args=(outbox,), name="lottery-mlflow-out", daemon=True),
                         threading.Thread(target=self._read, args=(inbox,), name="lottery-mlflow-in", daemon=True)]
        for thread in self._threads:
            thread.start()
        self._outgoing.put(("open", self.uri, self.experiment, str(self.run_dir.resolve())))

    def _write(self, outbox: Connection) -> None:
        while (message := self._outgoing.get()) is not None:
            try:
                outbox.send(message)
            except (OSError, ValueError) as error:
                self._fail(f"the tracking process is gone ({error})")
                break
        outbox.close()

    def _read(self, inbox: Connection) -> None:
        while True:
            try:
                kind, *args = inbox.recv()
            except (EOFError, OSError):
                if not self._closed:
                    self._fail("the tracking process exited")
                break
            if kind == "attached":
                key, run_id, reattached = args
                self._handles[key].run_id = run_id
                if reattached:
                    self.reattached.append(key)
            elif kind == "failed":
                self._fail(args[0])
            elif kind == "drained":
                self._release(args[0])
        self._release()
        inbox.close()

    def _release(self, token: Optional[int] = None) -> None:
        with self._lock:
            tokens = [token] if token is not None else list(self._drains)
            for event in [self._drains.pop(t, None) for t in tokens]:
                if event is not None:
                    event.set()

    def _fail(self, text: str) -> None:
        with self._lock:
            first, self.error = self.error is None, self.error or text
        if first:
            logger.warning("MLflow tracking failed (%s); tracking is off for the rest of this run. Training "
                           "continues and the run directory %s stays complete; upload it later with "
                           "`lottery sync %s`.", text, self.run_dir, self.run_dir)
        self._release()


# -- the tracking process ---------------------------------------------------------------------------

def serve(inbox_fd: int, outbox_fd: int) -> None:
    """Apply the training process's messages to MLflow, in order, until "stop" or end of input."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches training, which then closes the runs
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
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
                        store = _Store(*args, outbox)
                    else:
                        getattr(store, kind)(*args)
                except Exception as error:  # noqa: BLE001 - reported; the training process turns tracking off
                    failed = True
                    outbox.send(("failed", f"{type(error).__name__}: {str(error).strip()[:300]}"))
    except (EOFError, OSError):
        pass  # the training process is gone
    # Everything is committed. Skip interpreter shutdown: MLflow's exit hooks (telemetry) cost ~1 s.
    logging.shutdown()
    os._exit(0)


class _Store:
    """The MLflow side: one client, the experiment, run ids by key, metric steps already stored.

    <run_dir>/tracking.json holds {uri: {experiment: {"experiment_id": ..., "runs": {key: run_id}}}}.
    """

    def __init__(self, uri: str, experiment: str, run_dir: str, outbox: Connection):
        from mlflow.tracking import MlflowClient

        for noisy in ("mlflow", "alembic"):
            logging.getLogger(noisy).setLevel(logging.WARNING)
        self.client, self.uri, self.outbox = MlflowClient(tracking_uri=uri), uri, outbox
        self.experiment_id = self._experiment(experiment)
        self.runs: dict[str, str] = {}
        self.stored_steps: dict[str, dict[str, int]] = {}  # per key: metric -> last step MLflow already has
        self.ids_path, self.experiment = Path(run_dir) / IDS_FILE, experiment
        self.saved = self._entry(self._read_ids())

    def _read_ids(self) -> dict:
        try:
            ids = json.loads(self.ids_path.read_text()) if self.ids_path.exists() else {}
        except (OSError, ValueError) as error:
            logger.warning("%s is unreadable (%s); new MLflow runs will be created", self.ids_path, error)
            ids = {}
        return ids if isinstance(ids, dict) else {}

    def _entry(self, ids: dict) -> dict:
        return ids.setdefault(self.uri, {}).setdefault(self.experiment, {"experiment_id": None, "runs": {}})

    def _save_run_id(self, key: str, run_id: str) -> None:
        """Read, merge, write atomically, under a lock: search workers share one run directory's ids.

        Not lottery.io: this process never imports torch.
        """
        self.ids_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.ids_path.parent / f".{IDS_FILE}.lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            ids = self._read_ids()
            self.saved = self._entry(ids)
            self.saved["experiment_id"], self.saved["runs"][key] = self.experiment_id, run_id
            handle, temporary = tempfile.mkstemp(dir=self.ids_path.parent, prefix=f".{IDS_FILE}.", suffix=".tmp")
            with os.fdopen(handle, "w") as stream:
                stream.write(json.dumps(ids, indent=2) + "\n")
                stream.flush()
                os.fsync(stream.fileno())
            os.replace(temporary, self.ids_path)

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

    def attach(self, key: str, name: str, tags: dict, params: dict, parent_key: Optional[str]) -> None:
        """Re-attach to the key's run in tracking.json, or create it; then log tags and new params."""
        if parent_key in self.runs:
            tags = {**tags, "mlflow.parentRunId": self.runs[parent_key]}
        tags = {k: str(v)[:TAG_VALUE_LIMIT] for k, v in tags.items()}
        run = self._existing_run(self.saved["runs"].get(key))
        if run is None:
            run_id = self.client.create_run(self.experiment_id, run_name=name, tags=tags).info.run_id
            self._save_run_id(key, run_id)
            self.runs[key] = run_id
            self.params(key, params)
            self.outbox.send(("attached", key, run_id, False))
            return
        run_id = self.runs[key] = run.info.run_id
        if run.info.status != "FINISHED" or key == PARENT_KEY:
            self.client.update_run(run_id, status="RUNNING")
        self.stored_steps[key] = {metric: max(m.step for m in self.client.get_metric_history(run_id, metric))
                                  for metric in run.data.metrics}
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

        stored = self.stored_steps.get(key, {})  # a resumed run replays points MLflow already has
        fresh = [Metric(name, value, stamp, step) for name, value, step, stamp in points if step > stored.get(name, -1)]
        self._batch(key, "metrics", fresh, METRICS_PER_BATCH)

    def artifact(self, key: str, path: str, artifact_path: Optional[str]) -> None:
        log = self.client.log_artifacts if Path(path).is_dir() else self.client.log_artifact
        log(self.runs[key], path, artifact_path)

    def image(self, key: str, data: bytes, name: str) -> None:
        with tempfile.TemporaryDirectory(prefix="lottery-artifact-") as directory:
            path = Path(directory) / Path(name).name
            path.write_bytes(data)
            self.client.log_artifact(self.runs[key], str(path), str(Path(name).parent) if "/" in name else None)

    def finish(self, key: str, status: str) -> None:
        self.client.set_terminated(self.runs[key], status)
