"""The ecosystem's answer: the same per-sample reads through fsspec's ``simplecache``/``blockcache``."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from delibench.errors import FetchError, UsageError
from delibench.loaders.base import LoaderContext
from delibench.loaders.bucket import WorkerFetchLoader
from delibench.loaders.pipeline import FetchBatchDataset
from delibench.loaders.source import FetchMeter, SampleSource, clean_cause
from delibench.storage import Location

__all__ = ["CachedReader", "FsspecCacheLoader", "FsspecCacheOptions"]

_MODES = ("simplecache", "blockcache", "filecache")


@dataclass(frozen=True)
class FsspecCacheOptions:
    """Options of the ``fsspec-cache`` loader.

    Attributes:
        mode: fsspec caching layer: ``simplecache`` (whole files, no checks), ``filecache``
            (whole files with metadata) or ``blockcache`` (sparse blocks of each file).
    """

    mode: str = "simplecache"

    def __post_init__(self) -> None:
        if self.mode not in _MODES:
            raise UsageError(f"unknown fsspec cache mode {self.mode!r}", hint=f"use one of: {', '.join(_MODES)}")


class CachedReader:
    """Reads samples through an fsspec caching filesystem created lazily in each worker process.

    ``requests_count`` counts samples that were not yet in fsspec's cache directory when read
    (each costs at least one request; s3fs adds a HEAD before its GET); cached reads count nothing.
    """

    def __init__(self, source: SampleSource, mode: str, cache_dir: str) -> None:
        self.location: Location = source.location
        self.manifest = source.manifest
        self.mode = mode
        self.cache_dir = cache_dir
        self._pid: int | None = None
        self._fs: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": None, "_fs": None}

    def _filesystem(self) -> Any:
        if self._pid != os.getpid():
            import fsspec

            self.location.filesystem()  # applies backend environment fixes (gcsfs)
            self._fs = fsspec.filesystem(
                self.mode,
                target_protocol=self.location.protocol,
                target_options=self.location.storage_options,
                cache_storage=self.cache_dir,
            )
            self._pid = os.getpid()
        return self._fs

    def _cached(self, fs: Any, path: str) -> bool:
        try:
            return bool(fs._check_file(path))
        except Exception:  # noqa: BLE001 - a cache probe failing only makes the count pessimistic
            return False

    def __call__(self, indices: list[int]) -> tuple[list[bytes], FetchMeter]:
        fs = self._filesystem()
        meter = FetchMeter()
        out = []
        for index in indices:
            entry = self.manifest.samples[index]
            path = self.location.child(entry.key)
            cached = self._cached(fs, path)
            start = time.perf_counter()
            try:
                with fs.open(path, "rb") as f:
                    data = f.read()
            except Exception as exc:  # noqa: BLE001 - becomes a FetchError naming the key
                url = f"{self.location.display_url.rstrip('/')}/{entry.key}"
                raise FetchError(entry.key, url, clean_cause(exc)) from exc
            if not cached:
                meter.record(len(data), time.perf_counter() - start)
            out.append(data)
        return out, meter


class FsspecCacheLoader(WorkerFetchLoader):
    """Per-sample reads through fsspec's caching filesystems, in a temporary directory removed on close."""

    name: ClassVar[str] = "fsspec-cache"
    options_class: ClassVar[type] = FsspecCacheOptions

    def __init__(self, ctx: LoaderContext, **options: Any) -> None:
        super().__init__(ctx, **options)
        self.cache_dir = tempfile.mkdtemp(prefix="delibench-fsspec-")
        self._reader = CachedReader(self.source, self.options.mode, self.cache_dir)

    def _dataset(self) -> FetchBatchDataset:
        return FetchBatchDataset(self.source, self.ctx.decode, read=self._reader)

    def close(self) -> None:
        """Remove the cache directory; idempotent."""
        super().close()
        shutil.rmtree(self.cache_dir, ignore_errors=True)
