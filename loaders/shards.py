"""WebDataset tar shards as a sample store: where each sample's bytes lie in its shard.

A tar member's data is one contiguous byte range of its shard (after a 512-byte header, padded
to 512 bytes), so a loader that knows ``(shard, offset, size)`` per sample reads any sample in
any order with one ranged GET, exactly as it reads a per-sample object: that is deli's
``source=members`` (:class:`~delibench.loaders.source.SampleSource` with ``members=True``).

This module finds those ranges:

* :func:`add_member_index` — a manifest that already lists the samples and the shards (``data
  make --layout both|shards``): read the shards' headers only and record each sample's offset,
  matching members to samples by file name (``000123.jpg`` is ``class_003/000123.jpg``).
* :func:`index_tars` — a bucket of tars nobody described (``delibench data index``): one sample
  per WebDataset group (members sharing a basename up to the first dot: ``000123.jpg`` +
  ``000123.cls``), its data the group's image member, its label the ``.cls`` member's number.
  With ``checksums`` (the default) each shard is read once, sequentially, to checksum every
  member and the shard; without, only the headers are read (ranged reads of ``header_block``
  bytes, skipping the data), and the samples carry no checksum (not verified).

:class:`WholeShardSource` is the other way to read shards (deli's ``source=shards``): fetch a whole
shard when one of its samples is wanted and slice samples out of it.

Header reads go through :mod:`tarfile` on an fsspec file: tarfile seeks past each member's data,
and the file turns each read outside its buffer into one ranged GET of ``block_size`` bytes, so
ustar, GNU long names and pax headers all parse as tarfile parses them.
"""

from __future__ import annotations

import asyncio
import hashlib
import posixpath
import re
import tarfile
from collections import OrderedDict
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from typing import Any

from delibench.errors import UsageError
from delibench.loaders.source import SampleSource
from delibench.manifest import Manifest, SampleEntry, ShardEntry
from delibench.storage import Location, list_files, resolve

__all__ = ["IMAGE_SUFFIXES", "TarMember", "WholeShardSource", "add_member_index", "index_tars", "read_members", "split_member_name"]

#: Extensions of a WebDataset group's member taken as the sample's bytes (first match wins).
IMAGE_SUFFIXES = ("jpg", "jpeg", "png", "webp", "ppm", "bmp", "pgm", "tif", "tiff")
#: Bytes per ranged read when walking headers (small members share one read; big ones are skipped).
HEADER_BLOCK = 64 * 1024
#: Bytes per sequential read when checksumming whole shards.
STREAM_BLOCK = 8 * 1024 * 1024

_GROUP = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")


@dataclass(frozen=True, slots=True)
class TarMember:
    """One regular file in a tar shard: its name, where its data starts and how long it is (sha256: "" unless read)."""

    name: str
    offset: int
    size: int
    sha256: str = ""
    #: The bytes of a small member (a ``.cls`` label) when the shard was read whole.
    data: bytes | None = None


def split_member_name(name: str) -> tuple[str, str] | None:
    """WebDataset's grouping key and extension of a member name (``a/b.seg.jpg`` -> ``("a/b", "seg.jpg")``)."""
    match = _GROUP.match(name)
    return (match.group(1), match.group(2)) if match else None


def _open(fs: Any, path: str, block_size: int) -> Any:
    if getattr(fs, "protocol", None) in ("file", ("file", "local")) or "file" in (getattr(fs, "protocol", ()) or ()):
        return fs.open(path, "rb")
    return fs.open(path, "rb", block_size=block_size, cache_type="readahead")


def read_members(fs: Any, path: str, *, block_size: int = HEADER_BLOCK) -> list[TarMember]:
    """The regular members of the tar at ``path``, reading headers only (their data is skipped).

    Raises:
        UsageError: Not a tar file.
    """
    with _open(fs, path, block_size) as f:
        try:
            with tarfile.open(fileobj=f, mode="r:") as tar:
                return [TarMember(m.name, m.offset_data, m.size) for m in tar if m.isreg()]
        except tarfile.TarError as exc:
            raise UsageError(f"{path} is not a readable tar file ({exc})") from exc


class _Hashing:
    """A read-only stream that hashes what is read through it."""

    def __init__(self, raw: Any) -> None:
        self.raw = raw
        self.digest = hashlib.sha256()
        self.size = 0

    def read(self, n: int = -1) -> bytes:
        data = self.raw.read(n)
        self.digest.update(data)
        self.size += len(data)
        return data


