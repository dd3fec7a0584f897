"""One error hierarchy. The CLI turns any LotteryError into one `error:` line and its exit code.

ConfigError (exit 2): a bad config value, flag or file; it names the key and where the value came from.
Everything else exits 1: missing files or runs, unusable data, corrupted artefacts, busy run directories.
This module imports nothing, so every layer can raise these.
"""
from __future__ import annotations


class LotteryError(Exception):
    """Base of every error the CLI reports as one line."""

    exit_code = 1


class ConfigError(LotteryError, ValueError):
    """A bad config. Names the dotted key and the file (or the command line) it came from."""

    exit_code = 2

    def __init__(self, message: str, key: str | None = None, source: str | None = None):
        self.key, self.source, self.reason = key, source, message
        super().__init__(format_config_error(message, key, source))


def format_config_error(message: str, key: str | None, source: str | None) -> str:
    if not key:
        prefix = "config: "
    elif key.startswith("-"):
        prefix = f"option {key}: "  # a command-line flag such as --levels, not a config key
    else:
        prefix = f"config key '{key}': "
    if source is None:
        where = ""
    elif source == "command line" or source.startswith("from "):
        where = " (from the command line)" if source == "command line" else f" ({source})"
    else:
        where = f" (in {source})"
    return prefix + message + where


class NotFoundError(LotteryError, FileNotFoundError):
    """A file, run directory or stage that should exist does not."""


class CorruptFileError(LotteryError):
    """An artefact whose checksum or structure is wrong; the message names the file."""


class RunLockedError(LotteryError):
    """Another process holds a lock this one needs and cannot wait for."""


class StagesFailedError(LotteryError):
    """Some stages of an experiment failed; the message names each one and its log file."""
