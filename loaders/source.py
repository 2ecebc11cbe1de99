"""Reading one sample's bytes from any fsspec URL with exactly one request, sync or async.

The manifest already knows every object's size, so no HEAD is needed. Measured with s3fs 2026.9
(see ``tests/loaders/test_source.py``): ``S3FileSystem.cat_file``/``_cat_file`` with the default
``max_concurrency=10`` first asks for the object's size (a HEAD) and then GETs it (two round
trips); ``_cat_file(path, max_concurrency=1)`` issues a single ``GetObject``. gcsfs's
``_cat_file`` with its default ``concurrency=1`` is a single GET.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from delibench.errors import FetchError
from delibench.manifest import Manifest
from delibench.storage import Location, redact, resolve

__all__ = ["FetchMeter", "SampleSource", "clean_cause"]

_SECRET = re.compile(r"(?i)((?:x-amz-)?(?:signature|credential|security-token|access_?key\w*|secret\w*|token)=)[^&\s'\"]+")


def clean_cause(exc: BaseException, limit: int = 300) -> str:
    """One-line description of ``exc`` with credential-like values removed."""
    text = f"{type(exc).__name__}: {exc}".replace("\n", " ")
    return _SECRET.sub(r"\1REDACTED", text)[:limit]


@dataclass
class FetchMeter:
    """Request counters of one process (picklable, so workers can send theirs back)."""

    requests_count: int = 0
    bytes_read: int = 0
    errors_count: int = 0
    latencies_s: list[float] = field(default_factory=list)

    def record(self, nbytes: int, latency_s: float) -> None:
        """Count one successful request."""
        self.requests_count += 1
        self.bytes_read += nbytes
        self.latencies_s.append(latency_s)

    def merge(self, other: FetchMeter) -> None:
        """Add ``other``'s counters to these."""
        self.requests_count += other.requests_count
        self.bytes_read += other.bytes_read
        self.errors_count += other.errors_count
        self.latencies_s.extend(other.latencies_s)