def read_members_checksummed(fs: Any, path: str, *, block_size: int = STREAM_BLOCK) -> tuple[list[TarMember], int, str]:
    """The regular members of the tar at ``path`` with their sha256, reading it once front to back;
    also the shard's size and sha256.

    Raises:
        UsageError: Not a tar file.
    """
    members: list[TarMember] = []
    with _open(fs, path, block_size) as f:
        stream = _Hashing(f)
        try:
            with tarfile.open(fileobj=stream, mode="r|") as tar:
                for m in tar:
                    if not m.isreg():
                        continue
                    handle = tar.extractfile(m)
                    data = handle.read() if handle is not None else b""
                    small = data if _is_label(m.name) else None
                    members.append(TarMember(m.name, m.offset_data, m.size, hashlib.sha256(data).hexdigest(), small))
        except tarfile.TarError as exc:
            raise UsageError(f"{path} is not a readable tar file ({exc})") from exc
        while stream.read(block_size):  # the end-of-archive blocks, so the shard's checksum is whole
            pass
    return members, stream.size, stream.digest.hexdigest()


def _map_bounded(fn: Callable[[str], Any], items: Sequence[str], concurrency: int) -> list[Any]:
    if concurrency <= 1 or len(items) <= 1:
        return [fn(i) for i in items]
    with ThreadPoolExecutor(max_workers=min(concurrency, len(items)), thread_name_prefix="delibench-tar") as pool:
        return list(pool.map(fn, items))


def add_member_index(manifest: Manifest, url: str, storage_options: dict[str, Any] | None = None, *,
                     concurrency: int = 8, fs: Any = None) -> Manifest:
    """``manifest`` with every sample's shard and data offset, read from the shards' headers.

    Members are matched to samples by file name (a sample's key's last component, e.g.
    ``000123.jpg``); each must appear once, with the sample's size.

    Raises:
        UsageError: The manifest lists no shards, or a sample is in none of them (or in two, or
            with another size).
    """
    if manifest.has_member_index:
        return manifest
    if not manifest.shards:
        raise UsageError("this dataset has no tar shards", hint="make it with 'delibench data make --layout both'")
    loc = resolve(url, storage_options)
    fs = fs if fs is not None else loc.filesystem()
    by_name: dict[str, int] = {}
    for i, s in enumerate(manifest.samples):
        by_name.setdefault(posixpath.basename(s.key), i)
    listed = _map_bounded(lambda key: read_members(fs, loc.child(key)), [s.key for s in manifest.shards], concurrency)
    found: dict[int, tuple[int, int]] = {}
    for shard, members in enumerate(listed):
        for m in members:
            i = by_name.get(posixpath.basename(m.name))
            if i is None:
                continue
            if i in found:
                raise UsageError(f"sample {manifest.samples[i].key!r} is in two shards (or twice in one)")
            if m.size != manifest.samples[i].size_bytes:
                raise UsageError(f"member {m.name!r} of {manifest.shards[shard].key} is {m.size} bytes; "
                                 f"the manifest says {manifest.samples[i].size_bytes} for {manifest.samples[i].key!r}")
            found[i] = (shard, m.offset)
    missing = [s.key for i, s in enumerate(manifest.samples) if i not in found]
    if missing:
        raise UsageError(f"{len(missing)} samples are in no shard (first: {missing[0]!r})",
                         hint="the shards and the manifest disagree; make or index the dataset again")
    samples = tuple(replace(s, shard=found[i][0], offset=found[i][1]) for i, s in enumerate(manifest.samples))
    return replace(manifest, samples=samples)


def list_tars(fs: Any, loc: Location) -> list[tuple[str, int]]:
    """``(key, size)`` of every ``.tar`` under ``loc`` (any depth), sorted by key."""
    return list_files(fs, loc, lambda key: key.lower().endswith(".tar"))


