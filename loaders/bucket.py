"""The naive bucket loader: every DataLoader worker GETs its samples itself, one request per sample."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

from delibench.errors import UsageError
from delibench.loaders.base import Batch, LoaderContext
from delibench.loaders.pipeline import (
    FetchBatchDataset,
    batches_of,
    context_order,
    parse_options,
    percentiles,
    run_dataloader,
)
from delibench.loaders.source import FetchMeter, ReliabilityOptions, SampleSource
from delibench.records import LoaderStats

__all__ = ["BucketLoader", "BucketOptions", "WorkerFetchLoader"]


@dataclass(frozen=True)
class BucketOptions(ReliabilityOptions):
    """Options of the ``bucket`` loader (plus the fault handling of :class:`ReliabilityOptions`:
    ``retries``, ``retry_deadline_s``, ``hedge_after``, ``on_error``, ``verify``).

    Attributes:
        concurrency: GETs in flight per worker while it reads one batch. 1 (the default) is what
            a plain ``Dataset.__getitem__`` that reads an object does today; larger values let
            each worker fetch its batch's samples concurrently, so the baseline is not a straw man.
    """

    concurrency: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise UsageError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")


class WorkerFetchLoader:
    """Base of loaders whose workers read the bytes themselves (clients are created in the workers).

    Subclasses set ``name`` and ``options_class`` and may override :meth:`_dataset`.
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type] = BucketOptions

    def __init__(self, ctx: LoaderContext, **options: Any) -> None:
        self.ctx = ctx
        self.options = parse_options(self.options_class, self.name, options)
        self._check_context()
        reliability = self.options.source_kwargs() if isinstance(self.options, ReliabilityOptions) else {}
        self.on_error: str = getattr(self.options, "on_error", "raise")
        self.source = SampleSource(
            self.ctx.dataset_url,
            self.ctx.manifest,
            self.ctx.storage_options,
            io_threads=getattr(self.options, "concurrency", 1),
            **reliability,
        )
        self.meter = FetchMeter()
        self._closed = False

    def _check_context(self) -> None:
        """Reject contexts this loader cannot serve (hook)."""

    def _dataset(self) -> FetchBatchDataset:
        return FetchBatchDataset(self.source, self.ctx.decode, getattr(self.options, "concurrency", 1), on_error=self.on_error)

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` (see :class:`delibench.loaders.base.Loader`)."""
        if self._closed:
            raise UsageError(f"the {self.name} loader is closed")
        batches = batches_of(context_order(self.ctx, epoch), self.ctx.batch_size)
        for result in run_dataloader(self._dataset(), batches, self.ctx.num_workers):
            if result.meter is not None:
                self.meter.merge(result.meter)
            batch = result.unwrap()
            if batch is not None:  # None: every sample of the batch was skipped (and listed)
                yield batch

    def stats(self) -> LoaderStats:
        """Cumulative GETs (every attempt), retries, hedges, bytes, latency percentiles and skipped keys."""
        p50, p95, p99 = percentiles(self.meter.latencies_s)
        return LoaderStats(
            requests_count=self.meter.requests_count,
            bytes_read_remote=self.meter.bytes_read,
            fetch_latency_s_p50=p50,
            fetch_latency_s_p95=p95,
            fetch_latency_s_p99=p99,
            retries_count=self.meter.retries_count,
            hedges_count=self.meter.hedges_count,
            errors_count=self.meter.errors_count,
            skipped_keys=tuple(self.meter.skipped_keys),
        )

    def close(self) -> None:
        """Release the loader (workers end with each epoch); idempotent."""
        if not self._closed:
            self._closed = True
            self.source.close()

    def __enter__(self) -> WorkerFetchLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BucketLoader(WorkerFetchLoader):
    """One GET per sample through fsspec from inside the DataLoader workers (what people do today)."""

    name: ClassVar[str] = "bucket"
    options_class: ClassVar[type] = BucketOptions
