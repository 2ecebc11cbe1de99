"""deli's node service with a disk tier (``scope=node,cache_tier=disk``), on a real SeaweedFS bucket:
every rank's partition exactly once per epoch, the node's GETs (counted at the link) the dataset once
while the arena caches a fifth of it, disk hits after the first epoch, the disk budget held (at the
end and sampled during the run), the tier's folder and ``/dev/shm`` clean after close or the
starter's death, and bad disk options as one-line errors.

The ranks of a "node" run as loaders in this process (threads), each with its own local rank; the
service they share is a real process started by local rank 0's loader (as in ``test_node_service``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from delibench.errors import UsageError
from delibench.loaders.deli import DeliLoader
from delibench.loaders.node import NodeDeliLoader
from delibench.loaders.node.config import node_disk_dir
from delibench.loaders.testing import Corpus, copy_corpus, make_context, make_corpus
from tests.loaders.test_node_service import _check_exact, _close, _job, _run, kill_the_starter, no_segments_left  # noqa: F401 - autouse

pytestmark = pytest.mark.timeout(180)

SAMPLES, SIZE = 60, 1000
WORLD, EPOCHS = 2, 3


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    """60 samples of exactly 1000 bytes (a byte budget is a sample count), on local disk."""
    return make_corpus(tmp_path_factory.mktemp("node-disk"), samples=SAMPLES, min_bytes=SIZE, max_bytes=SIZE)


@pytest.fixture(scope="module")
def _uploaded(s3_server: Any, corpus: Corpus) -> Corpus:
    """The corpus in its own SeaweedFS bucket, uploaded once for the module."""
    import s3fs

    opts = {"key": "delibench-test", "secret": "delibench-test-secret", "client_kwargs": {"endpoint_url": s3_server.endpoint_url},
            "config_kwargs": {"s3": {"addressing_style": "path"}}}
    bucket = f"node-disk-{uuid.uuid4().hex[:10]}"
    s3fs.S3FileSystem(**opts, skip_instance_cache=True).mkdir(bucket)
    return copy_corpus(corpus, f"s3://{bucket}/ds", opts)


def _on_disk(folder: Path) -> int:
    """Bytes of the files in the tier's folder now (files come and go while it is listed)."""
    total = 0
    for path in folder.glob("*"):
        try:
            total += path.stat().st_size
        except OSError:
            pass
    return total


def _run_watching(corpus: Corpus, loaders: list[Any], folder: Path) -> int:
    """Every epoch of both ranks (in threads), each one's partition checked exact and byte-identical;
    returns the most bytes seen in ``folder`` (sampled every 10 ms) while they ran."""
    peak = [0]
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.01):
            peak[0] = max(peak[0], _on_disk(folder))

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        got = _run(loaders, EPOCHS)
    finally:
        done.set()
        watcher.join()
    assert sorted(got) == [(r, e) for r in range(WORLD) for e in range(EPOCHS)]
    _check_exact(corpus, got, WORLD)
    return peak[0]


@pytest.mark.s3
@pytest.mark.slow
def test_the_node_fetches_each_sample_once_and_serves_later_epochs_from_disk(_uploaded: Corpus, shaped_s3: Any, s3_server: Any) -> None:
    link = shaped_s3("local")
    before = link.stats().requests
    memory, disk = SAMPLES * SIZE // 5, 2 * SAMPLES * SIZE  # memory a fifth of the dataset; disk holds it all
    loaders = _job(_uploaded, WORLD, WORLD, cache_size=memory, cache_tier="disk", disk_cache_size=disk, prefetch_depth=10)
    folder = Path(node_disk_dir(loaders[0].prefix, None))
    try:
        assert all(isinstance(loader, NodeDeliLoader) for loader in loaders)  # the default scope with 2 local ranks
        assert folder.is_dir()
        peak_on_disk = _run_watching(_uploaded, loaders, folder)
        stats = [loader.stats() for loader in loaders]
        node = loaders[0].node_stats()["node"]
        assert link.stats().requests - before == SAMPLES  # each sample fetched once per node in 3 epochs
        assert sum(s.requests_count for s in stats) == SAMPLES == sum(s.cache_misses for s in stats)
        # Epoch 0 looks each sample up once (the partitions are disjoint, 60 needs no padding), so every
        # disk hit is a lookup of epochs 1-2, whose 120 lookups the memory cache (12 samples) mostly misses.
        assert node["disk_hits"] > SAMPLES
        assert sum(x.node_stats()["rank"]["disk_hits"] for x in loaders) == node["disk_hits"]
        assert sum(s.cache_hits for s in stats) == WORLD * EPOCHS * SAMPLES // WORLD - SAMPLES  # every lookup but the first
        assert node["cache_peak"] <= memory and stats[0].cache_peak_bytes <= memory
        assert 0 < node["disk_bytes"] <= node["disk_peak_bytes"] <= disk and peak_on_disk <= disk
        assert node["corrupt_count"] == node["disk_write_errors"] == 0 and not node["disk_disabled"]
        # What the run's record gets: each rank's own disk hits, the node tier's peak at every rank.
        assert sum(s.disk_hits for s in stats) == node["disk_hits"]
        assert [s.disk_peak_bytes for s in stats] == [node["disk_peak_bytes"]] * WORLD
        assert sum(s.disk_write_errors + s.disk_corrupt_count for s in stats) == 0
    finally:
        _close(loaders)
    assert not folder.exists()  # the service removed its temporary folder


