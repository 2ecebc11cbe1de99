"""Fixtures of the reliability tests, and the fault summary printed at the end of every run.

Each scenario calls :func:`report` with what was injected and what the loader saw; the
``pytest_terminal_summary`` hook prints one line per scenario through pytest's terminal reporter,
so CI logs show the numbers with or without ``-s``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from delibench.loaders.testing import Corpus, copy_corpus, make_corpus

_CREDS = {"key": "delibench-test", "secret": "delibench-test-secret"}


@dataclass
class Scenario:
    """One line of the fault summary."""

    name: str
    faults: dict[str, int]
    requests: int
    retries: int
    hedges: int
    delivered: int
    lost: int
    skipped: int = 0
    outcome: str = "epoch complete"
    extra: dict[str, Any] = field(default_factory=dict)

    def line(self) -> str:
        faults = ", ".join(f"{k}={v}" for k, v in self.faults.items() if v) or "none"
        extra = "".join(f" {k}={v}" for k, v in self.extra.items())
        return (f"{self.name}: faults injected [{faults}], requests={self.requests}, retries={self.retries}, "
                f"hedges={self.hedges}, delivered={self.delivered}, skipped={self.skipped}, "
                f"samples lost={self.lost} -> {self.outcome}{extra}")


_SUMMARY: list[Scenario] = []


def report(scenario: Scenario) -> None:
    """Record a scenario for the end-of-run summary (and print it for ``-s`` runs)."""
    _SUMMARY.append(scenario)
    print(scenario.line())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    if not _SUMMARY:
        return
    terminalreporter.section("reliability: fault summary")
    for scenario in _SUMMARY:
        terminalreporter.write_line(scenario.line())


def s3_options(endpoint: str) -> dict[str, Any]:
    """Explicit s3fs options for uploads that must not go through a shaped link."""
    return {**_CREDS, "client_kwargs": {"endpoint_url": endpoint}}


def upload(local: Corpus, endpoint: str) -> Corpus:
    """``local`` copied to a new bucket at ``endpoint``."""
    import s3fs

    opts = s3_options(endpoint)
    bucket = f"rel-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir(bucket)
    return copy_corpus(local, f"s3://{bucket}/ds", opts)


@pytest.fixture(scope="session")
def rel_local(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """120 random-byte samples of 2-8 KB on local disk."""
    return make_corpus(tmp_path_factory.mktemp("rel-corpus"), samples=120, min_bytes=2000, max_bytes=8000, seed=3)


@pytest.fixture(scope="module")
def rel_s3(s3_server: Any, rel_local: Corpus) -> Corpus:
    """The corpus in a SeaweedFS bucket (uploaded once per module)."""
    return upload(rel_local, s3_server.endpoint_url)


def collect(loader: Any, epoch: int = 0) -> tuple[list[int], list[str], list[float], float]:
    """Indices, decoded items, per-batch wait times and the epoch's wall time."""
    indices: list[int] = []
    items: list[str] = []
    waits: list[float] = []
    start = time.perf_counter()
    iterator = iter(loader.iter_epoch(epoch))
    while True:
        t0 = time.perf_counter()
        try:
            batch = next(iterator)
        except StopIteration:
            break
        waits.append(time.perf_counter() - t0)
        indices.extend(int(i) for i in batch.indices)
        items.extend(batch.inputs)
    return indices, items, waits, time.perf_counter() - start


def assert_exact(corpus: Corpus, indices: list[int], items: list[str], skipped: tuple[str, ...] = ()) -> int:
    """Every non-skipped sample exactly once, byte-identical (checksum decode); returns samples lost."""
    keys = {e.key: i for i, e in enumerate(corpus.manifest.samples)}
    skipped_idx = {keys[k] for k in skipped}
    assert len(indices) == len(set(indices)), "a sample was delivered twice"
    assert not skipped_idx & set(indices), "a skipped sample was also delivered"
    assert items == [corpus.expected(i) for i in indices], "delivered bytes differ from the manifest"
    lost = set(range(len(corpus.manifest))) - set(indices) - skipped_idx
    assert not lost, f"samples lost without being listed as skipped: {sorted(lost)[:10]}"
    return len(lost)


@pytest.fixture
def fresh_s3fs() -> Iterator[None]:
    """Clear s3fs's instance cache before and after (endpoints change between tests)."""
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()
