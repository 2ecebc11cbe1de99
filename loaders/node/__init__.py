"""Node scope: one service per node fetches for every local rank into one cache in shared memory.

A GPU VM runs several ranks. With ``deli:scope=rank`` each rank has its own fetcher and cache, so a
sample one rank fetched is fetched again by another rank of the same machine in a later epoch, and
the machine holds one cache per rank. With ``scope=node`` (the default when a node has more than
one rank) local rank 0 starts one **node service** process (``python -m delibench.loaders.node``),
which:

* knows every local rank's order (the orders are pure functions of seed, epoch, rank and world
  size: :func:`~delibench.loaders.sampler.epoch_order`), walks each rank's order ahead within a
  window of ``prefetch_depth`` samples, with the ``concurrency`` GETs *per local rank* in flight
  on one event loop (the existing async :class:`~delibench.loaders.source.SampleSource`);
* keeps one table of the samples it holds, so a sample is fetched at most once per node while it
  is held (in flight, waiting for a rank, or cached), whichever rank asks for it;
* caches them within ``cache_size`` bytes *per node*, evicting with Belady over the union of the
  local ranks' future accesses (the node's ranks interleaved in lockstep, the clock
  ``tuning/scale.py`` replays; LRU and FIFO still available);
* counts a **hit** for every lookup that needs no GET: the sample was cached, or another rank's
  window holds it (in flight, or fetched and not handed out yet). A rank looks a sample up when it
  enters its window (:func:`service_window` samples ahead of its next batch), and a sample held by a
  window is outside the cache's budget until its batch is handed out (then it is offered to the
  cache): the node holds the cache plus the windows, and the arena has room for both. So the hit
  rate a user sees is that of the cache *and* the windows, and the figure to check it against is
  :func:`delibench.tuning.scale.replay_node_cache` with ``window=service_window(...)``, which replays
  exactly this (with ``window=0`` it is the cache alone, a few points lower);
* reads whatever deli's ``source`` says: sample objects, tar-shard members (one ranged GET each)
  or whole shards (``source=shards``: :class:`~delibench.loaders.shards.WholeShardSource` in the
  service, the first sample wanted from a shard GETs all of it, and a buffer of recent shards of
  ``cache_size`` bytes in the service's own memory, beside the arena, serves the shard's other
  samples; so each shard is read at most once per node while buffered, and its GET is counted at
  the rank whose walk sent it);
* keeps every byte in one shared-memory arena (``/dev/shm/<prefix>-arena``) cut into fixed-size
  blocks, so a sample of any size fits wherever blocks are free (no fragmentation), and answers
  each decode worker's request for its batch with the blocks' offsets. The worker copies the bytes
  straight out of the mapped arena and then releases its lease; no sample byte crosses the socket.

The control channel is an abstract Unix socket (``multiprocessing.connection`` with a random key),
named, like the arena, by a per-job prefix ``delibench-node-<hash of job id>-n<node>-<n>``: two jobs on
one node never meet. Lifecycle: the service ignores Ctrl-C (the ranks stop it), leaves when its
starter is gone (polled), when every rank has left after the starter's ``close``, or on SIGTERM, and
unlinks its arena on the way out; the starter's ``close`` also unlinks it, so a service killed with
SIGKILL leaves nothing in ``/dev/shm`` either. A rank whose service vanished gets a clear error.

**Fetch processes** (``fetch_processes``, issue 15). One event loop saturates one core at ~0.24 GB/s
of 110 KB samples (~0.47 CPU-s per 1,000 GETs + 2.5 CPU-s per GB, most of it on the loop:
``benchmarks/results/node-fetch-cpu.txt``); an 8-GPU ImageNet node wants ~2.2 GB/s. Threads would
share the loop's GIL, so with ``fetch_processes=N > 1`` the service starts N fetch processes
(``python -m delibench.loaders.node --fetch``), each with its own event loop and
:class:`~delibench.loaders.source.SampleSource` (client, retries, hedging, sha256 check), and sends
no GET itself. What stays in the service, and why:

* the one table, cache, Belady policy and block allocation: one source of truth, no table shared
  between processes and so no cross-process lock. Sizes are in the manifest, so the service
  allocates a sample's blocks *before* its GET, exactly as with one loop, and hands the fetch
  process a work item ``(request id, sample, block runs)`` over its own socket pair;
* the accounting: a GET is counted at the rank whose walk sent it when the walk allocates it
  (unchanged, so per-rank GET counts are exact whichever process sends it); the fetch processes'
  own meters (attempts, retries, hedges, latencies) come back as deltas with each reply and are
  added to the service's.

A fetch process GETs (checking length and sha256 as the one loop does), writes the bytes straight
into the mapped arena (``O_RDWR`` mapping of the service's segment: it creates and unlinks nothing)
and replies ``done`` with the error, if any; the service then treats the sample as arrived (one reader
thread per fetch process hands replies to the loop in batches). Work goes to the process with the
fewest items in flight, within the same ``concurrency x local ranks`` bound. ``source=shards`` keeps
its whole-shard path in the service (the shard buffer is the service's own memory, and slicing
a buffered shard is a copy, not a GET): ``fetch_processes`` is ignored there. Lifecycle: a fetch
process's only link is its socket to the service; when the service ends (close, SIGTERM, its starter
gone, even SIGKILL) the socket reaches EOF and the fetch process exits, and the service also waits for
(then kills) its fetch processes on the way out. A fetch process that dies makes every later batch
fail with an error naming it (index, pid, signal or exit code), never a hang. ``auto`` takes a
quarter of the node's CPUs (the ranks' decode workers need the rest: on the 2-core measurement the
ranks held more CPU than the service) and at most two per local rank (8-GPU ImageNet is ~0.28 GB/s
per rank, a bit more than one loop's measured ceiling), at least 1.
"""

from __future__ import annotations

import asyncio
import hashlib
import itertools
import math
import mmap
import os
import pickle
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from multiprocessing.connection import Client, Connection, Listener
from typing import Any, ClassVar

from delibench.errors import FetchError, RuntimeFailure, UsageError
from delibench.loaders.base import Batch, LoaderContext
from delibench.loaders.cache import make_policy
from delibench.loaders.pipeline import BytesBatchDataset, WorkerResult, batches_of, parse_options, percentiles
from delibench.loaders.prefetch import DecodePipeline
from delibench.loaders.resume import ResumableEpochs
from delibench.loaders.sampler import epoch_order
from delibench.loaders.source import FetchMeter
from delibench.manifest import Manifest
from delibench.records import LoaderStats

