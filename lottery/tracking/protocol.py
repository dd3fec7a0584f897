"""What both halves of tracking share: message limits, the ids file and the store URI. Imports no torch and no
mlflow, so the training process and the helper process can both read it."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

DEFAULT_URI = "sqlite:///mlflow.db"
IDS_FILE = "tracking.json"
PARENT_KEY = "parent"
COMPLETE = "complete"  # tracking.json: the keys whose finished run holds every point of the run directory
COMMANDS_TAG = "commands"  # a parent run's tag: every command line that ran in its run directory, with its time
UI_PORT = 5000  # `make ui`'s default port
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
SERVE = "import sys; from lottery.tracking.server import serve; serve(int(sys.argv[1]), int(sys.argv[2]))"


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


def now_ms() -> int:
    return int(time.time() * 1000)


def complete_keys(run_dir: Path, uri: str, experiment: str) -> set[str]:
    """The keys tracking.json marks complete for this store and experiment (read without mlflow)."""
    try:
        ids = json.loads((Path(run_dir) / IDS_FILE).read_text())
        return set(ids[uri][experiment].get(COMPLETE, []))
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return set()


def runs_table_url(uri: str, experiment_id: str, port: int = UI_PORT) -> str:
    """The MLflow UI's runs table. MLflow 3 opens an experiment on its GenAI overview; this view is the table."""
    base = uri.rstrip("/") if uri.startswith(("http://", "https://")) else f"http://127.0.0.1:{port}"
    return f"{base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
