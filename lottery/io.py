"""Atomic file writes and the run-directory lock."""
from __future__ import annotations

import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def _atomic(path: Path, write, durable: bool = True) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic(Path(path), lambda stream: stream.write(data))


def atomic_write_text(path, text: str, durable: bool = True) -> None:
    _atomic(Path(path), lambda stream: stream.write(text.encode()), durable)


def write_json(path, value: Any, durable: bool = True) -> None:
    text = json.dumps(value, indent=2, sort_keys=False, default=_json_default) + "\n"
    atomic_write_text(path, text, durable)


def read_json(path) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(value):
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"cannot serialise {type(value).__name__}")


def atomic_torch_save(path, value: Any, durable: bool = True) -> None:
    """durable=False skips fsync: still atomic against a killed process, for files that can be redone."""
    _atomic(Path(path), lambda stream: torch.save(value, stream), durable)


def torch_load(path, map_location="cpu") -> Any:
    return torch.load(path, map_location=map_location, weights_only=False)


class RunLockedError(RuntimeError):
    """Another process holds this run directory."""


class RunLock:
    """An exclusive, non-blocking flock on <run_dir>/.lock, released when the process dies."""

    def __init__(self, run_dir):
        self.path = Path(run_dir) / ".lock"
        self._handle = None

    def __enter__(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as error:
            handle.close()
            if error.errno in (errno.EAGAIN, errno.EACCES):
                raise RunLockedError(
                    f"run directory {self.path.parent} is in use by another process; "
                    "wait for it to finish or stop it first"
                ) from None
            raise
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return self

    def __exit__(self, *exc_info) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None
