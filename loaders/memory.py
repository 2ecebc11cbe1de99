"""Serving samples from RAM through the same decode pipeline: the prep (CPU) rate with zero fetch stall."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from delibench.errors import UsageError
from delibench.loaders.base import Batch, LoaderContext
from delibench.loaders.pipeline import BytesBatchDataset, batches_of, context_order, parse_options
from delibench.loaders.prefetch import DecodePipeline
from delibench.loaders.source import SampleSource
from delibench.records import LoaderStats

__all__ = ["MemoryLoader", "MemoryOptions"]


@dataclass(frozen=True)
class MemoryOptions:
    """Options of the ``memory`` loader.

    Attributes:
        sample_count: Load only the first ``sample_count`` samples of this rank's epoch-0 order;
            every epoch then visits that subset in its own order. None loads the whole dataset
            (every epoch is then exactly the other loaders' epoch). A few thousand samples are
            enough to measure the decode rate (DS-Analyzer style).
        concurrency: Requests in flight while loading.
    """

    sample_count: int | None = None
    concurrency: int = 32

    def __post_init__(self) -> None:
        if self.sample_count is not None and (not isinstance(self.sample_count, int) or self.sample_count < 1):
            raise UsageError(f"sample_count must be a whole number >= 1, got {self.sample_count!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise UsageError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")


class MemoryLoader:
    """Reads a subset of samples into RAM at the first epoch, then serves them with no I/O.

    The bytes travel to the DataLoader workers with the sampler items and the workers persist
    across epochs (both as in ``deli``), so the decode work is identical to the other loaders';
    comparing its step rate with theirs separates the prep stall from the fetch stall.
    """

    name: ClassVar[str] = "memory"

    def __init__(self, ctx: LoaderContext, **options: Any) -> None:
        self.ctx = ctx
        self.options = parse_options(MemoryOptions, self.name, options)
        self.source = SampleSource(ctx.dataset_url, ctx.manifest, ctx.storage_options, io_threads=self.options.concurrency)
        self._data: dict[int, bytes] | None = None
        labels = [s.label for s in ctx.manifest.samples]
        self._pipeline = DecodePipeline(BytesBatchDataset(ctx.decode, labels), ctx.num_workers)
        self._closed = False

    def _load(self) -> dict[int, bytes]:
        if self._data is None:
            if self.options.sample_count is None:
                wanted = list(range(len(self.ctx.manifest)))
            else:
                wanted = list(dict.fromkeys(context_order(self.ctx, 0)))[: self.options.sample_count]
            blobs = self.source.fetch_many_sync(wanted, self.options.concurrency)
            self._data = dict(zip(wanted, blobs))
        return self._data

    @property
    def loaded_bytes(self) -> int:
        """Bytes held in RAM (0 before the first epoch)."""
        return sum(map(len, self._data.values())) if self._data else 0

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch``, restricted to the loaded subset."""
        if self._closed:
            raise UsageError("the memory loader is closed")
        data = self._load()
        order = [i for i in context_order(self.ctx, epoch) if i in data]
        items = ([(i, data[i]) for i in batch] for batch in batches_of(order, self.ctx.batch_size))
        for result in self._pipeline.run(items):
            yield result.unwrap()

    def stats(self) -> LoaderStats:
        """The reads done while loading (none afterwards)."""
        m = self.source.meter
        return LoaderStats(requests_count=m.requests_count, bytes_read_remote=m.bytes_read, errors_count=m.errors_count)

    def close(self) -> None:
        """Drop the loaded bytes; idempotent."""
        if not self._closed:
            self._closed = True
            self._data = None
            try:
                self._pipeline.close()
            finally:
                self.source.close()
