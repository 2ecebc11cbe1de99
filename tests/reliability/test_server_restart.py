"""The object store itself dies: SIGKILL of SeaweedFS's process group mid-epoch.

Restarted on the same ports and data directory within the retry deadline, the epoch completes
with every sample exactly once; left down longer than the deadline, the run stops with a
FetchError that names the sample. Uses its own server so the session's shared one is untouched.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from delibench.errors import FetchError
from delibench.loaders.deli import DeliLoader
from delibench.testbed.servers import SeaweedServer
from delibench.loaders.testing import Corpus, make_context

from .conftest import Scenario, assert_exact, report, upload

pytestmark = [pytest.mark.s3, pytest.mark.slow]


def _kill(server: SeaweedServer) -> None:
    assert server.pid is not None
    os.killpg(server.pid, signal.SIGKILL)
    server.stop()  # reaps it and removes its socket files


@pytest.fixture(scope="module")
def own_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A SeaweedFS of this module; tests may kill and replace ``holder["server"]``."""
    data_dir = Path(tmp_path_factory.mktemp("seaweed-own"))
    holder: dict[str, Any] = {"server": SeaweedServer(data_dir), "dir": data_dir}
    holder["server"].start(timeout_s=90)
    try:
        yield holder
    finally:
        holder["server"].stop()


def test_server_killed_and_restarted_mid_epoch(own_server: dict[str, Any], rel_local: Corpus,
                                               monkeypatch: pytest.MonkeyPatch, fresh_s3fs: None) -> None:
    server: SeaweedServer = own_server["server"]
    corpus = upload(rel_local, server.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    ctx = make_context(corpus, batch_size=8, num_workers=1, epochs=1)
    restarted = threading.Event()
    down_s: list[float] = []

    def restart() -> None:
        t0 = time.perf_counter()
        replacement = SeaweedServer(own_server["dir"], ports=server.ports)
        replacement.start(timeout_s=90)
        own_server["server"] = replacement
        down_s.append(time.perf_counter() - t0)
        restarted.set()

    indices: list[int] = []
    items: list[str] = []
    with DeliLoader(ctx, cache_size=0, prefetch_depth=8, concurrency=4, retries=40, retry_deadline_s=90) as loader:
        restarter: threading.Thread | None = None
        for n, batch in enumerate(loader.iter_epoch(0)):
            indices.extend(int(i) for i in batch.indices)
            items.extend(batch.inputs)
            if n == 2:
                _kill(server)
                restarter = threading.Thread(target=restart)
                restarter.start()
        assert restarter is not None
        restarter.join(120)
        stats = loader.stats()
    assert restarted.is_set()
    lost = assert_exact(corpus, indices, items)
    assert stats.retries_count >= 1, "the outage must have been seen (and survived) by retries"
    assert stats.errors_count == 0
    report(Scenario("SeaweedFS SIGKILLed mid-epoch, restarted (deli)", {"server_kill": 1}, stats.requests_count,
                    stats.retries_count, stats.hedges_count, len(indices), lost,
                    extra={"outage_s": f"{down_s[0]:.1f}"}))


def test_server_down_longer_than_deadline_stops_with_fetch_error(own_server: dict[str, Any], rel_local: Corpus,
                                                                 monkeypatch: pytest.MonkeyPatch, fresh_s3fs: None) -> None:
    server: SeaweedServer = own_server["server"]
    corpus = upload(rel_local, server.endpoint_url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.endpoint_url)
    ctx = make_context(corpus, batch_size=8, num_workers=1, epochs=1)
    deadline_s = 2.0
    with DeliLoader(ctx, cache_size=0, prefetch_depth=8, concurrency=4, retries=100, retry_deadline_s=deadline_s) as loader:
        delivered = 0
        with pytest.raises(FetchError) as info:
            for n, batch in enumerate(loader.iter_epoch(0)):
                delivered += len(batch.indices)
                if n == 1:
                    _kill(server)
                    killed_at = time.perf_counter()
        stopped_s = time.perf_counter() - killed_at
        stats = loader.stats()
    text = str(info.value)
    assert info.value.key in text and "gave up after" in text
    assert info.value.url.startswith(corpus.url)
    assert stats.retries_count >= 1 and stats.errors_count >= 1
    # NOTE: no lower bound on stopped_s: a sample's deadline may start before the kill, and a retry
    # gives up as soon as its next backoff would cross the deadline; retries_count >= 1 shows it retried.
    assert stopped_s <= deadline_s + 10.0  # bounded: it did not retry past its deadline for long
    report(Scenario("SeaweedFS SIGKILLed, never back, retry_deadline_s=2 (deli)", {"server_kill": 1},
                    stats.requests_count, stats.retries_count, stats.hedges_count, delivered, 0,
                    outcome=f"FetchError after {stopped_s:.1f} s: {text[:80]}..."))
