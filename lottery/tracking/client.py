"""The training process's side of MLflow tracking: a Tracker that forwards everything to a helper process.

MLflow runs in that helper process (`lottery.tracking.server.serve`, the only code that imports mlflow),
fed through a pipe: training never waits on the store, never shares the GIL with it and never pays
for importing mlflow. The first MLflow failure (server down, timeout, bad URI) logs one warning and
turns tracking off for the rest of the run; the run directory stays the complete record and
`lottery sync RUN_DIR` uploads it later.

Run ids live in <run_dir>/tracking.json, per tracking URI and experiment, under stable keys
("parent", "level_03", ...). A resumed process re-attaches to those runs, and metric points
already stored are not logged twice, so resuming or syncing again leaves no duplicates.
"""
from __future__ import annotations

import io
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Optional

from lottery.config import config_hash
from lottery.tracking.base import RunHandle, Tracker, log_history
from lottery.tracking.protocol import (CLOSE_TIMEOUT_SECONDS, COMMANDS_TAG, HTTP_DEFAULTS, METRIC_UPLOAD_SECONDS,
                                       PARAM_VALUE_LIMIT, PARENT_KEY, SERVE, complete_keys, now_ms, resolve_uri,
                                       runs_table_url)

# One logger name for both halves of tracking, so users filter a single "lottery.tracking".
logger = logging.getLogger("lottery.tracking")

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


_WARNED: set[str] = set()  # stores whose failure this process has already reported


class MlflowRunHandle(RunHandle):
    """One MLflow run, as seen by training: every method returns at once."""

    def __init__(self, tracker: "MlflowTracker", key: str):
        self.tracker, self.key = tracker, key
        self.run_id: Optional[str] = None  # filled in when the tracking process reports the run
        self.finished = False
        self._pending: list[tuple[str, float, int, int]] = []  # (key, value, step, ms timestamp)
        self._sent: set[tuple[str, int, float]] = set()  # points already sent: a replayed history sends only new ones
        self._uploaded_at = time.monotonic()

    def log_params(self, params: dict[str, Any]) -> None:
        self.tracker._send("params", self.key, flat_params(params))

    def log_metrics(self, metrics: dict[str, float], step: Optional[int] = None,
                    timestamp_ms: Optional[int] = None) -> None:
        stamp, step = timestamp_ms or now_ms(), int(step or 0)
        for key, value in metric_values(metrics).items():
            if (key, step, value) not in self._sent:
                self._sent.add((key, step, value))
                self._pending.append((key, value, step, stamp))
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

    def log_inputs(self, datasets: list[dict]) -> None:
        if datasets:
            self.tracker._send("inputs", self.key, datasets)

    def log_model(self, model) -> None:
        """Pickled to a file that the tracking process logs with mlflow.pytorch and then deletes."""
        import tempfile

        import torch

        handle, path = tempfile.mkstemp(prefix="lottery-model-", suffix=".pt")
        os.close(handle)
        torch.save(model, path)
        self.tracker._send("model", self.key, path)

    def finish(self, status: str = "FINISHED", end_ms: Optional[int] = None) -> None:
        """End the run at `end_ms` (default now): the time its work ended, not when MLflow hears of it."""
        self.tracker._open.pop(self.key, None)
        self.upload_metrics()
        if not self.finished:
            self.finished = True
            self.tracker._send("finish", self.key, status, end_ms or now_ms())
            if status == "FINISHED" and self.key != PARENT_KEY:
                self.tracker._complete.add(self.key)  # everything is sent: no replay from this process


