"""Cache hit-rate simulation: replay the known sampler orders through the real ``ByteBudgetCache``.

The sampler order of every (epoch, rank) is a pure function of the seed, so the hit rate of a
(cache size in bytes or items, eviction: ``lru``, ``fifo`` or ``belady``, world size, order)
configuration can be computed without a byte of I/O,
in milliseconds for small datasets. The tuner uses it to screen configurations (as the miss rate
of the analytic wait model) before paying for a measured trial. There is deliberately no second
cache implementation here: the very class the DELI loader uses makes the decisions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from delibench.errors import UsageError
from delibench.loaders.cache import ByteBudgetCache
from delibench.loaders.sampler import epoch_order, next_use

__all__ = ["CacheSimulator", "SimResult", "SizedBlob", "next_uses", "simulate_hit_rate"]


class SizedBlob(bytes):
    """An empty ``bytes`` that reports the size of the sample it stands for.

    ``ByteBudgetCache`` only reads ``len(data)``; allocating real buffers for every simulated miss
    would cost as much memory as the cache being simulated. Every replay of the cache (this
    simulator, ``tuning.scale``'s node replay) offers it these.
    """

    def __new__(cls, size: int) -> SizedBlob:
        obj = super().__new__(cls, b"")
        obj.size = size  # type: ignore[attr-defined]
        return obj

    def __len__(self) -> int:
        return self.size  # type: ignore[attr-defined,no-any-return]


@dataclass(frozen=True, slots=True)
class SimResult:
    """Simulated cache behaviour of one configuration, summed over the simulated ranks.

    Attributes:
        hit_rate: Hits over lookups, all epochs (epoch 0 is always cold).
        epoch_hit_rates: Hit rate of each epoch.
        steady_hit_rate: Mean hit rate of epochs >= 1 (the warm cache), or of epoch 0 if only one.
        hits: Lookups served from the cache.
        misses: Lookups that needed a fetch.
        evictions: Items evicted to respect the budget.
        peak_bytes: Largest occupancy of any simulated rank's cache.
    """

    hit_rate: float
    epoch_hit_rates: tuple[float, ...]
    steady_hit_rate: float
    hits: int
    misses: int
    evictions: int
    peak_bytes: int

    @property
    def steady_miss_rate(self) -> float:
        """1 - steady hit rate: the share of samples the warm loader must still fetch."""
        return 1.0 - self.steady_hit_rate

    @property
    def last_epoch_miss_rate(self) -> float:
        """Miss rate of the last simulated epoch."""
        return 1.0 - self.epoch_hit_rates[-1]


def next_uses(streams: Sequence[Sequence[int]]) -> list[list[float | None]]:
    """For each access of each stream (epoch), the global position of the same sample's next access.

    Positions count over the streams concatenated (a global clock); None: never used again. This
    is what a clairvoyant (Belady) cache is told, as the DELI loader knows its sampler's order.
    """
    flat = [i for s in streams for i in s]
    out: list[float | None] = [None] * len(flat)
    last_seen: dict[int, int] = {}
    for pos in range(len(flat) - 1, -1, -1):
        out[pos] = last_seen.get(flat[pos])
        last_seen[flat[pos]] = pos
    result, start = [], 0
    for s in streams:
        result.append(out[start : start + len(s)])
        start += len(s)
    return result


class CacheSimulator:
    """Replays one dataset's sampler orders through ``ByteBudgetCache`` for many cache configurations.

    Orders are computed once per simulator and reused; results are memoised per configuration.

    Args:
        sizes: Bytes of every sample, in manifest order (``[s.size_bytes for s in manifest.samples]``).
        epochs: Epochs to replay.
        seed: The run's seed.
        world_size: Ranks; each rank has its own cache of the full budget.
        order: ``shuffle`` or ``locality`` (see ``delibench.loaders.sampler.epoch_order``).
        exchange_fraction: For ``locality``: share exchanged across ranks per epoch.
        drop_last: As the sampler's.
        max_samples_per_epoch: Replay only this many samples of each epoch per rank (a trial that
            runs a slice of every epoch); None = whole epochs.
        ranks: Ranks to simulate (None = all).

    Raises:
        UsageError: No samples, negative sizes or a bad epoch count.
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        epochs: int = 2,
        seed: int = 0,
        world_size: int = 1,
        order: str = "shuffle",
        exchange_fraction: float = 0.0,
        drop_last: bool = False,
        max_samples_per_epoch: int | None = None,
        ranks: Sequence[int] | None = None,
    ) -> None:
        if not sizes:
            raise UsageError("the simulator needs at least one sample")
        if any(s < 0 for s in sizes):
            raise UsageError("sample sizes must not be negative")
        if epochs < 1:
            raise UsageError(f"simulate at least one epoch, got {epochs}")
        if max_samples_per_epoch is not None and max_samples_per_epoch < 1:
            raise UsageError(f"max samples per epoch must be at least 1, got {max_samples_per_epoch}")
        self.sizes = [int(s) for s in sizes]
        self.epochs = epochs
        self.ranks = tuple(range(world_size)) if ranks is None else tuple(ranks)
        # orders[rank][epoch] = the (sliced) visiting order.
        # One epoch more than replayed: the DELI loader knows the next epoch's order when it decides
        # evictions in the last one, and so must the simulation.
        full = {
            r: [epoch_order(len(self.sizes), e, seed, r, world_size, order, exchange_fraction, drop_last) for e in range(epochs + 1)]
            for r in self.ranks
        }
        self._orders = {r: [o[:max_samples_per_epoch] for o in full[r][:epochs]] for r in self.ranks}
        # Next-use time of each access on a global clock (position over the concatenated epochs):
        # what a clairvoyant (Belady) cache is told, as the DELI loader knows it.
        self._next = {r: next_uses([*self._orders[r], full[r][epochs]])[:epochs] for r in self.ranks}
        self._memo: dict[tuple[int | None, str, int | None], SimResult] = {}


    def run(self, cache_size_bytes: int | None, eviction: str = "lru", *, cache_items: int | None = None) -> SimResult:
        """Simulate one configuration (memoised per simulator).

        Args:
            cache_size_bytes: Byte budget of each rank's cache; None when ``cache_items`` sets it.
            eviction: ``lru``, ``fifo``, ``belady`` or another registered policy.
            cache_items: Item budget instead of bytes (the deli loader's ``cache_items``).

        Raises:
            UsageError: Both budgets given, or neither.
        """
        if (cache_size_bytes is None) == (cache_items is None):
            raise UsageError("give exactly one cache budget: cache_size_bytes or cache_items")
        key = (None if cache_size_bytes is None else int(cache_size_bytes), eviction,
               None if cache_items is None else int(cache_items))
        if key not in self._memo:
            self._memo[key] = self._run(*key)
        return self._memo[key]

    def _run(self, cache_size_bytes: int | None, eviction: str = "lru", cache_items: int | None = None) -> SimResult:
        hits_per_epoch = [0] * self.epochs
        lookups_per_epoch = [0] * self.epochs
        evictions = peak = 0
        blobs: dict[int, SizedBlob] = {}
        for r in self.ranks:
            cache = ByteBudgetCache(cache_size_bytes, eviction, capacity_items=cache_items)
            hits_before = 0
            for e, (order, nexts) in enumerate(zip(self._orders[r], self._next[r])):
                for idx, nxt in zip(order, nexts):
                    if cache.get(idx, nxt) is None:
                        size = self.sizes[idx]
                        blob = blobs.get(size)
                        if blob is None:
                            blob = blobs[size] = SizedBlob(size)
                        cache.put(idx, blob, nxt)
                # NOTE: hits come from the cache's own counters, not from a second bookkeeping.
                hits_now = cache.stats().hits
                hits_per_epoch[e] += hits_now - hits_before
                lookups_per_epoch[e] += len(order)
                hits_before = hits_now
            st = cache.stats()
            evictions += st.evictions
            peak = max(peak, st.peak_bytes)
        rates = tuple(h / n if n else 0.0 for h, n in zip(hits_per_epoch, lookups_per_epoch))
        steady = rates[1:] or rates[:1]
        hits, lookups = sum(hits_per_epoch), sum(lookups_per_epoch)
        return SimResult(
            hit_rate=hits / lookups if lookups else 0.0,
            epoch_hit_rates=rates,
            steady_hit_rate=sum(steady) / len(steady),
            hits=hits,
            misses=lookups - hits,
            evictions=evictions,
            peak_bytes=peak,
        )


def simulate_hit_rate(
    sizes: Sequence[int],
    cache_size_bytes: int | None,
    eviction: str = "lru",
    *,
    cache_items: int | None = None,
    **kwargs: object,
) -> SimResult:
    """One-shot form of :class:`CacheSimulator` (``kwargs`` are its keyword arguments)."""
    return CacheSimulator(sizes, **kwargs).run(cache_size_bytes, eviction, cache_items=cache_items)  # type: ignore[arg-type]
