"""The part every loader shares: option parsing, the DataLoader around decode, clean worker shutdown.

Every loader batches in the order of :func:`delibench.loaders.sampler.epoch_order` and decodes in
``ctx.num_workers`` DataLoader worker processes with ``ctx.decode``; only where the bytes come
from differs. Sampler items are whole batches (``batch_size=None``), so a worker decodes (and, for
the naive loaders, fetches) one batch at a time.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any, TypeVar

from delibench.errors import FetchError, RuntimeFailure, UsageError
from delibench.loaders.base import Batch, Decoder, LoaderContext
from delibench.loaders.sampler import epoch_order
from delibench.loaders.source import FetchMeter, SampleSource, clean_cause
from delibench.measure import percentile
from delibench.units import parse_bytes, parse_duration

__all__ = [
    "BytesBatchDataset",
    "DecodeError",
    "FetchBatchDataset",
    "GuardedItems",
    "WorkerResult",
    "batches_of",
    "context_order",
    "parse_options",
    "percentiles",
    "run_dataloader",
]

O = TypeVar("O")


#: How :func:`parse_options` reads a human string given for an option field marked
#: ``field(metadata={"unit": ...})``; the dataclass itself holds only the parsed value.
_UNIT_PARSERS: dict[str, tuple[Callable[[str], Any], str]] = {
    "bytes": (parse_bytes, "a size such as 512MiB or a byte count"),
    "seconds": (parse_duration, "a duration such as 60s or 250ms, or seconds"),
}


def parse_options(cls: type[O], loader: str, options: dict[str, Any]) -> O:
    """Build the frozen options dataclass ``cls`` from user options; unknown keys are usage errors.

    The edge where human strings become values: a string given for a field whose metadata names a
    ``unit`` (``bytes``: ``"512MiB"``; ``seconds``: ``"60s"``) is parsed here, so the dataclass
    holds ints and floats and only validates them.

    Raises:
        UsageError: An unknown option (with a did-you-mean hint), a value that does not parse (naming
            the option) or a value the dataclass rejects.
    """
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    names = list(fields)
    for key in options:
        if key not in fields:
            close = difflib.get_close_matches(key, names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"{loader} takes: {', '.join(names) or 'no options'}"
            raise UsageError(f"unknown option {key!r} for loader {loader!r}", hint=hint)
    parsed = {key: _parse_value(fields[key], value) for key, value in options.items()}
    try:
        return cls(**parsed)
    except TypeError as exc:
        raise UsageError(f"bad options for loader {loader!r}: {exc}") from exc


def _parse_value(option: dataclasses.Field[Any], value: Any) -> Any:
    unit = option.metadata.get("unit")
    if unit is None or not isinstance(value, str):
        return value
    parse, expected = _UNIT_PARSERS[unit]
    try:
        return parse(value)
    except UsageError as exc:
        raise UsageError(f"{exc.message} for option {option.name!r}", hint=exc.hint or f"{option.name} must be {expected}") from exc


def context_order(ctx: LoaderContext, epoch: int) -> list[int]:
    """This rank's order of ``epoch`` from the context."""
    return epoch_order(
        len(ctx.manifest), epoch, ctx.seed, ctx.rank, ctx.world_size, ctx.order, ctx.exchange_fraction, ctx.drop_last
    )


def batches_of(order: Sequence[int], batch_size: int) -> list[list[int]]:
    """Split an order into batches (the last may be short; ``drop_last`` applies across ranks only)."""
    return [list(order[i : i + batch_size]) for i in range(0, len(order), batch_size)]


def percentiles(values: Sequence[float]) -> tuple[float | None, float | None, float | None]:
    """p50, p95, p99 of ``values`` (None when empty), by :func:`delibench.measure.percentile`."""
    if not values:
        return None, None, None
    return percentile(values, 50), percentile(values, 95), percentile(values, 99)


class DecodeError(FetchError):
    """A sample's bytes arrived but could not be decoded (a corrupt image); names the key and URL."""

    def __init__(self, key: str, url: str, cause: str, *, hint: str | None = None) -> None:
        super().__init__(key, url, cause, hint=hint)
        self.message = f"could not decode sample {key!r} from {url}: {cause}"
        self.args = (self.message,)


