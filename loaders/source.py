"""Reading one sample's bytes from any fsspec URL: one request per attempt, retried, hedged, verified.

The manifest already knows every object's size, so no HEAD is needed. Measured with s3fs 2026.9
(see ``tests/loaders/test_source.py``): ``S3FileSystem.cat_file``/``_cat_file`` with the default
``max_concurrency=10`` first asks for the object's size (a HEAD) and then GETs it (two round
trips); ``_cat_file(path, max_concurrency=1)`` issues a single ``GetObject``. gcsfs's
``_cat_file`` with its default ``concurrency=1`` is a single GET.

Reliability (why it lives here): object stores throttle (``503 SlowDown``), reset connections and
stall, and a run of hours must survive them and say what happened. The source owns the retry
policy, so that every attempt is visible in the counters: for S3 it switches off botocore's
retries (``total_max_attempts=1``) and s3fs's own retry loop (``retries=1``), which would
otherwise multiply attempts invisibly (up to 5 x 3 per sample). gcsfs's internal retry of
transient HTTP errors (up to 6 attempts, in a decorator fixed at import) cannot be switched off
from outside; attempts it makes are not counted.

* **Retries**: transient failures (5xx incl. ``SlowDown``, throttling, connection resets, read
  timeouts, incomplete bodies) are retried with exponential backoff and full jitter
  (``uniform(0, min(max_backoff_s, backoff_base_s * 2**n))``), bounded by ``retries`` and by
  ``retry_deadline_s`` since the first attempt. Permanent failures (404, 403, bad requests) are not
  retried. A checksum mismatch is re-read once (bytes can be damaged in transit), then permanent.
* **Hedging**: when the first request for a sample is slower than ``hedge_after`` (a duration, or
  ``"p95"``-style percentile of recent request times), a second request is sent; the first answer
  wins and the other is cancelled.
* **Verification**: with ``verify=True`` the sha256 of fetched bytes is checked against the
  manifest (about 0.1 ms per 110 KB sample on this machine's CPU; see ``tests/reliability``).
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import errno
import itertools
import math
import os
import random
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from delibench.errors import FetchError, UsageError
from delibench.loaders import s3http
from delibench.manifest import Manifest, checksum
from delibench.measure import percentile
from delibench.storage import Location, close_filesystem, redact, redact_text, resolve, run_on_loop
from delibench.units import parse_duration

__all__ = [
    "ON_ERROR_POLICIES",
    "FetchMeter",
    "HedgePolicy",
    "ReliabilityOptions",
    "RetryPolicy",
    "SampleSource",
    "clean_cause",
    "is_transient",
]


#: What a loader does when a sample cannot be read or decoded for good.
ON_ERROR_POLICIES = ("raise", "skip")

#: Recent request times kept for percentile-based hedging.
_LATENCY_WINDOW = 512
#: Request times needed before a percentile hedge threshold is trusted.
_LATENCY_MIN_SAMPLES = 20


def clean_cause(exc: BaseException, limit: int = 300) -> str:
    """One-line description of ``exc`` with credential-like values removed."""
    return redact_text(f"{type(exc).__name__}: {exc}".replace("\n", " "))[:limit]


# -- classification --------------------------------------------------------------------------------

_TRANSIENT_STATUS = frozenset({408, 429, 500, 502, 503, 504})
_PERMANENT_STATUS = frozenset({400, 401, 403, 404, 405, 409, 410, 411, 412, 416})
_TRANSIENT_CODES = ("slowdown", "throttl", "requesttimeout", "internalerror", "serviceunavailable",
                    "service unavailable", "reduce your request rate", "toomanyrequests", "requestlimitexceeded")
_TRANSIENT_NAMES = ("timeout", "connection", "disconnected", "payload", "incompleteread", "responsestreaming",
                    "protocolerror", "reset", "brokenpipe", "httpclienterror", "responseparser")


def _status_of(exc: BaseException) -> int | None:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if isinstance(status, int):
            return status
    for attr in ("status", "code", "status_code"):
        value = getattr(exc, attr, None)
        if isinstance(value, int) and 100 <= value <= 599:
            return value
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen and len(seen) < 8:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def is_transient(exc: BaseException) -> bool:
    """Whether retrying the request that raised ``exc`` may succeed.

    Looks through the exception's cause chain (s3fs wraps botocore errors in ``OSError``s):
    HTTP 408/429/5xx, throttling codes, timeouts, connection resets and cut-off bodies are
    transient; 4xx answers, missing objects and denied access are permanent. Unknown errors
    count as permanent, so a bug is not retried for a minute.
    """
    for item in _chain(exc):
        if isinstance(item, (FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)):
            return False
        status = _status_of(item)
        if status in _TRANSIENT_STATUS:
            return True
        if status in _PERMANENT_STATUS:
            return False
        if isinstance(item, (ConnectionError, TimeoutError, asyncio.TimeoutError)):
            return True
        if isinstance(item, OSError) and item.errno in (errno.ECONNRESET, errno.ECONNREFUSED, errno.ETIMEDOUT, errno.EPIPE):
            return True
        name = type(item).__name__.lower()
        if any(part in name for part in _TRANSIENT_NAMES):
            return True
        text = str(item).lower()
        if any(code in text for code in _TRANSIENT_CODES):
            return True
    return False


class _IntegrityError(Exception):
    """The bytes arrived but are wrong (short read or checksum mismatch)."""


class _GaveUp(Exception):
    """The last error of a sample's attempts, with how many were made and how long they took."""

    def __init__(self, error: BaseException, attempts: int, elapsed_s: float) -> None:
        super().__init__(str(error))
        self.error = error
        self.attempts = attempts
        self.elapsed_s = elapsed_s


