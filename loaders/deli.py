"""The DELI cached-prefetch loader: look ahead in the known order, fetch concurrently, cache across epochs."""

from __future__ import annotations

import hashlib
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from delibench.errors import FetchError, UsageError
from delibench.loaders.base import Batch, LoaderContext
from delibench.loaders.cache import ByteBudgetCache, check_disk_dir, policy_names
from delibench.loaders.handoff import BatchFeed, FeedDataset
from delibench.loaders.pipeline import BytesBatchDataset, batches_of, context_order, parse_options, percentiles
from delibench.loaders.prefetch import DecodePipeline, EpochPrefetcher
from delibench.loaders.resume import STATE_VERSION, ResumableEpochs
from delibench.loaders.sampler import next_use
from delibench.loaders.source import ReliabilityOptions, SampleSource
from delibench.manifest import checksum
from delibench.records import LoaderStats

__all__ = ["STATE_VERSION", "DeliLoader", "DeliOptions"]


#: Least time between two points of the cache occupancy timeline.
_TIMELINE_STEP_S = 0.01

#: Budget when neither ``cache_size`` nor ``cache_items`` is given.
DEFAULT_CACHE_SIZE = 2**30
#: The window policy's depth when ``prefetch_depth`` is not given.
DEFAULT_PREFETCH_DEPTH = 256
#: The threshold policy's defaults: the DELI paper's "50/50" configuration.
DEFAULT_FETCH_SIZE = 50
DEFAULT_FETCH_THRESHOLD = 50


