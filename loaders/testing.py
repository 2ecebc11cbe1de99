"""Public test helpers: a loader conformance suite every loader (built-in or plugin) can subclass.

Usage (like fsspec's abstract tests)::

    from delibench.loaders.testing import LoaderConformance, make_corpus

    class TestMyLoader(LoaderConformance):
        @pytest.fixture
        def corpus(self, tmp_path):
            return make_corpus(tmp_path / "data", samples=24)

        @pytest.fixture
        def loader_factory(self):
            return lambda ctx: MyLoader(ctx, some_option=1)

Each test builds :class:`~delibench.loaders.base.LoaderContext` objects whose decode step is
:func:`checksum_decode`, so a delivered item proves which bytes arrived for which label.
"""

from __future__ import annotations

import gc
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from delibench.manifest import Manifest, SampleEntry, checksum, write_manifest

__all__ = [
    "Corpus",
    "LoaderConformance",
    "checksum_decode",
    "copy_corpus",
    "leftovers",
    "make_context",
    "make_corpus",
    "resource_snapshot",
]

#: Threads that belong to libraries' process-wide machinery, not to any loader: fsspec's single
#: IO-loop thread (started on first use of an async filesystem, reused by every later one).
SHARED_THREAD_PREFIXES = ("fsspecIO",)


def checksum_decode(data: bytes, label: int) -> str:
    """Decode step for exactness tests: ``"<sha256 of the bytes>:<label>"`` (picklable)."""
    return f"{checksum(data)}:{label}"


@dataclass(frozen=True)
class Corpus:
    """A dataset for tests: its root URL and manifest."""

    url: str
    manifest: Manifest

    def expected(self, index: int) -> str:
        """What :func:`checksum_decode` yields for sample ``index``."""
        entry = self.manifest.samples[index]
        return f"{entry.sha256}:{entry.label}"