def index_tars(fs: Any, loc: Location, tars: Sequence[tuple[str, int]], *, concurrency: int = 8, checksums: bool = True,
               progress: Callable[[int, int, int], None] | None = None) -> Manifest:
    """The manifest of a dataset stored only as WebDataset tar shards (``tars``: ``(key, size)`` under ``loc``).

    One sample per group of members sharing a WebDataset key (basename up to its first dot) that
    holds an image member (:data:`IMAGE_SUFFIXES`); the label is the group's ``.cls`` number
    (class names are the numbers, ``"0"`` .. ``"max"``), 0 for all when no group has one. Sample
    keys are the image members' names (prefixed with the shard's key where two shards share a
    name); samples are in shard order, then member order.

    Raises:
        UsageError: No tars, a tar that does not parse, or no group with an image member.
    """
    if not tars:
        raise UsageError(f"no tar shards found under {loc.display_url}")
    done = [0, 0]

    def one(key: str) -> tuple[list[TarMember], int, str, dict[str, int]]:
        path = loc.child(key)
        if checksums:
            members, size, digest = read_members_checksummed(fs, path)
        else:
            members, size, digest = read_members(fs, path), dict(tars)[key], ""
        labels = _labels(fs, path, members)
        done[0] += 1
        done[1] += size if checksums else 0
        if progress is not None:
            progress(done[0], len(tars), done[1])
        return members, size, digest, labels

    results = _map_bounded(one, [k for k, _ in tars], concurrency)
    shards: list[ShardEntry] = []
    rows: list[tuple[str, int, int, str, int, int]] = []
    for shard, ((key, _), (members, size, digest, labels)) in enumerate(zip(tars, results)):
        groups: dict[str, TarMember] = {}
        for m in members:
            parts = split_member_name(m.name)
            if parts is None or parts[0] in groups:
                continue
            if parts[1].rsplit(".", 1)[-1].lower() in IMAGE_SUFFIXES:
                groups[parts[0]] = m
        for stem, m in groups.items():
            rows.append((m.name, m.size, labels.get(stem, 0), m.sha256, shard, m.offset))
        shards.append(ShardEntry(key=key, size_bytes=size, sample_count=len(groups), sha256=digest))
    if not rows:
        raise UsageError(f"no samples found in the tar shards under {loc.display_url}",
                         hint=f"expected WebDataset members such as 000123.jpg (+ 000123.cls); image types: {', '.join(IMAGE_SUFFIXES)}")
    names = [r[0] for r in rows]
    dupes = {n for n in names if names.count(n) > 1} if len(set(names)) != len(names) else set()
    samples = tuple(
        SampleEntry(f"{shards[r[4]].key}/{r[0]}" if r[0] in dupes else r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows
    )
    top = max(s.label for s in samples)
    return Manifest(samples=samples, classes=tuple(str(i) for i in range(top + 1)), shards=tuple(shards),
                    source="tars", sample_objects=False)


def _is_label(name: str) -> bool:
    parts = split_member_name(name)
    return parts is not None and parts[1].lower() == "cls"


def _labels(fs: Any, path: str, members: Sequence[TarMember]) -> dict[str, int]:
    """Each group's ``.cls`` number: from the members' bytes when the shard was read whole, else one
    ranged GET per ``.cls`` member (all in flight at once on async stores).

    Raises:
        UsageError: A ``.cls`` member that is not a whole number.
    """
    cls = [m for m in members if _is_label(m.name)]
    if not cls:
        return {}
    if any(m.data is None for m in cls):
        blobs = fs.cat_ranges([path] * len(cls), [m.offset for m in cls], [m.offset + m.size for m in cls])
    else:
        blobs = [m.data for m in cls]
    out = {}
    for m, blob in zip(cls, blobs):
        if isinstance(blob, BaseException):
            raise blob
        text = bytes(blob).decode("utf-8", "replace").strip()
        try:
            out[split_member_name(m.name)[0]] = int(text)  # type: ignore[index]
        except ValueError as exc:
            raise UsageError(f"{path}: {m.name} holds {text[:20]!r}, not a class number") from exc
    return out


class WholeShardSource(SampleSource):
    """Serves samples out of whole tar shards: the first sample wanted from a shard GETs all of it
    (one request, however many of its samples are wanted at that moment), later ones are sliced
    from a buffer of the most recently used shards holding at most ``buffer_bytes``.

    The variant that suits orders walking a shard at a time; under a per-sample shuffle a shard's
    samples are spread over the whole epoch, so a buffer smaller than the dataset reads each shard
    many times (see ``benchmarks/shards.py``). Retries, the lean path and verification of each
    sample (against the manifest's checksum) work as for :class:`SampleSource`; a sample whose
    bytes are wrong drops its shard from the buffer. Hedging does not apply (a second GET of a
    whole shard would double the bytes of a straggler).

    Args:
        buffer_bytes: Most bytes of shards kept between requests (0: none; concurrent requests
            for one shard still share one GET).
        Others as :class:`SampleSource` (``members`` is implied).
    """

    def __init__(self, *args: Any, buffer_bytes: int, **kwargs: Any) -> None:
        super().__init__(*args, members=True, **kwargs)
        self.buffer_bytes = max(0, int(buffer_bytes))
        self._shards: OrderedDict[int, bytes] = OrderedDict()
        self._held = 0
        self._inflight: dict[int, asyncio.Future[bytes]] = {}
        #: Whole-shard GETs that succeeded (requests_count also counts failed attempts and retries).
        self.shard_reads = 0

    def __getstate__(self) -> dict[str, Any]:
        state = super().__getstate__()
        state.update(_shards=OrderedDict(), _held=0, _inflight={})
        return state

    async def fetch(self, index: int) -> bytes:
        """Sample ``index``'s bytes, sliced from its shard (fetched whole when not buffered).

        Raises:
            FetchError: The shard could not be read, or the sample's bytes are wrong.
        """
        return (await self.fetch_counted(index))[0]

    async def fetch_counted(self, index: int) -> tuple[bytes, int, int]:
        """Sample ``index``'s bytes as :meth:`fetch` gives them, with the whole-shard GETs this call
        itself made and their bytes: ``(bytes, 0, 0)`` when the shard was buffered or another call's
        GET was already reading it, ``(bytes, 1, shard size)`` when this call read the shard (the node
        service counts each GET at the rank whose walk sent it).

        Raises:
            FetchError: The shard could not be read, or the sample's bytes are wrong.
        """
        from delibench.loaders.source import _IntegrityError

        _ = self.fs
        entry = self.manifest.samples[index]
        if entry.shard is None or entry.offset is None:
            raise self._failure(index, _IntegrityError("the manifest records no shard for this sample"))
        data, read = await self._shard(entry.shard, index)
        piece = data[entry.offset : entry.offset + entry.size_bytes]
        try:
            return self._check(index, piece), int(read), len(data) if read else 0
        except _IntegrityError as exc:
            self._forget(entry.shard)
            raise self._failure(index, exc) from exc

    def _fetch_blocking(self, index: int) -> bytes:
        return asyncio.run_coroutine_threadsafe(self.fetch(index), self.loop).result()

    def _forget(self, shard: int) -> None:
        data = self._shards.pop(shard, None)
        if data is not None:
            self._held -= len(data)

    def _remember(self, shard: int, data: bytes) -> None:
        if len(data) > self.buffer_bytes:
            return
        while self._held + len(data) > self.buffer_bytes and self._shards:
            _, old = self._shards.popitem(last=False)
            self._held -= len(old)
        self._shards[shard] = data
        self._held += len(data)

    async def _shard(self, shard: int, index: int) -> tuple[bytes, bool]:
        """The shard's bytes, and whether this call read them (False: buffered, or another call's GET)."""
        data = self._shards.get(shard)
        if data is not None:
            self._shards.move_to_end(shard)
            return data, False
        pending = self._inflight.get(shard)
        if pending is not None:
            return await asyncio.shield(pending), False
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        self._inflight[shard] = future
        try:
            data = await self._read_shard(shard, index)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: the waiters (if any) raise it themselves
            raise
        finally:
            self._inflight.pop(shard, None)
        self.shard_reads += 1
        self._remember(shard, data)
        future.set_result(data)
        return data, True

    async def _read_shard(self, shard: int, index: int) -> bytes:
        from delibench.loaders.source import _GaveUp, _IntegrityError

        entry = self.manifest.shards[shard]
        path = self.location.child(entry.key)
        try:
            for attempt in self._retry_core(index):
                try:
                    data = await self._one_request(path, None)
                    if len(data) != entry.size_bytes:
                        raise _IntegrityError(f"short read of shard {entry.key}: got {len(data)} of {entry.size_bytes} bytes")
                    return attempt.succeeded(data)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - classified by the retry core
                    await asyncio.sleep(attempt.backoff_s(exc))
        except _GaveUp as gave_up:
            raise self._failure(index, gave_up.error, gave_up.attempts, gave_up.elapsed_s) from gave_up.error
        raise AssertionError("unreachable: the retry core is endless")
