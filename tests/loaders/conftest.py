"""Fixtures of the loader tests: small random-byte corpora on local disk, SeaweedFS and fake-gcs."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from delibench.loaders.testing import Corpus, copy_corpus, make_corpus

_CREDS = {"key": "delibench-test", "secret": "delibench-test-secret"}


@pytest.fixture(scope="session")
def local_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """23 samples (odd on purpose: exercises DistributedSampler padding at world size 2)."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), samples=23)


@pytest.fixture(scope="session")
def sized_corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """60 samples of exactly 1000 bytes, so byte budgets translate to sample counts."""
    return make_corpus(Path(tmp_path_factory.mktemp("sized")), samples=60, min_bytes=1000, max_bytes=1000)


def _s3_options(endpoint: str) -> dict[str, Any]:
    return {**_CREDS, "client_kwargs": {"endpoint_url": endpoint}, "config_kwargs": {"s3": {"addressing_style": "path"}}}


@pytest.fixture(scope="module")
def _s3_uploaded(s3_server: Any, local_corpus: Corpus) -> Iterator[Corpus]:
    """The local corpus uploaded once per module to its own SeaweedFS bucket (uploads are slow here)."""
    import s3fs

    opts = _s3_options(s3_server.endpoint_url)
    bucket = f"loaders-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir(bucket)
    yield copy_corpus(local_corpus, f"s3://{bucket}/ds", opts)


@pytest.fixture
def s3_corpus(_s3_uploaded: Corpus, s3_server: Any, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    """The uploaded corpus, with ``AWS_ENDPOINT_URL`` pointing at the server for this test."""
    import s3fs

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    s3fs.S3FileSystem.clear_instance_cache()
    return _s3_uploaded


@pytest.fixture
def gcs_corpus(local_corpus: Corpus, gcs_bucket: str) -> Corpus:
    """The local corpus uploaded to a fresh fake-gcs-server bucket."""
    return copy_corpus(local_corpus, f"{gcs_bucket}/ds")
