"""The one file lock: an flock on a file, held by this process, released when it exits or dies.

Imports nothing heavy, so the tracking helper process (which never imports torch) uses it too.
"""
from __future__ import annotations

import errno
import fcntl
import os
import time
from pathlib import Path
from typing import Optional

from lottery.errors import RunLockedError


class FileLock:
    """`with FileLock(path):` waits for the lock; `FileLock(path, wait=False).acquire()` returns False if busy.

    The lock file holds the owner's pid for humans; the lock itself is the flock, so a killed owner
    never leaves a stale lock behind.
    """

    def __init__(self, path, wait: bool = True, timeout: Optional[float] = None, what: str = ""):
        self.path, self.wait, self.timeout, self.what = Path(path), wait, timeout, what
        self._handle = None

    @property
    def held(self) -> bool:
        return self._handle is not None

    def acquire(self) -> bool:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(self.path, "a+")
        deadline = None if self.timeout is None else time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as error:
                if error.errno not in (errno.EAGAIN, errno.EACCES):
                    handle.close()
                    raise
                if not self.wait or (deadline is not None and time.monotonic() > deadline):
                    handle.close()
                    return False
                time.sleep(0.05)
        handle.seek(0)
        handle.truncate()
        handle.write(f"{os.getpid()}\n")
        handle.flush()
        self._handle = handle
        return True

    def release(self) -> None:
        if self._handle is not None:
            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()
            self._handle = None

    def __enter__(self) -> "FileLock":
        if not self.acquire():
            raise RunLockedError(f"{self.what or self.path} is in use by another process; wait for it or stop it")
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()