@dataclasses.dataclass
class WorkerResult:
    """What a worker returns per batch: the batch, its fetch counters, or the failure.

    NOTE: a FetchError raised in a worker would reach the main process as a plain RuntimeError
    (DataLoader re-creates exceptions from their message), so failures travel as data instead.

    Attributes:
        batch: The decoded batch; None when it failed, or when every sample of it was skipped.
        meter: Fetch counters of this batch (workers that fetch), with ``skipped_keys``.
        error: ``(key, url, cause)`` of the failure under ``on_error=raise``.
        decode_failed: Whether ``error`` is a decode failure (else a fetch failure).
        failure: Any other failure's message (raised as RuntimeFailure here).
    """

    batch: Batch | None
    meter: FetchMeter | None = None
    error: tuple[str, str, str] | None = None
    decode_failed: bool = False
    failure: str | None = None

    def unwrap(self) -> Batch | None:
        """The batch (None when all its samples were skipped), or the worker's error re-raised here."""
        if self.failure is not None:
            raise RuntimeFailure(self.failure)
        if self.error is not None:
            raise (DecodeError if self.decode_failed else FetchError)(*self.error)
        return self.batch


def decode_items(
    decode: Decoder,
    items: Sequence[tuple[int, bytes]],
    labels: Sequence[int],
    keys: Sequence[str] | None,
    root_url: str,
    on_error: str,
    meter: FetchMeter,
) -> WorkerResult:
    """Decode ``(index, bytes)`` items into a batch; a decode failure names its key.

    Under ``on_error=skip`` failing samples are left out and listed in ``meter.skipped_keys``;
    under ``raise`` the first one becomes the result's error.
    """
    decoded: list[Any] = []
    kept_labels: list[int] = []
    kept: list[int] = []
    for index, data in items:
        label = labels[index]
        try:
            decoded.append(decode(data, label))
        except Exception as exc:  # noqa: BLE001 - any decoder failure is a bad sample
            key = keys[index] if keys is not None else f"#{index}"
            url = f"{root_url.rstrip('/')}/{key}" if keys is not None else root_url
            if on_error == "skip":
                meter.skipped_keys.append(key)
                continue
            return WorkerResult(None, meter, (key, url, clean_cause(exc)), decode_failed=True)
        kept_labels.append(label)
        kept.append(index)
    if not kept:
        return WorkerResult(None, meter)
    return WorkerResult(_collate(decoded, kept_labels, kept), meter)


def _collate(items: list[Any], labels: list[int], indices: list[int]) -> Batch:
    import torch
    from torch.utils.data import default_collate

    return Batch(default_collate(items), torch.tensor(labels, dtype=torch.long), torch.tensor(indices, dtype=torch.long))


class BytesBatchDataset:
    """Decodes batches whose bytes arrive with the sampler item: ``[(index, bytes), ...]``.

    Args:
        decode: The decode step.
        labels: Label of each manifest index.
        keys: Key of each manifest index (so a decode failure names its sample).
        root_url: Credential-free dataset URL (for error messages).
        on_error: ``raise`` or ``skip`` samples that fail to decode.
    """

    def __init__(
        self,
        decode: Decoder,
        labels: Sequence[int],
        keys: Sequence[str] | None = None,
        root_url: str = "",
        on_error: str = "raise",
    ) -> None:
        self.decode = decode
        self.labels = list(labels)
        self.keys = list(keys) if keys is not None else None
        self.root_url = root_url
        self.on_error = on_error

    def __getitem__(self, items: list[tuple[int, bytes]]) -> WorkerResult:
        return decode_items(self.decode, items, self.labels, self.keys, self.root_url, self.on_error, FetchMeter())


