"""The first read of a dataset turns an unreachable endpoint, missing credentials or a denied bucket into one clear line."""

from __future__ import annotations

import socket
import struct
import threading

import pytest

from delibench.cli.app import main
from delibench.errors import RuntimeFailure
from delibench.manifest import FIRST_READ_MAX_ATTEMPTS, read_manifest
from delibench.storage import s3_endpoint_options


@pytest.fixture(autouse=True)
def _fresh_s3fs(monkeypatch):
    import s3fs

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "delibench-test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "delibench-test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_MAX_ATTEMPTS", raising=False)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


class _ResettingServer:
    """A real TCP listener that resets every connection at once, counting them."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.sock.getsockname()[1]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


def test_refused_endpoint_is_a_runtime_failure_naming_it(monkeypatch, capsys):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    assert main(["run", "--data", "s3://some-bucket/imgs", "--workload", "mnist-cnn", "--compute", "emulated:10ms", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the object store at http://127.0.0.1:9 to read s3://some-bucket/imgs/"), err
    assert "delibench testbed status" in err and "unexpected" not in err


def test_endpoint_credentials_are_not_shown(monkeypatch):
    with pytest.raises(RuntimeFailure, match="cannot reach the object store at http://127.0.0.1:9 ") as info:
        read_manifest("s3://some-bucket/imgs", s3_endpoint_options("http://user:secretpw@127.0.0.1:9"))
    assert "secretpw" not in str(info.value)


def test_resetting_endpoint_gives_up_after_few_attempts(monkeypatch):
    server = _ResettingServer()
    port = server.port
    try:
        with pytest.raises(RuntimeFailure, match="cannot reach the object store") as info:
            read_manifest("s3://some-bucket/imgs", s3_endpoint_options(f"http://127.0.0.1:{port}"))
    finally:
        server.close()
    assert f"http://127.0.0.1:{port}" in info.value.message
    # Without the first-read config botocore's 5 legacy attempts made 5-10 connections (~8 s here).
    # aiohttp may reconnect once within an attempt when the server drops the connection: hence 2x.
    assert 1 <= server.connections <= 2 * FIRST_READ_MAX_ATTEMPTS


def test_missing_credentials_name_the_endpoint_and_the_cure(s3_server, monkeypatch, tmp_path):
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    with pytest.raises(RuntimeFailure, match="no credentials") as info:
        read_manifest("s3://some-bucket/imgs", s3_endpoint_options(s3_server.endpoint_url))
    assert s3_server.endpoint_url in info.value.message
    assert "AWS_ACCESS_KEY_ID" in (info.value.hint or "") and "AWS_PROFILE" in (info.value.hint or "")


def test_access_denied_is_a_clear_error(monkeypatch):
    from fsspec.implementations.memory import MemoryFileSystem

    def denied(self, path, *args, **kwargs):
        raise PermissionError(path)

    monkeypatch.setattr(MemoryFileSystem, "cat_file", denied)  # a fake in addition: the real-store cases are above
    with pytest.raises(RuntimeFailure, match=r"^access denied reading memory:///denied/ds/_delibench_manifest\.json"):
        read_manifest("memory:///denied/ds")
