"""The deli loader: byte budgets from 0 to the whole dataset, zero GETs when cached, locality, errors, shutdown."""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

import pytest

from delibench.errors import FetchError, UsageError
from delibench.loaders.deli import DeliLoader
from delibench.testbed.profiles import LinkProfile
from delibench.loaders.testing import Corpus, leftovers, make_context, resource_snapshot


def run_epoch(loader: Any, epoch: int, corpus: Corpus) -> list[int]:
    seen = []
    for batch in loader.iter_epoch(epoch):
        seen.extend(int(i) for i in batch.indices)
        assert list(batch.inputs) == [corpus.expected(int(i)) for i in batch.indices]
    return seen


@pytest.mark.parametrize(
    "cache_size,depth",
    [(0, 4), (2500, 3), (6000, 8)],  # nothing, less than one batch (5 samples), 10 % of the dataset
    ids=["zero", "below-one-batch", "ten-percent"],
)
def test_budget_is_a_hard_limit(sized_corpus: Corpus, cache_size: int, depth: int) -> None:
    n = len(sized_corpus.manifest)
    with DeliLoader(make_context(sized_corpus, num_workers=1, epochs=3), cache_size=cache_size, prefetch_depth=depth,
                    concurrency=4) as loader:
        for epoch in range(3):
            assert sorted(run_epoch(loader, epoch, sized_corpus)) == list(range(n))
        stats = loader.stats()
        timeline = loader.occupancy_timeline()
    assert stats.cache_peak_bytes <= cache_size
    assert all(b <= cache_size for _, b in timeline)
    assert stats.prefetch_peak_bytes <= depth * 1000
    assert stats.cache_hits + stats.cache_misses == 3 * n
    assert stats.requests_count == stats.cache_misses  # every miss is exactly one GET
    if cache_size == 0:
        assert stats.cache_hits == 0 and stats.requests_count == 3 * n


@pytest.mark.parametrize("eviction", ["lru", "fifo", "belady"])
def test_whole_dataset_cache_makes_later_epochs_free_locally(sized_corpus: Corpus, eviction: str) -> None:
    n = len(sized_corpus.manifest)
    with DeliLoader(make_context(sized_corpus, num_workers=0), cache_size=n * 1000, eviction=eviction) as loader:
        run_epoch(loader, 0, sized_corpus)
        assert loader.stats().requests_count == n  # never fetched twice in an epoch
        run_epoch(loader, 1, sized_corpus)
        stats = loader.stats()
    assert stats.requests_count == n and stats.cache_hits == n and stats.cache_evictions == 0


@pytest.mark.s3
def test_epoch_two_issues_zero_gets_on_the_wire(s3_corpus: Corpus, shaped_s3: Any) -> None:
    link = shaped_s3("local")
    n = len(s3_corpus.manifest)
    with DeliLoader(make_context(s3_corpus, num_workers=2), cache_size="1MiB", concurrency=8) as loader:
        run_epoch(loader, 0, s3_corpus)
        after_first = link.stats().requests
        run_epoch(loader, 1, s3_corpus)
        assert link.stats().requests == after_first
        stats = loader.stats()
    assert stats.requests_count == n and stats.cache_hits == n
    assert stats.fetch_latency_s_p50 is not None and stats.fetch_latency_s_p99 >= stats.fetch_latency_s_p50
    assert stats.prefetch_lead_mean is not None and stats.bytes_read_remote == s3_corpus.manifest.total_bytes


