"""Atomic, checksummed files: the one writer and reader of every artefact in a run directory.

Every write goes to a temporary file in the same folder and is renamed into place, so a killed process
leaves the old file or the new one, never half of one. Every artefact carries a SHA-256 that is checked
on every read, so a flipped or truncated byte is an error naming the file, never a silently wrong result:
- torch files (θ0, θk, weights, checkpoints) keep the checksum in the zip archive's comment, so plain
  `torch.load(path)` still reads them;
- JSON records carry a "checksum" field over their canonical form;
- config.yaml ends with a "# sha256: ..." comment line.
Temporary files are named after the host and process that wrote them, so a resume can remove the ones
a dead process left behind without touching a live one's.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import socket
import struct
import tempfile
from pathlib import Path
from typing import Any, Callable

from lottery.errors import CorruptFileError, LotteryError, NotFoundError

logger = logging.getLogger(__name__)

TORCH_TAG = b"lottery-sha256:"
TORCH_COMMENT = len(TORCH_TAG) + 64
EOCD = struct.Struct("<4sHHHHIIH")  # zip end-of-central-directory record, comment length last
EOCD_SIGNATURE = b"PK\x05\x06"
YAML_TAG = "# sha256: "
CHECKSUM_KEY = "checksum"


def _writer_tag() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _atomic(path: Path, write: Callable, durable: bool = True) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp")
    except OSError as error:  # read-only, no permission, not a folder: one line naming the file
        raise LotteryError(f"cannot write {path}: {error.strerror or error}") from None
    try:
        with os.fdopen(handle, "wb") as stream:
            write(stream)
            stream.flush()
            if durable:
                os.fsync(stream.fileno())
        os.chmod(temporary, 0o644)
        os.replace(temporary, path)
    except BaseException as error:
        Path(temporary).unlink(missing_ok=True)
        if isinstance(error, OSError):  # a full disk, a folder in the way
            raise LotteryError(f"cannot write {path}: {error.strerror or error}") from None
        raise


def atomic_write_bytes(path, data: bytes, durable: bool = True) -> None:
    _atomic(Path(path), lambda stream: stream.write(data), durable)


def atomic_write_text(path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, text.encode(), durable)


def fsync_paths(paths) -> None:
    """Flush these files, then their folders, to disk: what a stage writes before its DONE marker."""
    folders = set()
    for path in paths:
        path = Path(path)
        with open(path, "rb") as stream:
            os.fsync(stream.fileno())
        folders.add(path.parent)
    for folder in folders:
        descriptor = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete temporary files under `folder` left by dead processes of this host; returns what was removed."""
    host, removed = socket.gethostname(), []
    for path in Path(folder).rglob(".*.tmp"):
        writer = path.name[:-len(".tmp")].rsplit(".", 2)
        if len(writer) != 3 or not writer[1].startswith(host + "-"):
            continue
        try:
            pid = int(writer[1].rsplit("-", 1)[1])
        except ValueError:
            continue
        if not _alive(pid):
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read(path: Path, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise NotFoundError(f"{what} {path} does not exist") from None
    except IsADirectoryError:
        raise CorruptFileError(f"{what} {path} is a folder, not a file") from None


# -- torch files ------------------------------------------------------------------------------------

def _with_checksum(data: bytes) -> bytes:
    start = len(data) - EOCD.size
    if start < 0 or data[start:start + 4] != EOCD_SIGNATURE:
        raise ValueError("torch.save did not end with a plain zip end record")
    patched = bytearray(data)
    struct.pack_into("<H", patched, start + EOCD.size - 2, TORCH_COMMENT)
    return bytes(patched) + TORCH_TAG + hashlib.sha256(patched).hexdigest().encode()


def atomic_torch_save(path, value: Any, durable: bool = True) -> None:
    """torch.save with a checksum; durable=False skips fsync (still atomic) for files that can be redone."""
    import torch

    buffer = io.BytesIO()
    torch.save(value, buffer)
    atomic_write_bytes(path, _with_checksum(buffer.getvalue()), durable)


def _checked_torch_bytes(path: Path, what: str) -> bytes:
    data = _read(path, what)
    body, tag = data[:-TORCH_COMMENT], data[-TORCH_COMMENT:]
    if not tag.startswith(TORCH_TAG) or len(data) < TORCH_COMMENT + EOCD.size:
        raise CorruptFileError(f"{what} {path} is truncated or not a lottery file (no checksum at its end)")
    if hashlib.sha256(body).hexdigest().encode() != tag[len(TORCH_TAG):]:
        raise CorruptFileError(f"{what} {path} is corrupted: checksum mismatch")
    return data


def verify_torch_file(path, what: str = "file") -> None:
    """Check a file written by atomic_torch_save without unpickling it; CorruptFileError naming it if damaged."""
    _checked_torch_bytes(Path(path), what)


def torch_load(path, map_location="cpu", what: str = "file") -> Any:
    """Load a file written by atomic_torch_save; CorruptFileError naming it if any byte is off."""
    import torch

    data = _checked_torch_bytes(Path(path), what)
    try:
        return torch.load(io.BytesIO(data), map_location=map_location, weights_only=False)
    except Exception as error:  # noqa: BLE001 - any unpickling failure of a checksummed file is corruption
        raise CorruptFileError(f"{what} {path} cannot be read ({type(error).__name__}: {error})") from None


def load_cache(path, what: str = "cache file", map_location="cpu") -> Any | None:
    """A file that can be computed again (a snapshot, a checkpoint): its content, or None when it is missing or
    damaged; a damaged one is deleted with a warning."""
    if not Path(path).exists():
        return None
    try:
        return torch_load(path, map_location=map_location, what=what)
    except CorruptFileError as error:
        logger.warning("%s; computing it again", error)
        Path(path).unlink(missing_ok=True)
        return None


# -- JSON records -----------------------------------------------------------------------------------

def _json_default(value):
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "tolist"):  # tensors and numpy values
        return value.tolist()
    raise TypeError(f"cannot serialise {type(value).__name__}")


