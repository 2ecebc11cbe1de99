"""The node service's state: every local rank's walk, their batches, leases and counters.

A rank opens an epoch with every local rank's order (pure functions of seed, epoch, rank and world
size: :func:`~delibench.loaders.sampler.epoch_order`, computed in the ranks so torch stays out of
this process). The service walks each rank's order ahead within a window of
:func:`~delibench.loaders.node.config.service_window` samples, with ``concurrency`` GETs *per local
rank* in flight on one event loop (the async :class:`~delibench.loaders.source.SampleSource`, or the
fetch processes of :mod:`~delibench.loaders.node.fetchers`). Each position a walk reaches is looked
up in the one :class:`~delibench.loaders.node.table.SampleTable`: a **hit** is a lookup that needs
no GET (the sample is cached, or another rank's window holds it), a miss allocates the sample's
blocks and counts the GET at the rank whose walk sent it. A batch is handed out as a lease on its
entries' arena runs; once the worker has copied them out it releases the lease, and each sample is
offered to the cache with its next use over the union of the local ranks' orders (Belady).

With ``cache_tier=disk`` a sample that leaves the cache (evicted, or refused by it) and is needed
again goes to a :class:`~delibench.loaders.cache.DiskTier` in ``NodeConfig.disk_dir`` (budget
``disk_cache_size``, the same eviction policy, by the union's next use), written from its arena
blocks on a disk thread while a reference keeps them. A lookup that misses the arena but finds the
sample on disk allocates its blocks as for a GET and a disk thread reads the file straight into
them (length, and sha256 with ``verify``, checked; a bad file is dropped and the sample fetched):
a hit, counted also as a disk hit. The file stays on disk, so a sample is written once per node.

Threads: the walks and GETs run on the source's event loop; the control connections' handler
threads (:mod:`~delibench.loaders.node.server`) call :meth:`NodeService.batch` and the rest. All
state is under one condition, ``cond``.
"""

from __future__ import annotations

import asyncio
import itertools
import math
import shutil
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from delibench.errors import FetchError, RuntimeFailure
from delibench.loaders.cache import DiskTier, make_policy
from delibench.loaders.node.arena import copy_into
from delibench.loaders.node.config import NodeConfig, fetch_process_count, service_window
from delibench.loaders.node.fetchers import FetchProcesses
from delibench.loaders.node.protocol import FAILURE, FETCH_ERROR, OK, STALE
from delibench.loaders.node.table import FAILED, FETCHING, READY, Entry, SampleTable, arena_layout, union_next_uses
from delibench.loaders.pipeline import percentiles

__all__ = ["DISK_THREADS", "NodeService", "RankWalk"]

#: Threads that write and read the disk tier's files: reads of a batch overlap, and no read or
#: write ever runs under the service's lock or on its event loop.
DISK_THREADS = 8


@dataclass
class RankWalk:
    """One local rank's walk as the service sees it."""

    index: int
    token: int = 0
    epoch: int = -1
    order: list[int] = field(default_factory=list)
    nexts: list[float | None] = field(default_factory=list)
    active: bool = False
    #: Looked up (held) but not handed out yet, by position.
    slots: dict[int, Entry] = field(default_factory=dict)
    handed: set[int] = field(default_factory=set)
    low: int = 0
    walk: Any = None
    wake: asyncio.Event | None = None
    leases: dict[int, list[Entry]] = field(default_factory=dict)
    ahead: bool = False  # this walk was started ahead of the rank's ``open``
    requests: int = 0
    bytes_read: int = 0
    hits: int = 0
    misses: int = 0
    late: int = 0
    disk_hits: int = 0
    requested: int = 0
    skipped: list[str] = field(default_factory=list)
    lead_sum: int = 0
    lead_count: int = 0
    left: bool = False
    connected: bool = False  # its control connection said hello (a rank never seen is not waited for)


