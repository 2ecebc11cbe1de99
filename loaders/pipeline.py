"""The part every loader shares: option parsing, the DataLoader around decode, clean worker shutdown.

Every loader batches in the order of :func:`delibench.loaders.sampler.epoch_order` and decodes in
``ctx.num_workers`` DataLoader worker processes with ``ctx.decode``; only where the bytes come
from differs. Sampler items are whole batches (``batch_size=None``), so a worker decodes (and, for
the naive loaders, fetches) one batch at a time.
"""

from __future__ import annotations

import dataclasses
import difflib
import statistics
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from delibench.errors import FetchError, UsageError
from delibench.loaders.base import Batch, Decoder, LoaderContext
from delibench.loaders.sampler import epoch_order
from delibench.loaders.source import FetchMeter, SampleSource

__all__ = [
    "BytesBatchDataset",
    "FetchBatchDataset",
    "WorkerResult",
    "batches_of",
    "context_order",
    "parse_options",
    "percentiles",
    "run_dataloader",
]

O = TypeVar("O")


def parse_options(cls: type[O], loader: str, options: dict[str, Any]) -> O:
    """Build the frozen options dataclass ``cls`` from user options; unknown keys are usage errors.

    Raises:
        UsageError: An unknown option (with a did-you-mean hint) or a value the dataclass rejects.
    """
    names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
    for key in options:
        if key not in names:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"{loader} takes: {', '.join(names) or 'no options'}"
            raise UsageError(f"unknown option {key!r} for loader {loader!r}", hint=hint)
    try:
        return cls(**options)
    except TypeError as exc:
        raise UsageError(f"bad options for loader {loader!r}: {exc}") from exc


def context_order(ctx: LoaderContext, epoch: int) -> list[int]:
    """This rank's order of ``epoch`` from the context."""
    return epoch_order(
        len(ctx.manifest), epoch, ctx.seed, ctx.rank, ctx.world_size, ctx.order, ctx.exchange_fraction, ctx.drop_last
    )


def batches_of(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split an order into batches (the last may be short; ``drop_last`` applies across ranks only)."""
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def percentiles(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p95, p99 of ``values`` (None when empty)."""
    if not values:
        return None, None, None
    if len(values) == 1:
        return values[0], values[0], values[0]
    qs = statistics.quantiles(values, n=100, method="inclusive")
    return statistics.median(values), qs[94], qs[98]


@dataclasses.dataclass
class WorkerResult:
    """What a worker returns per batch: the batch, its fetch counters, or the fetch failure.

    NOTE: a FetchError raised in a worker would reach the main process as a plain RuntimeError
    (DataLoader re-creates exceptions from their message), so failures travel as data instead.
    """

    batch: Batch | None
    meter: FetchMeter | None = None
    error: tuple[str, str, str] | None = None

    def unwrap(self) -> Batch:
        """The batch, or the worker's FetchError re-raised here."""
        if self.error is not None:
            raise FetchError(*self.error)
        assert self.batch is not None
        return self.batch


def _collate(items: list[Any], labels: list[int], indices: list[int]) -> Batch:
    import torch
    from torch.utils.data import default_collate

    return Batch(default_collate(items), torch.tensor(labels, dtype=torch.long), torch.tensor(indices, dtype=torch.long))


class BytesBatchDataset:
    """Decodes batches whose bytes arrive with the sampler item: ``[(index, bytes), ...]``."""

    def __init__(self, decode: Decoder, labels: Sequence[int]) -> None:
        self.decode = decode
        self.labels = list(labels)

    def __getitem__(self, items: list[tuple[int, bytes]]) -> WorkerResult:
        labels = [self.labels[i] for i, _ in items]
        decoded = [self.decode(data, label) for (_, data), label in zip(items, labels)]
        return WorkerResult(_collate(decoded, labels, [i for i, _ in items]))


class FetchBatchDataset:
    """Fetches (in the worker, with the worker's own client) and decodes batches of indices.

    Args:
        source: Where the bytes come from; its client is created lazily inside each worker.
        decode: The decode step.
        concurrency: Requests in flight per worker while fetching one batch (1 = one at a time).
        read: Replaces ``source.fetch_many_sync`` (e.g. reads through an fsspec cache).
    """

    def __init__(
        self,
        source: SampleSource,
        decode: Decoder,
        concurrency: int = 1,
        read: Callable[[list[int]], tuple[list[bytes], FetchMeter]] | None = None,
    ) -> None:
        self.source = source
        self.decode = decode
        self.concurrency = concurrency
        self.read = read
        self.labels = [s.label for s in source.manifest.samples]

    def __getitem__(self, indices: list[int]) -> WorkerResult:
        try:
            if self.read is not None:
                blobs, meter = self.read(indices)
            else:
                before = len(self.source.meter.latencies_s)
                blobs = self.source.fetch_many_sync(indices, self.concurrency)
                m = self.source.meter
                meter = FetchMeter(len(blobs), sum(map(len, blobs)), 0, m.latencies_s[before:])
        except FetchError as exc:
            return WorkerResult(None, FetchMeter(errors_count=1), (exc.key, exc.url, exc.cause))
        labels = [self.labels[i] for i in indices]
        decoded = [self.decode(data, label) for data, label in zip(blobs, labels)]
        return WorkerResult(_collate(decoded, labels, list(indices)), meter)


def _identity(x: Any) -> Any:
    return x


def run_dataloader(dataset: Any, items: Iterable[Any], num_workers: int, *, timeout_s: float = 0) -> Iterator[WorkerResult]:
    """Yield the dataset's results for ``items`` through a DataLoader, then stop its workers.

    Workers are shut down when the epoch ends, when the caller stops early (generator close) and
    on an exception, so no process outlives the epoch.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        sampler=items,  # type: ignore[arg-type]
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        timeout=timeout_s,
        persistent_workers=False,
    )
    it = iter(loader)
    try:
        yield from it
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
