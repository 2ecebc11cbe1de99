"""The Loader contract every loader implements, and the common inputs they all take."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

from delibench.errors import UsageError
from delibench.manifest import Manifest
from delibench.records import LoaderStats

__all__ = ["Batch", "Decoder", "Loader", "LoaderContext"]

#: Turns one sample's bytes and label into the training item (runs in DataLoader workers).
#: Must be picklable (a module-level function or a picklable object).
Decoder = Callable[[bytes, int], Any]


class Batch(NamedTuple):
    """What every loader yields: collated inputs, labels, and the manifest indices of the samples.

    ``indices`` lets exactness tests and metrics tie every delivered item to its manifest entry.
    """

    inputs: Any
    labels: Any
    indices: Any


@dataclass(frozen=True)
class LoaderContext:
    """Inputs shared by every loader: the data, how to decode it, how to batch and partition it.

    Attributes:
        dataset_url: Dataset root (fsspec URL); keys in the manifest are relative to it.
        manifest: The dataset's manifest (sizes, labels, checksums).
        decode: Bytes + label -> item; picklable.
        batch_size: Samples per batch.
        num_workers: DataLoader worker processes (0 = decode in the main process).
        seed: Seed of the per-epoch order.
        rank: This rank.
        world_size: Ranks in all.
        drop_last: Drop the last partial batch of an epoch.
        storage_options: fsspec options overriding those derived from the environment.
        order: ``shuffle`` (DistributedSampler order) or ``locality`` (stable rank partitions).
        exchange_fraction: For ``locality``: share of each rank's samples swapped across ranks per epoch.
        epochs: Epochs the caller will ask for, when known: a loader that looks ahead into the
            next epoch stops at the last one (None = unknown: it looks ahead after every epoch).
        local_rank: This rank's place among the ranks of its node (torchrun's ``LOCAL_RANK``).
        local_world_size: Ranks on this node (``LOCAL_WORLD_SIZE``); the node's ranks are taken to
            be ``rank - local_rank .. + local_world_size - 1`` (torchrun numbers them so).
        node_rank: This node's number (torchrun's ``GROUP_RANK``).
        job_id: A string the ranks of one job share and no other job on the node has (the CLI
            builds it from the rendezvous address and run id); names the node service's socket
            and shared memory. Empty: not known.
    """

    dataset_url: str
    manifest: Manifest
    decode: Decoder
    batch_size: int = 32
    num_workers: int = 2
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    drop_last: bool = False
    storage_options: dict[str, Any] | None = None
    order: str = "shuffle"
    exchange_fraction: float = 0.0
    epochs: int | None = None
    local_rank: int = 0
    local_world_size: int = 1
    node_rank: int = 0
    job_id: str = ""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if self.num_workers < 0:
            raise UsageError(f"num_workers must not be negative, got {self.num_workers}")
        if not 0 <= self.rank < self.world_size:
            raise UsageError(f"rank {self.rank} is outside world size {self.world_size}")
        if self.local_world_size > 1 and (not 0 <= self.local_rank < self.local_world_size or self.local_rank > self.rank or self.local_world_size > self.world_size):
            raise UsageError(f"local rank {self.local_rank} of {self.local_world_size} does not fit rank {self.rank} of {self.world_size}")
        if self.order not in ("shuffle", "locality"):
            raise UsageError(f"unknown order {self.order!r}", hint="use 'shuffle' or 'locality'")
        if not 0.0 <= self.exchange_fraction <= 1.0:
            raise UsageError(f"exchange fraction must lie in [0, 1], got {self.exchange_fraction}")


@runtime_checkable
class Loader(Protocol):
    """A loader under test.

    Contract (in the style of fsspec's caches and torchdata's nodes):

    * Construction is cheap; expensive setup (clients, worker processes) happens lazily at the
      first ``iter_epoch`` so that it can be timed as ``iterator_setup_s``.
    * ``iter_epoch(epoch)`` yields :class:`Batch` es covering this rank's partition of that epoch
      exactly once (the order is a pure function of seed, epoch, rank and world size), each
      sample's bytes identical to the source.
    * Breaking out of an epoch early, or an exception inside it, leaves the loader usable for
      the next ``iter_epoch`` and leaks nothing.
    * ``stats()`` counters are cumulative over the loader's life and monotonic.
    * ``close()`` stops every thread and process the loader started; it is idempotent.
    * Optional ``pause_background()``: a loader that works between epochs (deli looks ahead
      into the next one) stops that work; ``compare`` calls it when another loader's epoch is
      about to be measured, and the loader picks up again at its next ``iter_epoch``.
    """

    name: ClassVar[str]

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch``."""
        ...

    def stats(self) -> LoaderStats:
        """Cumulative counters (GETs, bytes, cache hits/misses, latency percentiles)."""
        ...

    def close(self) -> None:
        """Release every resource; safe to call twice."""
        ...