class FetchBatchDataset:
    """Fetches (in the worker, with the worker's own client) and decodes batches of indices.

    Args:
        source: Where the bytes come from; its client is created lazily inside each worker.
        decode: The decode step.
        concurrency: Requests in flight per worker while fetching one batch (1 = one at a time).
        read: Replaces ``source.fetch_many_sync`` (e.g. reads through an fsspec cache).
        on_error: ``raise`` (the first failure ends the batch) or ``skip`` (failing samples are
            left out of the batch and listed in the meter's ``skipped_keys``).
    """

    def __init__(
        self,
        source: SampleSource,
        decode: Decoder,
        concurrency: int = 1,
        read: Callable[[list[int]], tuple[list[bytes], FetchMeter]] | None = None,
        on_error: str = "raise",
    ) -> None:
        self.source = source
        self.decode = decode
        self.concurrency = concurrency
        self.read = read
        self.on_error = on_error
        self.labels = [s.label for s in source.manifest.samples]
        self.keys = [s.key for s in source.manifest.samples]

    def _fetch(self, indices: list[int]) -> tuple[list[tuple[int, bytes]], FetchMeter]:
        """The batch's ``(index, bytes)`` that could be read, and this batch's counters."""
        if self.read is not None:
            if self.on_error != "skip":
                blobs, meter = self.read(indices)
                return list(zip(indices, blobs)), meter
            meter, items = FetchMeter(), []
            for index in indices:  # one by one, so one bad sample does not take the batch down
                try:
                    (data,), part = self.read([index])
                except FetchError as exc:
                    meter.errors_count += 1
                    meter.skipped_keys.append(exc.key)
                    continue
                meter.merge(part)
                items.append((index, data))
            return items, meter
        before = self.source.meter.snapshot()
        if self.on_error != "skip":
            blobs = self.source.fetch_many_sync(indices, self.concurrency)
            return list(zip(indices, blobs)), self.source.meter.since(before)
        outcomes = self.source.fetch_outcomes_sync(indices, self.concurrency)
        meter = self.source.meter.since(before)
        items = []
        for index, outcome in zip(indices, outcomes):
            if isinstance(outcome, FetchError):
                meter.skipped_keys.append(outcome.key)
            else:
                items.append((index, outcome))
        return items, meter

    def __getitem__(self, indices: list[int]) -> WorkerResult:
        if self.read is None:
            _ = self.source.fs  # per-process client and meter (re-created after fork) before the snapshot
        before = self.source.meter.snapshot()
        try:
            items, meter = self._fetch(indices)
        except FetchError as exc:
            meter = self.source.meter.since(before) if self.read is None else FetchMeter(errors_count=1)
            return WorkerResult(None, meter, (exc.key, exc.url, exc.cause))
        return decode_items(self.decode, items, self.labels, self.keys, self.source.location.display_url,
                            self.on_error, meter)


def _identity(x: Any) -> Any:
    return x


class GuardedItems:
    """A DataLoader sampler's items whose failure ends the epoch's items instead of raising into torch.

    Why: the DataLoader pulls sampler items inside its own bookkeeping (``_try_put_index``, also
    from the iterator's ``__init__`` while it primes its workers). An exception there escapes
    a half-built or half-updated iterator: when it happens during ``iter(loader)`` nobody holds
    the iterator (its workers and queues are alive) except the exception's traceback, so it is
    shut down later by the cyclic garbage collector, which finalizes the queues' pipe
    ``Connection`` objects in the same pass as the iterator's ``__del__`` starts a queue feeder
    thread that closes them again: a pipe fd closed twice (``EBADF``, ``semaphore released too
    many times``, or a reused fd closed under someone else), and Python code run inside an
    unrelated ``compile()`` (``SystemError: AST constructor recursion depth mismatch``). Here
    the failure is kept, the items end, the DataLoader drains what is in flight normally (the
    batches before the failure, in order) and :meth:`raise_error` re-raises it outside torch.
    """

    def __init__(self, items: Iterable[Any]) -> None:
        self._items = iter(items)
        self.error: BaseException | None = None

    def __iter__(self) -> GuardedItems:
        return self

    def __next__(self) -> Any:
        if self.error is not None:
            raise StopIteration
        try:
            return next(self._items)
        except StopIteration:
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised by raise_error() once torch is done
            self.error = exc
            raise StopIteration from None

    def raise_error(self) -> None:
        """Re-raise the items' failure, if any (once the DataLoader has delivered what came before it)."""
        error, self.error = self.error, None
        if error is not None:
            raise error


def run_dataloader(
    dataset: Any,
    items: Iterable[Any],
    num_workers: int,
    *,
    timeout_s: float = 0,
    on_abort: Callable[[], None] | None = None,
) -> Iterator[WorkerResult]:
    """Yield the dataset's results for ``items`` through a DataLoader, then stop its workers.

    Workers are shut down when the epoch ends, when the caller stops early (generator close) and
    on an exception, so no process outlives the epoch. A failure of ``items`` (e.g. a sample
    that could not be fetched) is raised after the batches before it (see :class:`GuardedItems`).
    ``on_abort`` runs first when the epoch stops early or fails: it must release workers that
    wait on the caller (torch gives a busy worker 5 s before it terminates it).
    """
    from torch.utils.data import DataLoader

    guarded = GuardedItems(items)
    loader = DataLoader(
        dataset,  # type: ignore[arg-type]
        sampler=guarded,  # type: ignore[arg-type]
        batch_size=None,
        num_workers=num_workers,
        collate_fn=_identity,
        timeout=timeout_s,
        persistent_workers=False,
    )
    it = iter(loader)
    try:
        yield from it
    except BaseException:  # GeneratorExit included: an early stop
        if on_abort is not None:
            on_abort()
        raise
    finally:
        shutdown = getattr(it, "_shutdown_workers", None)
        if shutdown is not None:
            shutdown()
        del it
    guarded.raise_error()
