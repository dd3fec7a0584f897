"""A throwaway PostgreSQL server for tests: initdb + pg_ctl on 127.0.0.1, a free port, a temporary folder.

PostgreSQL refuses to run as root. As root, the server runs as the `postgres` system user (created
by Debian's postgresql package) in a folder that user owns; otherwise as the current user.
The server is always stopped and its folder removed, even when the test fails.
"""
from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Optional

SERVER_USER = "postgres"  # only used when the tests run as root
DATABASE_USER = "lottery"
START_TIMEOUT_SECONDS = 60


class PostgresUnavailable(RuntimeError):
    """No way to start a server here; the message says what is missing."""


@dataclass
class PostgresServer:
    bin_dir: Path
    data_dir: Path
    port: int
    run_as: Optional[str]

    @property
    def url(self) -> str:
        return f"postgresql+psycopg2://{DATABASE_USER}@127.0.0.1:{self.port}/postgres"

    def command(self, name: str, *args: str) -> list[str]:
        argv = [str(self.bin_dir / name), *args]
        return ["runuser", "-u", self.run_as, "--", *argv] if self.run_as else argv


def find_bin_dir() -> Path:
    """The folder holding initdb, pg_ctl and postgres: PATH first, then Debian's /usr/lib/postgresql/<v>/bin."""
    on_path = shutil.which("initdb")
    candidates = [Path(os.path.realpath(on_path)).parent] if on_path else []
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=lambda p: int(Path(p).parent.name))
    candidates += [Path(p) for p in reversed(versions)]
    for directory in candidates:
        if all((directory / tool).exists() for tool in ("initdb", "pg_ctl", "postgres")):
            return directory
    raise PostgresUnavailable("PostgreSQL server binaries (initdb, pg_ctl, postgres) not found; "
                              "install them with `apt-get install -y postgresql`")


def server_user() -> Optional[str]:
    if os.geteuid() != 0:
        return None
    try:
        pwd.getpwnam(SERVER_USER)
    except KeyError:
        raise PostgresUnavailable(f"running as root and there is no '{SERVER_USER}' user to run the server "
                                  "(PostgreSQL refuses root); install the postgresql package") from None
    if shutil.which("runuser") is None:
        raise PostgresUnavailable("running as root and `runuser` is missing")
    return SERVER_USER


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _run(argv: list[str], what: str) -> None:
    result = subprocess.run(argv, capture_output=True, text=True, timeout=START_TIMEOUT_SECONDS)
    if result.returncode != 0:
        raise RuntimeError(f"{what} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")


@contextmanager
def postgres_server() -> Iterator[PostgresServer]:
    """Start a server (trust auth, fsync off: test data only) and yield it; stop and delete it afterwards."""
    bin_dir, run_as = find_bin_dir(), server_user()
    # Not under pytest's tmp_path: that folder is private to the test user, and the server user must enter it.
    root = Path(tempfile.mkdtemp(prefix="lottery-pg-"))
    os.chmod(root, 0o700)
    if run_as:
        entry = pwd.getpwnam(run_as)
        os.chown(root, entry.pw_uid, entry.pw_gid)
    server = PostgresServer(bin_dir, root / "data", free_port(), run_as)
    started = False
    try:
        _run(server.command("initdb", "-D", str(server.data_dir), "-U", DATABASE_USER, "--auth=trust",
                            "-E", "UTF8", "--no-locale", "--no-sync"), "initdb")
        options = f"-h 127.0.0.1 -p {server.port} -k {root} -F"
        started = True
        _run(server.command("pg_ctl", "-D", str(server.data_dir), "-o", options, "-l", str(root / "server.log"),
                            "-w", "-t", str(START_TIMEOUT_SECONDS), "start"), "pg_ctl start")
        yield server
    finally:
        if started:
            subprocess.run(server.command("pg_ctl", "-D", str(server.data_dir), "-m", "immediate", "-w", "stop"),
                           capture_output=True, timeout=START_TIMEOUT_SECONDS)
        shutil.rmtree(root, ignore_errors=True)