def test_locality_order_keeps_epoch_two_hits_high_for_world_two(sized_corpus: Corpus) -> None:
    n = len(sized_corpus.manifest)
    budget = n // 2 * 1000  # each rank can hold its own half

    def epoch_two_hit_rate(order: str) -> float:
        hits = []
        for rank in range(2):
            ctx = make_context(sized_corpus, num_workers=0, rank=rank, world_size=2, order=order)
            with DeliLoader(ctx, cache_size=budget, eviction="belady") as loader:
                run_epoch(loader, 0, sized_corpus)
                before = loader.stats()
                run_epoch(loader, 1, sized_corpus)
                after = loader.stats()
            hits.append((after.cache_hits - before.cache_hits) / (n // 2))
        return sum(hits) / 2

    locality, shuffle = epoch_two_hit_rate("locality"), epoch_two_hit_rate("shuffle")
    assert locality == 1.0
    assert shuffle < 0.75  # a rank's next-epoch share overlaps its last one by about half


def test_disk_tier_serves_spilled_samples(sized_corpus: Corpus, tmp_path: Path) -> None:
    n = len(sized_corpus.manifest)
    with DeliLoader(
        make_context(sized_corpus, num_workers=1), cache_size=10_000, cache_tier="disk",
        cache_dir=str(tmp_path / "spill"), disk_cache_size=n * 1000,
    ) as loader:
        run_epoch(loader, 0, sized_corpus)
        run_epoch(loader, 1, sized_corpus)
        stats = loader.stats()
        assert stats.cache_peak_bytes <= 10_000
        # The record's figures. Not <= cache_hits here: this context does not know the last epoch, so
        # epoch 2 was looked up ahead (partly from disk) and those hits were never delivered.
        # The cache's own counter, read later, can only be larger: the look-ahead goes on in the background.
        assert 0 < stats.disk_hits <= loader.cache.stats().disk_hits
        assert 0 < stats.disk_peak_bytes <= n * 1000 and stats.disk_write_errors == stats.disk_corrupt_count == 0
    assert stats.requests_count == n  # memory + disk held everything
    assert not list((tmp_path / "spill").iterdir())  # close removed the spilled files


def test_ranks_sharing_one_cache_dir_keep_their_own_files(sized_corpus: Corpus, tmp_path: Path) -> None:
    """Two ranks given the same cache_dir (one node, one local disk): each spills into its own folder,
    so neither overwrites the other's files nor deletes them when it closes first."""
    n = len(sized_corpus.manifest)
    spill = tmp_path / "spill"
    loaders = [DeliLoader(make_context(sized_corpus, num_workers=0, world_size=2, rank=r), scope="rank", cache_size=5_000,
                          cache_tier="disk", cache_dir=str(spill), disk_cache_size=n * 1000) for r in (0, 1)]
    try:
        for epoch in (0, 1):
            for loader in loaders:
                run_epoch(loader, epoch, sized_corpus)
        assert sorted(p.name for p in spill.iterdir()) == ["rank-0-of-2", "rank-1-of-2"]
        assert all(loader.cache.stats().disk_hits > 0 for loader in loaders)
        loaders[0].close()
        assert not list((spill / "rank-0-of-2").iterdir())
        assert list((spill / "rank-1-of-2").iterdir())  # rank 0's close left rank 1's files
        run_epoch(loaders[1], 2, sized_corpus)  # bytes checked against the source (its disk hits may all be look-ahead already counted)
    finally:
        for loader in loaders:
            loader.close()


def test_fetch_error_names_the_key_and_leaves_nothing_behind(sized_corpus: Corpus, tmp_path: Path) -> None:
    from delibench.loaders.testing import Corpus as C

    root = tmp_path / "copy"
    shutil.copytree(sized_corpus.url, root)
    victim = sized_corpus.manifest.samples[17].key
    (root / victim).unlink()
    corpus = C(str(root), sized_corpus.manifest)
    before = resource_snapshot()
    loader = DeliLoader(make_context(corpus, num_workers=2), cache_size="1MiB", concurrency=4)
    with pytest.raises(FetchError) as info:
        run_epoch(loader, 0, corpus)
    assert info.value.key == victim and victim in str(info.value)
    loader.close()
    threads, children = leftovers(before)
    assert not threads and not children


@pytest.mark.parametrize("persistent", [True, False], ids=["persistent-workers", "fork-per-epoch"])
def test_fetch_error_while_workers_start_keeps_the_pipeline_sound(
    sized_corpus: Corpus, tmp_path: Path, persistent: bool
) -> None:
    """A sample that fails while the DataLoader primes its worker (inside ``iter()``).

    Regression: the error used to escape a half-built DataLoader iterator that nobody shut
    down; the garbage collector later closed its pipes while a queue feeder thread closed
    them again (EBADF, then ``SystemError`` in an unrelated ``compile()`` at exit).
    """
    from delibench.loaders.pipeline import context_order
    from delibench.loaders.testing import Corpus as C

    root = tmp_path / "copy"
    shutil.copytree(sized_corpus.url, root)
    corpus = C(str(root), sized_corpus.manifest)
    ctx = make_context(corpus, num_workers=1)
    order = context_order(ctx, 0)
    victim = sized_corpus.manifest.samples[order[ctx.batch_size + 2]].key  # 2nd batch: pulled while priming
    (root / victim).rename(root / "aside")
    before = resource_snapshot()
    loader = DeliLoader(ctx, cache_size=0, concurrency=4, persistent_workers=persistent)
    delivered: list[int] = []
    with pytest.raises(FetchError) as info:
        for batch in loader.iter_epoch(0):
            delivered.extend(int(i) for i in batch.indices)
    assert info.value.key == victim
    assert delivered == order[: ctx.batch_size], "the batch before the failure must be delivered, in order"
    workers = resource_snapshot()[1] - before[1]
    assert len(workers) == (1 if persistent else 0)  # kept for the next epoch, or already gone
    (root / "aside").rename(root / victim)
    assert sorted(run_epoch(loader, 1, corpus)) == sorted(order)
    if persistent:
        assert resource_snapshot()[1] - before[1] == workers, "the failed epoch lost its decode worker"
    loader.close()
    threads, children = leftovers(before)  # info (and its traceback) still alive: nothing may hang on it
    assert not threads and not children


@pytest.mark.parametrize(
    "options,match",
    [
        ({"cache_sise": 1}, "did you mean 'cache_size'"),
        ({"cache_size": "12 parsecs"}, "unknown size unit"),
        ({"eviction": "fifa"}, "unknown eviction"),
        ({"cache_size": "1MiB", "cache_items": 2048}, "cache_size or cache_items, not both"),
        ({"cache_items": -1}, "cache_items must be"),
        ({"prefetch": "window", "fetch_size": 50}, "fetch_size applies to prefetch=threshold"),
        ({"prefetch": "window", "fetch_size": 5, "fetch_threshold": 5}, "fetch_size and fetch_threshold apply"),
        ({"fetch_size": 50, "prefetch_depth": 64}, "prefetch_depth applies to prefetch=window"),
        ({"prefetch": "threshold", "prefetch_depth": 64}, "prefetch_depth applies to prefetch=window"),
        ({"prefetch": "burst"}, "unknown prefetch"),
        ({"fetch_threshold": 0}, "fetch_threshold must be"),
        ({"cache_tier": "disk"}, "disk_cache_size"),
        ({"prefetch_depth": 0}, "prefetch_depth"),
    ],
)
def test_bad_options_are_usage_errors(local_corpus: Corpus, options: dict, match: str) -> None:
    with pytest.raises(UsageError, match=match):
        DeliLoader(make_context(local_corpus), **options)


def test_size_strings_are_parsed(local_corpus: Corpus) -> None:
    loader = DeliLoader(make_context(local_corpus), cache_size="512MiB", disk_cache_size="1KiB", retry_deadline_s="2min")
    assert loader.options.cache_size_bytes == loader.options.cache_size == 512 * 1024**2
    assert loader.options.disk_cache_size == 1024 and loader.options.retry_deadline_s == 120.0
    loader.close()


def test_options_hold_parsed_values_and_only_validate() -> None:
    """Human strings are parsed at the edge (the loader's options); the dataclass holds bytes and seconds."""
    from delibench.loaders.deli import DeliOptions

    assert DeliOptions().cache_size_bytes == 2**30 and isinstance(DeliOptions().retry_deadline_s, float)
    assert DeliOptions(cache_items=2048).cache_size_bytes is None
    with pytest.raises(UsageError, match="cache_size must be"):
        DeliOptions(cache_size="1GiB")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="retry_deadline_s must be"):
        DeliOptions(retry_deadline_s="60s")  # type: ignore[arg-type]
    with pytest.raises(UsageError, match="disk_cache_size must not be negative"):
        DeliOptions(disk_cache_size=-1)


@pytest.mark.s3
@pytest.mark.slow
def test_deli_beats_naive_bucket_through_a_slow_link(s3_corpus: Corpus, shaped_s3: Any) -> None:
    from delibench.loaders.bucket import BucketLoader

    rtt_s = 0.05
    shaped_s3(LinkProfile(name="rtt50", rtt_s=rtt_s))
    n = len(s3_corpus.manifest)

    def epoch_time(loader: Any) -> float:
        with loader:
            start = time.perf_counter()
            run_epoch(loader, 0, s3_corpus)
            return time.perf_counter() - start

    bucket_s = epoch_time(BucketLoader(make_context(s3_corpus, num_workers=1)))
    deli_s = epoch_time(DeliLoader(make_context(s3_corpus, num_workers=1), concurrency=16, prefetch_depth=32))
    assert bucket_s >= n * rtt_s  # one round trip per sample, one after another
    assert deli_s < bucket_s


@pytest.mark.s3
def test_close_closes_its_s3_client_so_a_later_collection_schedules_nothing(s3_corpus: Corpus, s3_server: Any) -> None:
    """Regression: s3fs closes a dropped client from a GC finalizer, on the event loop of whatever
    thread trips the collector ('Task exception was never retrieved': its lock is bound to fsspec's loop)."""
    import asyncio
    import gc
    import threading

    loader = DeliLoader(make_context(s3_corpus, num_workers=0), cache_size=0, concurrency=4)
    assert sorted(run_epoch(loader, 0, s3_corpus)) == list(range(len(s3_corpus.manifest)))
    import psutil
    from urllib.parse import urlsplit

    fs = loader.source.fs
    store_port = urlsplit(s3_server.endpoint_url).port

    def open_to_store() -> int:
        return sum(1 for c in psutil.Process().net_connections(kind="tcp")
                   if c.raddr and c.raddr.port == store_port and c.status == psutil.CONN_ESTABLISHED)

    assert open_to_store() > 0  # the epoch's keep-alive connections, which close() must end
    loader.close()
    assert open_to_store() == 0, "close() left the client's HTTP session open"
    scheduled: list[Any] = []

    async def drop_and_collect() -> None:  # the collector fires in a thread running another loop
        nonlocal fs, loader
        asyncio.get_running_loop().set_exception_handler(lambda _loop, ctx: scheduled.append(ctx))
        fs = loader = None
        gc.collect()
        scheduled.extend(t for t in asyncio.all_tasks() if t is not asyncio.current_task())
        await asyncio.sleep(0.2)

    thread = threading.Thread(target=asyncio.run, args=(drop_and_collect(),))
    thread.start()
    thread.join()
    assert not scheduled, f"closing the dropped client was scheduled on a foreign loop: {scheduled}"


# -- the DELI paper's knobs: the threshold trigger, an item-counted cache, FIFO, the miss rate ----------


def test_prefetch_policies_resolve_from_the_options_given() -> None:
    from delibench.loaders.deli import DeliOptions

    assert DeliOptions().prefetch_policy == "window" and DeliOptions().prefetch_bound == 256
    assert DeliOptions(prefetch_depth=8).prefetch_bound == 8 and DeliOptions().threshold_trigger is None
    paper = DeliOptions(prefetch="threshold")  # the paper's "50/50" by default
    assert paper.threshold_trigger == (50, 50) and paper.prefetch_bound == 99
    assert DeliOptions(fetch_size=20).threshold_trigger == (20, 50)  # giving either one chooses the trigger
    assert DeliOptions(fetch_threshold=10, fetch_size=30).threshold_trigger == (30, 10)


@pytest.mark.parametrize(("fetch_size", "threshold", "released"), [
    (50, 50, [(0, 50), (1, 100), (50, 100), (51, 150), (99, 150), (100, 150), (101, 200)]),
    (30, 100, [(0, 120), (20, 120), (21, 150), (95, 210)]),  # bursts until the threshold is met
    (10, 1, [(0, 10), (9, 10), (10, 20)]),  # fetch only when nothing is left ahead
])
def test_threshold_trigger_releases_fetch_size_when_fewer_than_threshold_are_ahead(
    fetch_size: int, threshold: int, released: list[tuple[int, int]]
) -> None:
    """Position ``consumed``: what is released (may be fetched) is a whole number of bursts."""
    from delibench.loaders.prefetch import EpochPrefetcher

    walk = EpochPrefetcher(None, list(range(1000)), None, 1, 1, lambda pos: None,  # type: ignore[arg-type]
                           fetch_size=fetch_size, fetch_threshold=threshold)
    for consumed, limit in released:
        walk._consumed = consumed
        assert walk._limit() == limit
        assert limit - consumed <= threshold - 1 + fetch_size
    walk._consumed = 995
    assert walk._limit() == 1000  # never past the epoch's end


@pytest.mark.parametrize(("fetch_size", "threshold", "workers"), [(50, 50, 2), (3, 2, 1), (1, 1, 0), (5, 12, 2)],
                         ids=["paper-50-50", "small-bursts", "one-by-one", "threshold-above-size"])
def test_threshold_trigger_delivers_every_sample_once_byte_identical(
    sized_corpus: Corpus, fetch_size: int, threshold: int, workers: int
) -> None:
    n = len(sized_corpus.manifest)
    with DeliLoader(make_context(sized_corpus, num_workers=workers, epochs=3), cache_size=7000, concurrency=4,
                    fetch_size=fetch_size, fetch_threshold=threshold, eviction="fifo") as loader:
        for epoch in range(3):
            assert sorted(run_epoch(loader, epoch, sized_corpus)) == list(range(n))  # each once, bytes checked
        stats = loader.stats()
    assert stats.prefetch_peak_bytes <= (threshold - 1 + fetch_size) * 1000
    assert stats.cache_peak_bytes <= 7000
    assert stats.cache_hits + stats.cache_misses == 3 * n and stats.requests_count == stats.cache_misses
    assert stats.samples_requested == 3 * n and 0 <= stats.late_samples <= 3 * n


@pytest.mark.s3
def test_threshold_trigger_is_exact_over_seaweedfs(s3_corpus: Corpus) -> None:
    n = len(s3_corpus.manifest)
    with DeliLoader(make_context(s3_corpus, num_workers=2, epochs=2), cache_items=6, concurrency=4,
                    prefetch="threshold", fetch_size=4, fetch_threshold=3) as loader:
        for epoch in range(2):
            assert sorted(run_epoch(loader, epoch, s3_corpus)) == list(range(n))
        stats = loader.stats()
        assert loader.cache.stats().peak_items <= 6
    assert stats.requests_count == stats.cache_misses and stats.cache_hits + stats.cache_misses == 2 * n
    assert stats.samples_requested == 2 * n and stats.miss_rate is not None


@pytest.mark.parametrize("eviction", ["lru", "fifo", "belady"])
def test_cache_items_is_a_hard_limit_on_samples_held(local_corpus: Corpus, eviction: str) -> None:
    """Samples of uneven sizes: the budget counts them, not their bytes."""
    n = len(local_corpus.manifest)
    with DeliLoader(make_context(local_corpus, num_workers=1, epochs=3), cache_items=7, prefetch_depth=4,
                    eviction=eviction) as loader:
        counts = []
        for epoch in range(3):
            assert sorted(run_epoch(loader, epoch, local_corpus)) == list(range(n))
            counts.append(len(loader.cache))
        cache = loader.cache.stats()
        stats = loader.stats()
    assert cache.peak_items <= 7 and max(counts) <= 7 and cache.peak_items == 7
    assert loader.cache.capacity_bytes is None and stats.cache_hits + stats.cache_misses == 3 * n


def test_whole_dataset_counted_in_items_makes_later_epochs_free(sized_corpus: Corpus) -> None:
    n = len(sized_corpus.manifest)
    with DeliLoader(make_context(sized_corpus, num_workers=0), cache_items=n, eviction="fifo") as loader:
        run_epoch(loader, 0, sized_corpus)
        run_epoch(loader, 1, sized_corpus)
        stats = loader.stats()
    assert stats.requests_count == n and stats.cache_hits == n


def test_miss_rate_counts_samples_not_ready_when_their_batch_is_asked_for(sized_corpus: Corpus) -> None:
    """Nothing cached and one sample fetched ahead at a time: most of every batch is late."""
    n = len(sized_corpus.manifest)
    with DeliLoader(make_context(sized_corpus, num_workers=0), cache_size=0, prefetch_depth=1, concurrency=1,
                    prefetch_across_epochs=False) as loader:
        run_epoch(loader, 0, sized_corpus)
        stats = loader.stats()
    assert stats.samples_requested == n
    assert stats.miss_rate is not None and stats.miss_rate >= 0.8 - 1e-9  # at most 1 of each batch of 5 ready
    assert stats.miss_rate == stats.late_samples / n


def test_deli_loader_api_takes_an_item_budget(local_corpus: Corpus) -> None:
    from delibench.loaders.api import deli_loader
    from delibench.loaders.testing import checksum_decode

    with deli_loader(local_corpus.url, decode=checksum_decode, num_workers=0, batch_size=4, cache_items=5,
                     fetch_size=4, fetch_threshold=4) as loader:
        seen = [x for inputs, _ in loader for x in inputs]
        assert loader.loader.options.threshold_trigger == (4, 4) and loader.loader.cache.capacity_items == 5
    assert sorted(seen) == sorted(local_corpus.expected(i) for i in range(len(local_corpus.manifest)))
