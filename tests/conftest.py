"""Shared fixtures: real SeaweedFS S3 and fake-gcs-server instances, buckets, and shaped links.

Contract used by every test area (names and behaviour are stable):

* autouse: fake AWS credentials and region; ``AWS_PROFILE`` removed.
* ``s3_server`` (session): a running SeaweedFS with ``.endpoint_url`` (direct) and ``.env``.
* ``s3_bucket``: a fresh bucket; ``AWS_ENDPOINT_URL`` points at the direct endpoint; yields ``"s3://<bucket>"``.
* ``shaped_s3``: factory ``shaped_s3(profile)`` -> a started ``LinkEmulator`` in front of
  ``s3_server``; ``AWS_ENDPOINT_URL`` points at it. Stopped at teardown.
* ``gcs_server`` (session) and ``gcs_bucket`` (``STORAGE_EMULATOR_HOST`` set; yields ``"gs://<bucket>"``).
"""

from __future__ import annotations

import itertools
import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from delibench.storage import GCS_BUCKET_TYPE_PROBE, skip_gcs_bucket_type_probe

skip_gcs_bucket_type_probe()  # before anything imports gcsfs

from delibench.testbed.link import LinkEmulator  # noqa: E402
from delibench.testbed.profiles import LinkProfile  # noqa: E402
from delibench.testbed.servers import GcsEmulator, SeaweedServer  # noqa: E402

_FAKE_AWS = {
    "AWS_ACCESS_KEY_ID": "delibench-test",
    "AWS_SECRET_ACCESS_KEY": "delibench-test-secret",
    "AWS_REGION": "us-east-1",
    "AWS_DEFAULT_REGION": "us-east-1",
}
_bucket_counter = itertools.count()


@dataclass
class ServerHandle:
    """A running test server: its direct endpoint and the environment a client needs."""

    server: SeaweedServer | GcsEmulator
    endpoint_url: str
    env: dict[str, str] = field(default_factory=dict)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    @property
    def port(self) -> int:
        return int(self.endpoint_url.rsplit(":", 1)[1])


@pytest.fixture(autouse=True)
def _fake_cloud_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    """Never let a test reach a real account: dummy keys, a fixed region, no profile."""
    for key, value in _FAKE_AWS.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)


def _unique_bucket(prefix: str) -> str:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    name = f"{prefix}-{uuid.uuid4().hex[:10]}-{next(_bucket_counter)}"
    return f"{name}-{worker}" if worker else name


def _clear_fsspec_caches() -> None:
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    try:
        import gcsfs
    except ImportError:  # pragma: no cover - gcsfs is a dependency
        return
    gcsfs.GCSFileSystem.clear_instance_cache()


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A real SeaweedFS S3 server on free loopback ports for the whole session."""
    server = SeaweedServer(tmp_path_factory.mktemp("seaweedfs"))
    server.start(timeout_s=90)
    env = {**_FAKE_AWS, "AWS_ENDPOINT_URL": server.endpoint_url}
    try:
        yield ServerHandle(server, server.endpoint_url, env)
    finally:
        server.stop()


@pytest.fixture
def s3_bucket(s3_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new, empty bucket on ``s3_server``; ``AWS_ENDPOINT_URL`` points at the direct endpoint."""
    import botocore.session

    name = _unique_bucket("test")
    client = botocore.session.get_session().create_client(
        "s3",
        endpoint_url=s3_server.endpoint_url,
        aws_access_key_id=_FAKE_AWS["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_FAKE_AWS["AWS_SECRET_ACCESS_KEY"],
        region_name=_FAKE_AWS["AWS_REGION"],
    )
    client.create_bucket(Bucket=name)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    _clear_fsspec_caches()
    yield f"s3://{name}"
    _clear_fsspec_caches()


@pytest.fixture
def shaped_s3(s3_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., LinkEmulator]]:
    """Factory: ``shaped_s3("cross-region")`` or ``shaped_s3(LinkProfile(...), seed=1)``.

    Starts a link emulator in front of ``s3_server``, points ``AWS_ENDPOINT_URL`` at it, clears the
    s3fs instance cache and returns the emulator (for ``.stats()``, ``.endpoint_url``).
    """
    started: list[LinkEmulator] = []

    def make(profile: str | LinkProfile = "local", *, seed: int = 0) -> LinkEmulator:
        emulator = LinkEmulator(s3_server.host, s3_server.port, profile, seed=seed).start()
        started.append(emulator)
        monkeypatch.setenv("AWS_ENDPOINT_URL", emulator.endpoint_url)
        _clear_fsspec_caches()
        return emulator

    yield make
    _clear_fsspec_caches()
    for emulator in started:
        emulator.stop()


@pytest.fixture(scope="session")
def gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerHandle]:
    """A fake-gcs-server emulator on a free loopback port for the whole session."""
    skip_gcs_bucket_type_probe()
    server = GcsEmulator(Path(tmp_path_factory.mktemp("fake-gcs")))
    server.start(timeout_s=30)
    env = {"STORAGE_EMULATOR_HOST": server.endpoint_url, GCS_BUCKET_TYPE_PROBE[0]: GCS_BUCKET_TYPE_PROBE[1]}
    try:
        yield ServerHandle(server, server.endpoint_url, env)
    finally:
        server.stop()


@pytest.fixture
def gcs_bucket(gcs_server: ServerHandle, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A new bucket on ``gcs_server``; ``STORAGE_EMULATOR_HOST`` is set; yields ``"gs://<bucket>"``."""
    # NOTE: the testbed's own bucket creation (testbed up, the lab); private there until testbed.py exports it.
    from delibench.testbed.testbed import _create_gcs_bucket

    name = _unique_bucket("test")
    _create_gcs_bucket(gcs_server.endpoint_url, name)
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_server.endpoint_url)
    monkeypatch.setenv(*GCS_BUCKET_TYPE_PROBE)
    _clear_fsspec_caches()
    yield f"gs://{name}"
    _clear_fsspec_caches()
