"""Fixtures of the tuning tests: a real PostgreSQL server for shared (multi-process) studies.

The server is PostgreSQL 16 from the ``pgserver`` wheel (``pip install pgserver``: the binaries
ship inside it, no system package). Its own ``get_server`` API is not used: run as root it adds a
system user with ``useradd`` and widens the permissions of every folder above its data directory.
This fixture runs the wheel's ``initdb``/``pg_ctl`` itself instead: as the current user, or, as
root (PostgreSQL refuses to run as root), as the unprivileged ``nobody`` user, in a temporary folder
handed to that user, listening on a free loopback port and a unix socket in that folder; it stops the
server (``pg_ctl stop -m immediate``, then SIGKILL) and removes the folder at the end of the session.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

PG_USER = "postgres"
START_TIMEOUT_S = 60


def _pg_bin() -> Path | None:
    # NOTE: found without importing pgserver (its import sets up a per-user runtime folder and lock).
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return path if (path / "postgres").exists() else None


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _run_as() -> tuple[str | None, int | None, int | None]:
    """The user the server runs as: None (this one) unless root, then ``nobody``."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return None, None, None
    import pwd

    try:
        entry = pwd.getpwnam("nobody")
    except KeyError:
        _unavailable("running as root and no 'nobody' user to run PostgreSQL as (PostgreSQL refuses root)")
    return "nobody", entry.pw_uid, entry.pw_gid


def _others_can_run(bin_dir: Path) -> bool:
    """Whether any user may traverse every folder down to the binaries and run them."""
    import stat

    folders = [bin_dir, *bin_dir.parents]
    if not all(f.stat().st_mode & stat.S_IXOTH for f in folders):
        return False
    return bool((bin_dir / "postgres").stat().st_mode & stat.S_IXOTH)


class PostgresServer:
    """A running server: ``url(database)`` gives the SQLAlchemy URL of a new or existing database."""

    def __init__(self, bin_dir: Path, root: Path, port: int, user: str | None) -> None:
        self.bin_dir, self.root, self.port, self.user = bin_dir, root, port, user
        self.data = root / "data"
        self.log = root / "server.log"

    def _pg(self, tool: str, *args: str, check: bool = True, timeout: float = START_TIMEOUT_S) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.bin_dir / tool), *args],
            user=self.user,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=check,
            cwd=self.root,
        )

    def start(self) -> None:
        self._pg("initdb", "-D", str(self.data), "-U", PG_USER, "--auth=trust", "--encoding=UTF8", "--no-sync")
        opts = f"-h 127.0.0.1 -p {self.port} -k {self.root} -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=100"
        self._pg("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w", "-t", str(START_TIMEOUT_S), "-o", opts, "start")

    def pid(self) -> int | None:
        pidfile = self.data / "postmaster.pid"
        try:
            return int(pidfile.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        pid = self.pid()
        with contextlib.suppress(subprocess.SubprocessError, OSError):
            self._pg("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "-t", "20", "stop", check=False, timeout=30)
        if pid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                os.kill(pid, signal.SIGKILL)  # NOTE: pg_ctl did not stop it: this is the postmaster we started

    def url(self, database: str, password: str | None = None) -> str:
        """``postgresql+psycopg://postgres@127.0.0.1:PORT/database``, creating the database if missing."""
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user=PG_USER, dbname="postgres", autocommit=True) as conn:
            if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (database,)).fetchone() is None:
                conn.execute(f'CREATE DATABASE "{database}"')
        auth = f"{PG_USER}:{password}" if password else PG_USER
        return f"postgresql+psycopg://{auth}@127.0.0.1:{self.port}/{database}"


def _unavailable(reason: str) -> None:
    """Skip on a developer machine without the test extra; fail in CI, where the PostgreSQL tests
    are the must-show of multi-machine tuning and the test extra installs everything they need."""
    if os.environ.get("CI"):
        pytest.fail(f"PostgreSQL tests cannot run in CI: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A PostgreSQL 16 server from the ``pgserver`` wheel, private to this test session."""
    bin_dir = _pg_bin()
    if bin_dir is None:
        _unavailable("the pgserver wheel (PostgreSQL binaries) is not installed: pip install -e '.[test]'")
    if importlib.util.find_spec("psycopg") is None:
        _unavailable("psycopg (PostgreSQL driver) is not installed: pip install -e '.[test]'")
    user, uid, gid = _run_as()
    root = Path(tempfile.mkdtemp(prefix="delibench-pg-"))
    if uid is not None:
        os.chown(root, uid, gid if gid is not None else -1)
    root.chmod(0o700)
    if uid is not None and not _others_can_run(bin_dir):
        # NOTE: e.g. a virtualenv under /root (mode 700): give the unprivileged user its own copy (~30 MB).
        install = bin_dir.parent
        for part in ("bin", "lib", "share"):
            shutil.copytree(install / part, root / "pginstall" / part, symlinks=True)
        bin_dir = root / "pginstall" / "bin"
        for path in (root / "pginstall").rglob("*"):
            os.lchown(path, uid, gid if gid is not None else -1)
        os.chown(root / "pginstall", uid, gid if gid is not None else -1)
    server = PostgresServer(bin_dir, root, _free_port(), user)
    try:
        try:
            server.start()
        except subprocess.CalledProcessError as exc:
            log = server.log.read_text() if server.log.exists() else ""
            pytest.fail(f"PostgreSQL did not start: {exc.stderr or exc.stdout}\n{log[-2000:]}")
        yield server
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
