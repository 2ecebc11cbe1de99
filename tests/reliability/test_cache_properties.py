"""ByteBudgetCache against reference models: random puts, gets, discards (both policies, with and
without the disk tier), plus cache integrity in a real loader: corrupted disk-tier files and a full disk.
"""

from __future__ import annotations

import errno
import os
import subprocess
import tempfile
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delibench.loaders.cache import ByteBudgetCache
from delibench.loaders.deli import DeliLoader
from delibench.manifest import checksum
from delibench.loaders.testing import Corpus, make_context

from .conftest import assert_exact, collect

KEYS = 12

_ops = st.lists(
    st.one_of(
        st.tuples(st.just("get"), st.integers(0, KEYS - 1), st.integers(0, 50)),
        st.tuples(st.just("put"), st.integers(0, KEYS - 1), st.integers(0, 50)),
        st.tuples(st.just("discard"), st.integers(0, KEYS - 1), st.just(0)),
    ),
    max_size=80,
)


def _blob(key: int, sizes: list[int]) -> bytes:
    """The (immutable) content of sample ``key``: what the loader would cache for it."""
    return bytes([(key * 37 + i) % 256 for i in range(sizes[key])])


@settings(max_examples=120, deadline=None)
@given(capacity=st.integers(0, 4000), sizes=st.lists(st.integers(1, 1500), min_size=KEYS, max_size=KEYS), ops=_ops)
def test_lru_memory_tier_matches_reference_model(capacity: int, sizes: list[int], ops: list[tuple[str, int, int]]) -> None:
    cache = ByteBudgetCache(capacity, "lru")
    model: OrderedDict[int, int] = OrderedDict()  # key -> size, least recently used first
    hits = misses = evictions = rejected = 0
    for op, key, when in ops:
        if op == "get":
            got = cache.get(key, when)
            if key in model:
                hits += 1
                model.move_to_end(key)
                assert got == _blob(key, sizes)
            else:
                misses += 1
                assert got is None
        elif op == "put":
            admitted = cache.put(key, _blob(key, sizes), when)
            if key in model:
                model.move_to_end(key)
                assert admitted
            elif sizes[key] > capacity:
                rejected += 1
                assert not admitted
            else:
                while sum(model.values()) + sizes[key] > capacity:
                    model.popitem(last=False)
                    evictions += 1
                model[key] = sizes[key]
                assert admitted
        else:
            cache.discard(key)
            model.pop(key, None)
        assert cache.current_bytes == sum(model.values()) <= capacity
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.evictions, stats.rejected) == (hits, misses, evictions, rejected)
    assert stats.items == len(model) and stats.peak_bytes <= capacity


@settings(max_examples=60, deadline=None)
@given(
    capacity=st.integers(0, 3000),
    disk_capacity=st.integers(0, 5000),
    policy=st.sampled_from(["lru", "belady"]),
    sizes=st.lists(st.integers(1, 1500), min_size=KEYS, max_size=KEYS),
    ops=_ops,
)
def test_two_tiers_never_exceed_budgets_or_return_wrong_bytes(
    capacity: int, disk_capacity: int, policy: str, sizes: list[int], ops: list[tuple[str, int, int]]
) -> None:
    with tempfile.TemporaryDirectory() as disk_dir:
        sums = {k: checksum(_blob(k, sizes)) for k in range(KEYS)}
        cache = ByteBudgetCache(capacity, policy, disk_dir=disk_dir, disk_capacity_bytes=disk_capacity, checksums=sums)
        gets = hits = 0
        for op, key, when in ops:
            if op == "get":
                gets += 1
                got = cache.get(key, when)
                if got is not None:
                    hits += 1
                    assert got == _blob(key, sizes), "wrong bytes returned"
            elif op == "put":
                if cache.put(key, _blob(key, sizes), when):
                    assert key in cache
            else:
                cache.discard(key)
                assert key not in cache
            stats = cache.stats()
            assert stats.current_bytes <= capacity and stats.disk_bytes <= disk_capacity
            on_disk = sum(p.stat().st_size for p in Path(disk_dir).glob("*.bin"))
            assert on_disk == stats.disk_bytes, "disk-tier accounting differs from the files"
        stats = cache.stats()
        assert stats.hits == hits and stats.hits + stats.misses == gets
        assert stats.peak_bytes <= capacity and stats.disk_peak_bytes <= disk_capacity
        assert stats.corrupt_count == 0
        cache.close()
        assert not list(Path(disk_dir).glob("*.bin"))


def test_corrupted_disk_cache_file_is_refetched_not_used(rel_local: Corpus, tmp_path: Path) -> None:
    n = len(rel_local.manifest)
    total = sum(e.size_bytes for e in rel_local.manifest.samples)
    cache_dir = tmp_path / "tier"
    ctx = make_context(rel_local, batch_size=8, num_workers=1)
    # NOTE: no look-ahead into epoch 1: its walk would read cache files before they are damaged.
    with DeliLoader(ctx, cache_size=2000, cache_tier="disk", cache_dir=str(cache_dir), disk_cache_size=total,
                    prefetch_across_epochs=False) as loader:
        collect(loader, 0)
        files = sorted(cache_dir.glob("*.bin"))
        assert len(files) >= n // 2
        for path in files[:10]:  # same size, different bytes: only the checksum can tell
            data = bytearray(path.read_bytes())
            data[0] ^= 0xFF
            path.write_bytes(bytes(data))
        before = loader.stats().requests_count
        indices, items, _, _ = collect(loader, 1)
        refetched = loader.stats().requests_count - before
        corrupt = loader.cache.stats().corrupt_count
    assert_exact(rel_local, indices, items)
    assert corrupt == 10
    assert refetched >= corrupt  # each corrupt file cost a fetch instead of delivering bad bytes


def _mount_tmpfs(path: Path, size: str) -> bool:
    if os.geteuid() != 0:
        return False
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    return result.returncode == 0


def test_full_disk_stops_disk_caching_not_training(rel_local: Corpus, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A disk tier on a 64 KiB tmpfs (real ENOSPC) told it may use far more: the epochs go on."""
    total = sum(e.size_bytes for e in rel_local.manifest.samples)
    tier = tmp_path / "tiny"
    mounted = _mount_tmpfs(tier, "64k")
    if not mounted:  # not root: emulate the full disk at the write call
        tier.mkdir()
        real = Path.write_bytes

        def full(self: Path, data: Any) -> int:
            if self.parent == tier:
                raise OSError(errno.ENOSPC, "No space left on device")
            return real(self, data)

        monkeypatch.setattr(Path, "write_bytes", full)
    try:
        ctx = make_context(rel_local, batch_size=8, num_workers=1, epochs=2)
        with DeliLoader(ctx, cache_size=2000, cache_tier="disk", cache_dir=str(tier), disk_cache_size=10 * total) as loader:
            for epoch in range(2):
                indices, items, _, _ = collect(loader, epoch)
                assert_exact(rel_local, indices, items)
            stats = loader.cache.stats()
        assert stats.disk_write_errors == 1 and stats.disk_disabled
        assert not list(tier.glob("*.tmp")), "a partial write was left behind"
    finally:
        if mounted:
            subprocess.run(["umount", str(tier)], check=False)