def _digest(value: Any) -> str:
    canonical = json.dumps(value, sort_keys=True, separators=(",", ":"), default=_json_default)
    return "sha256:" + hashlib.sha256(canonical.encode()).hexdigest()


def write_json(path, value: dict, durable: bool = True) -> None:
    """A JSON object with a "checksum" field over the rest of it."""
    if not isinstance(value, dict) or CHECKSUM_KEY in value:
        raise ValueError("write_json takes a dict without a 'checksum' key")
    record = json.loads(json.dumps(value, default=_json_default))  # what a reader will see
    text = json.dumps({**record, CHECKSUM_KEY: _digest(record)}, indent=2) + "\n"
    atomic_write_text(path, text, durable)


def read_json(path, what: str = "record") -> dict:
    """A JSON object written by write_json, checksum verified and removed."""
    data = _read(Path(path), what)
    try:
        record = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as error:
        raise CorruptFileError(f"{what} {path} is not valid JSON ({error})") from None
    if not isinstance(record, dict) or CHECKSUM_KEY not in record:
        raise CorruptFileError(f"{what} {path} has no checksum: it was not written by lottery, or is damaged")
    stored = record.pop(CHECKSUM_KEY)
    if stored != _digest(record):
        raise CorruptFileError(f"{what} {path} is corrupted: checksum mismatch")
    return record


# -- text with a checksum line (config.yaml) --------------------------------------------------------

def write_checked_text(path, text: str, durable: bool = True) -> None:
    body = text if text.endswith("\n") else text + "\n"
    atomic_write_text(path, f"{body}{YAML_TAG}{hashlib.sha256(body.encode()).hexdigest()}\n", durable)


def read_checked_text(path, what: str = "file") -> str:
    data = _read(Path(path), what)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFileError(f"{what} {path} is not UTF-8 text: it is corrupted") from None
    body, _, last = text.rstrip("\n").rpartition("\n")
    body += "\n"
    if not last.startswith(YAML_TAG):
        raise CorruptFileError(f"{what} {path} has no checksum line: it is truncated or was edited")
    if hashlib.sha256(body.encode()).hexdigest() != last[len(YAML_TAG):].strip():
        raise CorruptFileError(f"{what} {path} is corrupted: checksum mismatch (edit the experiment file instead)")
    return body
