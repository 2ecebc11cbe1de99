"""A byte- or item-budgeted sample cache with pluggable eviction (LRU, FIFO, Belady) and an optional checked disk tier.

Pure Python, no torch and no I/O unless a disk tier is asked for, so the tuning module can replay
sampler orders through it to simulate hit rates.
"""

from __future__ import annotations

import difflib
import hashlib
import heapq
import itertools
import logging
import math
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, Protocol

from delibench.errors import UsageError

__all__ = [
    "BeladyPolicy",
    "ByteBudgetCache",
    "CacheStats",
    "DiskTier",
    "EvictionPolicy",
    "FifoPolicy",
    "LruPolicy",
    "check_disk_dir",
    "make_policy",
    "policy_names",
    "register_policy",
    "simulate",
]

NEVER = math.inf

_log = logging.getLogger(__name__)


class EvictionPolicy(Protocol):
    """Chooses what to evict; knows keys and (for clairvoyant policies) their next use time.

    Not thread-safe on its own: :class:`ByteBudgetCache` calls it under its lock.
    """

    name: ClassVar[str]

    def add(self, key: Hashable, next_use: float) -> None:
        """Track a newly cached key."""

    def touch(self, key: Hashable, next_use: float) -> None:
        """Record an access of a cached key (and its new next use)."""

    def remove(self, key: Hashable) -> None:
        """Forget a key (evicted or discarded)."""

    def victim(self) -> tuple[Hashable, float]:
        """The key to evict next and its next use time (``inf`` when unknown); cache is non-empty."""

    def admits(self, next_use: float, victim_next_use: float) -> bool:
        """Whether a newcomer used at ``next_use`` is worth evicting the victim used at ``victim_next_use``."""


_POLICIES: dict[str, type] = {}


def register_policy(cls: type) -> type:
    """Class decorator: make an eviction policy available by its ``name`` (e.g. ``--eviction lru``)."""
    _POLICIES[cls.name] = cls
    return cls


def policy_names() -> list[str]:
    """Registered eviction policy names, sorted."""
    return sorted(_POLICIES)


def make_policy(name: str) -> EvictionPolicy:
    """A fresh policy instance by name.

    Raises:
        UsageError: Unknown name, with a did-you-mean suggestion.
    """
    if name not in _POLICIES:
        close = difflib.get_close_matches(name, _POLICIES, n=1)
        hint = f"did you mean {close[0]!r}?" if close else f"choose one of: {', '.join(policy_names())}"
        raise UsageError(f"unknown eviction policy {name!r}", hint=hint)
    return _POLICIES[name]()


@register_policy
class LruPolicy:
    """Least recently used first; ignores next-use hints. O(1) per operation."""

    name: ClassVar[str] = "lru"

    def __init__(self) -> None:
        self._order: OrderedDict[Hashable, None] = OrderedDict()

    def add(self, key: Hashable, next_use: float) -> None:
        self._order[key] = None

    def touch(self, key: Hashable, next_use: float) -> None:
        self._order.move_to_end(key)

    def remove(self, key: Hashable) -> None:
        self._order.pop(key, None)

    def victim(self) -> tuple[Hashable, float]:
        return next(iter(self._order)), NEVER

    def admits(self, next_use: float, victim_next_use: float) -> bool:
        return True


@register_policy
class FifoPolicy(LruPolicy):
    """First in, first out: evicts the item cached longest ago; a hit does not renew it (unlike LRU).

    The DELI paper's simple policy (its sweeps compare FIFO and LRU). Ignores next-use hints and
    admits every newcomer. O(1) per operation.
    """

    name: ClassVar[str] = "fifo"

    def touch(self, key: Hashable, next_use: float) -> None:
        pass  # insertion order only


@register_policy
class BeladyPolicy:
    """Evict the key whose next use is furthest away (Belady's MIN), with the known future order.

    Refuses a newcomer that is needed later than everything cached (caching it would only evict
    something needed sooner). O(log n) per operation with a lazily cleaned max-heap.
    """

    name: ClassVar[str] = "belady"

    def __init__(self) -> None:
        self._next: dict[Hashable, float] = {}
        self._heap: list[tuple[float, int, Hashable]] = []
        self._seq = itertools.count()

    def _push(self, key: Hashable, next_use: float) -> None:
        self._next[key] = next_use
        heapq.heappush(self._heap, (-next_use, next(self._seq), key))
        if len(self._heap) > 2 * len(self._next) + 64:
            # Drop stale entries so the heap stays O(items).
            self._heap = [(-v, next(self._seq), k) for k, v in self._next.items()]
            heapq.heapify(self._heap)

    def add(self, key: Hashable, next_use: float) -> None:
        self._push(key, next_use)

    def touch(self, key: Hashable, next_use: float) -> None:
        self._push(key, next_use)

    def remove(self, key: Hashable) -> None:
        self._next.pop(key, None)

    def victim(self) -> tuple[Hashable, float]:
        while True:
            neg, _, key = self._heap[0]
            if self._next.get(key) == -neg:
                return key, -neg
            heapq.heappop(self._heap)  # stale: key removed or re-prioritised since

    def admits(self, next_use: float, victim_next_use: float) -> bool:
        return next_use < victim_next_use