class _Attempt:
    """One counted request of a sample, and the retry decision after it fails (see ``SampleSource._retry_core``).

    The decision: permanent failures are not retried; a checksum mismatch is re-read once; transient
    failures and short reads are retried up to ``retry.retries`` times, with the policy's backoff,
    as long as the next attempt starts within ``retry.deadline_s`` of the first.
    """

    def __init__(self, source: SampleSource, number: int, started: float) -> None:
        self.source = source
        self.number = number
        self.started = started
        source._count_attempt(retry=number > 1)
        self.sent_at = time.perf_counter()

    def succeeded(self, data: bytes) -> bytes:
        """Count ``data`` as this attempt's answer and return it."""
        self.source._count_success(len(data), time.perf_counter() - self.sent_at)
        return data

    def backoff_s(self, exc: BaseException) -> float:
        """Seconds to sleep before the next attempt after this one failed with ``exc``.

        Raises:
            _GaveUp: No further attempt (permanent failure, retries or deadline spent).
        """
        source, retry = self.source, self.source.retry
        integrity = isinstance(exc, _IntegrityError)
        give_up = not (integrity or is_transient(exc))
        give_up = give_up or (integrity and "checksum" in str(exc) and self.number >= 2)  # still wrong: wrong at rest
        give_up = give_up or self.number > retry.retries
        if not give_up:
            with source._lock:
                delay = retry.backoff_s(self.number - 1, source._rng)
            if time.perf_counter() - self.started + delay <= retry.deadline_s:
                return delay
        raise _GaveUp(exc, self.number, time.perf_counter() - self.started) from exc


# -- policies ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RetryPolicy:
    """How transient failures are retried: exponential backoff with full jitter, bounded twice.

    Attributes:
        retries: Most retries per sample after the first attempt (0 = never retry).
        deadline_s: Most seconds from a sample's first attempt to its last retry's start.
        backoff_base_s: Cap of the first backoff; doubles with each retry.
        max_backoff_s: Largest cap of one backoff.
    """

    retries: int = 8
    deadline_s: float = 60.0
    backoff_base_s: float = 0.1
    max_backoff_s: float = 10.0

    def backoff_s(self, retry: int, rng: random.Random) -> float:
        """Sleep before retry number ``retry`` (0-based): ``uniform(0, min(max, base * 2**retry))``."""
        return rng.uniform(0.0, min(self.max_backoff_s, self.backoff_base_s * (2**retry)))