class SampleSource:
    """Reads samples of one dataset by manifest index, one request per sample.

    The fsspec filesystem is created lazily in the process that uses it (and again after a
    ``fork()``), so a source built in the parent is safe to use in DataLoader workers. Async
    backends (s3fs, gcsfs) run their coroutines on fsspec's IO event loop (one thread, many
    requests in flight); synchronous ones (local files, memory) run in a small thread pool owned
    by the source.

    Args:
        dataset_url: Dataset root (fsspec URL).
        manifest: The dataset's manifest (keys and sizes).
        storage_options: Overrides for the filesystem options derived from the environment.
        io_threads: Threads for synchronous backends, and the least size of the S3 client's
            connection pool (botocore's default of 10 would otherwise cap requests in flight).
    """

    def __init__(
        self,
        dataset_url: str,
        manifest: Manifest,
        storage_options: dict[str, Any] | None = None,
        *,
        io_threads: int = 8,
    ) -> None:
        self.location: Location = resolve(dataset_url, storage_options)
        if self.location.protocol == "s3":
            # NOTE: aiobotocore keeps at most max_pool_connections (default 10) connections; more
            # requests in flight than that queue for a connection instead of overlapping.
            config = dict(self.location.storage_options.get("config_kwargs") or {})
            config["max_pool_connections"] = max(int(config.get("max_pool_connections", 10)), io_threads)
            self.location = Location(self.location.protocol, self.location.path,
                                     {**self.location.storage_options, "config_kwargs": config})
        self.manifest = manifest
        self.io_threads = max(1, io_threads)
        self.meter = FetchMeter()
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._fs: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # NOTE: clients, pools and locks never cross a process boundary; the receiver builds its own.
        state = self.__dict__.copy()
        state.update(_fs=None, _pid=None, _executor=None, _lock=None, meter=FetchMeter())
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    # -- plumbing -------------------------------------------------------------------------------

    @property
    def fs(self) -> Any:
        """This process's filesystem (created on first use, re-created after fork)."""
        pid = os.getpid()
        if self._pid != pid:
            self._fs = self.location.filesystem()
            self._executor = None
            self._lock = threading.Lock()
            self.meter = FetchMeter() if self._pid is not None else self.meter
            self._pid = pid
        return self._fs

    @property
    def is_async(self) -> bool:
        """True when the backend has native coroutines (s3fs, gcsfs)."""
        return bool(getattr(self.fs, "async_impl", False))

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        """The event loop :meth:`fetch` must run on (fsspec's IO loop)."""
        fs = self.fs
        if getattr(fs, "async_impl", False):
            return fs.loop
        import fsspec.asyn

        return fsspec.asyn.get_loop()

    def url_of(self, index: int) -> str:
        """The credential-free URL of sample ``index``."""
        key = self.manifest.samples[index].key
        return redact(self.location.url.rstrip("/") + "/" + key)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.io_threads, thread_name_prefix="delibench-io")
        return self._executor

    async def _one_request(self, path: str) -> bytes:
        fs = self.fs
        if self.location.protocol == "s3":
            # NOTE: max_concurrency=1 skips s3fs's size lookup (a HEAD) before the GET.
            return await fs._cat_file(path, max_concurrency=1)
        if getattr(fs, "async_impl", False):
            return await fs._cat_file(path)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), fs.cat_file, path)

    def _check(self, index: int, data: bytes) -> bytes:
        expected = self.manifest.samples[index].size_bytes
        if len(data) != expected:
            raise FetchError(self.manifest.samples[index].key, self.url_of(index),
                             f"short read: got {len(data)} of {expected} bytes")
        return data

    def _failure(self, index: int, exc: BaseException) -> FetchError:
        with self._lock:
            self.meter.errors_count += 1
        if isinstance(exc, FetchError):
            return exc
        return FetchError(self.manifest.samples[index].key, self.url_of(index), clean_cause(exc))

    # -- public API -----------------------------------------------------------------------------

    async def fetch(self, index: int) -> bytes:
        """Read sample ``index`` with one request; must be awaited on :attr:`loop`.

        Raises:
            FetchError: The read failed (names the key and the credential-free URL).
        """
        path = self.location.child(self.manifest.samples[index].key)
        start = time.perf_counter()
        try:
            data = self._check(index, await self._one_request(path))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # noqa: BLE001 - every backend error becomes a FetchError
            raise self._failure(index, exc) from exc
        with self._lock:
            self.meter.record(len(data), time.perf_counter() - start)
        return data

    def submit(self, index: int) -> concurrent.futures.Future[bytes]:
        """Schedule :meth:`fetch` on the IO loop from any thread; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(self.fetch(index), self.loop)

    def fetch_sync(self, index: int) -> bytes:
        """Read sample ``index`` with one request, blocking (for DataLoader workers)."""
        return self.fetch_many_sync([index], concurrency=1)[0]

    def fetch_many_sync(self, indices: Sequence[int], concurrency: int = 1) -> list[bytes]:
        """Read several samples, ``concurrency`` requests in flight, blocking; results in order.

        Raises:
            FetchError: The first failure (the other requests are cancelled).
        """
        if concurrency <= 1 and not self.is_async:
            out = []
            fs = self.fs
            for index in indices:
                path = self.location.child(self.manifest.samples[index].key)
                start = time.perf_counter()
                try:
                    data = self._check(index, fs.cat_file(path))
                except Exception as exc:  # noqa: BLE001
                    raise self._failure(index, exc) from exc
                with self._lock:
                    self.meter.record(len(data), time.perf_counter() - start)
                out.append(data)
            return out

        async def gather() -> list[bytes]:
            sem = asyncio.Semaphore(max(1, concurrency))

            async def one(index: int) -> bytes:
                async with sem:
                    return await self.fetch(index)

            tasks = [asyncio.ensure_future(one(i)) for i in indices]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()

        return asyncio.run_coroutine_threadsafe(gather(), self.loop).result()

    def close(self) -> None:
        """Stop the thread pool of synchronous backends (the filesystem itself is fsspec's)."""
        if self._executor is not None and self._pid == os.getpid():
            self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None
