"""Fetching one epoch's known order ahead of consumption, many requests in flight on one event loop."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

from delibench.errors import FetchError, RuntimeFailure
from delibench.loaders.cache import ByteBudgetCache
from delibench.loaders.pipeline import GuardedItems, run_dataloader
from delibench.loaders.source import SampleSource

__all__ = ["DecodePipeline", "EpochPrefetcher"]


class EpochPrefetcher:
    """Walks ``order`` ahead of the consumer with ``concurrency`` GETs in flight.

    The walk runs as one coroutine on the source's IO loop (fsspec's loop thread: no thread of its
    own). Each position is first looked up in ``cache`` (a hit costs no request); misses are
    fetched. :meth:`take` hands the bytes of each position to the consumer in order, exactly once.

    How far ahead it walks is the prefetch policy:

    * **window** (``fetch_size`` None): a sliding window; up to ``depth`` samples fetched or in
      flight ahead of the next one to be taken, topped up after every sample taken.
    * **threshold** (``fetch_size`` and ``fetch_threshold`` set; the DELI paper's trigger): when
      fewer than ``fetch_threshold`` samples are released ahead of consumption (fetched, in
      flight or cache hits not yet taken), the next ``fetch_size`` samples of the order are
      released for fetching, as one burst. At most ``fetch_threshold - 1 + fetch_size`` samples
      are ahead at any time.

    Args:
        source: Where misses are read from.
        order: Manifest indices in consumption order.
        cache: Looked up before each fetch (hits and misses are counted there).
        depth: Window policy: most samples fetched or in flight ahead of the next one to be
            taken (>= 1); ignored by the threshold policy.
        concurrency: Most requests in flight (>= 1).
        next_use: Position -> the global time the sample at that position is needed next after
            this use (for clairvoyant eviction); None when unknown.
        fetch_size: Threshold policy: samples released per trigger (>= 1); None = window policy.
        fetch_threshold: Threshold policy: trigger when fewer than this many samples are ahead
            (>= 1; defaults to ``fetch_size``).
    """

    def __init__(
        self,
        source: SampleSource,
        order: Sequence[int],
        cache: ByteBudgetCache,
        depth: int,
        concurrency: int,
        next_use: Callable[[int], float | None],
        *,
        fetch_size: int | None = None,
        fetch_threshold: int | None = None,
    ) -> None:
        self.source = source
        self.order = list(order)
        self.cache = cache
        self.depth = max(1, depth)
        self.fetch_size = None if fetch_size is None else max(1, fetch_size)
        self.fetch_threshold = None if self.fetch_size is None else max(1, fetch_threshold or self.fetch_size)
        #: Threshold policy: positions below this are released for fetching (only the loop moves it).
        self._released = 0
        self.concurrency = max(1, concurrency)
        self.next_use = next_use
        self._ready: dict[int, tuple[bytes | BaseException, bool]] = {}
        #: Positions looked up (a miss) but not delivered yet: after a pause their fetch is sent again
        #: without a second lookup, so a miss is counted once. At most ``concurrency`` entries.
        self._missed: set[int] = set()
        self._cond = threading.Condition()
        self._consumed = 0
        self.ready_bytes = 0
        self.peak_bytes = 0
        self.lead_sum = 0
        self.lead_count = 0
        self.dropped_hits = 0
        self._wake: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._future: concurrent.futures.Future[None] | None = None
        self._stopped = threading.Event()
        self._stop_requested = False
        self._task: asyncio.Task[None] | None = None
        self.paused = False

    # -- loop side ------------------------------------------------------------------------------

    def start(self) -> None:
        """Begin prefetching (returns at once); after :meth:`pause`, go on where the walk stopped."""
        self._loop = self.source.loop
        self._stopped.clear()
        self._stop_requested = False
        self._task = None
        self._future = asyncio.run_coroutine_threadsafe(self._main(), self._loop)

    def pause(self, timeout_s: float = 10.0) -> None:
        """Stop fetching but keep what has arrived: :meth:`start` later goes on from there.

        Requests in flight are cancelled (they are counted as sent; :meth:`start` sends them
        again), so a paused walk uses no link while another loader is measured.
        """
        self._halt(timeout_s)
        self.paused = True

    def resume(self) -> None:
        """Go on after :meth:`pause` (does nothing when the walk was not paused)."""
        if self.paused:
            self.paused = False
            self.start()

    async def _main(self) -> None:
        self._task = asyncio.current_task()
        try:
            if self._stop_requested:
                return
            self._wake = asyncio.Event()
            await self._walk()
        finally:
            self._stopped.set()
            with self._cond:
                self._cond.notify_all()

    async def _walk(self) -> None:
        sem = asyncio.Semaphore(self.concurrency)
        tasks: set[asyncio.Task[None]] = set()
        try:
            for pos in range(self._consumed, len(self.order)):
                if pos in self._ready:
                    continue  # arrived before a pause
                idx = self.order[pos]
                while pos >= self._limit():
                    assert self._wake is not None
                    self._wake.clear()
                    if pos < self._limit():
                        break
                    await self._wake.wait()
                if pos not in self._missed:
                    data = self.cache.get(idx, self.next_use(pos))
                    if data is not None:
                        self._deliver(pos, data, hit=True)
                        continue
                    self._missed.add(pos)
                await sem.acquire()
                task = asyncio.ensure_future(self._fetch(pos, idx, sem))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            if tasks:
                await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            if tasks:
                await asyncio.gather(*tasks, return_exceptions=True)

    def _limit(self) -> int:
        """The first position the walk may not fetch yet (loop side; see the class's policies)."""
        consumed = self._consumed
        if self.fetch_size is None:
            return consumed + self.depth
        assert self.fetch_threshold is not None
        end = len(self.order)
        while self._released - consumed < self.fetch_threshold and self._released < end:
            self._released = min(end, max(self._released, consumed) + self.fetch_size)
        return self._released

    async def _fetch(self, pos: int, idx: int, sem: asyncio.Semaphore) -> None:
        try:
            data: bytes | BaseException = await self.source.fetch(idx)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer, raised there
            data = exc
        finally:
            sem.release()
        self._deliver(pos, data, hit=False)

    def _deliver(self, pos: int, data: bytes | BaseException, *, hit: bool) -> None:
        self._missed.discard(pos)
        with self._cond:
            self._ready[pos] = (data, hit)
            if isinstance(data, bytes):
                self.ready_bytes += len(data)
                self.peak_bytes = max(self.peak_bytes, self.ready_bytes)
            self._cond.notify_all()

    def _request_stop(self) -> None:
        # NOTE: cancelling the concurrent future is not enough: a task cancelled before its first
        # step never runs its finally clause, so the walk is stopped from inside the loop instead.
        self._stop_requested = True
        if self._task is not None:
            self._task.cancel()

    def _advance(self) -> None:
        if self._wake is not None:
            self._wake.set()

    # -- consumer side --------------------------------------------------------------------------

    def not_ready(self, positions: Iterable[int]) -> int:
        """How many of ``positions`` have not arrived yet (a failure that arrived counts as arrived).

        The loader asks this when a batch is requested, before taking its samples: those not
        ready are the samples the consumer has to wait for (its miss rate).
        """
        with self._cond:
            return sum(1 for pos in positions if pos not in self._ready)

    def take(self, pos: int) -> tuple[bytes, bool]:
        """Block until position ``pos`` is ready; returns its bytes and whether it was a cache hit.

        Raises:
            FetchError: The sample could not be read.
            RuntimeFailure: The prefetcher stopped before reaching ``pos``.
        """
        with self._cond:
            while pos not in self._ready:
                if self._stopped.is_set():
                    exc = self._future.exception() if self._future and self._future.done() else None
                    raise RuntimeFailure(f"prefetcher stopped before sample position {pos}: {exc!r}")
                self._cond.wait(0.5)
            data, hit = self._ready.pop(pos)
            if isinstance(data, bytes):
                self.ready_bytes -= len(data)
            self.lead_sum += len(self._ready)
            self.lead_count += 1
            self._consumed = pos + 1
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._advance)
        if isinstance(data, BaseException):
            if isinstance(data, FetchError):
                raise FetchError(data.key, data.url, data.cause) from data
            raise data
        return data, hit

    def _halt(self, timeout_s: float) -> None:
        """Cancel the walk and its requests and wait until it has stopped."""
        if self._future is None or self._loop is None:
            return
        if not self._stopped.is_set() and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._request_stop)
            if not self._stopped.wait(timeout_s):
                raise RuntimeFailure(f"prefetcher did not stop within {timeout_s:g} s")

    def close(self, timeout_s: float = 10.0) -> None:
        """Cancel outstanding requests and wait until the walk has stopped (idempotent)."""
        if self._future is None or self._loop is None:
            return
        self._halt(timeout_s)
        self.paused = False
        with self._cond:
            self.dropped_hits += sum(1 for _, hit in self._ready.values() if hit)
            self._ready.clear()
            self.ready_bytes = 0

    def pending_hits(self) -> int:
        """Cache hits looked up (and counted by the cache) but not taken yet, or dropped at close.

        A walk started ahead of its epoch looks samples up before the epoch runs; the loader
        subtracts these from the cache's hit count so that hits count only samples delivered.
        """
        with self._cond:
            return self.dropped_hits + sum(1 for _, hit in self._ready.values() if hit)