@dataclass(frozen=True)
class DeliOptions(ReliabilityOptions):
    """Options of the ``deli`` loader (plus ``retries``, ``retry_deadline_s``, ``hedge_after``,
    ``on_error`` and ``verify`` from :class:`~delibench.loaders.source.ReliabilityOptions`).

    The cache budget is set by exactly one of ``cache_size`` (bytes) and ``cache_items`` (a
    sample count); with neither it is 1 GiB. How far ahead the loader fetches is the
    ``prefetch`` policy: ``window`` (``prefetch_depth``, the default) or ``threshold`` (DELI's
    trigger, ``fetch_size`` and ``fetch_threshold``); options of the other policy are errors.

    Attributes:
        cache_size: Memory cache budget in bytes (``"512MiB"`` is parsed by
            :func:`~delibench.loaders.pipeline.parse_options`); a hard limit; 0 = no cache.
            Samples are offered to the cache after delivery and reused in later epochs. None
            (the default) means 1 GiB unless ``cache_items`` sets the budget.
        cache_items: Memory cache budget as a number of samples (the DELI paper counts its
            cache in items, e.g. 2048); a hard limit on the samples held, whatever their size;
            0 = no cache. Not together with ``cache_size``.
        prefetch: ``window`` (the default unless ``fetch_size`` or ``fetch_threshold`` is
            given): keep up to ``prefetch_depth`` samples fetched or in flight ahead of
            consumption, topped up sample by sample. ``threshold``: the DELI paper's trigger;
            when fewer than ``fetch_threshold`` samples are buffered ahead of consumption
            (fetched, in flight or found in the cache, not yet handed on), release the next
            ``fetch_size`` samples of the order for fetching in one burst.
        prefetch_depth: Window policy: most samples fetched (or in flight) ahead of
            consumption; bounds the prefetch memory to about ``prefetch_depth * sample size``.
            None (the default) means 256.
        fetch_size: Threshold policy: samples fetched per trigger (default 50, the paper's
            "50/50" configuration).
        fetch_threshold: Threshold policy: trigger when fewer than this many samples are
            buffered ahead (default 50). At most ``fetch_threshold - 1 + fetch_size`` samples
            are held ahead, which bounds the prefetch memory.
        concurrency: Most GETs in flight at once (on one event loop, not threads).
        cache_tier: ``memory``, or ``disk`` to spill evicted samples to ``cache_dir``. At
            ``scope=rank`` each rank has its own disk tier; at ``scope=node`` the node service has
            one for the node (samples leaving its shared-memory cache that are needed again are
            written once per node, read back into the arena instead of a GET).
        cache_dir: Directory of the disk tier (default: a temporary directory removed on close).
            ``scope=rank``: each rank keeps its files in ``rank-<r>-of-<world>`` inside it when the
            world is larger than 1 (ranks sharing one ``cache_dir`` do not meet). A clean ``close`` empties it; what a killed
            process left there warm-starts the next loader given the same ``cache_dir`` (each file
            checked against the manifest; see ``DeliLoader.load_state_dict``). ``scope=node``: the
            service keeps its files in a folder of the job's own inside it (two jobs never meet),
            removed when the service ends (also after Ctrl-C, SIGTERM or its starter's death), so
            node scope always starts cold. Must be writable: else a one-line error at start.
        disk_cache_size: Disk tier budget in bytes (``"8GiB"`` parsed as ``cache_size``); required
            for ``cache_tier=disk``; a hard limit, per rank (``scope=rank``) or per node
            (``scope=node``, where a budget smaller than the smallest sample is an error).
        eviction: ``belady`` (the default: evicts what is needed again last, and refuses samples
            needed later than everything cached; the sampler order is known, so this is exact),
            ``lru``, or ``fifo`` (evicts the sample cached longest ago; a hit does not renew it;
            the DELI paper's sweeps). Simulated over 5 shuffled epochs with a cache of 25 % of the dataset,
            Belady hits 24-25 % of each later epoch and LRU 2-5 % (a shuffled order defeats
            recency).
        prefetch_across_epochs: Start fetching the next epoch's known order as soon as the last
            sample of this one is handed on (still within the prefetch bound), so the link does
            not idle while the DataLoader decodes the epoch's last batches and the next epoch
            does not start cold. Not after the last epoch when the context knows how many there
            are (``LoaderContext.epochs``; the runner sets it); where it does not, up to
            the prefetch bound's GETs after the last epoch are for an epoch that never runs
            (counted as requests and misses; their hits are not counted).
        persistent_workers: Keep the DataLoader's decode workers across epochs instead of forking
            new ones every epoch (they hold no storage client, only a socket to this process, so
            nothing is lost by keeping them).
        lean_http: S3 only: GET each sample through a URL presigned by s3fs's own client on a
            plain aiohttp pool, a third of the CPU of a full s3fs request (see
            :mod:`delibench.loaders.s3http`); false sends every GET through s3fs. Set-ups a
            presigned GET cannot express (requester pays, versioned reads, SSE-C, a bucket in
            another region) use s3fs either way.
        source: ``objects`` (one GET per sample object), ``members`` (each sample a ranged GET of
            its WebDataset tar shard, at the offset the manifest records, or the shards' headers
            tell at start-up; see :mod:`delibench.loaders.shards`) or ``shards`` (whole shards
            fetched and samples sliced from them, with a buffer of recent shards as big as the
            cache budget, on top of it; measured worse under a shuffled order, see
            ``benchmarks/shards.py``). None: ``members`` when the dataset exists only as shards
            (``Manifest.sample_objects`` false), else ``objects``.
        scope: ``node``: one node service per machine fetches for all of the machine's ranks into
            one shared-memory cache of ``cache_size`` (per node), evicting with Belady over the
            union of their orders, and hands the bytes to every rank's decode workers through
            shared memory (:mod:`delibench.loaders.node`); ``rank``: each rank has its own fetcher
            and cache (``cache_size`` per rank). Every ``source`` works in both; with
            ``source=shards`` the service reads each whole shard at most once per node while its
            shard buffer (``cache_size`` per node) holds it. None (the default): ``node`` when more
            than one rank runs on the node (``LoaderContext.local_world_size``), with either
            ``cache_tier``, else ``rank``.
        node_deadline_s: ``scope=node``: most seconds a rank waits for its node service to start
            or to have a batch ready before a clear error naming the batch and the samples it
            waits for (a bucket that stopped answering, a stuck rank holding the arena); the
            ``"30s"`` form is parsed as ``retry_deadline_s``. Default 120.
        fetch_processes: ``scope=node``: processes that send the node service's GETs. 1 (the
            default): the service's own event loop does them. N > 1: N fetch processes, each with
            its own event loop and client, GET and write the bytes straight into the shared-memory
            arena while the service keeps the one table, cache and arena (one loop saturates one
            core at ~0.24 GB/s of 110 KB samples, ``benchmarks/results/node-fetch-cpu.txt``).
            ``auto``: a quarter of the node's CPUs, at most two per local rank, at least 1.
            ``source=shards`` and ``scope=rank`` (every rank is its own fetcher) ignore it.
    """

    cache_size: int | None = field(default=None, metadata={"unit": "bytes"})
    cache_items: int | None = None
    prefetch: str | None = None
    prefetch_depth: int | None = None
    fetch_size: int | None = None
    fetch_threshold: int | None = None
    concurrency: int = 32
    cache_tier: str = "memory"
    cache_dir: str | None = None
    disk_cache_size: int = field(default=0, metadata={"unit": "bytes"})
    eviction: str = "belady"
    prefetch_across_epochs: bool = True
    persistent_workers: bool = True
    lean_http: bool = True
    source: str | None = None
    scope: str | None = None
    node_deadline_s: float = field(default=120.0, metadata={"unit": "seconds"})
    fetch_processes: int | str = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope not in (None, "node", "rank"):
            raise UsageError(f"unknown scope {self.scope!r}", hint="use 'node' (one cache per machine) or 'rank' (one per rank)")
        deadline = self.node_deadline_s
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not deadline > 0:
            raise UsageError(f"node_deadline_s must be a number of seconds > 0, got {deadline!r}", hint="e.g. 120 or, as a loader option, 2min")
        procs = self.fetch_processes
        if procs != "auto" and (isinstance(procs, bool) or not isinstance(procs, int) or procs < 1):
            raise UsageError(f"fetch_processes must be a whole number >= 1 or 'auto', got {procs!r}",
                             hint="1 (the node service's own event loop), 2, 4, ... or auto (from the node's CPU count)")
        for name in ("cache_size", "disk_cache_size"):
            value = getattr(self, name)
            if value is None and name == "cache_size":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise UsageError(f"{name} must be a whole number of bytes, got {value!r}", hint="e.g. 536870912 or, as a loader option, 512MiB")
            if value < 0:
                raise UsageError(f"{name} must not be negative, got {value}", hint="0 turns the cache off")
        if self.cache_items is not None:
            if isinstance(self.cache_items, bool) or not isinstance(self.cache_items, int) or self.cache_items < 0:
                raise UsageError(f"cache_items must be a whole number of samples >= 0, got {self.cache_items!r}",
                                 hint="e.g. cache_items=2048; 0 turns the cache off")
            if self.cache_size is not None:
                raise UsageError("give cache_size or cache_items, not both: exactly one sets the cache budget",
                                 hint="cache_size=8GiB counts bytes, cache_items=2048 counts samples")
        for name, least in (("prefetch_depth", 1), ("fetch_size", 1), ("fetch_threshold", 1)):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < least):
                raise UsageError(f"{name} must be a whole number of samples >= {least}, got {value!r}")
        if self.prefetch not in (None, "window", "threshold"):
            raise UsageError(f"unknown prefetch {self.prefetch!r}", hint="use 'window' (prefetch_depth) or 'threshold' (fetch_size, fetch_threshold)")
        given = [n for n in ("fetch_size", "fetch_threshold") if getattr(self, n) is not None]
        if self.prefetch_policy == "window" and given:
            raise UsageError(f"{' and '.join(given)} {'apply' if len(given) > 1 else 'applies'} to prefetch=threshold, not prefetch=window",
                             hint="drop prefetch=window (fetch_size/fetch_threshold choose the threshold trigger), or use prefetch_depth")
        if self.prefetch_policy == "threshold" and self.prefetch_depth is not None:
            raise UsageError("prefetch_depth applies to prefetch=window; prefetch=threshold is set by fetch_size and fetch_threshold",
                             hint="e.g. prefetch=threshold,fetch_size=50,fetch_threshold=50, or drop fetch_size/fetch_threshold")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise UsageError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")
        if self.cache_tier not in ("memory", "disk"):
            raise UsageError(f"unknown cache_tier {self.cache_tier!r}", hint="use 'memory' or 'disk'")
        if self.cache_tier == "disk" and not self.disk_cache_size:
            raise UsageError("cache_tier=disk needs disk_cache_size", hint="e.g. disk_cache_size=8GiB")
        if self.eviction not in policy_names():
            raise UsageError(f"unknown eviction {self.eviction!r}", hint=f"use one of: {', '.join(policy_names())}")
        if self.source not in (None, "objects", "members", "shards"):
            raise UsageError(f"unknown source {self.source!r}",
                             hint="use 'objects' (one object per sample), 'members' (byte ranges of tar shards) or 'shards' (whole shards)")

    @property
    def cache_size_bytes(self) -> int | None:
        """The memory budget in bytes (the name the tuner's configurations use); None when
        ``cache_items`` sets the budget instead."""
        if self.cache_size is not None:
            return self.cache_size
        return None if self.cache_items is not None else DEFAULT_CACHE_SIZE

    @property
    def shard_buffer_bytes(self) -> int:
        """``source=shards``: most bytes of whole shards kept between requests, on top of the cache:
        as many as the cache budget (its default when ``cache_items`` sets the budget)."""
        return DEFAULT_CACHE_SIZE if self.cache_size_bytes is None else self.cache_size_bytes

    @property
    def prefetch_policy(self) -> str:
        """``window`` or ``threshold``: ``prefetch`` as given, else ``threshold`` when
        ``fetch_size`` or ``fetch_threshold`` is given, else ``window``."""
        if self.prefetch is not None:
            return self.prefetch
        return "threshold" if self.fetch_size is not None or self.fetch_threshold is not None else "window"

    @property
    def window_depth(self) -> int:
        """The window policy's depth (``prefetch_depth``, default 256)."""
        return DEFAULT_PREFETCH_DEPTH if self.prefetch_depth is None else self.prefetch_depth

    @property
    def threshold_trigger(self) -> tuple[int, int] | None:
        """``(fetch_size, fetch_threshold)`` of the threshold policy (defaults 50/50), or None for the window."""
        if self.prefetch_policy != "threshold":
            return None
        return (self.fetch_size or DEFAULT_FETCH_SIZE, self.fetch_threshold or DEFAULT_FETCH_THRESHOLD)

    @property
    def prefetch_bound(self) -> int:
        """Most samples held ahead of consumption under the chosen policy."""
        trigger = self.threshold_trigger
        return self.window_depth if trigger is None else trigger[1] - 1 + trigger[0]


