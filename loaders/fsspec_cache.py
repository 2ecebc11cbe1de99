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

    Each read is checked against the manifest's size. Why: ``simplecache`` downloads straight
    into the final cache file name (``fs.get_file(path, fn)``, fsspec 2026.9), and a file that
    exists counts as cached. A DataLoader worker stopped mid-download (an epoch cut short, a
    Ctrl-C) leaves a truncated file that every later epoch then serves as the sample. The
    benchmark hit this once: a 1 MB JPEG served 11 bytes short. A short file is dropped from the
    cache and read again once (counted as a retry); still short is a FetchError.
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
            url = f"{self.location.display_url.rstrip('/')}/{entry.key}"
            for attempt in (1, 2):
                cached = self._cached(fs, path)
                start = time.perf_counter()
                try:
                    with fs.open(path, "rb") as f:
                        data = f.read()
                except Exception as exc:  # noqa: BLE001 - becomes a FetchError naming the key
                    raise FetchError(entry.key, url, clean_cause(exc)) from exc
                if not cached:
                    meter.record(len(data), time.perf_counter() - start)
                if len(data) == entry.size_bytes:
                    break
                self._drop(fs, path)
                if attempt == 2:
                    raise FetchError(entry.key, url, f"short read through fsspec {self.mode}: got {len(data)} of "
                                     f"{entry.size_bytes} bytes")
                meter.retries_count += 1
            out.append(data)
        return out, meter

    def cached_copy(self, key: str) -> str | None:
        """The local file in which fsspec's cache holds sample ``key`` in this process, or None."""
        return self._local_copy(self._filesystem(), self.location.child(key))

    @staticmethod
    def _local_copy(fs: Any, path: str) -> str | None:
        try:
            local = fs._check_file(path)
        except Exception:  # noqa: BLE001 - nothing cached
            return None
        if isinstance(local, tuple):  # filecache/blockcache: (details, path)
            local = local[-1]
        return local if isinstance(local, str) and os.path.exists(local) else None

    def _drop(self, fs: Any, path: str) -> None:
        """Remove ``path``'s local copy so that the next open downloads it again."""
        local = self._local_copy(fs, path)
        if local is not None:
            os.remove(local)


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