@dataclass(frozen=True, slots=True)
class CacheStats:
    """Cumulative counters of one cache (memory tier, plus the disk tier when present).

    Attributes:
        hits: Lookups served (memory or disk tier).
        misses: Lookups not served.
        evictions: Items dropped from the memory tier to keep its budget (spills included).
        rejected: Offers not admitted (too large, or refused by the policy).
        peak_bytes: Largest memory-tier occupancy seen; never above ``capacity_bytes``.
        peak_items: Most items the memory tier held at once; never above ``capacity_items``.
        current_bytes: Memory-tier occupancy now.
        items: Items in the memory tier now.
        disk_hits: Hits served by the disk tier.
        disk_bytes: Disk-tier occupancy now.
        disk_peak_bytes: Largest disk-tier occupancy seen; never above its budget.
        corrupt_count: Disk-tier files whose checksum did not match (dropped, counted as misses).
        disk_write_errors: Disk-tier writes that failed (e.g. ENOSPC); the first one switches
            the disk tier off for the rest of the cache's life (training goes on).
        disk_disabled: Whether the disk tier was switched off by a write error.
    """

    hits: int = 0
    misses: int = 0
    evictions: int = 0
    rejected: int = 0
    peak_bytes: int = 0
    current_bytes: int = 0
    items: int = 0
    peak_items: int = 0
    disk_hits: int = 0
    disk_bytes: int = 0
    disk_peak_bytes: int = 0
    corrupt_count: int = 0
    disk_write_errors: int = 0
    disk_disabled: bool = False

    @property
    def hit_rate(self) -> float | None:
        """hits / (hits + misses), or None before any lookup."""
        total = self.hits + self.misses
        return self.hits / total if total else None