class MlflowTracker(Tracker):
    """A parent run per run directory, nested child runs per level / method / branch."""

    enabled = True

    def __init__(self, config, run_dir: Path, command: str = "", warn_on_failure: bool = True):
        """warn_on_failure=False leaves the first failure to the caller (`lottery sync` reports it as its error)."""
        self.config, self.run_dir, self.command = config, Path(run_dir), command
        self.warn_on_failure = warn_on_failure
        self.uri = resolve_uri(config)
        self.experiment = config.track.experiment or config.exp
        self.error: Optional[str] = None
        self.reattached: list[str] = []
        self.experiment_id: Optional[str] = None  # filled in when the tracking process has opened the store
        self._complete = complete_keys(self.run_dir, self.uri, self.experiment)
        self._parent: Optional[MlflowRunHandle] = None
        self._parent_passive = False  # a worker's view of a parent another process owns: never finished here
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

    def parent(self, name: str, tags: dict[str, str], params: dict[str, Any], passive: bool = False) -> RunHandle:
        if self._parent is None:
            base = {"exp": self.config.exp, "config_hash": config_hash(self.config), "seed": str(self.config.seed),
                    "command": self.command, "run_dir": str(self.run_dir.resolve())}
            if not passive:  # the server appends it to the run's list of commands
                base[COMMANDS_TAG] = f"{time.strftime('%Y-%m-%d %H:%M:%S')}  {self.command}"
            self._parent = self._handle(PARENT_KEY)
            self._parent_passive = passive
            self._send("attach", PARENT_KEY, name, {**base, **tags}, flat_params(params), None, passive, now_ms())
        return self._parent

    def child(self, key: str, name: str, params: dict[str, Any], tags: Optional[dict[str, str]] = None,
              start_ms: Optional[int] = None, live: bool = True) -> RunHandle:
        """The key's run below the parent: created at `start_ms` (default now, when its training starts);
        `live`: training runs now, so system metrics are sampled while the run is open."""
        if key not in self._open:
            tags = {"key": key, "exp": self.config.exp, "config_hash": config_hash(self.config),
                    "seed": str(self.config.seed), "command": self.command, **(tags or {})}
            self._open[key] = self._handle(key)
            self._send("attach", key, name, tags, flat_params(params), PARENT_KEY if self._parent else None, False,
                       start_ms or now_ms(), live)
        return self._open[key]

    def is_complete(self, key: str) -> bool:
        """Whether the store holds the key's finished run with every point (tracking.json says so)."""
        return key in self._complete

    def replay(self, key: str, name: str, params: dict[str, Any], tags: dict[str, str], history: list[dict],
               summary: dict[str, float], start_ms: Optional[int], end_ms: Optional[int]) -> None:
        """Make the store hold a finished stage as its run directory does: its run (created if a kill lost it),
        every point of its history and its summary, finished at the time its training ended. Points the store
        already has are not logged again, so a replay after a partial upload fills exactly the gaps."""
        if self.is_complete(key) or self.degraded:
            return
        handle = self.child(key, name, params, tags, start_ms, live=False)
        log_history(handle, history, start_ms, end_ms)
        handle.log_metrics(summary)
        handle.finish("FINISHED", end_ms)

    def ui_url(self) -> Optional[str]:
        """The MLflow UI's runs table of this experiment (the UI opens on its GenAI page otherwise)."""
        return runs_table_url(self.uri, self.experiment_id) if self.experiment_id else None

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
        if self._parent is not None and not self._parent_passive:
            self._parent.finish(status)
        elif self._parent is not None:
            self._parent.upload_metrics()
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
        self._outgoing.put(("open", self.uri, self.experiment, str(self.run_dir.resolve()),
                            float(self.config.track.system_metrics_seconds)))

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
            if kind == "opened":
                self.experiment_id = args[0]
            elif kind == "attached":
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
            warn = first and self.warn_on_failure and self.uri not in _WARNED
            _WARNED.add(self.uri)
        if warn:  # one line per store and process: an experiment's seeds share the store and the outage
            logger.warning("MLflow at %s failed (%s): tracking is off for the rest of this run, which goes on; "
                           "upload it later with `lottery sync %s` (and each run directory this command printed)",
                           self.uri, text, self.run_dir)
        elif first:
            logger.info("MLflow at %s failed for %s too (%s)", self.uri, self.run_dir, text)
        self._release()


def make_tracker(config, run_dir: Path, command: str = "") -> Tracker:
    """The MLflow tracker when tracking is on, else the no-op one."""
    return MlflowTracker(config, run_dir, command=command) if config.track.enabled else Tracker()