@pytest.mark.slow
def test_a_small_disk_budget_holds_in_cache_dir_and_the_folder_goes_at_close(corpus: Corpus, tmp_path: Path) -> None:
    """A disk budget of a third of the dataset under a memory cache of a tenth: still exact, the files
    (in a folder of the job's own inside ``cache_dir``) never above the budget, all gone at close."""
    cache_dir = tmp_path / "cache"
    disk = SAMPLES * SIZE // 3
    loaders = _job(corpus, WORLD, WORLD, cache_size=SAMPLES * SIZE // 10, cache_tier="disk", cache_dir=str(cache_dir),
                    disk_cache_size=disk, prefetch_depth=10, eviction="lru")
    folder = Path(node_disk_dir(loaders[0].prefix, str(cache_dir)))
    try:
        assert folder.parent == cache_dir
        peak_on_disk = _run_watching(corpus, loaders, folder)
        node = loaders[0].node_stats()["node"]
        assert node["disk_hits"] > 0
        assert peak_on_disk <= disk and node["disk_peak_bytes"] <= disk
        stats = [loader.stats() for loader in loaders]
        assert sum(s.disk_hits for s in stats) == node["disk_hits"] and 0 < stats[0].disk_peak_bytes <= disk
        deadline = time.perf_counter() + 5  # the last spills' writes may still be under way
        while _on_disk(folder) != node["disk_bytes"] and time.perf_counter() < deadline:
            time.sleep(0.05)
            node = loaders[0].node_stats()["node"]
        assert _on_disk(folder) == node["disk_bytes"]  # the accounting is the files
    finally:
        _close(loaders)
    assert cache_dir.is_dir() and not list(cache_dir.iterdir())


@pytest.mark.slow
def test_the_tier_folder_goes_with_a_killed_starter(corpus: Corpus, tmp_path: Path) -> None:
    """The process that started the service is SIGKILLed mid-epoch: the service removes its disk
    folder (and arena) on its way out."""
    cache_dir = tmp_path / "cache"

    def spilled() -> None:
        folders = list(cache_dir.iterdir())
        assert len(folders) == 1 and list(folders[0].glob("*.bin"))  # epoch 0's evictions were spilled

    kill_the_starter(corpus, f'scope="node", cache_size=5000, cache_tier="disk", disk_cache_size="1MiB", '
                             f'cache_dir={str(cache_dir)!r}, prefetch_depth=10', epoch=1, while_alive=spilled)
    assert not list(cache_dir.iterdir())


def test_bad_disk_options_are_one_line_errors(corpus: Corpus, tmp_path: Path) -> None:
    ctx = make_context(corpus, job_id=uuid.uuid4().hex)
    with pytest.raises(UsageError, match="holds no sample") as small:
        DeliLoader(ctx, scope="node", cache_tier="disk", disk_cache_size=SIZE - 1)
    a_file = tmp_path / "a-file"
    a_file.write_bytes(b"")
    with pytest.raises(UsageError, match="not a writable directory") as unwritable:
        DeliLoader(ctx, scope="node", cache_tier="disk", disk_cache_size="1MiB", cache_dir=str(a_file / "cache"))
    for exc in (small.value, unwritable.value):
        assert "\n" not in str(exc)
    if os.getuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        with pytest.raises(UsageError, match="not a writable directory"):
            DeliLoader(ctx, scope="node", cache_tier="disk", disk_cache_size="1MiB", cache_dir=str(locked))


def test_the_disk_tier_splits_for_a_caller_that_holds_no_lock_while_it_does_io(tmp_path: Path) -> None:
    """The node service's use of :class:`DiskTier`: reserve, write, commit; open, read into views,
    checked against the length and sha256; a file kept after a read; a key evicted while its file
    is read is read all the same; a damaged file is reported and dropped."""
    from delibench.loaders.cache import DiskTier
    from delibench.manifest import checksum

    blobs = {k: bytes([k]) * 100 for k in range(3)}
    tier = DiskTier(tmp_path / "t", 200, "belady", checksums=lambda k: checksum(blobs[k]))

    def read(key: int) -> bytes | None:
        fd = tier.open(key)
        if fd is None:
            return None
        out = bytearray(100)
        views = [memoryview(out)[:30], memoryview(out)[30:]]
        return bytes(out) if tier.read_into(key, fd, views) else None

    assert tier.reserve(0, 100, 5.0) and tier.open(0) is None  # reserved, not written yet: not readable
    assert tier.commit(0, tier.write(0, [blobs[0][:50], blobs[0][50:]]))
    assert read(0) == blobs[0] and read(0) == blobs[0]  # kept on disk after a read
    assert tier.reserve(1, 100, 3.0) and tier.commit(1, tier.write(1, [blobs[1]]))
    fd = tier.open(0)
    assert fd is not None and tier.reserve(2, 100, 1.0)  # evicts 0 (needed last) while it is open
    assert 0 not in tier.sizes and tier.bytes == 200
    out = bytearray(100)
    assert tier.read_into(0, fd, [memoryview(out)]) and bytes(out) == blobs[0]
    assert tier.commit(2, tier.write(2, [blobs[2]]))
    (tmp_path / "t" / tier._path(1).name).write_bytes(b"x" * 100)  # same length, other bytes
    assert read(1) is None
    tier.discard_corrupt(1)
    assert tier.corrupt == 1 and 1 not in tier.sizes and sorted(p.name for p in (tmp_path / "t").iterdir()) == [tier._path(2).name]