class DeliLoader(ResumableEpochs):
    """Cached-prefetch loader: the fetcher runs in the loader's process, DataLoader workers only decode.

    Design: the sampler order of the epoch is known, so an :class:`EpochPrefetcher` walks it
    ``prefetch_depth`` samples ahead with ``concurrency`` GETs in flight on fsspec's event loop (one
    thread, no client in the workers, so nothing to break after ``fork``). The DataLoader's sampler
    yields batch numbers; each worker asks the loader's :class:`BatchFeed` for its batch's
    ``[(index, bytes), ...]`` (handed out in order, over a local socket) and decodes it. After
    delivery each fetched sample is offered to the :class:`ByteBudgetCache`; later epochs look the
    cache up before fetching, so a sample is never fetched twice in an epoch while cached, and
    with a cache holding the whole dataset epoch 2 issues no request at all.
    """

    name: ClassVar[str] = "deli"

    def __new__(cls, ctx: LoaderContext, **options: Any) -> Any:
        # Node scope: this rank's side of the node service (a NodeDeliLoader, built here).
        if cls is DeliLoader:
            from delibench.loaders.node import NodeDeliLoader, wants_node_scope

            parsed = parse_options(DeliOptions, cls.name, dict(options))
            if wants_node_scope(parsed, ctx):
                return NodeDeliLoader(ctx, parsed)
        return super().__new__(cls)

    def __init__(self, ctx: LoaderContext, **options: Any) -> None:
        self.ctx = ctx
        self.options = parse_options(DeliOptions, self.name, options)
        members = self.options.source in ("members", "shards") or (self.options.source is None and not ctx.manifest.sample_objects)
        if members:
            from delibench.loaders.shards import WholeShardSource, add_member_index

            read_from = add_member_index(ctx.manifest, ctx.dataset_url, ctx.storage_options)  # headers only, when not recorded
        if self.options.source == "shards":
            self.source: SampleSource = WholeShardSource(
                ctx.dataset_url, read_from, ctx.storage_options, io_threads=self.options.concurrency, lean_http=self.options.lean_http,
                buffer_bytes=self.options.shard_buffer_bytes, **self.options.source_kwargs())
        else:
            self.source = SampleSource(ctx.dataset_url, read_from if members else ctx.manifest, ctx.storage_options,
                                       io_threads=self.options.concurrency, lean_http=self.options.lean_http, members=members,
                                       **self.options.source_kwargs())
        self._skipped: list[str] = []
        self._tmpdir: str | None = None
        disk_dir = None
        if self.options.cache_tier == "disk":
            disk_dir = self._rank_disk_dir() or tempfile.mkdtemp(prefix="delibench-deli-")
            self._tmpdir = None if self.options.cache_dir else disk_dir
            check_disk_dir(disk_dir)
        sums = [s.sha256 for s in ctx.manifest.samples]
        self.cache = ByteBudgetCache(
            self.options.cache_size_bytes,
            self.options.eviction,
            capacity_items=self.options.cache_items,
            disk_dir=disk_dir,
            disk_capacity_bytes=self.options.disk_cache_size,
            checksums=lambda i: (sums[i] or None) if isinstance(i, int) and 0 <= i < len(sums) else None,
        )
        self._prefetcher: EpochPrefetcher | None = None
        #: (epoch, (prefetcher, order, when_next)) started ahead of that epoch.
        self._ahead: tuple[int, tuple[EpochPrefetcher, list[int], Any]] | None = None
        labels = [s.label for s in ctx.manifest.samples]
        keys = [s.key for s in ctx.manifest.samples]
        self._feed = BatchFeed(remote=ctx.num_workers > 0)
        decode_bytes = BytesBatchDataset(ctx.decode, labels, keys, self.source.location.display_url, self.options.on_error)
        dataset = FeedDataset(self._feed, decode_bytes)
        self._pipeline = DecodePipeline(dataset, ctx.num_workers, persistent=self.options.persistent_workers)
        #: Guards ``_ahead`` and ``_closed`` (the feed's server thread starts the next epoch's walk).
        self._lock = threading.Lock()
        self._prefetch_peak = 0
        self._unused_hits = 0
        self._lead_sum = 0
        self._lead_count = 0
        self._late_samples = 0
        self._samples_requested = 0
        self._timeline: list[tuple[float, int]] = []
        self._t0 = time.perf_counter()
        self._closed = False
        #: (epoch, samples of this rank's epoch order handed on, batches yielded) as of the last batch
        #: yielded: what :meth:`state_dict` saves.
        self._position: tuple[int, int, int] = (0, 0, 0)
        #: Set by :meth:`load_state_dict`: where the next ``iter_epoch`` (of that epoch) starts.
        self._resume: tuple[int, int, int] | None = None
        #: Samples adopted from a surviving disk tier (``cache_dir``) at the first epoch.
        self.warm_started = 0
        self._warm_checked = False

    # -- epochs ---------------------------------------------------------------------------------

    def _new_prefetcher(self, epoch: int, start: int = 0) -> tuple[EpochPrefetcher, list[int], Any]:
        """A started prefetcher of ``epoch``'s order from position ``start`` on (a resumed epoch),
        with that order and its next-use function."""
        full = context_order(self.ctx, epoch)
        length = len(full)
        order = full[start:]
        # Global clock for eviction: position p of epoch e happens at e * length + p.
        following = next_use(context_order(self.ctx, epoch + 1), offset=(epoch + 1) * length)

        def when_next(pos: int) -> float | None:
            return following.get(order[pos])

        trigger = self.options.threshold_trigger
        prefetcher = EpochPrefetcher(
            self.source, order, self.cache, self.options.window_depth, self.options.concurrency, when_next,
            fetch_size=trigger[0] if trigger else None, fetch_threshold=trigger[1] if trigger else None,
        )
        prefetcher.start()
        return prefetcher, order, when_next

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` (see :class:`delibench.loaders.base.Loader`).

        The walk of ``epoch`` may already be under way: the previous epoch starts it as soon as
        it has handed its last sample on (see :meth:`_assemble`), so the accelerator does not
        wait through a cold start at every epoch boundary. The DataLoader's sampler items are
        batch numbers; each decode worker asks the :class:`BatchFeed` for its batch's bytes, so
        the loop never waits for a batch that is still on the link behind the one it needs.
        """
        if self._closed:
            raise UsageError("the deli loader is closed")
        start, done_batches = self._take_resume(epoch)
        self._stop_prefetcher()
        self._feed.end_current()  # a previous epoch left open can no longer start a look-ahead
        with self._lock:
            ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead[0] == epoch and start == 0:
            prefetcher, order, when_next = ahead[1]
            prefetcher.resume()  # paused while another loader was measured (see pause_background)
        else:
            if ahead is not None:
                self._retire(ahead[1][0])
            self._warm_start_from_disk(epoch, start)
            prefetcher, order, when_next = self._new_prefetcher(epoch, start)
        self._prefetcher = prefetcher
        batches = batches_of(order, self.ctx.batch_size)
        self._position = (epoch, start, done_batches)
        token = self._feed.open_epoch(lambda b: self._assemble(prefetcher, batches, b, when_next, epoch, token))

        def end_epoch() -> None:
            # Before any worker is shut down: workers waiting for bytes get "stale" at once.
            self._feed.close_epoch(token)
            self._stop_prefetcher()

        try:
            yield from self._hand_on(
                lambda: enumerate(self._pipeline.run(self._feed.items(token, len(batches)), on_abort=end_epoch)),
                batches, epoch, start, done_batches, self._skipped, original_error=lambda: self._feed.take_error(token),
            )
        finally:
            end_epoch()

    def _assemble(
        self, prefetcher: EpochPrefetcher, batches: list[list[int]], b: int, when_next: Any, epoch: int, token: int
    ) -> list[tuple[int, bytes]]:
        """The ``(index, bytes)`` of batch ``b`` (the feed calls this for b = 0, 1, ... in order).

        Each sample is offered to the cache once handed on; failures under ``on_error=skip`` are
        left out and listed.
        """
        pos = b * len(batches[0])  # every batch but the last is full
        # The samples not ready when their batch is asked for are the ones the consumer waits for.
        late = prefetcher.not_ready(range(pos, pos + len(batches[b])))
        with self._lock:
            self._late_samples += late
            self._samples_requested += len(batches[b])
        items = []
        for idx in batches[b]:
            try:
                data, hit = prefetcher.take(pos)
            except FetchError as exc:
                if self.options.on_error != "skip":
                    raise
                self._skipped.append(exc.key)  # listed in stats().skipped_keys, never silent
                pos += 1
                continue
            if not hit:
                self.cache.put(idx, data, when_next(pos))
                self._record_occupancy()
            items.append((idx, data))
            pos += 1
        if b == len(batches) - 1:
            self._look_ahead(epoch, token)
        return items

    def _look_ahead(self, epoch: int, token: int) -> None:
        """Every sample of ``epoch`` is handed on (the workers are still decoding the last
        batches): start walking the next epoch's known order now. Nothing of this epoch is held
        by the prefetcher any more, so the prefetch policy's bound still bounds what is held."""
        last = self.ctx.epochs is not None and epoch + 1 >= self.ctx.epochs
        if last or not self.options.prefetch_across_epochs:
            return
        with self._lock:
            if not self._closed and self._ahead is None and self._feed.is_active(token):
                try:
                    self._ahead = (epoch + 1, self._new_prefetcher(epoch + 1))
                except Exception:  # noqa: BLE001 - not this batch's failure: the next epoch starts its
                    pass  # own walk in the loader's thread and raises there if the cause persists

    def pause_background(self) -> None:
        """Stop the look-ahead into the next epoch until that epoch starts; keep what has arrived.

        Why: ``compare`` interleaves the epochs of several loaders. Left running, the walk of
        deli's next epoch would fetch during the other loaders' epochs: their link would be
        shared with it, and deli's next epoch would look faster than any training run could
        make it. What arrived while deli's own epoch was ending is kept; requests in flight are
        cancelled (counted as sent) and sent again when the epoch starts.
        """
        with self._lock:
            if self._ahead is not None:
                self._ahead[1][0].pause()

    def _record_occupancy(self) -> None:
        now = time.perf_counter() - self._t0
        if not self._timeline or now - self._timeline[-1][0] >= _TIMELINE_STEP_S:
            self._timeline.append((now, self.cache.current_bytes))

    def _stop_prefetcher(self) -> None:
        prefetcher, self._prefetcher = self._prefetcher, None
        if prefetcher is not None:
            self._retire(prefetcher)

    def _retire(self, prefetcher: EpochPrefetcher) -> None:
        try:
            prefetcher.close()
        finally:
            self._prefetch_peak = max(self._prefetch_peak, prefetcher.peak_bytes)
            self._lead_sum += prefetcher.lead_sum
            self._lead_count += prefetcher.lead_count
            self._unused_hits += prefetcher.pending_hits()

    # -- resumable iteration: state_dict / load_state_dict come from ResumableEpochs ----------------

    def _rank_disk_dir(self) -> str | None:
        """This rank's folder of the user's ``cache_dir``: the folder itself for one rank, else
        ``rank-<r>-of-<world>`` in it (the files are named by sample index: ranks sharing one folder
        would overwrite and, on close, delete each other's files). The same rank of a restarted job
        of the same world finds its files again (warm start)."""
        directory = self.options.cache_dir
        if not directory or self.ctx.world_size <= 1:
            return directory
        return str(Path(directory) / f"rank-{self.ctx.rank}-of-{self.ctx.world_size}")

    def _warm_start_from_disk(self, epoch: int, start: int) -> None:
        """Adopt the samples a previous process left in ``cache_dir`` (it was killed before its
        ``close``, which empties the tier): each file is checked against the manifest's size and
        sha256 and offered to the cache with its next use, soonest first, so they are hits
        instead of GETs. Once per loader, only for a ``cache_dir`` given by the user."""
        if self._warm_checked:
            return
        self._warm_checked = True
        if self.options.cache_tier != "disk" or not self.options.cache_dir:
            return
        directory = Path(str(self._rank_disk_dir()))  # cache_dir is given (checked above)
        try:
            present = {p.name for p in directory.glob("*.bin")}
        except OSError:
            return
        if not present:
            return
        full = context_order(self.ctx, epoch)
        length = len(full)
        uses = next_use(context_order(self.ctx, epoch + 1), offset=(epoch + 1) * length)
        uses.update(next_use(full[start:], offset=epoch * length + start))
        never = float("inf")
        samples = self.ctx.manifest.samples
        for idx in sorted(range(len(samples)), key=lambda i: uses.get(i, never)):
            name = _disk_file_name(idx)
            if name not in present:
                continue
            path = directory / name
            try:
                data = path.read_bytes()
                path.unlink()  # the tier rewrites it if it keeps the sample on disk
            except OSError:
                continue
            entry = samples[idx]
            if len(data) != entry.size_bytes or (entry.sha256 and checksum(data) != entry.sha256):
                continue
            if self.cache.put(idx, data, uses.get(idx)):
                self.warm_started += 1

    # -- metrics --------------------------------------------------------------------------------

    def look_ahead(self) -> tuple[int, EpochPrefetcher] | None:
        """The epoch whose known order is being fetched before its ``iter_epoch`` and the prefetcher
        walking it (see ``prefetch_across_epochs``), or None when no look-ahead runs."""
        with self._lock:
            ahead = self._ahead
        return None if ahead is None else (ahead[0], ahead[1][0])

    def occupancy_timeline(self) -> list[tuple[float, int]]:
        """Cache occupancy over time: ``(seconds since the loader was built, bytes)`` points."""
        return list(self._timeline)

    def stats(self) -> LoaderStats:
        """Cumulative counters: GETs, bytes, cache hits/misses/evictions (and the disk tier's), latency percentiles, lead."""
        meter = self.source.meter
        cache = self.cache.stats()
        p50, p95, p99 = percentiles(list(meter.latencies_s))
        lead_sum, lead_count = self._lead_sum, self._lead_count
        prefetch_peak = self._prefetch_peak
        unused_hits = self._unused_hits
        active = self._prefetcher
        if active is not None:
            lead_sum += active.lead_sum
            lead_count += active.lead_count
            prefetch_peak = max(prefetch_peak, active.peak_bytes)
            unused_hits += active.pending_hits()
        if self._ahead is not None:
            unused_hits += self._ahead[1][0].pending_hits()  # looked up ahead of its epoch
        return LoaderStats(
            requests_count=meter.requests_count,
            bytes_read_remote=meter.bytes_read,
            cache_hits=cache.hits - unused_hits,
            cache_misses=cache.misses,
            cache_evictions=cache.evictions,
            cache_peak_bytes=cache.peak_bytes,
            cache_bytes=cache.current_bytes,
            prefetch_peak_bytes=prefetch_peak,
            fetch_latency_s_p50=p50,
            fetch_latency_s_p95=p95,
            fetch_latency_s_p99=p99,
            prefetch_lead_mean=lead_sum / lead_count if lead_count else None,
            retries_count=meter.retries_count,
            hedges_count=meter.hedges_count,
            errors_count=meter.errors_count,
            skipped_keys=tuple(self._skipped),
            samples_requested=self._samples_requested,
            late_samples=self._late_samples,
            disk_hits=cache.disk_hits,
            disk_peak_bytes=cache.disk_peak_bytes,
            disk_write_errors=cache.disk_write_errors,
            disk_corrupt_count=cache.corrupt_count,
        )

    def close(self) -> None:
        """Stop prefetching, drop the cache (and its disk files) and release the IO threads; idempotent."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            ahead, self._ahead = self._ahead, None
        try:
            self._stop_prefetcher()
            if ahead is not None:
                self._retire(ahead[1][0])
            self._pipeline.close()
        finally:
            self._feed.close()
            self.cache.close()
            self.source.close()
            if self._tmpdir is not None:
                shutil.rmtree(self._tmpdir, ignore_errors=True)
                self._tmpdir = None

    def __enter__(self) -> DeliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _disk_file_name(key: int) -> str:
    """The file the cache's disk tier keeps sample ``key`` in.

    NOTE: mirrors ``delibench.loaders.cache.DiskTier._path``; tests/loaders/test_resume.py
    warm-starts from a tier a killed process left behind, so a change there fails that test.
    """
    return hashlib.sha1(repr(key).encode()).hexdigest() + ".bin"
