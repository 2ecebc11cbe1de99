"""Throttling (503 SlowDown), connection resets mid-body and stalls, injected by the link emulator.

Each test runs a real loader against SeaweedFS behind the emulator, checks that the epoch delivers
every sample exactly once and byte-identical, and ties the loader's counters to the emulator's:
every injected fault is one failed attempt, every failed attempt one retry, every attempt one
request on the wire.
"""

from __future__ import annotations

from typing import Any

import pytest

from delibench.errors import FetchError
from delibench.loaders.bucket import BucketLoader
from delibench.loaders.deli import DeliLoader
from delibench.testbed.profiles import LinkProfile
from delibench.loaders.testing import Corpus, make_context

from .conftest import Scenario, assert_exact, collect, report

pytestmark = pytest.mark.s3

_FAST_RETRY = {"retries": 8, "retry_deadline_s": 30}


def _loader(kind: str, corpus: Corpus, num_workers: int = 1, **options: Any) -> Any:
    ctx = make_context(corpus, batch_size=8, num_workers=num_workers, epochs=1)
    if kind == "deli":
        return DeliLoader(ctx, cache_size=0, prefetch_depth=32, concurrency=8, **options)
    return BucketLoader(ctx, concurrency=4, **options)


@pytest.mark.parametrize("kind", ["deli", "bucket"])
def test_five_percent_503_slowdown_is_retried(rel_s3: Corpus, shaped_s3: Any, kind: str) -> None:
    link = shaped_s3(LinkProfile(name="throttled", error_rate=0.05), seed=11)
    with _loader(kind, rel_s3, **_FAST_RETRY) as loader:
        before = link.stats()
        indices, items, _, _ = collect(loader)
        stats = loader.stats()
    after = link.stats()
    errors = after.faults["error"] - before.faults["error"]
    lost = assert_exact(rel_s3, indices, items)
    assert errors >= 2, "the seed must inject some 503s for this test to mean anything"
    assert stats.retries_count == errors, "each 503 must be exactly one retried attempt"
    assert stats.requests_count == after.requests - before.requests, "attempts hidden from the counters"
    assert stats.errors_count == 0 and stats.skipped_keys == ()
    report(Scenario(f"503 SlowDown 5% ({kind})", {"503": errors}, stats.requests_count, stats.retries_count,
                    stats.hedges_count, len(indices), lost))


def test_connection_resets_mid_body_are_retried(rel_s3: Corpus, shaped_s3: Any) -> None:
    link = shaped_s3(LinkProfile(name="resetting", reset_rate=0.05), seed=5)
    with _loader("deli", rel_s3, **_FAST_RETRY) as loader:
        before = link.stats()
        indices, items, _, _ = collect(loader)
        stats = loader.stats()
    after = link.stats()
    resets = after.faults["reset"] - before.faults["reset"]
    lost = assert_exact(rel_s3, indices, items)
    assert resets >= 2
    assert stats.retries_count == resets
    assert stats.requests_count == after.requests - before.requests
    report(Scenario("connection reset mid-body 5% (deli)", {"reset": resets}, stats.requests_count,
                    stats.retries_count, stats.hedges_count, len(indices), lost))


def test_stall_is_hidden_by_hedging(rel_s3: Corpus, shaped_s3: Any) -> None:
    stall_s = 2.0
    profile = LinkProfile(name="stalling", stall_rate=0.03, stall_s=stall_s)

    link = shaped_s3(profile, seed=2)
    with _loader("deli", rel_s3) as loader:
        indices, items, _, plain_s = collect(loader)
        plain = loader.stats()
    stalls_plain = link.stats().faults["stall"]
    assert_exact(rel_s3, indices, items)
    assert stalls_plain >= 1 and plain.hedges_count == 0
    assert plain_s >= stall_s  # measured lower bound: the stalled sample is needed before the epoch ends

    link = shaped_s3(profile, seed=2)
    with _loader("deli", rel_s3, hedge_after="200ms") as loader:
        indices, items, waits, hedged_s = collect(loader)
        hedged = loader.stats()
    stalls = link.stats().faults["stall"]
    lost = assert_exact(rel_s3, indices, items)
    assert stalls >= 1
    assert hedged.hedges_count >= stalls, "every stalled request must have been hedged"
    assert hedged.retries_count == 0
    assert hedged_s < stall_s and max(waits) < stall_s, "hedging did not hide the stall"
    report(Scenario("2 s stalls, hedge_after=200ms (deli)", {"stall": stalls}, hedged.requests_count,
                    hedged.retries_count, hedged.hedges_count, len(indices), lost,
                    extra={"epoch_s": f"{hedged_s:.2f} (unhedged {plain_s:.2f})"}))


def test_retry_budget_exhausted_stops_with_fetch_error(rel_s3: Corpus, shaped_s3: Any) -> None:
    link = shaped_s3(LinkProfile(name="always-503", error_rate=1.0), seed=0)
    with _loader("deli", rel_s3, retries=2, retry_deadline_s=10) as loader:
        with pytest.raises(FetchError) as info:
            collect(loader)
        stats = loader.stats()
    text = str(info.value)
    assert info.value.key in text and info.value.url.startswith(rel_s3.url) and "gave up after 3 attempts" in text
    assert "reduce your request rate" in text
    assert stats.errors_count >= 1 and stats.retries_count >= 2
    # Attempts in flight when the epoch stopped are cancelled; some may not have reached the link.
    assert link.stats().requests <= stats.requests_count <= link.stats().requests + 8
    report(Scenario("503 on every request, retries=2 (deli)", {"503": link.stats().faults["error"]},
                    stats.requests_count, stats.retries_count, stats.hedges_count, 0, 0,
                    outcome=f"FetchError: {text[:90]}..."))
