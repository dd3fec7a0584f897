"""The console while an experiment runs: one line per finished stage and, on a terminal, one live status line
(stages done / running / failed / total and an estimate of the time left). Workers log to stage files only."""
from __future__ import annotations

import logging
import sys
import time
from contextlib import contextmanager
from typing import Optional, TextIO


@contextmanager
def quiet_console(level: int = logging.WARNING):
    """Raise the console handlers to `level` for the block: the display speaks for the stages (their full logs go
    to each stage's log file)."""
    handlers = [handler for handler in logging.getLogger().handlers
                if isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)]
    saved = [handler.level for handler in handlers]
    for handler in handlers:
        handler.setLevel(max(handler.level, level))
    try:
        yield
    finally:
        for handler, old in zip(handlers, saved):
            handler.setLevel(old)


class Progress:
    def __init__(self, total: int, capacity: int, stream: Optional[TextIO] = None, live: Optional[bool] = None):
        self.total, self.capacity = total, max(1, capacity)
        self.stream = stream or sys.stdout
        self.live = self.stream.isatty() if live is None else live
        self.done = self.failed = self.skipped = self.running = 0
        self.trained_seconds = 0.0
        self.trained = 0
        self.started = time.monotonic()

    def eta(self) -> Optional[float]:
        """Seconds left: the mean time of the stages trained so far, for what is left, over the workers."""
        remaining = self.total - self.done - self.failed - self.skipped
        if not self.trained or remaining <= 0:
            return None
        return self.trained_seconds / self.trained * remaining / self.capacity

    def status(self) -> str:
        eta = self.eta()
        left = "" if eta is None else f", ~{_duration(eta)} left"
        return (f"{self.done + self.skipped}/{self.total} done, {self.running} running, {self.failed} failed"
                f"{left} ({_duration(time.monotonic() - self.started)} so far)")

    def _clear(self) -> None:
        if self.live:
            self.stream.write("\r\033[K")

    def update(self) -> None:
        if self.live:
            self._clear()
            self.stream.write(self.status())
            self.stream.flush()

    def finished(self, key: str, status: str, seconds: float, row: Optional[dict] = None,
                 log: Optional[str] = None, error: Optional[str] = None) -> None:
        if status == "failed":
            self.failed += 1
        elif status == "done":
            self.done += 1
            self.trained += 1
            self.trained_seconds += seconds
        else:
            self.skipped += 1
        self._clear()
        count = self.done + self.skipped + self.failed
        detail = ""
        if row is not None and row.get("final_test_acc") is not None:
            detail = f"density {row['density']:.4f}  final acc {row['final_test_acc']:.4f}"
        if status == "failed":
            detail = f"FAILED: {error} (log: {log})"
        word = {"done": "done", "skipped": "had run", "failed": "failed", "blocked": "skipped"}[status]
        self.stream.write(f"[{count:>{len(str(self.total))}}/{self.total}] {word:<7} {key:<52} "
                          f"{_duration(seconds):>6}  {detail}".rstrip() + "\n")
        self.update()

    def close(self) -> None:
        self._clear()
        self.stream.flush()


def _duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"
