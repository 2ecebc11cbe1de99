"""The node service's one table of held samples: arena blocks, the cache within them, and the
union's next uses that Belady evicts by.

One table, in the service alone, is what makes a sample fetched at most once per node while it is
held (in flight, waiting for a rank, or cached), whichever local rank asks for it: no table is
shared between processes, so there is no cross-process lock. Sizes are in the manifest, so a
sample's blocks are allocated before its GET. An entry held by a rank's window is outside the
cache's budget until its batch is handed out; then it is offered to the cache (:meth:`SampleTable.admit`),
so the arena holds the cache plus the windows, and :func:`arena_layout` sizes it for both.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from typing import Any

from delibench.loaders.node.arena import block_runs

__all__ = ["Entry", "FAILED", "FETCHING", "READY", "SampleTable", "arena_layout", "union_next_uses"]

#: An entry's states: its GET is under way, its bytes are in the arena, or its GET failed.
FETCHING, READY, FAILED = 0, 1, 2


def arena_layout(sizes: list[int], cache_size_bytes: int | None, cache_items: int | None, held_samples: int) -> tuple[int, int]:
    """``(block bytes, blocks)`` of an arena for samples of ``sizes``: the cache (``cache_size_bytes``,
    or ``cache_items`` of the largest sample) plus room for ``held_samples`` (the windows and the
    batches the workers hold) twice over, never more than the dataset for either part."""
    n = len(sizes)
    mean = sum(sizes) / max(1, n)
    # Blocks of about 1/16 of a sample: under 4 % lost to rounding, never fragmented.
    block = int(min(65536, max(256, 2 ** int(math.log2(max(1.0, mean / 16))))))
    blocks_of = [max(1, -(-s // block)) for s in sizes]
    dataset_blocks = sum(blocks_of)
    max_blocks = max(blocks_of, default=1)
    if cache_size_bytes is None:  # cache_items
        cache_blocks = min(dataset_blocks, (cache_items or 0) * max_blocks)
    else:
        cache_blocks = min(dataset_blocks, -(-cache_size_bytes // block) + min(n, cache_size_bytes // max(1, min(sizes, default=1)) + 1))
    headroom = min(dataset_blocks, 2 * held_samples * max_blocks)
    return block, max(1, cache_blocks + headroom)


def union_next_uses(now: list[list[int]], following: list[list[int]], epoch: int, ranks: int) -> list[list[float | None]]:
    """The next use of each position of each local rank's order ``now`` (epoch ``epoch``; ``following``
    is epoch ``epoch + 1``), on the clock of the node's ``ranks`` in lockstep.

    Position ``p`` of local rank ``i`` in epoch ``e`` happens at ``(e * L + p) * W + i``; a position's
    next use is the next access of the same sample by any local rank, in this epoch or the next
    (the stream :mod:`delibench.tuning.scale` replays for node scope); None: not within them.
    """
    w = ranks
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
    return nexts


class Entry:
    """One held sample: its blocks (as arena runs), state, error, references and whether it is cached."""

    __slots__ = ("blocks", "cached", "error", "key", "next_use", "refs", "runs", "size", "state")

    def __init__(self, key: int, size: int, blocks: list[int], block: int) -> None:
        self.key = key
        self.size = size
        self.blocks = blocks
        self.runs = block_runs(blocks, block, size)
        self.state = FETCHING
        self.error: tuple[str, str, str] | None = None
        self.refs = 0
        self.cached = False
        #: The union's next use after the latest lookup or hand-out (``inf``: not within the known
        #: orders); what a disk tier is told when the entry leaves the cache (LRU's victims carry none).
        self.next_use = math.inf


class SampleTable:
    """The held samples by key, the free blocks, and the cache's accounting and eviction policy.

    Every method runs under ``cond`` (the service's one lock); freeing blocks notifies it, since a
    walk or a batch may be waiting for room. ``spill`` (the service's disk tier, if any) is called
    with each READY entry that leaves the cache or is refused by it, before its blocks may be freed:
    it may take a reference to keep them while it writes them out.
    """

    def __init__(self, block: int, nblocks: int, cache_limit: float, item_limit: float, policy: Any, cond: threading.Condition,
                 spill: Callable[[Entry], None] | None = None) -> None:
        self.block = block
        self.nblocks = nblocks
        self.free: list[int] = list(range(nblocks - 1, -1, -1))  # a stack: recently freed reused first
        self.peak_blocks = 0
        self.cache_limit = cache_limit
        self.item_limit = item_limit
        self.policy = policy
        self.cache_bytes = 0
        self.cache_items = 0
        self.cache_peak = 0
        self.evictions = 0
        self.rejected = 0
        self.entries: dict[int, Entry] = {}
        self.cond = cond
        self.spill = spill

    def alloc(self, size: int) -> list[int] | None:
        """Blocks for ``size`` bytes, or None when the arena has not that many free."""
        need = max(1, -(-size // self.block))
        if len(self.free) < need:
            return None
        blocks = [self.free.pop() for _ in range(need)]
        used = self.nblocks - len(self.free)
        self.peak_blocks = max(self.peak_blocks, used)
        return blocks

    def add(self, key: int, size: int) -> Entry | None:
        """A new entry of sample ``key`` (state FETCHING) in the table, or None when there is no room yet."""
        blocks = self.alloc(size)
        if blocks is None:
            return None
        e = Entry(key, size, blocks, self.block)
        self.entries[key] = e
        return e

    def free_entry(self, e: Entry) -> None:
        """Drop ``e`` from the table and give its blocks back."""
        if self.entries.get(e.key) is e:
            del self.entries[e.key]
        self.free.extend(reversed(e.blocks))
        e.blocks = []
        self.cond.notify_all()

    def unref(self, e: Entry) -> None:
        """One holder less; an entry neither held, cached nor in flight is freed."""
        e.refs -= 1
        if e.refs <= 0 and not e.cached and e.state != FETCHING:
            self.free_entry(e)

    def touch(self, e: Entry, next_use: float | None) -> None:
        """A lookup hit ``e``: its next use is now ``next_use`` (the cache's policy told, if cached)."""
        e.next_use = math.inf if next_use is None else float(next_use)
        if e.cached:
            self.policy.touch(e.key, e.next_use)

    def admit(self, e: Entry, next_use: float | None) -> None:
        """Offer ``e`` (just handed out) to the cache, evicting what the policy prefers to lose."""
        when = e.next_use = math.inf if next_use is None else float(next_use)
        if e.size > self.cache_limit or self.item_limit < 1:
            self._refuse(e)
            return
        while self.cache_bytes + e.size > self.cache_limit or self.cache_items + 1 > self.item_limit:
            victim, victim_use = self.policy.victim()
            if not self.policy.admits(when, victim_use):
                self._refuse(e)
                return
            self.evict(victim)
        e.cached = True
        self.policy.add(e.key, when)
        self.cache_bytes += e.size
        self.cache_items += 1
        self.cache_peak = max(self.cache_peak, self.cache_bytes)

    def evict(self, key: Any) -> None:
        """Take sample ``key`` out of the cache; free it unless a rank still holds it or its GET is under way."""
        e = self.entries[key]
        e.cached = False
        self.policy.remove(key)
        self.cache_bytes -= e.size
        self.cache_items -= 1
        self.evictions += 1
        if self.spill is not None and e.state == READY:
            self.spill(e)
        if e.refs <= 0 and e.state != FETCHING:
            self.free_entry(e)

    def _refuse(self, e: Entry) -> None:
        """The cache did not take ``e`` (too large, or the policy needs what it holds sooner)."""
        self.rejected += 1
        if self.spill is not None and e.state == READY:
            self.spill(e)