def _identity(x: Any) -> Any:
    return x


class _EpochItems:
    """The persistent DataLoader's sampler: ``iter()`` returns the iterator of the epoch's items.

    NOTE: the DataLoader calls ``iter(sampler)`` twice when it builds its first iterator; both
    calls must return the same iterator, so it is returned as is, never replaced here.
    """

    def __init__(self) -> None:
        self.items: Iterator[Any] = iter(())

    def __iter__(self) -> Iterator[Any]:
        return self.items


class DecodePipeline:
    """Decode workers that outlive an epoch: one DataLoader with persistent workers, fed epoch by epoch.

    A fresh DataLoader per epoch forks its workers again and makes the accelerator wait through
    the fork and the first batch's decode at every epoch boundary. The workers hold no storage
    client (the bytes come from the loader process), so they can be kept: each epoch sets the
    sampler's items and resets the same iterator, which drains whatever a stopped epoch left in
    flight. A worker failure shuts the workers down; the next epoch starts new ones.

    Args:
        dataset: Map-style dataset whose ``__getitem__`` receives one sampler item (a batch).
        num_workers: DataLoader workers; 0 decodes in this process.
        persistent: False forks new workers every epoch (``run_dataloader``'s behaviour).
        timeout_s: DataLoader timeout for a batch (0 = none).
    """

    def __init__(self, dataset: Any, num_workers: int, *, persistent: bool = True, timeout_s: float = 0) -> None:
        self.dataset = dataset
        self.num_workers = num_workers
        self.persistent = persistent and num_workers > 0
        self.timeout_s = timeout_s
        self._sampler = _EpochItems()
        self._loader: Any = None
        self._it: Any = None

    def run(self, items: Iterable[Any], on_abort: Callable[[], None] | None = None) -> Iterator[Any]:
        """Yield the dataset's result for every item of one epoch, in order.

        ``on_abort`` runs when the epoch stops early or fails, before any worker is shut down
        (see :func:`~delibench.loaders.pipeline.run_dataloader`).
        """
        if not self.persistent:
            yield from run_dataloader(self.dataset, items, self.num_workers, timeout_s=self.timeout_s, on_abort=on_abort)
            return
        if self._loader is None:
            from torch.utils.data import DataLoader

            self._loader = DataLoader(
                self.dataset,
                sampler=self._sampler,  # type: ignore[arg-type]
                batch_size=None,
                num_workers=self.num_workers,
                collate_fn=_identity,
                timeout=self.timeout_s,
                persistent_workers=True,
            )
        # NOTE: a failing items iterator must not raise inside the DataLoader (see GuardedItems):
        # its error comes after the batches before it, and the workers stay healthy for the next epoch.
        guarded = GuardedItems(items)
        self._sampler.items = guarded
        try:
            self._it = iter(self._loader)  # first epoch: starts the workers; later: resets them
            yield from self._it
        except BaseException as exc:
            if on_abort is not None:
                on_abort()
            # Stopped early (GeneratorExit): the next iter() drains what is in flight. Failed: it
            # may have lost a worker, so start afresh next time.
            if not isinstance(exc, GeneratorExit):
                self.close()
            raise
        guarded.raise_error()

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        it, self._it, self._loader = self._it, None, None
        if it is not None:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