def make_corpus(
    root: str | os.PathLike[str],
    samples: int = 24,
    *,
    min_bytes: int = 200,
    max_bytes: int = 2000,
    classes: int = 3,
    seed: int = 0,
) -> Corpus:
    """Write ``samples`` files of random bytes (random sizes) and their manifest under ``root``.

    Loaders do not care about content when decode is :func:`checksum_decode`, so random bytes
    keep tests fast.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    entries = []
    for i in range(samples):
        label = int(i % classes)
        key = f"train/c{label}/{i:06d}.bin"
        data = rng.integers(0, 256, int(rng.integers(min_bytes, max_bytes + 1)), dtype=np.uint8).tobytes()
        path = root / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(SampleEntry(key, len(data), label, checksum(data)))
    manifest = Manifest(samples=tuple(entries), classes=tuple(f"c{c}" for c in range(classes)), seed=seed)
    write_manifest(manifest, str(root))
    return Corpus(str(root), manifest)


def copy_corpus(corpus: Corpus, url: str, storage_options: dict[str, Any] | None = None) -> Corpus:
    """Upload a local corpus (files and manifest) to ``url`` (e.g. ``s3://bucket/prefix``)."""
    from delibench.storage import resolve

    loc = resolve(url, storage_options)
    fs = loc.filesystem()
    local = Path(corpus.url)
    blobs = {loc.child(e.key): (local / e.key).read_bytes() for e in corpus.manifest.samples}
    for attempt in range(3):
        # NOTE: a small local object store under load sometimes answers 500; uploads are idempotent.
        try:
            fs.pipe(blobs)
            break
        except OSError:
            if attempt == 2:
                raise
            time.sleep(0.5)
    write_manifest(corpus.manifest, url, storage_options)
    return Corpus(url, corpus.manifest)


def make_context(corpus: Corpus, **overrides: Any) -> Any:
    """A LoaderContext over ``corpus`` decoding with :func:`checksum_decode` (overrides allowed)."""
    from delibench.loaders.base import LoaderContext

    values: dict[str, Any] = {"batch_size": 5, "num_workers": 2, "seed": 7}
    values.update(overrides)
    return LoaderContext(dataset_url=corpus.url, manifest=corpus.manifest, decode=checksum_decode, **values)


def resource_snapshot() -> tuple[set[int], set[int]]:
    """Ids of live threads (other than shared library threads) and pids of child processes."""
    import psutil

    threads = {t.ident or 0 for t in threading.enumerate() if not t.name.startswith(SHARED_THREAD_PREFIXES)}
    children = {p.pid for p in psutil.Process().children(recursive=True) if p.is_running() and p.status() != psutil.STATUS_ZOMBIE}
    return threads, children


def leftovers(before: tuple[set[int], set[int]], wait_s: float = 10.0) -> tuple[list[str], list[int]]:
    """Threads and child processes started since ``before`` that are still alive after ``wait_s``."""
    deadline = time.monotonic() + wait_s
    while True:
        gc.collect()
        threads, children = resource_snapshot()
        new_threads = threads - before[0]
        new_children = children - before[1]
        if (not new_threads and not new_children) or time.monotonic() > deadline:
            names = [t.name for t in threading.enumerate() if (t.ident or 0) in new_threads]
            return names, sorted(new_children)
        time.sleep(0.1)


def _collect(loader: Any, epoch: int) -> tuple[list[int], list[str]]:
    indices: list[int] = []
    items: list[str] = []
    for batch in loader.iter_epoch(epoch):
        indices.extend(int(i) for i in batch.indices)
        items.extend(batch.inputs)
        assert len(batch.labels) == len(batch.indices)
    return indices, items


class LoaderConformance:
    """The contract of :class:`delibench.loaders.base.Loader`, as tests.

    Subclasses provide two fixtures:

    * ``corpus``: a :class:`Corpus` (files + manifest at ``corpus.url``), at least ~20 samples;
    * ``loader_factory``: ``LoaderContext -> Loader``.

    Class attributes tune the contexts: ``num_workers`` (default 2), ``batch_size`` (5).
    """

    num_workers: int = 2
    batch_size: int = 5
    epochs: int = 2

    def context(self, corpus: Corpus, **overrides: Any) -> Any:
        """The context every test builds (checksum decode, this class's worker and batch sizes)."""
        values = {"num_workers": self.num_workers, "batch_size": self.batch_size}
        values.update(overrides)
        return make_context(corpus, **values)

    @pytest.fixture
    def make_loader(self, loader_factory: Callable[[Any], Any]) -> Iterator[Callable[..., Any]]:
        """Build loaders with :meth:`context` and close them all at the end of the test."""
        built: list[Any] = []

        def make(corpus: Corpus, **overrides: Any) -> Any:
            loader = loader_factory(self.context(corpus, **overrides))
            built.append(loader)
            return loader

        yield make
        for loader in built:
            loader.close()

    @pytest.mark.parametrize("world_size", [1, 2])
    def test_every_sample_once_per_epoch(self, corpus: Corpus, make_loader: Any, world_size: int) -> None:
        """Each rank gets exactly its ``epoch_order`` share, bytes intact, over several epochs."""
        from delibench.loaders.sampler import epoch_order

        n = len(corpus.manifest)
        loaders = [make_loader(corpus, rank=r, world_size=world_size) for r in range(world_size)]
        for epoch in range(self.epochs):
            seen: list[int] = []
            for rank, loader in enumerate(loaders):
                indices, items = _collect(loader, epoch)
                ctx = self.context(corpus, rank=rank, world_size=world_size)
                expected = epoch_order(n, epoch, ctx.seed, rank, world_size, ctx.order, ctx.exchange_fraction, ctx.drop_last)
                assert indices == expected, f"rank {rank} epoch {epoch}: order differs from epoch_order"
                assert items == [corpus.expected(i) for i in indices], "delivered bytes or labels differ from the manifest"
                seen.extend(indices)
            assert set(seen) == set(range(n)), f"epoch {epoch}: samples missing {sorted(set(range(n)) - set(seen))[:5]}"
            # Only DistributedSampler-style padding may repeat a sample across ranks.
            assert len(seen) - n == (-n) % world_size

    def test_stats_monotonic(self, corpus: Corpus, make_loader: Any) -> None:
        """Counters never decrease across epochs and after an early stop."""
        loader = make_loader(corpus)
        snapshots = [loader.stats()]
        for epoch in range(self.epochs):
            _collect(loader, epoch)
            snapshots.append(loader.stats())
        for batch in loader.iter_epoch(self.epochs):
            break
        snapshots.append(loader.stats())
        counters = [f.name for f in fields(snapshots[0]) if f.name.endswith("_count") or f.name in (
            "bytes_read_remote", "cache_hits", "cache_misses", "cache_evictions", "cache_peak_bytes", "prefetch_peak_bytes")]
        for before, after in zip(snapshots, snapshots[1:]):
            for name in counters:
                assert getattr(after, name) >= getattr(before, name), f"{name} decreased"

    def test_close_idempotent(self, corpus: Corpus, loader_factory: Any) -> None:
        """close() twice is fine, also before any epoch ran."""
        fresh = loader_factory(self.context(corpus))
        fresh.close()
        fresh.close()
        used = loader_factory(self.context(corpus))
        _collect(used, 0)
        used.close()
        used.close()

    def test_early_break_then_next_epoch(self, corpus: Corpus, make_loader: Any) -> None:
        """Stopping after one batch leaves the loader ready for a complete next epoch."""
        from delibench.loaders.sampler import epoch_order

        loader = make_loader(corpus)
        for _ in loader.iter_epoch(0):
            break
        indices, items = _collect(loader, 1)
        ctx = self.context(corpus)
        assert indices == epoch_order(len(corpus.manifest), 1, ctx.seed, 0, 1)
        assert items == [corpus.expected(i) for i in indices]

    def test_no_leftovers_after_close(self, corpus: Corpus, loader_factory: Any) -> None:
        """No thread or process outlives close(): after a full epoch, an early break and an exception."""
        before = resource_snapshot()
        loader = loader_factory(self.context(corpus))
        _collect(loader, 0)
        for _ in loader.iter_epoch(1):
            break
        with pytest.raises(ZeroDivisionError):
            for _ in loader.iter_epoch(2):
                1 / 0  # noqa: B018 - an error in the training step, mid-epoch
        indices, _ = _collect(loader, 3)
        assert len(indices) == len(corpus.manifest)
        loader.close()
        threads, children = leftovers(before)
        assert not threads, f"threads left after close: {threads}"
        assert not children, f"processes left after close: {children}"
