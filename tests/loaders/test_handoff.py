"""The batch feed: batches handed out strictly in order, stale epochs answered at once, a loop that never
waits on a fetch it does not need yet."""

from __future__ import annotations

import asyncio
import errno
import multiprocessing
import pickle
import threading
from typing import Any

import pytest

from delibench.errors import FetchError, RuntimeFailure
from delibench.loaders.deli import DeliLoader
from delibench.loaders.handoff import BatchFeed, FeedDataset
from delibench.loaders.pipeline import BytesBatchDataset, context_order
from delibench.loaders.testing import Corpus, leftovers, make_context, resource_snapshot


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

    feed = BatchFeed(remote=False)
    token = feed.open_epoch(assemble)
    dataset = FeedDataset(feed, BytesBatchDataset(lambda data, label: data, [0] * 30, [f"k{i}" for i in range(30)], "s3://bkt/"))
    with pytest.raises(FetchError, match="NoSuchKey") as info:
        dataset[(token, 0)].unwrap()
    assert info.value.key == "a/b.jpg"
    with pytest.raises(RuntimeFailure, match="prefetcher broke"):
        dataset[(token, 1)].unwrap()  # what a worker can say: the message
    assert isinstance(feed.take_error(token), ValueError)  # what the loader process re-raises: the original
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


def _held_back_loader(corpus: Corpus, **options: Any) -> tuple[DeliLoader, list[int], threading.Event]:
    """A deli loader whose GETs after the first batch wait until the returned event is set."""
    ctx = make_context(corpus, num_workers=2, batch_size=5)
    order = context_order(ctx, 0)
    first = set(order[: ctx.batch_size])
    gate = threading.Event()
    loader = DeliLoader(ctx, cache_size=0, concurrency=4, prefetch_across_epochs=False, **options)
    real_fetch = loader.source.fetch

    async def held_back(idx: int, *args: Any, **kwargs: Any) -> bytes:
        while idx not in first and not gate.is_set():
            await asyncio.sleep(0.01)
        return await real_fetch(idx, *args, **kwargs)

    loader.source.fetch = held_back  # type: ignore[method-assign]
    return loader, order, gate


def test_the_loop_gets_its_first_batch_while_later_batches_are_still_on_the_link(sized_corpus: Corpus) -> None:
    """Regression: with the bytes in the sampler items, the DataLoader's priming (prefetch_factor x
    workers batches) and every ``next()`` pulled a later batch first, so the loop saw batch 0 only
    once batch 4 had arrived. Here every sample after the first batch is held back until the first
    batch has reached the loop (a safety timer lets them go after 60 s, so the old behaviour fails
    instead of hanging)."""
    before = resource_snapshot()
    loader, order, gate = _held_back_loader(sized_corpus)
    safety = threading.Timer(60, gate.set)
    safety.start()
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


def test_a_bad_handshake_does_not_stop_the_server_and_close_returns() -> None:
    from multiprocessing import AuthenticationError
    from multiprocessing.connection import Client

    feed = BatchFeed()
    token = feed.open_epoch(_batch)
    with pytest.raises((AuthenticationError, EOFError, OSError)):
        Client(feed.address, authkey=b"not the key")
    # A worker holding the key (a pickled copy, as DataLoader workers get it) is still served.
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    proc = ctx.Process(target=_ask_from_a_spawned_process, args=(pickle.dumps(feed), token, out))
    proc.start()
    try:
        assert out.get(timeout=60) == ("ok", _batch(0))
    finally:
        proc.join(30)
    assert proc.exitcode == 0
    closer = threading.Thread(target=feed.close)
    closer.start()
    closer.join(10)
    assert not closer.is_alive(), "close() hung"


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "fork-per-epoch"])
def test_an_epoch_stopped_early_releases_workers_waiting_for_bytes(
    sized_corpus: Corpus, persistent: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Regression: workers blocked on a batch still on the link were shut down before the epoch was
    closed, so torch waited 5 s and then terminated them. They must get "stale" first and exit."""
    from multiprocessing.process import BaseProcess

    terminated: list[int | None] = []
    real_terminate = BaseProcess.terminate
    monkeypatch.setattr(BaseProcess, "terminate", lambda self: terminated.append(self.pid) or real_terminate(self))
    before = resource_snapshot()
    loader, order, gate = _held_back_loader(sized_corpus, persistent_workers=persistent)
    try:
        batches = loader.iter_epoch(0)
        assert [int(i) for i in next(batches).indices] == order[:5]
        batches.close()  # the workers hold batches 1-3, whose bytes are held back
        gate.set()
        assert sorted(int(i) for b in loader.iter_epoch(1) for i in b.indices) == sorted(order)
    finally:
        gate.set()
        loader.close()
    assert terminated == [], "a decode worker had to be terminated"
    threads, children = leftovers(before)
    assert not threads and not children


def test_a_failure_while_assembling_reaches_the_caller_as_the_original_exception(sized_corpus: Corpus) -> None:
    """A full disk under the cache's disk tier (or any bug) keeps its type and errno, not a worker's message."""
    ctx = make_context(sized_corpus, num_workers=2)
    before = resource_snapshot()
    loader = DeliLoader(ctx, cache_size="1MiB", concurrency=4)

    def full(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    loader.cache.put = full  # type: ignore[method-assign]
    try:
        with pytest.raises(OSError) as info:
            for _ in loader.iter_epoch(0):
                pass
        assert info.value.errno == errno.ENOSPC
    finally:
        loader.close()
    threads, children = leftovers(before)
    assert not threads and not children