__all__ = [
    "SEGMENT_PREFIX", "NodeConfig", "NodeDeliLoader", "fetch_process_count", "leftover_segments", "node_prefix", "service_window",
    "wants_node_scope",
]

#: Every name the node service gives a shared-memory segment or socket starts with this.
SEGMENT_PREFIX = "delibench-node-"
#: Seconds a rank waits for its node service to answer (start-up, a batch) before a clear error
#: (``DeliOptions.node_deadline_s``'s default).
DEFAULT_DEADLINE_S = 120.0
#: How much longer than the deadline a rank waits for the service's own answer to a request, so
#: that the service's error (which names the batch and its samples) arrives before the rank gives up.
_ANSWER_MARGIN_S = 5.0
#: How often the service looks whether its starter is still alive.
_WATCH_S = 0.25
_OK, _FETCH_ERROR, _FAILURE, _STALE = "ok", "fetch-error", "failure", "stale"
_FETCHING, _READY, _FAILED = 0, 1, 2
_SHM_DIR = "/dev/shm"
#: Node-scope loaders built so far per (job, local rank): the n-th loader of a job (``compare`` builds
#: several) meets the n-th service of its node.
_SEQ: dict[tuple[str, int, int], itertools.count[int]] = {}


def wants_node_scope(options: Any, ctx: LoaderContext) -> bool:
    """Whether a deli loader with ``options`` uses the node service: ``scope=node``, or no scope given
    and more than one rank on this node (unless the options need rank scope: a disk tier)."""
    if options.scope == "node":
        return True
    if options.scope is None:
        return ctx.local_world_size > 1 and options.cache_tier == "memory"
    return False


def service_window(options: Any, batch_size: int) -> int:
    """Samples the node service looks up ahead of each local rank's next batch: the prefetch bound
    (``prefetch_depth``, default 256), at least two batches."""
    return max(options.prefetch_bound, 2 * batch_size)


def fetch_process_count(value: int | str, local_world_size: int, cpus: int | None = None) -> int:
    """How many fetch processes ``fetch_processes=value`` means on a node of ``cpus`` CPUs (default: this
    process's) with ``local_world_size`` ranks: the number, or for ``auto`` a quarter of the CPUs, at
    most two per local rank, at least 1 (see the module docstring)."""
    if value != "auto":
        return max(1, int(value))
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus // 4, 2 * local_world_size))


def node_prefix(ctx: LoaderContext, seq: int) -> str:
    """The per-job, per-node, per-loader name prefix of the service's socket and arena."""
    job = ctx.job_id or f"pid-{os.getpid()}"
    digest = hashlib.sha1(f"{job}|{os.getuid()}".encode()).hexdigest()[:12]
    return f"{SEGMENT_PREFIX}{digest}-n{ctx.node_rank}-{seq}"


def leftover_segments() -> list[str]:
    """The node-service segments in ``/dev/shm`` now (a test checks none survive a job)."""
    try:
        return sorted(n for n in os.listdir(_SHM_DIR) if n.startswith(SEGMENT_PREFIX))
    except OSError:
        return []


@dataclass(frozen=True)
class NodeConfig:
    """What the node service needs (pickled to it on stdin)."""

    prefix: str
    authkey: bytes
    dataset_url: str
    manifest: Manifest
    storage_options: dict[str, Any] | None
    options: Any  # DeliOptions
    members: bool
    seed: int
    world_size: int
    first_rank: int
    local_world_size: int
    order: str
    exchange_fraction: float
    drop_last: bool
    batch_size: int
    num_workers: int
    epochs: int | None
    parent_pid: int
    deadline_s: float = DEFAULT_DEADLINE_S
    #: ``source=shards``: read whole shards (one GET per shard while buffered) and slice samples out.
    whole_shards: bool = False

    @property
    def address(self) -> str:
        return "\0" + self.prefix

    @property
    def arena_name(self) -> str:
        return self.prefix + "-arena"


# ------------------------------------------------------------------------------------------------
# The service process
# ------------------------------------------------------------------------------------------------


class _Entry:
    __slots__ = ("blocks", "cached", "error", "key", "refs", "runs", "size", "state")

    def __init__(self, key: int, size: int, blocks: list[int], block: int) -> None:
        self.key = key
        self.size = size
        self.blocks = blocks
        self.runs = _runs(blocks, block, size)
        self.state = _FETCHING
        self.error: tuple[str, str, str] | None = None
        self.refs = 0
        self.cached = False


def _copy_into(arena: Any, runs: list[tuple[int, int]], data: bytes) -> None:
    """Copy a sample's bytes into the arena's ``runs`` (``[(offset, length), ...]``)."""
    mv = memoryview(data)
    at = 0
    for off, ln in runs:
        arena[off : off + ln] = mv[at : at + ln]
        at += ln


def _runs(blocks: list[int], block: int, size: int) -> list[tuple[int, int]]:
    """Blocks -> ``[(offset, length), ...]`` covering ``size`` bytes, contiguous blocks merged."""
    runs: list[tuple[int, int]] = []
    left = size
    for b in blocks:
        take = min(block, left)
        if take <= 0:
            break
        off = b * block
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + take)
        else:
            runs.append((off, take))
        left -= take
    return runs


@dataclass
class _Rank:
    """One local rank's walk as the service sees it."""

    index: int
    token: int = 0
    epoch: int = -1
    order: list[int] = field(default_factory=list)
    nexts: list[float | None] = field(default_factory=list)
    active: bool = False
    #: Looked up (held) but not handed out yet, by position.
    slots: dict[int, _Entry] = field(default_factory=dict)
    handed: set[int] = field(default_factory=set)
    low: int = 0
    walk: Any = None
    wake: asyncio.Event | None = None
    leases: dict[int, list[_Entry]] = field(default_factory=dict)
    ahead: bool = False  # this walk was started ahead of the rank's ``open``
    requests: int = 0
    bytes_read: int = 0
    hits: int = 0
    misses: int = 0
    late: int = 0
    requested: int = 0
    skipped: list[str] = field(default_factory=list)
    lead_sum: int = 0
    lead_count: int = 0
    left: bool = False
    connected: bool = False  # its control connection said hello (a rank never seen is not waited for)


