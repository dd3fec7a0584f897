"""What a search worker shares with the others: the database URL and the search's parent MLflow run (and how
its trial runs describe themselves).

No Optuna here (lottery/search.py owns that): URL parsing, driver choice and redaction use
SQLAlchemy only, and the parent run goes through the Tracker interface.
"""
from __future__ import annotations

import importlib.util
import os
import socket
from pathlib import Path

import sqlalchemy.exc
from sqlalchemy.engine import make_url

from lottery.config import ConfigError, flatten
from lottery.run.locks import FileLock
from lottery.search.objective import selection
from lottery.search.request import SearchRequest
from lottery.tracking.client import make_tracker


def redacted(url: str) -> str:
    """The URL with its password hidden, for logs and tags."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except sqlalchemy.exc.ArgumentError:
        return url


def engine_settings(url: str) -> tuple[str, dict]:
    """The URL to open (with an installed driver) and SQLAlchemy engine arguments for its backend."""
    try:
        backend = make_url(url).get_backend_name()
    except sqlalchemy.exc.ArgumentError as error:
        raise ConfigError(f"not a database URL ({error}); e.g. sqlite:///optuna.db or "
                          "postgresql://user@host/db", "--storage") from None
    # sqlite: wait for the writer lock instead of failing; servers: drop dead pooled connections.
    engine = {"connect_args": {"timeout": 60}} if backend == "sqlite" else {"pool_pre_ping": True}
    return with_installed_driver(url), engine


def with_installed_driver(url: str) -> str:
    """postgresql:// means psycopg 3 to SQLAlchemy 2.1; use psycopg2 instead when only that is installed."""
    parsed = make_url(url)
    if parsed.drivername != "postgresql" or importlib.util.find_spec("psycopg") is not None:
        return url
    if importlib.util.find_spec("psycopg2") is None:
        return url
    return parsed.set(drivername="postgresql+psycopg2").render_as_string(hide_password=False)


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def open_search_tracking(request: SearchRequest):
    """The search's parent run. Workers sharing the search directory attach to one parent (via its ids file)."""
    config = request.config
    with FileLock(request.directory / ".tracking.lock"):
        tracker = make_tracker(config, request.directory, command=request.command)
        tags = {"optuna_study": request.name, "optuna_storage": redacted(request.storage),
                "search_space": str(request.space.path), "kind": "search", "selection": selection(config)}
        params = {**flatten(config), "search.space": str(request.space.path)}
        parent = tracker.parent(f"search {request.name}", tags, params)
        tracker.flush()  # the parent's id must be on disk before the next worker reads it
    return tracker, parent


def trial_note(study: str, number: int, values: dict, run_dir: Path) -> str:
    """The trial run's MLflow description (Markdown): what was sampled and where the run directory is."""
    sampled = [f"- `{key}` = `{value}`" for key, value in values.items()] or ["- none (only fixed keys)"]
    return "\n".join([f"Optuna trial {number} of study `{study}`.", "", "Sampled parameters:", *sampled, "",
                      f"Run directory: `{run_dir.resolve()}`"])
