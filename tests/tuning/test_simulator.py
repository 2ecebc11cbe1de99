"""The cache simulator against a brute-force replay of the same sampler orders."""

from __future__ import annotations

import random
from collections import OrderedDict

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delibench.errors import UsageError
from delibench.loaders.sampler import epoch_order
from delibench.tuning.simulator import CacheSimulator, simulate_hit_rate


def brute_queue(orders: list[list[int]], sizes: list[int] | None, capacity: int, *, renew: bool) -> list[int]:
    """Hits per epoch of a textbook queue cache with a byte budget (``sizes=None``: items of size 1,
    ``capacity`` slots): LRU when a hit ``renew``s its item, FIFO when it does not."""
    cache: OrderedDict[int, int] = OrderedDict()
    used = 0
    hits = []
    for order in orders:
        h = 0
        for idx in order:
            if idx in cache:
                h += 1
                if renew:
                    cache.move_to_end(idx)
                continue
            size = 1 if sizes is None else sizes[idx]
            if size > capacity:
                continue
            while used + size > capacity:
                used -= cache.popitem(last=False)[1]
            cache[idx] = size
            used += size
        hits.append(h)
    return hits


def brute_lru(orders: list[list[int]], sizes: list[int], capacity: int) -> list[int]:
    """Hits per epoch of a textbook LRU cache with a byte budget."""
    return brute_queue(orders, sizes, capacity, renew=True)


def brute_belady(orders: list[list[int]], slots: int) -> list[int]:
    """Hits per epoch of Belady's MIN with ``slots`` equal-sized slots (newcomers may bypass)."""
    flat = [i for o in orders for i in o]

    def next_use(pos: int, idx: int) -> float:
        for later in range(pos + 1, len(flat)):
            if flat[later] == idx:
                return later
        return float("inf")

    cache: set[int] = set()
    hits, pos = [], 0
    for order in orders:
        h = 0
        for idx in order:
            if idx in cache:
                h += 1
            elif slots > 0:
                if len(cache) < slots:
                    cache.add(idx)
                else:
                    far = max(cache, key=lambda k: next_use(pos, k))
                    if next_use(pos, far) > next_use(pos, idx):
                        cache.remove(far)
                        cache.add(idx)
            pos += 1
        hits.append(h)
    return hits


def brute_fifo(orders: list[list[int]], slots: int) -> list[int]:
    """Hits per epoch of a textbook FIFO cache of ``slots`` items (a hit does not renew an item)."""
    return brute_queue(orders, None, slots, renew=False)


def orders_for(n: int, epochs: int, seed: int, rank: int = 0, world: int = 1, limit: int | None = None) -> list[list[int]]:
    return [epoch_order(n, e, seed, rank, world)[:limit] for e in range(epochs)]


@pytest.mark.parametrize("capacity", [0, 5_000, 20_000, 60_000, 10**9])
def test_lru_matches_brute_force(capacity: int) -> None:
    rng = random.Random(3)
    sizes = [rng.randint(500, 2_000) for _ in range(60)]
    result = simulate_hit_rate(sizes, capacity, "lru", epochs=3, seed=7)
    hits = brute_lru(orders_for(60, 3, 7), sizes, capacity)
    assert [round(r * 60) for r in result.epoch_hit_rates] == hits
    assert result.hits == sum(hits)
    assert result.peak_bytes <= capacity


@pytest.mark.parametrize("slots", [0, 1, 10, 30, 59, 80])
def test_belady_matches_brute_force(slots: int) -> None:
    sizes = [1000] * 60
    result = simulate_hit_rate(sizes, slots * 1000, "belady", epochs=3, seed=11)
    assert [round(r * 60) for r in result.epoch_hit_rates] == brute_belady(orders_for(60, 3, 11), slots)


def test_sliced_epochs_and_multiple_ranks() -> None:
    rng = random.Random(5)
    sizes = [rng.randint(500, 2_000) for _ in range(50)]
    sim = CacheSimulator(sizes, epochs=2, seed=1, world_size=2, max_samples_per_epoch=10)
    result = sim.run(8_000, "lru")
    expected = [0, 0]
    for rank in (0, 1):
        for e, h in enumerate(brute_lru(orders_for(50, 2, 1, rank, 2, 10), sizes, 8_000)):
            expected[e] += h
    assert [round(r * 20) for r in result.epoch_hit_rates] == expected
    assert sim.run(8_000, "lru") is result  # memoised


def test_whole_dataset_in_cache_hits_every_warm_access() -> None:
    sizes = [1000] * 40
    r = simulate_hit_rate(sizes, 40_000, "lru", epochs=3)
    assert r.epoch_hit_rates == (0.0, 1.0, 1.0)
    assert r.steady_miss_rate == 0.0


@settings(max_examples=25, deadline=None)
@given(n=st.integers(5, 40), slots=st.integers(0, 45), seed=st.integers(0, 1000))
def test_belady_never_worse_than_lru(n: int, slots: int, seed: int) -> None:
    sizes = [100] * n
    lru = simulate_hit_rate(sizes, slots * 100, "lru", epochs=3, seed=seed)
    opt = simulate_hit_rate(sizes, slots * 100, "belady", epochs=3, seed=seed)
    assert opt.hits >= lru.hits


@pytest.mark.parametrize("slots", [0, 1, 10, 30, 59, 80])
def test_fifo_matches_brute_force_by_bytes_and_by_items(slots: int) -> None:
    """FIFO (the DELI paper's policy) predicted both with a byte budget and with an item budget."""
    sizes = [1000] * 60
    expected = brute_fifo(orders_for(60, 3, 13), slots)
    by_bytes = simulate_hit_rate(sizes, slots * 1000, "fifo", epochs=3, seed=13)
    assert [round(r * 60) for r in by_bytes.epoch_hit_rates] == expected
    rng = random.Random(slots)
    uneven = [rng.randint(500, 5_000) for _ in range(60)]  # an item budget ignores sizes
    by_items = simulate_hit_rate(uneven, None, "fifo", cache_items=slots, epochs=3, seed=13)
    assert [round(r * 60) for r in by_items.epoch_hit_rates] == expected


def test_item_budget_matches_lru_with_equal_slots() -> None:
    rng = random.Random(9)
    sizes = [rng.randint(500, 2_000) for _ in range(60)]
    sim = CacheSimulator(sizes, epochs=3, seed=7)
    result = sim.run(None, "lru", cache_items=20)
    hits = brute_lru(orders_for(60, 3, 7), [1] * 60, 20)
    assert [round(r * 60) for r in result.epoch_hit_rates] == hits
    assert sim.run(None, "lru", cache_items=20) is result
    with pytest.raises(UsageError, match="exactly one cache budget"):
        sim.run(20_000, "lru", cache_items=20)
    with pytest.raises(UsageError, match="exactly one cache budget"):
        sim.run(None, "lru")