class NodeService:
    """The service's state; runs in its own process (see :func:`~delibench.loaders.node.server.serve`)."""

    def __init__(self, config: NodeConfig) -> None:
        from multiprocessing import shared_memory

        from delibench.loaders.source import SampleSource

        self.config = config
        opts = config.options
        manifest = config.manifest
        sizes = [s.size_bytes for s in manifest.samples]
        self.sizes = sizes
        self.depth = service_window(opts, config.batch_size)
        # The arena holds the cache plus what the ranks hold: each one's window and its workers' batches.
        held = config.local_world_size * (self.depth + config.batch_size * (2 * max(1, config.num_workers) + 2))
        self.block, nblocks = arena_layout(sizes, opts.cache_size_bytes, opts.cache_items, held)
        self.capacity = nblocks * self.block
        self.shm = shared_memory.SharedMemory(name=config.arena_name, create=True, size=self.capacity)
        self.buf = self.shm.buf
        self.cond = threading.Condition()
        self.table = SampleTable(
            self.block, nblocks,
            cache_limit=math.inf if opts.cache_size_bytes is None else opts.cache_size_bytes,
            item_limit=math.inf if opts.cache_items is None else opts.cache_items,
            policy=make_policy(opts.eviction), cond=self.cond, spill=self._spill,
        )
        self.disk: DiskTier | None = None
        self.disk_threads: ThreadPoolExecutor | None = None
        if config.disk_dir is not None:
            shutil.rmtree(config.disk_dir, ignore_errors=True)  # this service's own folder: nothing of another job
            sums = [s.sha256 or None for s in manifest.samples]
            self.disk = DiskTier(config.disk_dir, opts.disk_cache_size, opts.eviction,
                                 checksums=(lambda i: sums[i]) if opts.verify else (lambda i: None))
            self.disk_threads = ThreadPoolExecutor(DISK_THREADS, thread_name_prefix="delibench-node-disk")
        self.ranks = [RankWalk(i) for i in range(config.local_world_size)]
        self.plans: dict[int, list[tuple[list[int], list[float | None]]]] = {}
        #: Every local rank's order by epoch, sent by the ranks (torch's generator makes the shuffle
        #: DistributedSampler's; computing it in the ranks keeps torch out of this process).
        self.orders: dict[int, list[list[int]]] = {}
        self.leases = itertools.count(1)
        self.closing = False
        self.owner_left = False
        if config.whole_shards:
            from delibench.loaders.shards import WholeShardSource

            self.source: SampleSource = WholeShardSource(
                config.dataset_url, manifest, config.storage_options, io_threads=opts.concurrency * config.local_world_size,
                lean_http=opts.lean_http, buffer_bytes=opts.shard_buffer_bytes, **opts.source_kwargs(),
            )
        else:
            self.source = SampleSource(
                config.dataset_url, manifest, config.storage_options, io_threads=opts.concurrency * config.local_world_size,
                lean_http=opts.lean_http, members=config.members, **opts.source_kwargs(),
            )
        #: GETs counted where they happen: per sample missed, or (whole shards) per shard this walk read.
        self.whole_shards = config.whole_shards
        self.loop = self.source.loop
        self.sem: asyncio.Semaphore | None = None
        #: Why the service cannot serve any more (a fetch process died beyond the restart bound, or its
        #: replacement did not start); every later batch fails with it.
        self.broken: str | None = None
        count = 1 if config.whole_shards else fetch_process_count(opts.fetch_processes, config.local_world_size)
        self.fetchers = FetchProcesses(config, count, self.loop, self._fetcher_died) if count > 1 else None

    def _fetcher_died(self, message: str) -> None:
        with self.cond:
            self.broken = message
            self.cond.notify_all()

    # -- the plan: every local rank's order and the union's next uses ------------------------------

    def plan(self, epoch: int) -> list[tuple[list[int], list[float | None]]]:
        """``[(order, next use of each position)]`` per local rank for ``epoch`` (the next uses:
        :func:`~delibench.loaders.node.table.union_next_uses`), kept for this epoch and the one before."""
        if epoch in self.plans:
            return self.plans[epoch]
        w = self.config.local_world_size
        if epoch not in self.orders or epoch + 1 not in self.orders:
            raise RuntimeFailure(f"node service: the orders of epoch {epoch} and {epoch + 1} were not sent")
        now = self.orders[epoch]
        nexts = union_next_uses(now, self.orders[epoch + 1], epoch, w)
        plan = [(now[i], nexts[i]) for i in range(w)]
        self.plans = {k: v for k, v in self.plans.items() if k >= epoch - 1}
        self.orders = {k: v for k, v in self.orders.items() if k >= epoch - 1}
        self.plans[epoch] = plan
        return plan

    # -- walks (on the event loop) ------------------------------------------------------------------

    def open(self, index: int, epoch: int, start: int, orders: Mapping[int, list[list[int]]] | None = None, *, ahead: bool = False) -> int:
        """Start (or adopt, when started ahead) local rank ``index``'s walk of ``epoch`` from ``start``;
        ``orders``: every local rank's order of some epochs (``epoch`` to ``epoch + 2``)."""
        with self.cond:
            for e, by_rank in (orders or {}).items():
                if e >= epoch - 1:
                    self.orders.setdefault(e, by_rank)
            rk = self.ranks[index]
            if rk.active and rk.ahead and rk.epoch == epoch and start == 0 and not ahead:
                rk.ahead = False
                return rk.token
            self._close_walk(rk)
            order, nexts = self.plan(epoch)[index]
            rk.token += 1
            rk.epoch, rk.order, rk.nexts = epoch, order, nexts
            rk.active, rk.ahead = True, ahead
            rk.low = start
            rk.handed = set()
            token = rk.token
        rk.walk = asyncio.run_coroutine_threadsafe(self._walk(rk, token, start), self.loop)
        return token

    def _close_walk(self, rk: RankWalk) -> None:
        """Stop rank ``rk``'s walk; release what it held (under self.cond)."""
        rk.active = False
        rk.token += 1
        for e in rk.slots.values():
            self.table.unref(e)
        rk.slots.clear()
        if rk.wake is not None:
            self.loop.call_soon_threadsafe(rk.wake.set)
        self.cond.notify_all()

    def close_epoch(self, index: int, token: int) -> None:
        with self.cond:
            rk = self.ranks[index]
            if rk.token == token and rk.active:
                self._close_walk(rk)

    def pause(self, index: int) -> None:
        with self.cond:
            rk = self.ranks[index]
            if rk.active and rk.ahead:
                self._close_walk(rk)

    async def _walk(self, rk: RankWalk, token: int, start: int) -> None:
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.config.options.concurrency * self.config.local_world_size)
        rk.wake = rk.wake or asyncio.Event()
        sem = self.sem
        pos = start
        length = len(rk.order)
        while pos < length:
            fd: int | None = None  # the disk tier's file of a sample found there
            while True:
                with self.cond:
                    if rk.token != token or self.closing:
                        return
                    if pos < rk.low + self.depth:
                        key = rk.order[pos]
                        if self.disk is not None:
                            self.disk.touch(key, math.inf if rk.nexts[pos] is None else float(rk.nexts[pos]))
                        e = self.table.entries.get(key)
                        if e is not None:
                            e.refs += 1
                            rk.slots[pos] = e
                            rk.hits += 1
                            self.table.touch(e, rk.nexts[pos])
                            fetch = None
                            break
                        e = self.table.add(key, self.sizes[key])
                        if e is not None:
                            e.refs = 1
                            rk.slots[pos] = e
                            fd = None if self.disk is None else self.disk.open(key)
                            if fd is None:
                                self._count_miss(rk, e)
                            fetch = e
                            break
                rk.wake.clear()
                try:
                    await asyncio.wait_for(rk.wake.wait(), 0.05)  # a release frees blocks; a take moves the window
                except asyncio.TimeoutError:
                    pass
            if fetch is not None:
                await sem.acquire()
                asyncio.ensure_future(self._fetch(fetch, sem, rk, fd))
            with self.cond:
                self.cond.notify_all()
            pos += 1

    def _count_miss(self, rk: RankWalk, e: Entry) -> None:
        """A lookup of ``e`` needs a GET (under self.cond): counted at the rank whose walk sends it."""
        rk.misses += 1
        if not self.whole_shards:
            rk.requests += 1
            rk.bytes_read += e.size

    async def _fetch(self, e: Entry, sem: asyncio.Semaphore, rk: RankWalk, fd: int | None = None) -> None:
        """Bring ``e``'s bytes into its arena blocks: from the disk tier's file ``fd`` if given (a
        disk hit, or a miss when the file is bad), else by a GET."""
        data: bytes | None = None
        error: tuple[str, str, str] | None = None
        try:
            if fd is not None and await self._read_disk(e, fd, rk):
                pass
            elif self.fetchers is not None:
                error = await self.fetchers.fetch(e.key, e.runs)  # written into the arena by a fetch process
            elif self.whole_shards:
                data, reads, nbytes = await self.source.fetch_counted(e.key)  # type: ignore[attr-defined]
                with self.cond:
                    rk.requests += reads
                    rk.bytes_read += nbytes
            else:
                data = await self.source.fetch(e.key)
        except FetchError as exc:
            data, error = None, (exc.key, exc.url, str(exc.cause))
        except Exception as exc:  # noqa: BLE001 - handed to the ranks as a fetch error of this sample
            data, error = None, (self.config.manifest.samples[e.key].key, self.config.dataset_url, repr(exc))
        finally:
            sem.release()
        if data is not None:
            copy_into(self.buf, e.runs, data)
        with self.cond:
            if error is not None:
                e.state, e.error = FAILED, error
            else:
                e.state = READY
            if e.refs <= 0 and not e.cached:
                self.table.free_entry(e)
            self.cond.notify_all()

    # -- the disk tier (cache_tier=disk) ------------------------------------------------------------

    async def _read_disk(self, e: Entry, fd: int, rk: RankWalk) -> bool:
        """Read ``e``'s disk file (descriptor ``fd``) into its blocks on a disk thread; count the
        lookup a disk hit, or, when the file is bad (dropped), a miss whose GET follows."""
        assert self.disk is not None and self.disk_threads is not None
        disk = self.disk

        def read() -> bool:
            views = [self.buf[off : off + ln] for off, ln in e.runs]
            try:
                return disk.read_into(e.key, fd, views)
            finally:
                for view in views:
                    view.release()

        ok = await self.loop.run_in_executor(self.disk_threads, read)
        with self.cond:
            if ok:
                rk.hits += 1
                rk.disk_hits += 1
            else:
                disk.discard_corrupt(e.key)
                self._count_miss(rk, e)
        return ok

    def _spill(self, e: Entry) -> None:
        """``e`` leaves the arena's cache (under self.cond): keep it on disk if it is needed again.
        Already there: its next use is updated. Else, with room made by the disk's own policy, a
        disk thread writes it from its blocks, which a reference holds until the file is written."""
        disk = self.disk
        if disk is None or self.closing or e.next_use == math.inf:
            return
        if e.key in disk.sizes:
            disk.touch(e.key, e.next_use)
            return
        if not disk.reserve(e.key, e.size, e.next_use):
            return
        e.refs += 1
        assert self.disk_threads is not None
        self.disk_threads.submit(self._write_disk, e)

    def _write_disk(self, e: Entry) -> None:
        """On a disk thread: write ``e``'s blocks to its reserved file, then let the blocks go."""
        assert self.disk is not None
        views = [self.buf[off : off + ln] for off, ln in e.runs]
        try:
            error = self.disk.write(e.key, views)
        finally:
            for view in views:
                view.release()
        with self.cond:
            self.disk.commit(e.key, error)
            self.table.unref(e)

    # -- requests (handler threads) -----------------------------------------------------------------

    def batch(self, index: int, token: int, b: int) -> tuple[str, Any]:
        """Batch ``b`` of rank ``index``'s epoch ``token``: ``(lease, [(index, runs), ...])`` once ready."""
        bs = self.config.batch_size
        with self.cond:
            rk = self.ranks[index]
            if not (rk.active and rk.token == token):
                return STALE, None
            lo, hi = b * bs, min((b + 1) * bs, len(rk.order))
            if lo >= hi or lo < rk.low or any(p in rk.handed for p in range(lo, hi)):
                return FAILURE, f"batch {b} of the epoch was requested twice or is out of range"
            rk.requested += hi - lo
            rk.late += sum(1 for p in range(lo, hi) if p not in rk.slots or rk.slots[p].state == FETCHING)
            deadline = time.monotonic() + self.config.deadline_s
            while True:
                if not (rk.active and rk.token == token) or self.closing:
                    return STALE, None
                if self.broken is not None:
                    return FAILURE, self.broken
                if all(p in rk.slots and rk.slots[p].state != FETCHING for p in range(lo, hi)):
                    break
                if time.monotonic() > deadline:
                    return FAILURE, self._not_ready(rk, b, lo, hi)
                self.cond.wait(0.5)
            items: list[tuple[int, list[tuple[int, int]]]] = []
            lease: list[Entry] = []
            failed: tuple[str, str, str] | None = None
            for p in range(lo, hi):
                e = rk.slots.pop(p)
                rk.lead_sum += len(rk.slots)
                rk.lead_count += 1
                if e.state == FAILED:
                    assert e.error is not None
                    if self.config.options.on_error == "skip":
                        rk.skipped.append(e.error[0])
                    elif failed is None:
                        failed = e.error
                    self.table.unref(e)
                    continue
                if not e.cached:
                    self.table.admit(e, rk.nexts[p])
                items.append((e.key, e.runs))
                lease.append(e)
            rk.handed.update(range(lo, hi))
            while rk.low in rk.handed:
                rk.handed.discard(rk.low)
                rk.low += 1
            if rk.wake is not None:
                self.loop.call_soon_threadsafe(rk.wake.set)
            if failed is not None:
                for e in lease:
                    self.table.unref(e)
                return FETCH_ERROR, failed
            lease_id = next(self.leases)
            rk.leases[lease_id] = lease
            done = rk.low >= len(rk.order)
            epoch = rk.epoch
        if done and self.config.options.prefetch_across_epochs and (self.config.epochs is None or epoch + 1 < self.config.epochs):
            try:
                self.open(index, epoch + 1, 0, ahead=True)
            except RuntimeFailure:
                pass  # the next epoch's orders are not known yet: its walk starts when the rank opens it
        return OK, (lease_id, items)

    def _not_ready(self, rk: RankWalk, b: int, lo: int, hi: int) -> str:
        """The error of batch ``b`` (positions ``lo:hi``) still not ready at the deadline: which samples it waits for."""
        waiting = [p for p in range(lo, hi) if p not in rk.slots or rk.slots[p].state == FETCHING]
        in_flight = sum(1 for p in waiting if p in rk.slots)
        first = self.config.manifest.samples[rk.order[waiting[0]]].key if waiting else "-"
        return (f"node service: batch {b} of epoch {rk.epoch} of local rank {rk.index} not ready after {self.config.deadline_s:g} s "
                f"(node_deadline_s): {len(waiting)} of its {hi - lo} samples missing ({in_flight} GETs in flight, "
                f"{len(waiting) - in_flight} not started), first {first}")

    def release(self, index: int, lease_id: int) -> None:
        with self.cond:
            for e in self.ranks[index].leases.pop(lease_id, []):
                self.table.unref(e)
            rk = self.ranks[index]
        if rk.wake is not None:
            self.loop.call_soon_threadsafe(rk.wake.set)

    def leave(self, index: int) -> None:
        """Local rank ``index`` is done (its loader closed, or it died): release all it held."""
        with self.cond:
            rk = self.ranks[index]
            rk.left = True
            if rk.active:
                self._close_walk(rk)
            for lease in rk.leases.values():
                for e in lease:
                    self.table.unref(e)
            rk.leases.clear()
            self.cond.notify_all()

    def stats(self, index: int) -> dict[str, Any]:
        """Rank ``index``'s share of the node's counters; local rank 0 also carries the node-wide ones
        (cache occupancy, evictions, retries), so a sum over ranks counts each GET once."""
        meter = self.source.meter if self.fetchers is None else self.fetchers.meter_with(self.source.meter)
        with self.cond:
            rk = self.ranks[index]
            own = {
                "requests": rk.requests, "bytes": rk.bytes_read, "hits": rk.hits, "misses": rk.misses,
                "late": rk.late, "requested": rk.requested, "skipped": list(rk.skipped), "disk_hits": rk.disk_hits,
                "lead_sum": rk.lead_sum, "lead_count": rk.lead_count,
            }
            misses = sum(r.requests for r in self.ranks)
            node = {
                "node_requests": meter.requests_count, "node_bytes": meter.bytes_read, "fetches": misses,
                "fetched_bytes": sum(r.bytes_read for r in self.ranks),
                "cache_bytes": self.table.cache_bytes, "cache_peak": self.table.cache_peak, "evictions": self.table.evictions,
                "arena_bytes": self.capacity, "arena_peak_bytes": self.table.peak_blocks * self.block, "block": self.block, "window": self.depth,
                "retries": meter.retries_count, "hedges": meter.hedges_count, "errors": meter.errors_count,
                "latencies": percentiles(list(meter.latencies_s)),
                "fetch_processes": [] if self.fetchers is None else self.fetchers.answered(),
                **(self.fetchers.counts() if self.fetchers is not None else {"fetch_restarts": 0, "fetch_resent": 0, "fetch_in_flight": []}),
                **self._disk_stats(),
            }
        return {"rank": own, "node": node}

    def _disk_stats(self) -> dict[str, Any]:
        """The disk tier's counters, named as rank scope's :class:`~delibench.loaders.cache.CacheStats`
        names them (under self.cond)."""
        disk = self.disk
        return {
            "disk_hits": sum(r.disk_hits for r in self.ranks),
            "disk_bytes": disk.bytes if disk else 0, "disk_peak_bytes": disk.peak_bytes if disk else 0,
            "disk_capacity_bytes": disk.capacity_bytes if disk else 0,
            "corrupt_count": disk.corrupt if disk else 0, "disk_write_errors": disk.write_errors if disk else 0,
            "disk_disabled": disk.disabled if disk else False,
        }

    # -- lifecycle ----------------------------------------------------------------------------------

    def everyone_left(self) -> bool:
        with self.cond:
            return all(r.left or not r.connected for r in self.ranks)

    def shutdown(self) -> None:
        with self.cond:
            self.closing = True
            for rk in self.ranks:
                if rk.active:
                    self._close_walk(rk)
            self.cond.notify_all()
        if self.fetchers is not None:
            self.fetchers.close()
        if self.disk_threads is not None:
            self.disk_threads.shutdown(wait=True, cancel_futures=True)  # no thread still holds an arena view
        try:
            self.source.close()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass


