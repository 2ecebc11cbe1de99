"""The batch feed: batches handed out strictly in order, stale epochs answered at once, a loop that never
waits on a fetch it does not need yet."""

from __future__ import annotations

import asyncio
import multiprocessing
import pickle
import threading
from typing import Any

import pytest

from delibench.errors import FetchError, RuntimeFailure
from delibench.loaders.deli import DeliLoader
from delibench.loaders.handoff import BatchFeed, FeedDataset
from delibench.loaders.pipeline import context_order
from delibench.testing import Corpus, leftovers, make_context, resource_snapshot


def _batch(b: int) -> list[tuple[int, bytes]]:
    return [(b * 10 + i, f"sample-{b}-{i}".encode()) for i in range(3)]


def test_batches_are_assembled_in_order_whatever_order_they_are_asked_in() -> None:
    feed = BatchFeed()
    calls: list[int] = []
    token = feed.open_epoch(lambda b: calls.append(b) or _batch(b))
    replies: dict[int, Any] = {}
    late = threading.Thread(target=lambda: replies.__setitem__(1, feed.serve(token, 1)))
    late.start()  # asks for batch 1 first: it must wait for batch 0
    late.join(0.3)
    assert late.is_alive() and calls == []
    replies[0] = feed.serve(token, 0)
    late.join(5)
    assert calls == [0, 1]
    assert replies == {0: ("ok", _batch(0)), 1: ("ok", _batch(1))}
    assert feed.serve(token, 0)[0] == "failure"  # asked twice: a bug, never served twice
    feed.close()


def test_a_closed_epoch_answers_waiting_and_later_requests_stale() -> None:
    feed = BatchFeed()
    token = feed.open_epoch(_batch)
    waiting: list[Any] = []
    t = threading.Thread(target=lambda: waiting.append(feed.serve(token, 3)))
    t.start()
    t.join(0.2)
    feed.close_epoch(token)
    t.join(5)
    assert waiting == [("stale", None)]
    assert feed.serve(token, 0) == ("stale", None)
    newer = feed.open_epoch(_batch)
    assert feed.serve(token, 0) == ("stale", None) and feed.serve(newer, 0) == ("ok", _batch(0))
    feed.close()


def test_errors_travel_as_data_and_are_raised_in_the_loader_process() -> None:
    def assemble(b: int) -> list[tuple[int, bytes]]:
        if b == 0:
            raise FetchError("a/b.jpg", "s3://bkt/a/b.jpg", "NoSuchKey")
        raise ValueError("prefetcher broke")

    feed = BatchFeed()
    token = feed.open_epoch(assemble)
    dataset = FeedDataset(feed, lambda data, label: data, [0] * 30, [f"k{i}" for i in range(30)], "s3://bkt/")
    with pytest.raises(FetchError, match="NoSuchKey") as info:
        dataset[(token, 0)].unwrap()
    assert info.value.key == "a/b.jpg"
    with pytest.raises(RuntimeFailure, match="prefetcher broke"):
        dataset[(token, 1)].unwrap()
    feed.close_epoch(token)
    assert dataset[(token, 2)].unwrap() is None  # stale: nothing to deliver
    feed.close()


def _ask_from_a_spawned_process(blob: bytes, token: int, out: Any) -> None:
    feed = pickle.loads(blob)
    out.put(feed.get((token, 0)))


def test_a_spawned_worker_gets_its_batch_over_the_socket() -> None:
    feed = BatchFeed()
    token = feed.open_epoch(_batch)
    blob = pickle.dumps(feed)
    assert len(blob) < 512  # address, key and pid only: no thread, lock or socket travels
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(target=_ask_from_a_spawned_process, args=(blob, token, out))
    proc.start()
    try:
        assert out.get(timeout=60) == ("ok", _batch(0))
    finally:
        proc.join(30)
        feed.close()
    assert proc.exitcode == 0


def test_the_loop_gets_its_first_batch_while_later_batches_are_still_on_the_link(sized_corpus: Corpus) -> None:
    """Regression: with the bytes in the sampler items, the DataLoader's priming (prefetch_factor x
    workers batches) and every ``next()`` pulled a later batch first, so the loop saw batch 0 only
    once batch 4 had arrived. Here every sample after the first batch is held back until the first
    batch has reached the loop (a safety timer lets them go after 60 s, so the old behaviour fails
    instead of hanging)."""
    ctx = make_context(sized_corpus, num_workers=2, batch_size=5)
    order = context_order(ctx, 0)
    first = set(order[: ctx.batch_size])
    gate = threading.Event()
    safety = threading.Timer(60, gate.set)
    safety.start()
    before = resource_snapshot()
    loader = DeliLoader(ctx, cache_size=0, concurrency=4, prefetch_across_epochs=False)
    real_fetch = loader.source.fetch

    async def held_back(idx: int, *args: Any, **kwargs: Any) -> bytes:
        while idx not in first and not gate.is_set():
            await asyncio.sleep(0.01)
        return await real_fetch(idx, *args, **kwargs)

    loader.source.fetch = held_back  # type: ignore[method-assign]
    try:
        batches = loader.iter_epoch(0)
        batch0 = next(batches)
        held = not gate.is_set()
        gate.set()
        seen = [int(i) for i in batch0.indices] + [int(i) for b in batches for i in b.indices]
    finally:
        safety.cancel()
        loader.close()
    assert held, "the first batch waited for samples of later batches"
    assert seen == order  # every sample exactly once, in order
    threads, children = leftovers(before)
    assert not threads and not children