@dataclass(frozen=True)
class HedgePolicy:
    """When to send a second request for a straggling sample.

    Attributes:
        after_s: Fixed delay after which the first request counts as a straggler.
        percentile: Or: the given percentile (e.g. 95) of recent request times; until enough
            requests were seen, ``floor_s`` (or no hedging, when 0) applies.
        floor_s: Least hedge delay (keeps a percentile of tiny latencies from doubling requests).
    """

    after_s: float | None = None
    percentile: float | None = None
    floor_s: float = 0.0

    @classmethod
    def parse(cls, value: str | float | int | None) -> HedgePolicy | None:
        """``None``/``0``/``"off"`` -> no hedging; ``"250ms"``/``0.25`` -> fixed; ``"p95"`` -> percentile.

        Raises:
            UsageError: Anything else.
        """
        if value is None or value is False or value == 0 or (isinstance(value, str) and value.strip().lower() in ("", "off", "none", "0")):
            return None
        if isinstance(value, str) and value.strip().lower().startswith("p"):
            text = value.strip().lower()[1:]
            try:
                pct = float(text)
            except ValueError:
                pct = -1.0
            if not 50.0 <= pct < 100.0:
                raise UsageError(f"bad hedge_after {value!r}", hint="a duration (250ms) or a percentile p50..p99.9")
            return cls(percentile=pct, floor_s=0.01)
        try:
            return cls(after_s=parse_duration(value))  # type: ignore[arg-type]
        except UsageError as exc:
            raise UsageError(f"bad hedge_after {value!r}", hint="a duration (250ms) or a percentile such as p95") from exc


