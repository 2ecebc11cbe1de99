"""ByteBudgetCache: hard budget (bytes or items), LRU, FIFO and Belady, admission, disk tier with checksums, thread safety."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delibench.errors import UsageError
from delibench.loaders.cache import ByteBudgetCache, make_policy, policy_names, simulate
from delibench.loaders.sampler import epoch_order
from delibench.manifest import checksum


@settings(max_examples=80, deadline=None)
@given(
    capacity=st.integers(0, 5000),
    policy=st.sampled_from(["lru", "fifo", "belady"]),
    ops=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 3000), st.integers(0, 100)), max_size=120),
)
def test_peak_never_exceeds_budget(capacity: int, policy: str, ops: list[tuple[int, int, int]]) -> None:
    cache = ByteBudgetCache(capacity, policy)
    for key, size, when in ops:
        if cache.get(key, when) is None:
            admitted = cache.put(key, b"x" * size, when)
            assert not admitted or size <= capacity
        assert cache.current_bytes <= capacity
    stats = cache.stats()
    assert stats.peak_bytes <= capacity
    assert stats.current_bytes == sum(cache.sizes().values())


def test_lru_evicts_least_recently_used() -> None:
    cache = ByteBudgetCache(300, "lru")
    for key in "abc":
        cache.put(key, b"x" * 100)
    assert cache.get("a") is not None  # a becomes most recent
    cache.put("d", b"x" * 100)
    assert "b" not in cache and {"a", "c", "d"} <= {k for k in "abcd" if k in cache}
    assert cache.stats().evictions == 1


def test_too_large_item_is_not_admitted() -> None:
    cache = ByteBudgetCache(100, "lru")
    cache.put("small", b"x" * 60)
    assert not cache.put("big", b"x" * 101)
    assert "small" in cache and cache.stats().rejected == 1


def test_belady_evicts_furthest_and_refuses_late_newcomers() -> None:
    cache = ByteBudgetCache(200, "belady")
    cache.put("soon", b"x" * 100, next_use=1)
    cache.put("late", b"x" * 100, next_use=50)
    assert cache.put("mid", b"x" * 100, next_use=10)  # evicts "late"
    assert "late" not in cache and "soon" in cache
    assert not cache.put("never", b"x" * 100, next_use=None)  # used after everything cached
    assert "mid" in cache and "soon" in cache


def test_belady_beats_or_equals_lru_over_three_epochs() -> None:
    n, sizes = 400, [1000] * 400
    for order_kind in ("shuffle", "locality"):
        orders = [epoch_order(n, e, 5, 0, 1, order_kind) for e in range(3)]
        for fraction in (0.1, 0.3, 0.6):
            capacity = int(fraction * n * 1000)
            lru = simulate(orders, sizes, capacity, "lru")
            belady = simulate(orders, sizes, capacity, "belady")
            assert belady.hit_rate >= lru.hit_rate
            # Belady keeps about the budget's share of the dataset hot in epochs 2 and 3.
            assert belady.hits >= 0.9 * fraction * n * 2


def test_policy_registry_suggests_names() -> None:
    assert {"lru", "fifo", "belady"} <= set(policy_names())
    with pytest.raises(UsageError, match="did you mean 'belady'"):
        make_policy("belday")


def test_disk_tier_spills_verifies_and_drops_corrupt(tmp_path) -> None:
    blobs = {k: bytes([k]) * 100 for k in range(4)}
    sums = {k: checksum(v) for k, v in blobs.items()}
    cache = ByteBudgetCache(200, "lru", disk_dir=tmp_path, disk_capacity_bytes=250, checksums=sums)
    for key, data in blobs.items():
        cache.put(key, data)
    stats = cache.stats()
    assert stats.current_bytes == 200 and stats.disk_bytes == 200 and stats.disk_peak_bytes <= 250
    assert cache.get(0) == blobs[0] and cache.stats().disk_hits == 1  # spilled, read back, checked
    # Corrupt the file of key 1 (still spilled): it is dropped and reported as a miss.
    files = {p for p in tmp_path.iterdir()}
    cache_file = next(p for p in files if p.read_bytes() == blobs[1])
    cache_file.write_bytes(b"\xff" * 100)
    assert cache.get(1) is None
    assert cache.stats().corrupt_count == 1 and not cache_file.exists()
    cache.close()
    assert not list(tmp_path.iterdir())


def test_thread_safe_under_concurrent_use() -> None:
    cache = ByteBudgetCache(5000, "belady")
    errors: list[BaseException] = []

    def work(seed: int) -> None:
        try:
            for i in range(2000):
                key = (i * 7 + seed) % 97
                if cache.get(key, i) is None:
                    cache.put(key, b"y" * 100, i + 50)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    stats = cache.stats()
    assert stats.peak_bytes <= 5000 and stats.hits + stats.misses == 8000


def test_fifo_evicts_oldest_and_hits_do_not_renew() -> None:
    cache = ByteBudgetCache(300, "fifo")
    for key in "abc":
        cache.put(key, b"x" * 100)
    assert cache.get("a") is not None  # under LRU this would save "a"; FIFO still evicts it first
    cache.put("d", b"x" * 100)
    assert "a" not in cache and {"b", "c", "d"} <= {k for k in "abcd" if k in cache}
    cache.put("e", b"x" * 100)
    assert "b" not in cache and cache.stats().evictions == 2


@settings(max_examples=80, deadline=None)
@given(
    items=st.integers(0, 12),
    capacity=st.one_of(st.none(), st.integers(0, 5000)),
    policy=st.sampled_from(["lru", "fifo", "belady"]),
    ops=st.lists(st.tuples(st.integers(0, 30), st.integers(0, 1500), st.integers(0, 100)), max_size=120),
)
def test_item_budget_is_a_hard_limit(items: int, capacity: int | None, policy: str, ops: list[tuple[int, int, int]]) -> None:
    """``capacity_items`` bounds the count whatever the sizes; with a byte budget too, both hold."""
    cache = ByteBudgetCache(capacity, policy, capacity_items=items)
    for key, size, when in ops:
        if cache.get(key, when) is None:
            cache.put(key, b"x" * size, when)
        assert len(cache) <= items
        assert capacity is None or cache.current_bytes <= capacity
    stats = cache.stats()
    assert stats.peak_items <= items and stats.items == len(cache)
    assert capacity is None or stats.peak_bytes <= capacity


def test_item_budget_counts_items_not_bytes() -> None:
    cache = ByteBudgetCache(None, "lru", capacity_items=2)
    cache.put("big", b"x" * 10_000_000)
    cache.put("small", b"x")
    cache.put("third", b"xy")
    assert "big" not in cache and len(cache) == 2 and cache.capacity_bytes is None
    assert not ByteBudgetCache(None, "fifo", capacity_items=0).put("a", b"x")  # 0 items: no cache
    with pytest.raises(UsageError, match="needs a budget"):
        ByteBudgetCache(None, "lru")
    with pytest.raises(UsageError, match="negative"):
        ByteBudgetCache(None, "lru", capacity_items=-1)