class DiskTier:
    """Spilled items as files under ``directory``, within ``capacity_bytes``; verified on read.

    Rank scope's :class:`ByteBudgetCache` calls :meth:`put` and :meth:`take` under its lock. The
    node service (:mod:`delibench.loaders.node.service`) holds one lock for all its ranks, so it
    splits both so that no file is written or read under it: :meth:`reserve` (room and accounting,
    under the lock), :meth:`write` (the file, on a disk thread, no lock), :meth:`commit` (under the
    lock); and :meth:`open` (under the lock) then :meth:`read_into` (on a disk thread). A file read
    that way stays in the tier, so a sample read back into memory is not written again when memory
    evicts it (the caller :meth:`touch`-es its next use instead).
    """

    def __init__(self, directory: str | os.PathLike[str], capacity_bytes: int, policy: str,
                 checksums: Callable[[Hashable], str | None]) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.capacity_bytes = capacity_bytes
        self.policy = make_policy(policy)
        self.sizes: dict[Hashable, int] = {}
        #: Reserved keys whose file is still being written (not readable yet).
        self.pending: set[Hashable] = set()
        self.bytes = 0
        self.peak_bytes = 0
        self.corrupt = 0
        self.write_errors = 0
        self.disabled = False
        self._checksums = checksums

    def _path(self, key: Hashable) -> Path:
        return self.dir / (hashlib.sha1(repr(key).encode()).hexdigest() + ".bin")

    def put(self, key: Hashable, data: bytes, next_use: float) -> bool:
        """Keep ``data`` as ``key``'s file (written now), evicting what the policy prefers to lose."""
        if self.disabled or len(data) > self.capacity_bytes:
            return False
        if key in self.sizes:
            self.policy.touch(key, next_use)
            return True
        if not self.reserve(key, len(data), next_use):
            return False
        return self.commit(key, self.write(key, [data]))

    def reserve(self, key: Hashable, size: int, next_use: float) -> bool:
        """Make room for ``key`` (``size`` bytes) and count it, before its file is written; False when
        the tier is off, the item larger than the budget or already there, or the policy refuses it."""
        if self.disabled or size > self.capacity_bytes or key in self.sizes:
            return False
        while self.bytes + size > self.capacity_bytes:
            victim, victim_use = self.policy.victim()
            if not self.policy.admits(next_use, victim_use):
                return False
            self.remove(victim)
        self.sizes[key] = size
        self.pending.add(key)
        self.bytes += size
        self.peak_bytes = max(self.peak_bytes, self.bytes)
        self.policy.add(key, next_use)
        return True

    def write(self, key: Hashable, chunks: Sequence[bytes | memoryview]) -> OSError | None:
        """Write reserved ``key``'s file from ``chunks`` (under a temporary name of its own, then
        renamed, so concurrent writes never meet); needs no lock. The error, if any, for :meth:`commit`."""
        final = self._path(key)
        tmp = final.with_name(f"{final.name}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
            os.replace(tmp, final)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            return exc
        return None

    def commit(self, key: Hashable, error: OSError | None) -> bool:
        """After :meth:`write`: whether ``key``'s file now counts. A file whose key was evicted while
        it was written is removed; a write error switches the tier off."""
        self.pending.discard(key)
        if error is not None:
            # NOTE: a full (ENOSPC) or failing disk must stop caching to disk, not training.
            self.remove(key)
            self.write_errors += 1
            self.disabled = True
            _log.warning("disk cache tier at %s switched off after a write error: %s", self.dir, error)
            return False
        if key not in self.sizes:
            self._path(key).unlink(missing_ok=True)
            return False
        return True

    def touch(self, key: Hashable, next_use: float) -> None:
        """``key`` (if on disk) is next needed at ``next_use``."""
        if key in self.sizes:
            self.policy.touch(key, next_use)

    def open(self, key: Hashable) -> int | None:
        """A read-only descriptor of ``key``'s written file, or None (not there, or still being
        written). Removing the file later does not disturb a reader of the descriptor."""
        if key not in self.sizes or key in self.pending:
            return None
        try:
            return os.open(self._path(key), os.O_RDONLY)
        except OSError:
            self.remove(key)
            return None

    def read_into(self, key: Hashable, fd: int, views: Sequence[memoryview]) -> bool:
        """Fill ``views`` (``sizes[key]`` bytes in all) from descriptor ``fd`` of :meth:`open` and close
        it; whether the file had exactly that length and its checksum. Needs no lock (a key evicted
        meanwhile is read all the same: the descriptor outlives the file's name)."""
        try:
            size = sum(len(v) for v in views)
            if os.fstat(fd).st_size != size:
                return False
            at = 0
            for view in views:
                got = 0
                while got < len(view):
                    n = os.preadv(fd, [view[got:]], at + got)
                    if n <= 0:
                        return False
                    got += n
                at += got
        except OSError:
            return False
        finally:
            os.close(fd)
        return self._intact(key, views)

    def discard_corrupt(self, key: Hashable) -> None:
        """A read of ``key`` found it damaged: count it and drop the file."""
        self.corrupt += 1
        self.remove(key)

    def _intact(self, key: Hashable, chunks: Sequence[bytes | memoryview]) -> bool:
        """Whether ``chunks`` have ``key``'s checksum (when one is known)."""
        expected = self._checksums(key)
        if expected is None:
            return True
        digest = hashlib.sha256()
        for chunk in chunks:
            digest.update(chunk)
        return digest.hexdigest() == expected

    def take(self, key: Hashable) -> bytes | None:
        """Read and remove ``key``; None (and the file dropped) when absent or corrupt."""
        if key not in self.sizes:
            return None
        try:
            data = self._path(key).read_bytes()
        except OSError:
            data = None
        if data is None or len(data) != self.sizes[key] or not self._intact(key, [data]):
            self.discard_corrupt(key)
            return None
        self.remove(key)
        return data

    def remove(self, key: Hashable) -> None:
        size = self.sizes.pop(key, None)
        if size is None:
            return
        self.pending.discard(key)
        self.bytes -= size
        self.policy.remove(key)
        self._path(key).unlink(missing_ok=True)

    def clear(self) -> None:
        for key in list(self.sizes):
            self.remove(key)


class ByteBudgetCache:
    """A thread-safe key -> bytes cache whose memory occupancy never exceeds ``capacity_bytes``
    (and, with ``capacity_items``, whose item count never exceeds that).

    Eviction happens *before* insertion, so the peak occupancy is at most the budget; an item
    larger than the budget is never admitted. With a disk tier, items evicted from memory spill
    to files (within ``disk_capacity_bytes``), are verified against ``checksums`` when read back
    (a corrupt file is dropped and reported as a miss), and move back to memory on a hit.

    Args:
        capacity_bytes: Memory budget in bytes (0 = cache nothing in memory; None = no byte limit,
            for a cache budgeted by ``capacity_items`` alone).
        policy: Eviction policy name (``lru``, ``fifo``, ``belady`` or a registered one).
        capacity_items: Most items held in memory (the DELI paper counts its cache in items);
            None = no item limit. Both limits hold when both are given.
        disk_dir: Directory of the disk tier (None = no disk tier). Files written there are
            removed by :meth:`clear` / :meth:`close`.
        disk_capacity_bytes: Disk-tier budget.
        checksums: ``key -> sha256 hex`` (mapping or callable) used to verify disk reads.

    ``next_use`` arguments are times on any monotonic clock the caller chooses (e.g. global sample
    positions); only clairvoyant policies read them, and ``None`` means "not known to be needed".
    """

    def __init__(
        self,
        capacity_bytes: int | None,
        policy: str = "lru",
        *,
        capacity_items: int | None = None,
        disk_dir: str | os.PathLike[str] | None = None,
        disk_capacity_bytes: int = 0,
        checksums: Mapping[Hashable, str] | Callable[[Hashable], str | None] | None = None,
    ) -> None:
        if capacity_bytes is None and capacity_items is None:
            raise UsageError("a cache needs a budget: capacity_bytes, capacity_items or both")
        if (capacity_bytes or 0) < 0 or (capacity_items or 0) < 0 or disk_capacity_bytes < 0:
            raise UsageError("cache budgets must not be negative")
        self.capacity_bytes = None if capacity_bytes is None else int(capacity_bytes)
        self.capacity_items = None if capacity_items is None else int(capacity_items)
        self._byte_limit: float = math.inf if capacity_bytes is None else int(capacity_bytes)
        self._item_limit: float = math.inf if capacity_items is None else int(capacity_items)
        self.policy_name = policy
        self._policy = make_policy(policy)
        self._data: dict[Hashable, bytes] = {}
        self._bytes = 0
        self._peak = 0
        self._peak_items = 0
        self._hits = self._misses = self._evictions = self._rejected = self._disk_hits = 0
        self._lock = threading.RLock()
        if checksums is None:
            lookup: Callable[[Hashable], str | None] = lambda key: None  # noqa: E731
        elif isinstance(checksums, Mapping):
            lookup = checksums.get
        else:
            lookup = checksums
        self._disk = DiskTier(disk_dir, int(disk_capacity_bytes), policy, lookup) if disk_dir is not None else None

    @staticmethod
    def _when(next_use: float | None) -> float:
        return NEVER if next_use is None else float(next_use)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._data or (self._disk is not None and key in self._disk.sizes)

    def __len__(self) -> int:
        with self._lock:
            return len(self._data)

    @property
    def current_bytes(self) -> int:
        """Memory-tier occupancy now."""
        return self._bytes

    def sizes(self) -> dict[Hashable, int]:
        """The memory tier's entries and their sizes in bytes, now (a copy; touches no recency)."""
        with self._lock:
            return {key: len(data) for key, data in self._data.items()}

    def get(self, key: Hashable, next_use: float | None = None) -> bytes | None:
        """The cached bytes of ``key`` (counted as a hit) or None (a miss).

        Args:
            key: The item.
            next_use: When the item will be needed *after* this access (for clairvoyant policies).
        """
        when = self._when(next_use)
        with self._lock:
            data = self._data.get(key)
            if data is not None:
                self._hits += 1
                self._policy.touch(key, when)
                return data
            if self._disk is not None:
                data = self._disk.take(key)
                if data is not None:
                    self._hits += 1
                    self._disk_hits += 1
                    self._admit(key, data, when)
                    return data
            self._misses += 1
            return None

    def put(self, key: Hashable, data: bytes, next_use: float | None = None) -> bool:
        """Offer ``data`` for ``key``; returns whether it is now cached (memory or disk tier)."""
        with self._lock:
            when = self._when(next_use)
            if key in self._data:
                self._policy.touch(key, when)
                return True
            return self._admit(key, bytes(data) if not isinstance(data, bytes) else data, when)

    def _admit(self, key: Hashable, data: bytes, when: float) -> bool:
        size = len(data)
        if size > self._byte_limit or self._item_limit < 1:
            return self._spill(key, data, when)
        while self._bytes + size > self._byte_limit or len(self._data) + 1 > self._item_limit:
            victim, victim_use = self._policy.victim()
            if not self._policy.admits(when, victim_use):
                return self._spill(key, data, when)
            self._evict(victim, victim_use)
        self._data[key] = data
        self._bytes += size
        self._peak = max(self._peak, self._bytes)
        self._peak_items = max(self._peak_items, len(self._data))
        self._policy.add(key, when)
        return True

    def _spill(self, key: Hashable, data: bytes, when: float) -> bool:
        if self._disk is not None and self._disk.put(key, data, when):
            return True
        self._rejected += 1
        return False

    def _evict(self, key: Hashable, when: float) -> None:
        data = self._data.pop(key)
        self._bytes -= len(data)
        self._policy.remove(key)
        self._evictions += 1
        if self._disk is not None:
            self._disk.put(key, data, when)

    def discard(self, key: Hashable) -> None:
        """Drop ``key`` from both tiers (not counted as an eviction)."""
        with self._lock:
            data = self._data.pop(key, None)
            if data is not None:
                self._bytes -= len(data)
                self._policy.remove(key)
            if self._disk is not None:
                self._disk.remove(key)

    def stats(self) -> CacheStats:
        """A snapshot of the counters."""
        with self._lock:
            disk = self._disk
            return CacheStats(
                hits=self._hits,
                misses=self._misses,
                evictions=self._evictions,
                rejected=self._rejected,
                peak_bytes=self._peak,
                current_bytes=self._bytes,
                items=len(self._data),
                peak_items=self._peak_items,
                disk_hits=self._disk_hits,
                disk_bytes=disk.bytes if disk else 0,
                disk_peak_bytes=disk.peak_bytes if disk else 0,
                corrupt_count=disk.corrupt if disk else 0,
                disk_write_errors=disk.write_errors if disk else 0,
                disk_disabled=disk.disabled if disk else False,
            )

    def clear(self) -> None:
        """Drop every item from both tiers (counters are kept)."""
        with self._lock:
            for key in list(self._data):
                self._policy.remove(key)
            self._data.clear()
            self._bytes = 0
            if self._disk is not None:
                self._disk.clear()

    close = clear


def simulate(
    orders: Sequence[Sequence[int]],
    sizes: Sequence[int],
    capacity_bytes: int | None,
    policy: str = "lru",
    *,
    capacity_items: int | None = None,
) -> CacheStats:
    """Replay epochs of one rank's sample orders through a cache, as the ``deli`` loader uses it.

    Each position is looked up (a hit, or a miss that is then offered to the cache) with the same
    global clock the loader uses: position ``p`` of epoch ``e`` is time ``e * len(order) + p``,
    and an item's next use is its position in the following epoch (``inf`` when absent). No I/O.

    Args:
        orders: Per-epoch orders (e.g. ``[epoch_order(n, e, ...) for e in range(3)]``); the last
            epoch's successor is treated as unknown.
        sizes: Bytes of each sample, by index.
        capacity_bytes: Memory budget in bytes (None = items only).
        policy: Eviction policy name.
        capacity_items: Item budget (None = bytes only).

    Returns:
        The cache's counters after the replay (``hit_rate`` and friends).
    """
    cache = ByteBudgetCache(capacity_bytes, policy, capacity_items=capacity_items)
    for epoch, order in enumerate(orders):
        following: dict[int, int] = {}
        if epoch + 1 < len(orders):
            base = (epoch + 1) * len(order)
            for pos, idx in enumerate(orders[epoch + 1]):
                following.setdefault(idx, base + pos)
        for idx in order:
            when = following.get(idx)
            if cache.get(idx, when) is None:
                cache.put(idx, b"\0" * sizes[idx], when)
    return cache.stats()


def check_disk_dir(directory: str | os.PathLike[str]) -> None:
    """Create ``directory`` if needed and prove a file can be written there, so a disk tier that
    could never hold anything is one clear error at start, not a warning after the first spill.

    Raises:
        UsageError: The directory cannot be created or written.
    """
    probe = Path(directory) / f".delibench-probe-{uuid.uuid4().hex}"
    try:
        Path(directory).mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise UsageError(f"cache_dir {str(directory)!r} is not a writable directory: {exc.strerror or exc}",
                         hint="give cache_dir a directory this user can write, or leave it out (a temporary directory)") from None