@dataclass(frozen=True)
class ReliabilityOptions:
    """Fault-handling options shared by the loaders that read through a :class:`SampleSource`.

    Attributes:
        retries: Most retries of a transient failure per sample (503 SlowDown, resets, timeouts).
        retry_deadline_s: Most seconds spent retrying one sample (``"60s"`` is parsed by
            :func:`~delibench.loaders.pipeline.parse_options`, the options' edge).
        hedge_after: Send a second request for a sample whose first is slower than this: a
            duration (``"300ms"``), a percentile of recent requests (``"p95"``) or None (off).
        on_error: ``raise`` (stop with a FetchError naming the key and URL) or ``skip`` (go on;
            every skipped sample is listed in ``LoaderStats.skipped_keys``).
        verify: Check each fetched sample's sha256 against the manifest.
    """

    retries: int = 8
    retry_deadline_s: float = field(default=60.0, metadata={"unit": "seconds"})
    hedge_after: str | float | None = None
    on_error: str = "raise"
    verify: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.retries, int) or isinstance(self.retries, bool) or self.retries < 0:
            raise UsageError(f"retries must be a whole number >= 0, got {self.retries!r}")
        deadline = self.retry_deadline_s
        if isinstance(deadline, bool) or not isinstance(deadline, (int, float)) or not math.isfinite(deadline) or deadline < 0:
            raise UsageError(f"retry_deadline_s must be a number of seconds >= 0, got {deadline!r}", hint="e.g. 60 or, as a loader option, 60s")
        HedgePolicy.parse(self.hedge_after)  # validates
        if self.on_error not in ON_ERROR_POLICIES:
            raise UsageError(f"unknown on_error {self.on_error!r}", hint=f"use one of: {', '.join(ON_ERROR_POLICIES)}")
        if not isinstance(self.verify, bool):
            raise UsageError(f"verify must be true or false, got {self.verify!r}")

    def source_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of :class:`SampleSource` for these options."""
        return {
            "retry": RetryPolicy(retries=self.retries, deadline_s=self.retry_deadline_s),
            "hedge": HedgePolicy.parse(self.hedge_after),
            "verify": self.verify,
        }


# -- counters ---------------------------------------------------------------------------------------


@dataclass
class FetchMeter:
    """Request counters of one process (picklable, so workers can send theirs back).

    Attributes:
        requests_count: Requests sent (every attempt, retries and hedges included).
        bytes_read: Bytes of successful requests.
        errors_count: Samples that failed for good (after retries).
        retries_count: Retried attempts.
        hedges_count: Second (hedged) requests sent for stragglers.
        latencies_s: Time of each successful request.
        skipped_keys: Samples skipped under ``on_error=skip`` (filled by the loaders).
    """

    requests_count: int = 0
    bytes_read: int = 0
    errors_count: int = 0
    latencies_s: list[float] = field(default_factory=list)
    retries_count: int = 0
    hedges_count: int = 0
    skipped_keys: list[str] = field(default_factory=list)

    def record(self, nbytes: int, latency_s: float) -> None:
        """Count one successful request (sent and answered)."""
        self.requests_count += 1
        self.bytes_read += nbytes
        self.latencies_s.append(latency_s)

    def merge(self, other: FetchMeter) -> None:
        """Add ``other``'s counters to these."""
        self.requests_count += other.requests_count
        self.bytes_read += other.bytes_read
        self.errors_count += other.errors_count
        self.retries_count += other.retries_count
        self.hedges_count += other.hedges_count
        self.latencies_s.extend(other.latencies_s)
        self.skipped_keys.extend(other.skipped_keys)

    def snapshot(self) -> FetchMeter:
        """A copy (for :meth:`since`)."""
        return FetchMeter(self.requests_count, self.bytes_read, self.errors_count, list(self.latencies_s),
                          self.retries_count, self.hedges_count, list(self.skipped_keys))

    def since(self, before: FetchMeter) -> FetchMeter:
        """What was counted after ``before`` (a :meth:`snapshot` of this meter)."""
        return FetchMeter(
            self.requests_count - before.requests_count,
            self.bytes_read - before.bytes_read,
            self.errors_count - before.errors_count,
            self.latencies_s[len(before.latencies_s):],
            self.retries_count - before.retries_count,
            self.hedges_count - before.hedges_count,
            self.skipped_keys[len(before.skipped_keys):],
        )


# -- the source -------------------------------------------------------------------------------------