class NodeService:
    """The service's state; runs in its own process (see :func:`serve`)."""

    def __init__(self, config: NodeConfig) -> None:
        from multiprocessing import shared_memory

        from delibench.loaders.source import SampleSource

        self.config = config
        opts = config.options
        manifest = config.manifest
        sizes = [s.size_bytes for s in manifest.samples]
        self.sizes = sizes
        self.n = len(sizes)
        mean = sum(sizes) / max(1, len(sizes))
        # Blocks of about 1/16 of a sample: under 4 % lost to rounding, never fragmented.
        self.block = int(min(65536, max(256, 2 ** int(math.log2(max(1.0, mean / 16))))))
        blocks_of = [max(1, -(-s // self.block)) for s in sizes]
        dataset_blocks = sum(blocks_of)
        max_blocks = max(blocks_of, default=1)
        self.depth = service_window(opts, config.batch_size)
        budget = opts.cache_size_bytes
        if budget is None:  # cache_items
            cache_blocks = min(dataset_blocks, (opts.cache_items or 0) * max_blocks)
        else:
            cache_blocks = min(dataset_blocks, -(-budget // self.block) + min(self.n, budget // max(1, min(sizes, default=1)) + 1))
        held = config.local_world_size * (self.depth + config.batch_size * (2 * max(1, config.num_workers) + 2))
        headroom = min(dataset_blocks, 2 * held * max_blocks)
        self.nblocks = max(1, cache_blocks + headroom)
        self.capacity = self.nblocks * self.block
        self.shm = shared_memory.SharedMemory(name=config.arena_name, create=True, size=self.capacity)
        self.buf = self.shm.buf
        self.free: list[int] = list(range(self.nblocks - 1, -1, -1))  # a stack: recently freed reused first
        self.peak_blocks = 0
        self.cache_limit: float = math.inf if budget is None else budget
        self.item_limit: float = math.inf if opts.cache_items is None else opts.cache_items
        self.policy = make_policy(opts.eviction)
        self.cache_bytes = 0
        self.cache_items = 0
        self.cache_peak = 0
        self.evictions = 0
        self.rejected = 0
        self.entries: dict[int, _Entry] = {}
        self.cond = threading.Condition()
        self.ranks = [_Rank(i) for i in range(config.local_world_size)]
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
        #: Why the service cannot serve any more (a fetch process died); every later batch fails with it.
        self.broken: str | None = None
        count = 1 if config.whole_shards else fetch_process_count(opts.fetch_processes, config.local_world_size)
        self.fetchers = _FetchProcesses(config, count, self.loop, self._fetcher_died) if count > 1 else None

    def _fetcher_died(self, message: str) -> None:
        with self.cond:
            self.broken = message
            self.cond.notify_all()

    # -- the plan: every local rank's order and the union's next uses ------------------------------

    def plan(self, epoch: int) -> list[tuple[list[int], list[float | None]]]:
        """``[(order, next use of each position)]`` per local rank for ``epoch``.

        The clock is the node's ranks in lockstep: position ``p`` of local rank ``i`` in epoch
        ``e`` happens at ``(e * L + p) * W + i``; a position's next use is the next access of the
        same sample by any local rank, in this epoch or the next (the stream ``tuning/scale.py``
        replays for node scope).
        """
        if epoch in self.plans:
            return self.plans[epoch]
        w = self.config.local_world_size
        if epoch not in self.orders or epoch + 1 not in self.orders:
            raise RuntimeFailure(f"node service: the orders of epoch {epoch} and {epoch + 1} were not sent")
        now, following = self.orders[epoch], self.orders[epoch + 1]
        length = len(now[0])
        seen: dict[int, int] = {}
        for p in range(len(following[0]) - 1, -1, -1):
            for i in range(w - 1, -1, -1):
                seen[following[i][p]] = ((epoch + 1) * length + p) * w + i
        nexts: list[list[float | None]] = [[None] * length for _ in range(w)]
        for p in range(length - 1, -1, -1):
            for i in range(w - 1, -1, -1):
                key = now[i][p]
                nexts[i][p] = seen.get(key)
                seen[key] = (epoch * length + p) * w + i
        plan = [(now[i], nexts[i]) for i in range(w)]
        self.plans = {k: v for k, v in self.plans.items() if k >= epoch - 1}
        self.orders = {k: v for k, v in self.orders.items() if k >= epoch - 1}
        self.plans[epoch] = plan
        return plan

    # -- cache and arena (under self.cond) ---------------------------------------------------------

    def _alloc(self, size: int) -> list[int] | None:
        need = max(1, -(-size // self.block))
        if len(self.free) < need:
            return None
        blocks = [self.free.pop() for _ in range(need)]
        used = self.nblocks - len(self.free)
        self.peak_blocks = max(self.peak_blocks, used)
        return blocks

    def _free(self, e: _Entry) -> None:
        if self.entries.get(e.key) is e:
            del self.entries[e.key]
        self.free.extend(reversed(e.blocks))
        e.blocks = []
        self.cond.notify_all()

    def _unref(self, e: _Entry) -> None:
        e.refs -= 1
        if e.refs <= 0 and not e.cached and e.state != _FETCHING:
            self._free(e)

    def _admit(self, e: _Entry, next_use: float | None) -> None:
        when = math.inf if next_use is None else float(next_use)
        if e.size > self.cache_limit or self.item_limit < 1:
            self.rejected += 1
            return
        while self.cache_bytes + e.size > self.cache_limit or self.cache_items + 1 > self.item_limit:
            victim, victim_use = self.policy.victim()
            if not self.policy.admits(when, victim_use):
                self.rejected += 1
                return
            self._evict(victim)
        e.cached = True
        self.policy.add(e.key, when)
        self.cache_bytes += e.size
        self.cache_items += 1
        self.cache_peak = max(self.cache_peak, self.cache_bytes)

    def _evict(self, key: Any) -> None:
        e = self.entries[key]
        e.cached = False
        self.policy.remove(key)
        self.cache_bytes -= e.size
        self.cache_items -= 1
        self.evictions += 1
        if e.refs <= 0 and e.state != _FETCHING:
            self._free(e)

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

    def _close_walk(self, rk: _Rank) -> None:
        """Stop rank ``rk``'s walk; release what it held (under self.cond)."""
        rk.active = False
        rk.token += 1
        for e in rk.slots.values():
            self._unref(e)
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

    async def _walk(self, rk: _Rank, token: int, start: int) -> None:
        if self.sem is None:
            self.sem = asyncio.Semaphore(self.config.options.concurrency * self.config.local_world_size)
        rk.wake = rk.wake or asyncio.Event()
        sem = self.sem
        pos = start
        length = len(rk.order)
        while pos < length:
            while True:
                with self.cond:
                    if rk.token != token or self.closing:
                        return
                    if pos < rk.low + self.depth:
                        key = rk.order[pos]
                        e = self.entries.get(key)
                        if e is not None:
                            e.refs += 1
                            rk.slots[pos] = e
                            rk.hits += 1
                            if e.cached:
                                nxt = rk.nexts[pos]
                                self.policy.touch(key, math.inf if nxt is None else float(nxt))
                            fetch = None
                            break
                        blocks = self._alloc(self.sizes[key])
                        if blocks is not None:
                            e = _Entry(key, self.sizes[key], blocks, self.block)
                            e.refs = 1
                            self.entries[key] = e
                            rk.slots[pos] = e
                            rk.misses += 1
                            if not self.whole_shards:
                                rk.requests += 1
                                rk.bytes_read += e.size
                            fetch = e
                            break
                rk.wake.clear()
                try:
                    await asyncio.wait_for(rk.wake.wait(), 0.05)  # a release frees blocks; a take moves the window
                except asyncio.TimeoutError:
                    pass
            if fetch is not None:
                await sem.acquire()
                asyncio.ensure_future(self._fetch(fetch, sem, rk))
            with self.cond:
                self.cond.notify_all()
            pos += 1

    async def _fetch(self, e: _Entry, sem: asyncio.Semaphore, rk: _Rank) -> None:
        data: bytes | None = None
        error: tuple[str, str, str] | None = None
        try:
            if self.fetchers is not None:
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
            _copy_into(self.buf, e.runs, data)
        with self.cond:
            if error is not None:
                e.state, e.error = _FAILED, error
            else:
                e.state = _READY
            if e.refs <= 0 and not e.cached:
                self._free(e)
            self.cond.notify_all()

    # -- requests (handler threads) -----------------------------------------------------------------

    def batch(self, index: int, token: int, b: int) -> tuple[str, Any]:
        """Batch ``b`` of rank ``index``'s epoch ``token``: ``(lease, [(index, runs), ...])`` once ready."""
        bs = self.config.batch_size
        with self.cond:
            rk = self.ranks[index]
            if not (rk.active and rk.token == token):
                return _STALE, None
            lo, hi = b * bs, min((b + 1) * bs, len(rk.order))
            if lo >= hi or lo < rk.low or any(p in rk.handed for p in range(lo, hi)):
                return _FAILURE, f"batch {b} of the epoch was requested twice or is out of range"
            rk.requested += hi - lo
            rk.late += sum(1 for p in range(lo, hi) if p not in rk.slots or rk.slots[p].state == _FETCHING)
            deadline = time.monotonic() + self.config.deadline_s
            while True:
                if not (rk.active and rk.token == token) or self.closing:
                    return _STALE, None
                if self.broken is not None:
                    return _FAILURE, self.broken
                if all(p in rk.slots and rk.slots[p].state != _FETCHING for p in range(lo, hi)):
                    break
                if time.monotonic() > deadline:
                    return _FAILURE, self._not_ready(rk, b, lo, hi)
                self.cond.wait(0.5)
            items: list[tuple[int, list[tuple[int, int]]]] = []
            lease: list[_Entry] = []
            failed: tuple[str, str, str] | None = None
            for p in range(lo, hi):
                e = rk.slots.pop(p)
                rk.lead_sum += len(rk.slots)
                rk.lead_count += 1
                if e.state == _FAILED:
                    assert e.error is not None
                    if self.config.options.on_error == "skip":
                        rk.skipped.append(e.error[0])
                    elif failed is None:
                        failed = e.error
                    self._unref(e)
                    continue
                if not e.cached:
                    self._admit(e, rk.nexts[p])
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
                    self._unref(e)
                return _FETCH_ERROR, failed
            lease_id = next(self.leases)
            rk.leases[lease_id] = lease
            done = rk.low >= len(rk.order)
            epoch = rk.epoch
        if done and self.config.options.prefetch_across_epochs and (self.config.epochs is None or epoch + 1 < self.config.epochs):
            try:
                self.open(index, epoch + 1, 0, ahead=True)
            except RuntimeFailure:
                pass  # the next epoch's orders are not known yet: its walk starts when the rank opens it
        return _OK, (lease_id, items)

    def _not_ready(self, rk: _Rank, b: int, lo: int, hi: int) -> str:
        """The error of batch ``b`` (positions ``lo:hi``) still not ready at the deadline: which samples it waits for."""
        waiting = [p for p in range(lo, hi) if p not in rk.slots or rk.slots[p].state == _FETCHING]
        in_flight = sum(1 for p in waiting if p in rk.slots)
        first = self.config.manifest.samples[rk.order[waiting[0]]].key if waiting else "-"
        return (f"node service: batch {b} of epoch {rk.epoch} of local rank {rk.index} not ready after {self.config.deadline_s:g} s "
                f"(node_deadline_s): {len(waiting)} of its {hi - lo} samples missing ({in_flight} GETs in flight, "
                f"{len(waiting) - in_flight} not started), first {first}")

    def release(self, index: int, lease_id: int) -> None:
        with self.cond:
            for e in self.ranks[index].leases.pop(lease_id, []):
                self._unref(e)
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
                    self._unref(e)
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
                "late": rk.late, "requested": rk.requested, "skipped": list(rk.skipped),
                "lead_sum": rk.lead_sum, "lead_count": rk.lead_count,
            }
            misses = sum(r.requests for r in self.ranks)
            node = {
                "node_requests": meter.requests_count, "node_bytes": meter.bytes_read, "fetches": misses,
                "fetched_bytes": sum(r.bytes_read for r in self.ranks),
                "cache_bytes": self.cache_bytes, "cache_peak": self.cache_peak, "evictions": self.evictions,
                "arena_bytes": self.capacity, "arena_peak_bytes": self.peak_blocks * self.block, "block": self.block, "window": self.depth,
                "retries": meter.retries_count, "hedges": meter.hedges_count, "errors": meter.errors_count,
                "latencies": percentiles(list(meter.latencies_s)),
                "fetch_processes": [] if self.fetchers is None else self.fetchers.answered(),
            }
        return {"rank": own, "node": node}

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
        try:
            self.source.close()
        except Exception:  # noqa: BLE001 - leaving anyway
            pass


class _Fetcher:
    """The service's side of one fetch process."""

    __slots__ = ("conn", "done", "index", "pending", "proc")

    def __init__(self, index: int, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.index = index
        self.proc = proc
        self.conn = conn
        #: request id -> (its future, the sample)
        self.pending: dict[int, tuple[asyncio.Future[tuple[str, str, str] | None], int]] = {}
        self.done = 0  # work items it answered


class _FetchProcesses:
    """The node service's fetch processes (``fetch_processes > 1``): work items out, replies in.

    :meth:`fetch` runs on the service's loop; one reader thread per process hands its replies back to
    the loop in batches. See the module docstring for the design."""

    def __init__(self, config: NodeConfig, count: int, loop: asyncio.AbstractEventLoop, on_death: Any) -> None:
        self.config = config
        self.count = count
        self.loop = loop
        self.on_death = on_death
        self.meter = FetchMeter()
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.fetchers: list[_Fetcher] = []
        self.dead: str | None = None
        self.closing = False
        payload = pickle.dumps(config)
        try:
            for i in range(count):
                mine, theirs = socket.socketpair()
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "delibench.loaders.node", "--fetch", str(i), str(theirs.fileno())],
                                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))  # stdout is the rank's "ready" pipe
                finally:
                    theirs.close()
                self.fetchers.append(_Fetcher(i, proc, Connection(mine.detach())))
            for f in self.fetchers:  # all started first: they import in parallel
                assert f.proc.stdin is not None
                f.proc.stdin.write(payload)
                f.proc.stdin.close()
            deadline = time.monotonic() + config.deadline_s
            for f in self.fetchers:
                try:
                    if not f.conn.poll(max(0.0, deadline - time.monotonic())):
                        raise RuntimeFailure(f"{self._name(f)} did not start within {config.deadline_s:g} s")
                    kind, detail = f.conn.recv()
                except (EOFError, OSError) as exc:
                    raise RuntimeFailure(f"{self._name(f)} did not start ({self._how(f)})") from exc
                if kind != "ready":
                    raise RuntimeFailure(f"{self._name(f)} did not start: {detail}")
        except BaseException:
            self.close()
            raise
        for f in self.fetchers:
            threading.Thread(target=self._read, args=(f,), daemon=True, name=f"delibench-node-fetch-{f.index}").start()

    def _name(self, f: _Fetcher) -> str:
        return f"node service: fetch process {f.index + 1} of {self.count} (pid {f.proc.pid})"

    @staticmethod
    def _how(f: _Fetcher) -> str:
        try:
            code = f.proc.wait(2)
        except subprocess.TimeoutExpired:  # alive with its socket broken: it must not write into the arena again
            f.proc.kill()
            f.proc.wait()
            return "its socket broke; killed"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _error(self, key: int, message: str) -> tuple[str, str, str]:
        return self.config.manifest.samples[key].key, self.config.dataset_url, message

    async def fetch(self, key: int, runs: list[tuple[int, int]]) -> tuple[str, str, str] | None:
        """GET sample ``key`` into the arena's ``runs`` in a fetch process; None, or its ``(key, url, cause)``."""
        if self.dead is not None:
            return self._error(key, self.dead)
        f = min(self.fetchers, key=lambda x: len(x.pending))
        rid = next(self.ids)
        fut: asyncio.Future[tuple[str, str, str] | None] = self.loop.create_future()
        f.pending[rid] = (fut, key)
        try:
            f.conn.send(("get", rid, key, runs))
        except OSError:
            f.pending.pop(rid, None)
            return self._error(key, self.dead or f"{self._name(f)} is gone")
        return await fut

    def _read(self, f: _Fetcher) -> None:
        try:
            while True:
                replies = [f.conn.recv()]
                while f.conn.poll(0):
                    replies.append(f.conn.recv())
                with self.lock:
                    f.done += len(replies)
                    for _, _, _, (requests, nbytes, errors, retries, hedges, latencies) in replies:
                        m = self.meter
                        m.requests_count += requests
                        m.bytes_read += nbytes
                        m.errors_count += errors
                        m.retries_count += retries
                        m.hedges_count += hedges
                        m.latencies_s.extend(latencies)
                self.loop.call_soon_threadsafe(self._done, f, replies)
        except (EOFError, OSError):
            pass
        if not self.closing:
            message = f"{self._name(f)} died ({self._how(f)}): its GETs are lost, this node can serve no more samples"
            self.loop.call_soon_threadsafe(self._died, f, message)

    def _done(self, f: _Fetcher, replies: list[Any]) -> None:
        for _, rid, error, _ in replies:
            fut, _ = f.pending.pop(rid, (None, 0))
            if fut is not None and not fut.done():
                fut.set_result(None if error is None else tuple(error))

    def _died(self, f: _Fetcher, message: str) -> None:
        if self.dead is None:
            self.dead = message
            self.on_death(message)
        pending, f.pending = f.pending, {}
        for fut, key in pending.values():
            if not fut.done():
                fut.set_result(self._error(key, message))

    def answered(self) -> list[int]:
        """Work items each fetch process answered so far."""
        with self.lock:
            return [f.done for f in self.fetchers]

    def meter_with(self, own: FetchMeter) -> FetchMeter:
        """The service's own meter plus what the fetch processes counted."""
        total = FetchMeter()
        total.merge(own)
        with self.lock:
            total.merge(self.meter)
        return total

    def close(self) -> None:
        """Stop every fetch process (each also leaves on its own when its socket closes)."""
        self.closing = True
        for f in self.fetchers:
            try:
                f.conn.send(("stop",))
            except OSError:
                pass
        for f in self.fetchers:
            try:
                f.proc.wait(5)
            except subprocess.TimeoutExpired:
                f.proc.kill()
                f.proc.wait()
            try:
                f.conn.close()
            except OSError:
                pass


def _fetch_main(index: int, fd: int) -> None:
    """A fetch process: GET the service's work items on its own loop, write the bytes into the arena, reply."""
    from delibench.loaders.source import SampleSource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # like the service: the ranks stop it
    conn = Connection(fd)
    try:
        config: NodeConfig = pickle.load(sys.stdin.buffer)
        opts = config.options
        source = SampleSource(config.dataset_url, config.manifest, config.storage_options,
                              io_threads=opts.concurrency * config.local_world_size, lean_http=opts.lean_http,
                              members=config.members, **opts.source_kwargs())
        arena = _Arena(config.arena_name, writable=True)
        loop = source.loop
    except Exception as exc:  # noqa: BLE001 - told to the service, which raises it
        try:
            conn.send(("error", repr(exc)))
        except OSError:
            pass
        os._exit(1)
    conn.send(("ready", os.getpid()))
    samples = config.manifest.samples
    meter = source.meter
    sent = [0, 0, 0, 0, 0, 0]  # what the replies so far carried (on the loop only)

    async def one(rid: int, key: int, runs: list[tuple[int, int]]) -> None:
        error: tuple[str, str, str] | None = None
        try:
            arena.write(runs, await source.fetch(key))
        except FetchError as exc:
            error = (exc.key, exc.url, str(exc.cause))
        except Exception as exc:  # noqa: BLE001 - handed to the ranks as a fetch error of this sample
            error = (samples[key].key, config.dataset_url, repr(exc))
        now = (meter.requests_count, meter.bytes_read, meter.errors_count, meter.retries_count, meter.hedges_count, len(meter.latencies_s))
        counts = (*(a - b for a, b in zip(now[:5], sent[:5])), meter.latencies_s[sent[5]:])
        sent[:] = now
        try:
            conn.send(("done", rid, error, counts))
        except OSError:
            pass  # the service is gone: the main thread reads EOF and leaves

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] != "get":
            break
        asyncio.run_coroutine_threadsafe(one(msg[1], msg[2], msg[3]), loop)
    os._exit(0)  # no waiting on the IO loop's threads


def _unlink(name: str) -> None:
    try:
        os.unlink(os.path.join(_SHM_DIR, name))
    except OSError:
        pass


def serve(config: NodeConfig, ready: Any) -> None:
    """Run the node service until the job ends; ``ready`` gets one line once ranks may connect."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the ranks stop the service
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service: NodeService | None = None
    listener: Listener | None = None
    try:
        service = NodeService(config)
        listener = Listener(config.address, family="AF_UNIX", authkey=config.authkey)
        svc = service

        def handle(conn: Connection) -> None:
            rank_of_conn: int | None = None
            try:
                while not stop.is_set():
                    if not conn.poll(0.2):
                        continue
                    msg = conn.recv()
                    kind = msg[0]
                    if kind == "batch":
                        conn.send(svc.batch(msg[1], msg[2], msg[3]))
                    elif kind == "release":
                        svc.release(msg[1], msg[2])
                    elif kind == "hello":
                        if msg[2] == "control":
                            rank_of_conn = msg[1]
                            with svc.cond:
                                svc.ranks[rank_of_conn].connected = True
                        conn.send(("ok", {"arena": config.arena_name, "block": svc.block}))
                    elif kind == "open":
                        try:
                            conn.send(("ok", svc.open(msg[1], msg[2], msg[3], msg[4])))
                        except Exception as exc:  # noqa: BLE001 - the rank raises it
                            conn.send((_FAILURE, repr(exc)))
                    elif kind == "close-epoch":
                        svc.close_epoch(msg[1], msg[2])
                        conn.send(("ok", None))
                    elif kind == "pause":
                        svc.pause(msg[1])
                        conn.send(("ok", None))
                    elif kind == "stats":
                        conn.send(("ok", svc.stats(msg[1])))
                    elif kind == "leave":
                        svc.leave(msg[1])
                        rank_of_conn = None
                        if msg[1] == 0:
                            svc.owner_left = True
                        conn.send(("ok", None))
                        if svc.everyone_left():
                            stop.set()
                    elif kind == "ping":
                        conn.send(("ok", None))
            except (EOFError, OSError):
                pass
            finally:
                if rank_of_conn is not None:  # a rank's control connection died with it
                    svc.leave(rank_of_conn)
                    if svc.owner_left and svc.everyone_left():
                        stop.set()
                conn.close()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn = listener.accept()  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - a failed handshake, or the listener closed
                    if stop.is_set():
                        return
                    continue
                threading.Thread(target=handle, args=(conn,), daemon=True, name="delibench-node-conn").start()

        threading.Thread(target=accept, daemon=True, name="delibench-node-accept").start()
        ready.write(b"ready\n")
        ready.flush()
        while not stop.wait(_WATCH_S):
            if os.getppid() != config.parent_pid:  # the starter is gone (killed, crashed)
                break
    except Exception as exc:  # noqa: BLE001 - told to the starter, which raises it
        try:
            ready.write(f"error {exc!r}\n".encode())
            ready.flush()
        except OSError:
            pass
    finally:
        stop.set()
        if service is not None:
            service.shutdown()
        if listener is not None:
            try:
                listener.close()
            except OSError:
                pass
        if service is not None:
            try:
                service.buf.release()
                service.shm.close()
            except Exception:  # noqa: BLE001 - exported views may remain; unlink regardless
                pass
            try:
                service.shm.unlink()
            except Exception:  # noqa: BLE001
                _unlink(config.arena_name)
        else:
            _unlink(config.arena_name)


def _main() -> None:
    if sys.argv[1:2] == ["--fetch"]:
        _fetch_main(int(sys.argv[2]), int(sys.argv[3]))
    config = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    serve(config, out)
    os._exit(0)  # no waiting on the IO loop's threads


# ------------------------------------------------------------------------------------------------
# The rank side
# ------------------------------------------------------------------------------------------------


class _Arena:
    """A worker's read-only view of the node's arena (mapped once per process); a fetch process's writable one."""

    def __init__(self, name: str, writable: bool = False) -> None:
        fd = os.open(os.path.join(_SHM_DIR, name), os.O_RDWR if writable else os.O_RDONLY)
        try:
            self.map = mmap.mmap(fd, 0, prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        finally:
            os.close(fd)

    def write(self, runs: list[tuple[int, int]], data: bytes) -> None:
        _copy_into(self.map, runs, data)

    def read(self, runs: list[tuple[int, int]]) -> bytes:
        if len(runs) == 1:
            off, ln = runs[0]
            return self.map[off : off + ln]
        return b"".join(self.map[off : off + ln] for off, ln in runs)


class NodeLink:
    """A connection to the node service (one per process and purpose), and the arena mapped.

    Pickled into the decode workers as its address, key and rank alone.
    """

    def __init__(self, address: str, authkey: bytes, index: int, deadline_s: float, role: str = "worker") -> None:
        self.role = role
        self.address = address
        self.authkey = authkey
        self.index = index
        self.deadline_s = deadline_s
        self._conn: Connection | None = None
        self._pid = 0
        self._arena: _Arena | None = None
        self._arena_name: str | None = None
        self._lock = threading.Lock()
        self._lost = False  # the connection of this process broke: the service is gone, no reconnecting

    def _connect(self) -> Connection:
        if self._conn is None or self._pid != os.getpid():
            if self._lost and self._pid == os.getpid():
                raise RuntimeFailure("the node service of this node is gone: no more samples can be served",
                                     hint="it ends when local rank 0 ends; see the first rank's error")
            deadline = time.monotonic() + self.deadline_s
            while True:
                try:
                    conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
                    break
                except (FileNotFoundError, ConnectionRefusedError, OSError) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeFailure(f"no node service answered at {self.address.lstrip(chr(0))!r} within {self.deadline_s:g} s: {exc}",
                                             hint="local rank 0 starts it; did it fail or exit early?") from exc
                    time.sleep(0.05)
            self._conn, self._pid = conn, os.getpid()
            conn.send(("hello", self.index, self.role))
            _, info = self._recv(conn)
            self._arena_name = info["arena"]
        return self._conn

    def _recv(self, conn: Connection) -> Any:
        if not conn.poll(self.deadline_s + _ANSWER_MARGIN_S):
            raise RuntimeFailure(f"the node service did not answer within {self.deadline_s + _ANSWER_MARGIN_S:g} s")
        return conn.recv()

    def call(self, *msg: Any) -> Any:
        """Send ``msg`` and return the reply's payload (raising when the service is gone)."""
        with self._lock:
            try:
                conn = self._connect()
                conn.send(msg)
                kind, payload = self._recv(conn)
            except (EOFError, OSError, BrokenPipeError) as exc:
                self._conn, self._lost = None, self._conn is not None
                raise RuntimeFailure(f"the node service of this node stopped ({type(exc).__name__}): no more samples can be served",
                                     hint="it ends when local rank 0 ends; see the first rank's error") from exc
            return kind, payload

    def send(self, *msg: Any) -> None:
        with self._lock:
            try:
                self._connect().send(msg)
            except (EOFError, OSError):
                self._conn, self._lost = None, True
            except RuntimeFailure:
                pass

    def arena(self) -> _Arena:
        self._connect()
        if self._arena is None:
            assert self._arena_name is not None
            self._arena = _Arena(self._arena_name)
        return self._arena

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        self._arena = None

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address, "authkey": self.authkey, "index": self.index, "deadline_s": self.deadline_s, "role": self.role}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["address"], state["authkey"], state["index"], state["deadline_s"], state["role"])  # type: ignore[misc]


class NodeFeedDataset:
    """The decode workers' dataset: asks the node service for a batch, reads it from shared memory, decodes."""

    def __init__(self, link: NodeLink, decode_bytes: BytesBatchDataset) -> None:
        self.link = link
        self.decode_bytes = decode_bytes

    def __getitem__(self, item: tuple[int, int]) -> WorkerResult:
        token, b = item
        try:
            kind, payload = self.link.call("batch", self.link.index, token, b)
        except RuntimeFailure as exc:
            return WorkerResult(None, failure=str(exc))
        if kind == _OK:
            lease, items = payload
            arena = self.link.arena()
            data = [(idx, arena.read(runs)) for idx, runs in items]
            self.link.send("release", self.link.index, lease)
            return self.decode_bytes[data]
        if kind == _FETCH_ERROR:
            return WorkerResult(None, FetchMeter(), tuple(payload))
        if kind == _FAILURE:
            return WorkerResult(None, failure=payload)
        return WorkerResult(None)


class NodeDeliLoader(ResumableEpochs):
    """``deli`` with ``scope=node``: this rank's side of the node service (see the module docstring).

    Same contract as :class:`~delibench.loaders.deli.DeliLoader` (``iter_epoch``, ``stats``,
    ``state_dict``/``load_state_dict``, ``pause_background``, ``close``); ``cache_size`` is the
    node's. Local rank 0 starts the service and, at ``close``, waits (up to the deadline) for the
    other local ranks to leave before stopping it.
    """

    name: ClassVar[str] = "deli"

    def __init__(self, ctx: LoaderContext, options: Any) -> None:
        if options.cache_tier != "memory":
            raise UsageError("deli scope=node keeps its cache in shared memory: cache_tier=disk is for scope=rank",
                             hint="drop cache_tier/cache_dir, or add scope=rank")
        if ctx.local_world_size > 1 and not ctx.job_id:
            raise UsageError("deli scope=node needs a job id shared by the node's ranks (LoaderContext.job_id)",
                             hint="run under torchrun or delibench run --nproc, or use scope=rank")
        self.ctx = ctx
        self.options = options
        self.deadline_s = deadline_s = float(options.node_deadline_s)
        self.prefix = node_prefix(ctx, next(_SEQ.setdefault((ctx.job_id, ctx.node_rank, ctx.local_rank), itertools.count())))
        authkey = hashlib.sha256(f"{self.prefix}|{ctx.job_id}|{os.getuid()}".encode()).digest()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        members = options.source in ("members", "shards") or (options.source is None and not ctx.manifest.sample_objects)
        manifest = ctx.manifest
        if members:
            from delibench.loaders.shards import add_member_index

            manifest = add_member_index(ctx.manifest, ctx.dataset_url, ctx.storage_options)
        self._config = NodeConfig(
            prefix=self.prefix, authkey=authkey, dataset_url=ctx.dataset_url, manifest=manifest,
            storage_options=ctx.storage_options, options=options, members=members, seed=ctx.seed,
            world_size=ctx.world_size, first_rank=ctx.rank - ctx.local_rank, local_world_size=ctx.local_world_size,
            order=ctx.order, exchange_fraction=ctx.exchange_fraction, drop_last=ctx.drop_last, batch_size=ctx.batch_size,
            num_workers=ctx.num_workers, epochs=ctx.epochs, parent_pid=os.getpid(), deadline_s=deadline_s,
            whole_shards=options.source == "shards",
        )
        if ctx.local_rank == 0:
            self._start_service()
        self._link = NodeLink(self._config.address, authkey, ctx.local_rank, deadline_s, role="control")
        labels = [s.label for s in ctx.manifest.samples]
        keys = [s.key for s in ctx.manifest.samples]
        decode = BytesBatchDataset(ctx.decode, labels, keys, ctx.dataset_url, options.on_error)
        self._pipeline = DecodePipeline(NodeFeedDataset(NodeLink(self._config.address, authkey, ctx.local_rank, deadline_s), decode),
                                        ctx.num_workers, persistent=options.persistent_workers)
        self._skipped_decode: list[str] = []
        self._token: int | None = None
        self._position: tuple[int, int, int] = (0, 0, 0)
        self._resume: tuple[int, int, int] | None = None
        self._last_stats: dict[str, Any] | None = None

    # -- the service --------------------------------------------------------------------------------

    def _start_service(self) -> None:
        # Its own session: a killpg of this rank's group (the launcher's way to stop a crashed job)
        # must leave it alive long enough to unlink its arena; it leaves when this process is gone.
        proc = subprocess.Popen([sys.executable, "-m", "delibench.loaders.node"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                start_new_session=True)
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(pickle.dumps(self._config))
            proc.stdin.close()
        except OSError:
            pass
        ready, _, _ = select.select([proc.stdout], [], [], self.deadline_s)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if line != "ready":
            self._stop_service()
            raise RuntimeFailure(f"the node service did not start: {line or 'no answer within ' + format(self.deadline_s, 'g') + ' s'}")

    def _stop_service(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        _unlink(self._config.arena_name)  # also after a SIGKILLed service

    # -- epochs --------------------------------------------------------------------------------------

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch``, served by the node service."""
        if self._closed:
            raise UsageError("the deli loader is closed")
        start, done_batches = self._take_resume(epoch)
        c = self._config
        orders = {e: [epoch_order(len(c.manifest), e, c.seed, c.first_rank + i, c.world_size, c.order, c.exchange_fraction, c.drop_last)
                      for i in range(c.local_world_size)] for e in (epoch, epoch + 1, epoch + 2)}
        kind, token = self._link.call("open", self.ctx.local_rank, epoch, start, orders)
        if kind != _OK:
            raise RuntimeFailure(f"the node service could not open epoch {epoch}: {token}")
        self._token = token
        order = orders[epoch][self.ctx.local_rank]
        bs = self.ctx.batch_size
        first = start // bs
        if start % bs:
            raise UsageError(f"deli scope=node resumes at a batch boundary; the state is at sample {start} with batch size {bs}")
        batches = batches_of(order, bs)
        self._position = (epoch, start, done_batches)
        handed = start

        def end_epoch() -> None:
            try:
                self._link.call("close-epoch", self.ctx.local_rank, token)
            except RuntimeFailure:
                pass

        items = ((token, b) for b in range(first, len(batches)))
        try:
            for b, result in zip(range(first, len(batches)), self._pipeline.run(items, on_abort=end_epoch)):
                if result.meter is not None:
                    self._skipped_decode.extend(result.meter.skipped_keys)
                batch = result.unwrap()
                handed += len(batches[b])
                done_batches += 1
                self._position = (epoch, handed, done_batches)
                if batch is not None:
                    yield batch
        finally:
            end_epoch()

    def pause_background(self) -> None:
        """Stop this rank's walk into the next epoch (``compare`` measures another loader now)."""
        try:
            self._link.call("pause", self.ctx.local_rank)
        except RuntimeFailure:
            pass

    # -- state: state_dict / load_state_dict come from ResumableEpochs (as DeliLoader's) -------------

    # -- metrics -------------------------------------------------------------------------------------

    def node_stats(self) -> dict[str, Any]:
        """The service's counters for this rank (``rank``) and the node (``node``)."""
        if not self._closed:
            try:
                _, self._last_stats = self._link.call("stats", self.ctx.local_rank)
            except RuntimeFailure:
                pass
        return self._last_stats or {"rank": {}, "node": {}}

    def stats(self) -> LoaderStats:
        """This rank's share of the node's counters (GETs counted at the rank whose walk sent them,
        so a sum over the job's ranks counts each GET once); local rank 0 also reports the node's
        cache occupancy, evictions and retries."""
        s = self.node_stats()
        own, node = s.get("rank", {}), s.get("node", {})
        if not own:
            return LoaderStats()
        main = self.ctx.local_rank == 0
        p50, p95, p99 = node.get("latencies", (None, None, None))
        extra_requests = node["node_requests"] - node["fetches"] if main else 0
        return LoaderStats(
            requests_count=own["requests"] + max(0, extra_requests),
            bytes_read_remote=own["bytes"] + (max(0, node["node_bytes"] - node["fetched_bytes"]) if main else 0),
            cache_hits=own["hits"],
            cache_misses=own["misses"],
            cache_evictions=node["evictions"] if main else 0,
            cache_peak_bytes=node["cache_peak"],
            cache_bytes=node["cache_bytes"] if main else 0,
            prefetch_peak_bytes=node["arena_peak_bytes"],
            fetch_latency_s_p50=p50,
            fetch_latency_s_p95=p95,
            fetch_latency_s_p99=p99,
            prefetch_lead_mean=own["lead_sum"] / own["lead_count"] if own["lead_count"] else None,
            retries_count=node["retries"] if main else 0,
            hedges_count=node["hedges"] if main else 0,
            errors_count=node["errors"] if main else 0,
            skipped_keys=tuple(own["skipped"]) + tuple(self._skipped_decode),
            samples_requested=own["requested"],
            late_samples=own["late"],
        )

    def close(self) -> None:
        """Leave the node service; local rank 0 then waits for the others to leave and stops it."""
        if self._closed:
            return
        alive = self._proc is None or self._proc.poll() is None
        self._link.deadline_s = min(self.deadline_s, 10.0)  # the service may be gone already
        if alive:
            self.node_stats()
        self._closed = True
        try:
            self._pipeline.close()
        finally:
            if alive:
                try:
                    self._link.call("leave", self.ctx.local_rank)
                except RuntimeFailure:
                    pass
            self._link.close()
            if self._proc is not None:
                try:
                    self._proc.wait(self.deadline_s)  # until every local rank has left
                except subprocess.TimeoutExpired:
                    pass
                self._stop_service()

    def __enter__(self) -> NodeDeliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


if __name__ == "__main__":
    _main()
