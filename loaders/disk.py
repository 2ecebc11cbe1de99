"""The local-disk baseline: the same pipeline reading files from a local directory."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import ClassVar

from delibench.errors import UsageError
from delibench.loaders.bucket import WorkerFetchLoader
from delibench.loaders.source import ReliabilityOptions
from delibench.storage import resolve

__all__ = ["DiskLoader", "DiskOptions"]


@dataclass(frozen=True)
class DiskOptions(ReliabilityOptions):
    """Options of the ``disk`` loader (plus ``on_error``, ``verify`` and the rest of :class:`ReliabilityOptions`).

    Attributes:
        path: Local copy of the dataset (same keys as the manifest); default: the dataset URL.
        concurrency: Files read in parallel per worker for one batch (1 = one after another).
    """

    path: str | None = None
    concurrency: int = 1

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise UsageError(f"concurrency must be a whole number >= 1, got {self.concurrency!r}")


class DiskLoader(WorkerFetchLoader):
    """Reads each sample from a local file in the DataLoader workers: the no-network reference.

    Note that a dataset smaller than the host's RAM is served from the page cache after the first
    epoch, which the run report warns about.
    """

    name: ClassVar[str] = "disk"
    options_class: ClassVar[type] = DiskOptions

    def _check_context(self) -> None:
        if self.options.path is not None:
            self.ctx = dataclasses.replace(self.ctx, dataset_url=self.options.path, storage_options=None)
        if resolve(self.ctx.dataset_url, self.ctx.storage_options).protocol != "file":
            raise UsageError(
                f"the disk loader reads local directories, not {self.ctx.dataset_url!r}",
                hint="use --loader bucket for object storage, or disk=./local/copy",
            )