class SampleSource:
    """Reads samples of one dataset by manifest index, one request per attempt.

    The fsspec filesystem is created lazily in the process that uses it (and again after a
    ``fork()``), so a source built in the parent is safe to use in DataLoader workers. Async
    backends (s3fs, gcsfs) run their coroutines on fsspec's IO event loop (one thread, many
    requests in flight); synchronous ones (local files, memory) run in a small thread pool owned
    by the source.

    Args:
        dataset_url: Dataset root (fsspec URL).
        manifest: The dataset's manifest (keys, sizes and checksums).
        storage_options: Overrides for the filesystem options derived from the environment.
        io_threads: Threads for synchronous backends, and the least size of the S3 client's
            connection pool (botocore's default of 10 would otherwise cap requests in flight).
        retry: Retry policy for transient failures (default :class:`RetryPolicy`; ``retries=0``
            turns retrying off).
        hedge: Straggler hedging (None = off).
        verify: Check the sha256 of fetched bytes against the manifest.
        seed: Seed of the backoff jitter (deterministic tests).
        lean_http: For S3, GET through presigned URLs on a plain aiohttp pool
            (:mod:`delibench.loaders.s3http`, about a third of s3fs's CPU per object) wherever
            that reads exactly what s3fs would; other backends ignore it.
        members: Read each sample as a byte range of its tar shard (the manifest's
            ``SampleEntry.shard``/``offset``; one ranged GET per attempt) instead of as its own
            object. Retries, hedging, verification and the lean path work the same. None (the
            default): members exactly when the samples exist only in shards
            (``Manifest.sample_objects`` false), so every loader reads such a dataset.
    """

    def __init__(
        self,
        dataset_url: str,
        manifest: Manifest,
        storage_options: dict[str, Any] | None = None,
        *,
        io_threads: int = 8,
        retry: RetryPolicy | None = None,
        hedge: HedgePolicy | None = None,
        verify: bool = False,
        seed: int | None = None,
        lean_http: bool = False,
        members: bool | None = None,
    ) -> None:
        if members is None:
            members = not manifest.sample_objects
        if members and not manifest.has_member_index:
            raise UsageError("this manifest does not say where each sample lies in the tar shards",
                             hint="index the shards: 'delibench data index URL' (or push the dataset again)")
        self.members = members
        self.location: Location = resolve(dataset_url, storage_options)
        if self.location.protocol == "s3":
            # NOTE: aiobotocore keeps at most max_pool_connections (default 10) connections; more
            # requests in flight than that queue for a connection instead of overlapping.
            config = dict(self.location.storage_options.get("config_kwargs") or {})
            config["max_pool_connections"] = max(int(config.get("max_pool_connections", 10)), io_threads)
            # NOTE: our retry policy counts every attempt; botocore's own (3 attempts in legacy
            # mode) would hide some, and s3fs multiplies them again (see the module docstring).
            config["retries"] = {"total_max_attempts": 1, "mode": "standard"}
            self.location = Location(self.location.protocol, self.location.path,
                                     {**self.location.storage_options, "config_kwargs": config})
        self.manifest = manifest
        self.io_threads = max(1, io_threads)
        self.retry = retry if retry is not None else RetryPolicy()
        self.hedge = hedge
        self.verify = verify
        self.lean_http = lean_http and self.location.protocol == "s3"
        self._lean: Any = None
        self.meter = FetchMeter()
        self._rng = random.Random(seed)
        self._recent: collections.deque[float] = collections.deque(maxlen=_LATENCY_WINDOW)
        self._hedge_cache: tuple[int, float | None] = (-1, None)
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._fs: Any = None
        self._executor: concurrent.futures.ThreadPoolExecutor | None = None

    def __getstate__(self) -> dict[str, Any]:
        # NOTE: clients, pools and locks never cross a process boundary; the receiver builds its own.
        state = self.__dict__.copy()
        state.update(_fs=None, _pid=None, _executor=None, _lock=None, _lean=None, meter=FetchMeter())
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
            # NOTE: a client of our own (not fsspec's shared instance), so that close() may close it.
            own = Location(self.location.protocol, self.location.path,
                           {**self.location.storage_options, "skip_instance_cache": True})
            self._fs = own.filesystem()
            if self.location.protocol == "s3":
                self._fs.retries = 1  # our retry policy counts every attempt (see the module docstring)
            self._executor = None
            self._lean = None
            self._lock = threading.Lock()
            self.meter = FetchMeter() if self._pid is not None else self.meter
            self._pid = pid
        return self._fs

    @property
    def client_pid(self) -> int | None:
        """The process whose filesystem client this source holds now (None: none; one is made on first use).

        A source that crossed a process boundary (pickled into a DataLoader worker) holds none, and a
        forked child makes its own instead of using its parent's.
        """
        return self._pid if self._fs is not None else None

    @property
    def uses_lean_http(self) -> bool:
        """True when this process's GETs go through the presigned-URL reader (:mod:`~delibench.loaders.s3http`).

        False before the first read, for backends other than S3, and for good once the source fell
        back to s3fs (a set-up a presigned GET cannot express, or a redirect).
        """
        return self._lean is not None and self._pid == os.getpid()

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

    def key_of(self, index: int) -> str:
        """The manifest key of sample ``index``."""
        return self.manifest.samples[index].key

    def url_of(self, index: int) -> str:
        """The credential-free URL of sample ``index`` (with ``members``: its shard's, and the byte range)."""
        if self.members:
            entry = self.manifest.samples[index]
            assert entry.shard is not None and entry.offset is not None
            shard = self.manifest.shards[entry.shard].key
            return redact(f"{self.location.url.rstrip('/')}/{shard} (bytes {entry.offset}-{entry.offset + entry.size_bytes - 1})")
        return redact(self.location.url.rstrip("/") + "/" + self.key_of(index))

    def target_of(self, index: int) -> tuple[str, tuple[int, int] | None]:
        """The path one request for sample ``index`` reads, and the byte range ``[start, end)`` of it (None: all)."""
        entry = self.manifest.samples[index]
        if not self.members:
            return self.location.child(entry.key), None
        assert entry.shard is not None and entry.offset is not None
        return self.location.child(self.manifest.shards[entry.shard].key), (entry.offset, entry.offset + entry.size_bytes)

    def _pool(self) -> concurrent.futures.ThreadPoolExecutor:
        if self._executor is None:
            self._executor = concurrent.futures.ThreadPoolExecutor(self.io_threads, thread_name_prefix="delibench-io")
        return self._executor

    def _lean_reader(self) -> Any:
        """This process's presigned-URL reader, or None where it would not read what s3fs reads."""
        if self._lean is None and self.lean_http:
            fs = self.fs
            if s3http.supports(fs):
                config = (self.location.storage_options.get("config_kwargs") or {})
                self._lean = s3http.LeanS3Reader(fs, self.io_threads,
                                                 connect_timeout_s=float(config.get("connect_timeout", 60)),
                                                 read_timeout_s=float(config.get("read_timeout", 60)))
            else:
                self.lean_http = False
        return self._lean

    async def _one_request(self, path: str, byte_range: tuple[int, int] | None = None) -> bytes:
        fs = self.fs
        reader = self._lean_reader()
        if reader is not None:
            try:
                return await reader.get(path, byte_range)
            except s3http.NeedsFullClient:
                self.lean_http = False  # e.g. a bucket in another region: s3fs follows the redirect
                self._lean = None
                self._count_attempt(retry=False)  # the redirected request was sent: count it
                await reader.close()
        if byte_range is not None:
            # NOTE: a non-negative start and end make a plain Range header in s3fs and gcsfs (no HEAD).
            if getattr(fs, "async_impl", False):
                return await fs._cat_file(path, start=byte_range[0], end=byte_range[1])
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._pool(), fs.cat_file, path, byte_range[0], byte_range[1])
        if self.location.protocol == "s3":
            # NOTE: max_concurrency=1 skips s3fs's size lookup (a HEAD) before the GET.
            return await fs._cat_file(path, max_concurrency=1)
        if getattr(fs, "async_impl", False):
            return await fs._cat_file(path)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool(), fs.cat_file, path)

    def _check(self, index: int, data: bytes) -> bytes:
        entry = self.manifest.samples[index]
        if len(data) != entry.size_bytes:
            raise _IntegrityError(f"short read: got {len(data)} of {entry.size_bytes} bytes")
        if self.verify and entry.sha256 and checksum(data) != entry.sha256:
            raise _IntegrityError(f"checksum mismatch: sha256 of the {len(data)} bytes read differs from the manifest")
        return data

    def _failure(self, index: int, exc: BaseException, attempts: int = 1, elapsed_s: float = 0.0) -> FetchError:
        with self._lock:
            self.meter.errors_count += 1
        if isinstance(exc, FetchError):
            return exc
        cause = str(exc) if isinstance(exc, _IntegrityError) else clean_cause(exc)
        if attempts > 1:
            cause = f"{cause} (gave up after {attempts} attempts in {elapsed_s:.1f} s)"
        return FetchError(self.key_of(index), self.url_of(index), cause)

    def _count_attempt(self, retry: bool) -> None:
        with self._lock:
            self.meter.requests_count += 1
            if retry:
                self.meter.retries_count += 1

    def _count_success(self, nbytes: int, latency_s: float) -> None:
        with self._lock:
            self.meter.bytes_read += nbytes
            self.meter.latencies_s.append(latency_s)
            self._recent.append(latency_s)

    def _retry_core(self, index: int) -> Iterator[_Attempt]:
        """The one retry loop of both read paths: an endless series of counted attempts of sample ``index``.

        The caller sends one request per attempt and hands back its bytes
        (:meth:`_Attempt.succeeded`) or its failure (:meth:`_Attempt.backoff_s`, which says how long to
        sleep before the next attempt or raises :class:`_GaveUp`); only the request and the sleep
        differ between the async path (``await``) and the blocking one.
        """
        started = time.perf_counter()
        for number in itertools.count(1):
            yield _Attempt(self, number, started)

    def hedge_delay_s(self) -> float | None:
        """The current straggler threshold in seconds (None: do not hedge now)."""
        policy = self.hedge
        if policy is None:
            return None
        if policy.after_s is not None:
            return policy.after_s
        count = len(self._recent)
        if count < _LATENCY_MIN_SAMPLES:
            return None
        cached_at, value = self._hedge_cache
        if cached_at >= 0 and count == cached_at and value is not None:
            return value
        assert policy.percentile is not None
        value = max(policy.floor_s, percentile(list(self._recent), policy.percentile))
        self._hedge_cache = (count, value)
        return value

    # -- async path ----------------------------------------------------------------------------

    async def _attempts(self, index: int) -> bytes:
        """Read ``index`` with retries; raises :class:`_GaveUp` (not yet a FetchError)."""
        path, byte_range = self.target_of(index)
        for attempt in self._retry_core(index):
            try:
                return attempt.succeeded(self._check(index, await self._one_request(path, byte_range)))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - classified by the retry core, re-raised when permanent
                await asyncio.sleep(attempt.backoff_s(exc))
        raise AssertionError("unreachable: the retry core is endless")

    async def _hedged(self, index: int, delay_s: float) -> bytes:
        first = asyncio.ensure_future(self._attempts(index))
        tasks = {first}
        try:
            done, _ = await asyncio.wait(tasks, timeout=delay_s)
            if not done:
                with self._lock:
                    self.meter.hedges_count += 1
                tasks.add(asyncio.ensure_future(self._attempts(index)))
            errors: list[BaseException] = []
            pending = set(tasks)
            while pending:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    exc = task.exception()
                    if exc is None:
                        return task.result()
                    errors.append(exc)
            raise errors[0]
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def fetch(self, index: int) -> bytes:
        """Read sample ``index`` (retried and hedged per the policies); must be awaited on :attr:`loop`.

        Raises:
            FetchError: The read failed for good (names the key and the credential-free URL).
        """
        _ = self.fs  # make sure per-process state exists before counting
        try:
            delay = self.hedge_delay_s()
            if delay is not None:
                return await self._hedged(index, delay)
            return await self._attempts(index)
        except asyncio.CancelledError:
            raise
        except _GaveUp as gave_up:
            raise self._failure(index, gave_up.error, gave_up.attempts, gave_up.elapsed_s) from gave_up.error
        except Exception as exc:  # noqa: BLE001 - every backend error becomes a FetchError
            raise self._failure(index, exc) from exc

    def submit(self, index: int) -> concurrent.futures.Future[bytes]:
        """Schedule :meth:`fetch` on the IO loop from any thread; returns a concurrent future."""
        return asyncio.run_coroutine_threadsafe(self.fetch(index), self.loop)

    # -- blocking API --------------------------------------------------------------------------

    def _fetch_blocking(self, index: int) -> bytes:
        """One sample with retries on a synchronous backend, in the calling thread."""
        fs = self.fs
        path, byte_range = self.target_of(index)
        try:
            for attempt in self._retry_core(index):
                try:
                    data = fs.cat_file(path) if byte_range is None else fs.cat_file(path, byte_range[0], byte_range[1])
                    return attempt.succeeded(self._check(index, data))
                except Exception as exc:  # noqa: BLE001 - classified by the retry core, re-raised when permanent
                    time.sleep(attempt.backoff_s(exc))
        except _GaveUp as gave_up:
            raise self._failure(index, gave_up.error, gave_up.attempts, gave_up.elapsed_s) from gave_up.error
        raise AssertionError("unreachable: the retry core is endless")

    def fetch_sync(self, index: int) -> bytes:
        """Read sample ``index``, blocking (for DataLoader workers)."""
        return self.fetch_many_sync([index], concurrency=1)[0]

    def fetch_outcomes_sync(self, indices: Sequence[int], concurrency: int = 1) -> list[bytes | FetchError]:
        """Read several samples, ``concurrency`` requests in flight, blocking; each result or its FetchError.

        Unlike :meth:`fetch_many_sync` one failure does not stop the others (for ``on_error=skip``).
        """
        return self._gather(indices, concurrency, keep_going=True)

    def fetch_many_sync(self, indices: Sequence[int], concurrency: int = 1) -> list[bytes]:
        """Read several samples, ``concurrency`` requests in flight, blocking; results in order.

        Raises:
            FetchError: The first failure (the other requests are cancelled).
        """
        return self._gather(indices, concurrency, keep_going=False)  # type: ignore[return-value]

    def _gather(self, indices: Sequence[int], concurrency: int, *, keep_going: bool) -> list[bytes | FetchError]:
        """The one gather of the blocking API: in this thread for a synchronous backend one at a time,
        else on the IO loop; ``keep_going``: a FetchError becomes that sample's outcome instead of
        stopping (and cancelling) the rest."""

        def outcome_of(exc: FetchError) -> FetchError:
            if not keep_going:
                raise exc
            return exc

        if concurrency <= 1 and not self.is_async:
            out: list[bytes | FetchError] = []
            for index in indices:
                try:
                    out.append(self._fetch_blocking(index))
                except FetchError as exc:
                    out.append(outcome_of(exc))
            return out

        async def gather() -> list[bytes | FetchError]:
            sem = asyncio.Semaphore(max(1, concurrency))

            async def one(index: int) -> bytes | FetchError:
                async with sem:
                    try:
                        return await self.fetch(index)
                    except FetchError as exc:
                        return outcome_of(exc)

            tasks = [asyncio.ensure_future(one(i)) for i in indices]
            try:
                return list(await asyncio.gather(*tasks))
            finally:
                for task in tasks:
                    task.cancel()

        return asyncio.run_coroutine_threadsafe(gather(), self.loop).result()

    def close(self) -> None:
        """Close this process's client on fsspec's IO loop and stop the thread pool of synchronous backends.

        Why here: s3fs and gcsfs close a dropped client from a ``weakref.finalize`` that runs when
        the garbage collector frees the filesystem (it sits in a reference cycle), in whatever
        thread trips the collector. When that thread runs an event loop, the close is scheduled
        as a task on *that* loop, where the client's loop-bound lock fails ("Task exception was
        never retrieved"). Closing explicitly on the client's own loop, and detaching that
        finalizer, leaves nothing for the collector to do.
        """
        if self._pid == os.getpid():
            fs, self._fs, self._pid = self._fs, None, None
            lean, self._lean = self._lean, None
            if lean is not None and fs is not None:
                run_on_loop(lean.close(), fs.loop)
            if fs is not None:
                close_filesystem(fs)
            if self._executor is not None:
                self._executor.shutdown(wait=True, cancel_futures=True)
        self._executor = None

