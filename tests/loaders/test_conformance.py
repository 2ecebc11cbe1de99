"""Every built-in loader against the shared conformance suite, on local files, SeaweedFS and fake-gcs."""

from __future__ import annotations

from typing import Any

import pytest

from delibench.loaders import build_loader
from delibench.records import LoaderSpec
from delibench.loaders.testing import Corpus, LoaderConformance


def factory(kind: str, **options: Any) -> Any:
    return lambda ctx: build_loader(LoaderSpec(kind, options), ctx)


class _Local(LoaderConformance):
    @pytest.fixture
    def corpus(self, local_corpus: Corpus) -> Corpus:
        return local_corpus


class _S3(LoaderConformance):
    @pytest.fixture
    def corpus(self, s3_corpus: Corpus) -> Corpus:
        return s3_corpus


class TestDiskLocal(_Local):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("disk")


class TestBucketLocal(_Local):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("bucket", concurrency=3)


class TestDeliLocal(_Local):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_size="8KiB", prefetch_depth=4, concurrency=3)


class TestDeliNoWorkersNoCache(_Local):
    num_workers = 0

    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_size=0, prefetch_depth=1, concurrency=1)


class TestDeliDiskTierLocal(_Local):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_size="4KiB", cache_tier="disk", disk_cache_size="16KiB", eviction="belady")


class TestDeliThresholdFifoItemsLocal(_Local):
    """The DELI paper's knobs: the fetch_size/fetch_threshold trigger, FIFO, a cache counted in items."""

    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_items=6, fetch_size=4, fetch_threshold=3, eviction="fifo", concurrency=3)


class TestMemoryLocal(_Local):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("memory")


class TestFsspecCacheLocal(_Local):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("fsspec-cache", mode="blockcache")


@pytest.mark.s3
class TestBucketS3(_S3):
    num_workers = 1  # every worker builds its own client (~1 s here); the fork test uses 2
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("bucket")


@pytest.mark.s3
class TestDeliS3(_S3):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_size="10KiB", prefetch_depth=6, concurrency=4, eviction="belady")


@pytest.mark.s3
class TestDeliThresholdS3(_S3):
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_items=5, prefetch="threshold", fetch_size=5, fetch_threshold=5, concurrency=4,
                       eviction="fifo")


@pytest.mark.s3
class TestFsspecCacheS3(_S3):
    num_workers = 1
    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("fsspec-cache", mode="simplecache")


@pytest.mark.gcs
class TestDeliGcs(LoaderConformance):
    @pytest.fixture
    def corpus(self, gcs_corpus: Corpus) -> Corpus:
        return gcs_corpus

    @pytest.fixture
    def loader_factory(self) -> Any:
        return factory("deli", cache_size="8KiB", prefetch_depth=5, concurrency=4)
