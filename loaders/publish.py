"""Putting datasets into buckets and describing them: ``push``, ``index`` and ``info``.

Why a manifest: a loader that knows every key, size and checksum before it starts needs no LIST
(slow and paginated on big buckets) and no HEAD per object. ``push`` uploads a local dataset and
writes the manifest *last*, after checking that every object arrived, so a half-pushed dataset
never looks complete. ``index`` serves users who bring their own ImageFolder-style data: it lists
the tree once, reads each object to checksum it, and writes the manifest beside it. A prefix
holding WebDataset tar shards and no ImageFolder tree is indexed as shards instead: each sample's
shard, data offset and size (see :mod:`delibench.loaders.shards`), so a loader reads any sample
by a ranged GET. A prefix holding both (``--layout both``) gets the manifest of the tree with the
shards attached, each sample's shard and offset recorded, after checking that the two hold the
same samples. ``push`` records the same offsets for a dataset with shards (read from the local
tars' headers, no network).

Uploads and reads run with bounded parallelism. S3 uploads go through one thread-safe botocore
client shared by a thread pool: against SeaweedFS on a busy 2-core machine, 1,000 objects of
~110 KB went up at 166-259 objects/s (18-28 MB/s) that way, against 143-165 objects/s through
s3fs in the same runs (its async ``put`` and a thread pool over s3fs performed alike; 16 requests
in flight were as good as 32 or 64, the server sharing the two cores). Other stores use their
fsspec filesystem: worker coroutines on fsspec's event loop for async ones (gcsfs), threads
otherwise.
"""

from __future__ import annotations

import asyncio
import mimetypes
import os
import socket
import threading
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from delibench.errors import DelibenchError, RuntimeFailure, UsageError
from delibench.manifest import MANIFEST_NAME, Manifest, SampleEntry, checksum, read_manifest, write_manifest
from delibench.storage import Location, list_files, resolve

__all__ = [
    "IMAGE_EXTENSIONS",
    "DatasetInfo",
    "ProgressCallback",
    "index",
    "info",
    "push",
]

#: ``progress(done, total, bytes_done)``; may be called from a worker thread.
ProgressCallback = Callable[[int, int, int], None]

#: File extensions counted as images when listing a tree (torchvision's ImageFolder set).
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")

_CONNECT_TIMEOUT_S = 3.0
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, slots=True)
class DatasetInfo:
    """A manifest's summary, as ``delibench data info`` prints it."""

    url: str
    dataset_id: str
    source: str
    samples: int
    classes: int
    total_bytes: int
    mean_sample_bytes: float
    min_sample_bytes: int
    max_sample_bytes: int
    shards: int
    shard_bytes: int
    image_size: tuple[int, int] | None
    seed: int | None
    created_at: str


# ----------------------------------------------------------------------------------------------
# Reaching the store


def _endpoint_of(loc: Location) -> str | None:
    """The custom endpoint (S3-compatible server or GCS emulator) ``loc`` talks to, if any."""
    if loc.protocol == "s3":
        return (loc.storage_options.get("client_kwargs") or {}).get("endpoint_url") or loc.storage_options.get("endpoint_url")
    if loc.protocol == "gs":
        return loc.storage_options.get("endpoint_url")
    return None


def _check_reachable(loc: Location) -> None:
    """Fail in seconds, not minutes, when a configured endpoint refuses connections.

    Clients retry connection errors with backoff (botocore up to 5 attempts, gcsfs 6), which
    turns a typo in ``AWS_ENDPOINT_URL`` into minutes of silence; one TCP connect says it at once.
    """
    endpoint = _endpoint_of(loc)
    if not endpoint:
        return
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=_CONNECT_TIMEOUT_S):
            pass
    except OSError as exc:
        variable = "AWS_ENDPOINT_URL" if loc.protocol == "s3" else "STORAGE_EMULATOR_HOST"
        raise RuntimeFailure(
            f"cannot reach the {loc.protocol} endpoint {endpoint}: {exc.strerror or exc}",
            hint=f"is the server running? check {variable} (e.g. start one with 'delibench testbed up')",
        ) from exc


def _storage_error(action: str, loc: Location, exc: BaseException, hint: str | None = None) -> RuntimeFailure:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return RuntimeFailure(f"{action} {loc.display_url} failed: {type(exc).__name__}: {text}", hint=hint)


def _ensure_bucket(fs: Any, loc: Location) -> None:
    """Create the bucket of an ``s3://`` or ``gs://`` location when it does not exist."""
    if loc.protocol not in ("s3", "gs"):
        return
    bucket = loc.path.split("/", 1)[0]
    try:
        fs.invalidate_cache(bucket)
        if fs.exists(bucket):
            return
        fs.mkdir(bucket)
    except Exception as exc:  # botocore/aiohttp errors share no base class with OSError
        raise _storage_error(f"creating bucket {bucket!r} for", loc, exc) from exc


# ----------------------------------------------------------------------------------------------
# Bounded parallelism


def _run_bounded(
    fs: Any,
    items: Sequence[_T],
    concurrency: int,
    sync_fn: Callable[[_T], _R],
    async_fn: Callable[[_T], Awaitable[_R]] | None,
    on_done: Callable[[_T, _R], None],
) -> None:
    """Apply ``sync_fn`` (threads) or ``async_fn`` (coroutines on fs.loop) to every item, ``concurrency`` at a time.

    The first error stops the remaining work and is re-raised here.
    """
    if async_fn is not None and getattr(fs, "async_impl", False):
        from fsspec.asyn import sync

        async def runner() -> None:
            queue = iter(items)
            failed: list[BaseException] = []

            async def worker() -> None:
                for item in queue:
                    if failed:
                        return
                    try:
                        result = await async_fn(item)
                    except BaseException as exc:
                        failed.append(exc)
                        return
                    on_done(item, result)

            await asyncio.gather(*(worker() for _ in range(min(concurrency, max(len(items), 1)))))
            if failed:
                raise failed[0]

        sync(fs.loop, runner)
        return
    lock = threading.Lock()
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="delibench-publish") as pool:
        futures = [(item, pool.submit(sync_fn, item)) for item in items]
        try:
            for item, future in futures:
                result = future.result()
                with lock:
                    on_done(item, result)
        except BaseException:
            for _, future in futures:
                future.cancel()
            raise


#: s3fs storage options the direct botocore uploader understands; anything else falls back to s3fs.
_BOTOCORE_OPTIONS = frozenset({"key", "secret", "token", "anon", "endpoint_url", "client_kwargs", "config_kwargs", "profile"})


def _botocore_client(loc: Location, concurrency: int) -> Any | None:
    """A thread-safe botocore S3 client configured like s3fs would be, or None to use s3fs.

    botocore ships with s3fs (through aiobotocore), so this adds no dependency.
    """
    options = loc.storage_options
    if loc.protocol != "s3" or set(options) - _BOTOCORE_OPTIONS:
        return None
    import botocore.config
    import botocore.session
    from botocore import UNSIGNED

    client_kwargs = dict(options.get("client_kwargs") or {})
    if options.get("endpoint_url"):
        client_kwargs.setdefault("endpoint_url", options["endpoint_url"])
    config_kwargs = dict(options.get("config_kwargs") or {})
    config_kwargs["max_pool_connections"] = max(concurrency, 10)
    if options.get("anon"):
        config_kwargs["signature_version"] = UNSIGNED
    session = botocore.session.Session(profile=options.get("profile"))
    return session.create_client(
        "s3",
        aws_access_key_id=options.get("key"),
        aws_secret_access_key=options.get("secret"),
        aws_session_token=options.get("token"),
        config=botocore.config.Config(**config_kwargs),
        **client_kwargs,
    )


def _botocore_put(client: Any, loc: Location, src: Path) -> Callable[[str], None]:
    """``put(key)``: one PutObject of the local file ``src/key`` under the location's prefix."""
    bucket, _, prefix = loc.path.partition("/")

    def put(key: str) -> None:
        body = (src / key).read_bytes()
        extra = {}
        content_type, _ = mimetypes.guess_type(key)
        if content_type:
            extra["ContentType"] = content_type
        client.put_object(Bucket=bucket, Key=f"{prefix}/{key}" if prefix else key, Body=body, **extra)

    return put


# ----------------------------------------------------------------------------------------------
# Listing a tree into a manifest


def _is_image(key: str) -> bool:
    name = key.rsplit("/", 1)[-1]
    return "/" in key and not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _list_images(fs: Any, loc: Location) -> list[tuple[str, int]]:
    """``(key, size)`` of every image under a class folder of ``loc``, sorted by key."""
    try:
        return list_files(fs, loc, _is_image)
    except Exception as exc:
        raise _storage_error("listing", loc, exc) from exc


def _manifest_from_listing(fs: Any, loc: Location, concurrency: int, progress: ProgressCallback | None,
                           images: list[tuple[str, int]] | None = None) -> Manifest:
    """The manifest of the ImageFolder tree at ``loc`` (``images``: its listing, when already made)."""
    images = _list_images(fs, loc) if images is None else images
    if not images:
        raise UsageError(
            f"no images found under {loc.display_url}",
            hint="expected an ImageFolder tree: <root>/<class>/<image>.jpg (also .jpeg .png .webp ...)",
        )
    classes = sorted({key.split("/", 1)[0] for key, _ in images})
    label_of = {name: i for i, name in enumerate(classes)}
    digests: dict[str, tuple[int, str]] = {}
    done = [0, 0]

    def read_sync(item: tuple[str, int]) -> bytes:
        return fs.cat_file(loc.child(item[0]))

    async def read_async(item: tuple[str, int]) -> bytes:
        return await fs._cat_file(loc.child(item[0]))

    def on_done(item: tuple[str, int], data: bytes) -> None:
        digests[item[0]] = (len(data), checksum(data))
        done[0] += 1
        done[1] += len(data)
        if progress is not None:
            progress(done[0], len(images), done[1])

    try:
        _run_bounded(fs, images, concurrency, read_sync, read_async, on_done)
    except DelibenchError:
        raise
    except Exception as exc:
        raise _storage_error("reading objects of", loc, exc) from exc
    samples = tuple(
        SampleEntry(key=key, size_bytes=digests[key][0], label=label_of[key.split("/", 1)[0]], sha256=digests[key][1])
        for key, _ in images
    )
    return Manifest(samples=samples, classes=tuple(classes), source="listed")


# ----------------------------------------------------------------------------------------------
# Public API


def _check_concurrency(concurrency: int) -> None:
    if concurrency < 1:
        raise UsageError(f"concurrency must be at least 1, got {concurrency}")


def _local_manifest(src: Path, concurrency: int) -> tuple[Manifest, list[str]]:
    """The source's manifest (its own, or one built by listing it) and the keys to upload."""
    if (src / MANIFEST_NAME).is_file():
        manifest = read_manifest(str(src))
    else:
        loc = resolve(str(src))
        manifest = _manifest_from_listing(loc.filesystem(), loc, concurrency, None)
    present = [s for s in manifest.samples if (src / s.key).is_file()]
    if present and len(present) != len(manifest.samples):
        missing = next(s.key for s in manifest.samples if not (src / s.key).is_file())
        raise UsageError(
            f"{src} is incomplete: {len(manifest.samples) - len(present)} of {len(manifest.samples)} samples are missing (first: {missing})",
            hint="regenerate it, or delete its manifest to push what is there",
        )
    if not present and not manifest.shards:
        raise UsageError(f"no sample files of the manifest are in {src}")
    for shard in manifest.shards:
        if not (src / shard.key).is_file():
            raise UsageError(f"{src} is incomplete: shard {shard.key} is missing")
    for entry in present:
        size = (src / entry.key).stat().st_size
        if size != entry.size_bytes:
            raise UsageError(
                f"{src / entry.key} is {size} bytes but the manifest says {entry.size_bytes}",
                hint="the data changed after the manifest was written; delete the manifest to rebuild it",
            )
    keys = [s.key for s in present] + [s.key for s in manifest.shards]
    if manifest.shards:
        from delibench.loaders.shards import add_member_index

        # Where each sample lies in its shard, so loaders can read members by range (local headers only).
        manifest = replace(add_member_index(manifest, str(src)), sample_objects=bool(present))
    return manifest, keys


def push(
    src_dir: str | os.PathLike[str],
    url: str,
    *,
    concurrency: int = 16,
    storage_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
) -> Manifest:
    """Upload a local dataset to any fsspec URL and write its manifest there, last.

    Args:
        src_dir: Local dataset root: from ``make_dataset`` (with manifest) or any ImageFolder tree
            (a manifest is built by listing it; the source directory is not modified).
        url: Destination root (``s3://bucket/prefix``, ``gs://...``, ``file://...``, ``memory://...``).
            A missing bucket is created.
        concurrency: Uploads in flight.
        storage_options: fsspec options overriding those from the environment.
        progress: ``progress(objects_done, objects_total, bytes_done)``.

    Returns:
        The manifest written at the destination.

    Raises:
        UsageError: Missing or incomplete source, bad URL, no images.
        RuntimeFailure: Endpoint unreachable, an upload failed, or objects are missing afterwards.
    """
    _check_concurrency(concurrency)
    src = Path(src_dir).expanduser()
    if not src.is_dir():
        raise UsageError(f"source directory not found: {src}", hint="create one with 'delibench data make DIR'")
    loc = resolve(url, storage_options)
    manifest, keys = _local_manifest(src.resolve(), concurrency)
    _check_reachable(loc)
    fs = loc.filesystem()
    _ensure_bucket(fs, loc)
    try:
        # A re-push first removes the old manifest, so an interrupted re-push is never mistaken for complete.
        if fs.exists(loc.child(MANIFEST_NAME)):
            fs.rm_file(loc.child(MANIFEST_NAME))
        if loc.protocol == "file":
            fs.makedirs(loc.path, exist_ok=True)  # the root itself: shards (and the manifest) are files there
            for folder in sorted({k.rsplit("/", 1)[0] for k in keys if "/" in k}):
                fs.makedirs(loc.child(folder), exist_ok=True)
    except Exception as exc:
        raise _storage_error("preparing", loc, exc) from exc

    sizes = {s.key: s.size_bytes for s in manifest.samples} | {s.key: s.size_bytes for s in manifest.shards}
    done = [0, 0]

    def put_sync(key: str) -> None:
        fs.put_file(str(src / key), loc.child(key))

    async def put_async(key: str) -> None:
        await fs._put_file(str(src / key), loc.child(key))

    put_async_or_none: Callable[[str], Awaitable[None]] | None = put_async
    client = _botocore_client(loc, concurrency)
    if client is not None:
        put_sync, put_async_or_none = _botocore_put(client, loc, src), None

    def on_done(key: str, _: None) -> None:
        done[0] += 1
        done[1] += sizes[key]
        if progress is not None:
            progress(done[0], len(keys), done[1])

    try:
        _run_bounded(fs, keys, concurrency, put_sync, put_async_or_none, on_done)
    except DelibenchError:
        raise
    except Exception as exc:
        raise _storage_error(
            f"uploading to (after {done[0]} of {len(keys)} objects)",
            loc,
            exc,
            hint="no manifest was written; fix the cause (an internal error can mean the store is full) and push again",
        ) from exc
    finally:
        if client is not None:
            client.close()
    _verify_upload(fs, loc, sizes, keys)
    write_manifest(manifest, url, storage_options)
    return manifest


def _verify_upload(fs: Any, loc: Location, sizes: dict[str, int], keys: Iterable[str]) -> None:
    """One listing of the destination: every uploaded key present with its size."""
    root = loc.path.rstrip("/")
    try:
        fs.invalidate_cache(root)
        found = fs.find(root, detail=True)
    except Exception as exc:
        raise _storage_error("listing", loc, exc) from exc
    listed = {}
    for path, meta in found.items():
        path = path if loc.protocol != "memory" else "/" + path.lstrip("/")
        if path.startswith(root + "/"):
            listed[path[len(root) + 1 :]] = int(meta.get("size") or 0)
    wrong = [k for k in keys if listed.get(k) != sizes[k]]
    if wrong:
        raise RuntimeFailure(
            f"upload to {loc.display_url} is incomplete: {len(wrong)} objects missing or of the wrong size (first: {wrong[0]})",
            hint="run the push again; no manifest was written",
        )


def index(
    url: str,
    *,
    concurrency: int = 16,
    storage_options: dict[str, Any] | None = None,
    progress: ProgressCallback | None = None,
    checksums: bool = True,
) -> Manifest:
    """Build the manifest of an existing ImageFolder tree (``<root>/<class>/<image>``) and write it there.

    Lists the tree once and reads every image once to checksum it. Classes are the folder names,
    sorted, as torchvision's ImageFolder numbers them.

    A prefix with no ImageFolder images but ``.tar`` files (at any depth) is indexed as WebDataset
    shards (:func:`delibench.loaders.shards.index_tars`): one sample per member group with an
    image, labels from the ``.cls`` members, each sample's shard and data offset recorded. With
    ``checksums`` every shard is read once to checksum its members; without, only the tar headers
    are read (ranged GETs that skip the data) and the samples are not verified when loaded.

    A prefix with both (``data make --layout both``: the tree, and the same samples in tars beside
    it) gets the tree's manifest with the shards attached: each sample's shard and data offset, as
    ``push`` records them, so loaders read it as objects, members or whole shards. Each file must
    be exactly one tar member of its size (and checksum, with ``checksums``), else nothing is written.

    Raises:
        UsageError: Bad URL, no images found, or files and shards that do not hold the same samples.
        RuntimeFailure: Endpoint unreachable or a read failed.
    """
    _check_concurrency(concurrency)
    loc = resolve(url, storage_options)
    _check_reachable(loc)
    if loc.protocol == "file" and not Path(loc.path).is_dir():
        raise UsageError(f"directory not found: {loc.path}")
    fs = loc.filesystem()
    try:  # one listing for both layouts
        found = list_files(fs, loc, lambda key: _is_image(key) or _is_tar(key))
    except Exception as exc:
        raise _storage_error("listing", loc, exc) from exc
    images = [item for item in found if _is_image(item[0])]
    tars = [item for item in found if _is_tar(item[0])]
    if tars and not images:
        manifest = _index_shards(fs, loc, tars, concurrency, checksums, progress)
    elif tars:
        # Layout "both": the files and the shards of the same samples; report progress over both.
        total = len(images) + len(tars)
        files_bytes = [0]

        def files_progress(done: int, _total: int, bytes_done: int) -> None:
            files_bytes[0] = bytes_done
            if progress is not None:
                progress(done, total, bytes_done)

        def shards_progress(done: int, _total: int, bytes_done: int) -> None:
            if progress is not None:
                progress(len(images) + done, total, files_bytes[0] + bytes_done)

        listed = _manifest_from_listing(fs, loc, concurrency, files_progress, images)
        in_tars = _index_shards(fs, loc, tars, concurrency, checksums, shards_progress)
        manifest = _attach_shards(listed, in_tars, loc)
    else:
        manifest = _manifest_from_listing(fs, loc, concurrency, progress, images)
    write_manifest(manifest, url, storage_options)
    return manifest


def _is_tar(key: str) -> bool:
    return key.lower().endswith(".tar")


def _index_shards(fs: Any, loc: Location, tars: list[tuple[str, int]], concurrency: int, checksums: bool,
                  progress: ProgressCallback | None) -> Manifest:
    from delibench.loaders.shards import index_tars

    try:
        return index_tars(fs, loc, tars, concurrency=concurrency, checksums=checksums, progress=progress)
    except DelibenchError:
        raise
    except Exception as exc:
        raise _storage_error("reading tar shards of", loc, exc) from exc


def _attach_shards(listed: Manifest, in_tars: Manifest, loc: Location) -> Manifest:
    """``listed`` (an ImageFolder tree's manifest) with the shards of ``in_tars`` and each sample's shard and offset.

    A member matches the file whose key equals its name, else the one file with its base name
    (``000123.jpg`` is ``class_003/000123.jpg``, as ``data make --layout both`` writes them). Every
    file must be exactly one member of the same size, and of the same checksum when both are
    known; labels stay the folders' (ImageFolder's numbering), whatever the ``.cls`` members say.

    Raises:
        UsageError: The files and the shards do not hold the same samples (one line naming the first difference).
    """
    hint = "the files and the tar shards must hold the same samples: regenerate them, or move the tars out of the prefix"
    where = loc.display_url
    by_key = {s.key: i for i, s in enumerate(listed.samples)}
    by_name: dict[str, list[int]] = {}
    for i, s in enumerate(listed.samples):
        by_name.setdefault(s.key.rsplit("/", 1)[-1], []).append(i)
    found: dict[int, tuple[int, int]] = {}
    for member in in_tars.samples:
        assert member.shard is not None and member.offset is not None
        shard_key = in_tars.shards[member.shard].key
        # index_tars prefixes a member's name with its shard's key when two shards hold that name.
        name = member.key[len(shard_key) + 1 :] if member.key.startswith(shard_key + "/") else member.key
        i = by_key.get(name)
        if i is None:
            candidates = by_name.get(name.rsplit("/", 1)[-1], [])
            if len(candidates) > 1:
                raise UsageError(f"{where}: member {name!r} of shard {shard_key} matches {len(candidates)} files "
                                 f"({listed.samples[candidates[0]].key!r}, {listed.samples[candidates[1]].key!r}, ...)",
                                 hint="name the members by their files' keys (class/000123.jpg) to tell them apart")
            if not candidates:
                raise UsageError(f"{where}: member {name!r} of shard {shard_key} has no file in the ImageFolder tree", hint=hint)
            i = candidates[0]
        sample = listed.samples[i]
        if i in found:
            raise UsageError(f"{where}: {sample.key!r} is in the tar shards twice "
                             f"({in_tars.shards[found[i][0]].key} and {shard_key})", hint=hint)
        if member.size_bytes != sample.size_bytes:
            raise UsageError(f"{where}: {sample.key!r} is {sample.size_bytes} bytes but its member {name!r} of "
                             f"{shard_key} is {member.size_bytes}", hint=hint)
        if member.sha256 and sample.sha256 and member.sha256 != sample.sha256:
            raise UsageError(f"{where}: {sample.key!r} and its member {name!r} of {shard_key} differ "
                             f"(same size, different bytes)", hint=hint)
        found[i] = (member.shard, member.offset)
    missing = [s.key for i, s in enumerate(listed.samples) if i not in found]
    if missing:
        raise UsageError(f"{where}: {len(missing)} of {len(listed)} files are in no tar shard (first: {missing[0]!r})", hint=hint)
    samples = tuple(replace(s, shard=found[i][0], offset=found[i][1]) for i, s in enumerate(listed.samples))
    return replace(listed, samples=samples, shards=in_tars.shards)


def info(url: str, *, storage_options: dict[str, Any] | None = None) -> DatasetInfo:
    """Summarise the dataset at ``url`` from its manifest (one GET).

    Raises:
        UsageError: Bad URL, or no manifest there.
        RuntimeFailure: Endpoint unreachable.
    """
    loc = resolve(url, storage_options)
    _check_reachable(loc)
    try:
        manifest = read_manifest(url, storage_options)
    except DelibenchError:
        raise
    except Exception as exc:
        raise _storage_error("reading the manifest of", loc, exc) from exc
    sizes = [s.size_bytes for s in manifest.samples]
    return DatasetInfo(
        url=loc.display_url,
        dataset_id=manifest.dataset_id,
        source=manifest.source,
        samples=len(manifest),
        classes=len(manifest.classes),
        total_bytes=manifest.total_bytes,
        mean_sample_bytes=manifest.mean_sample_bytes,
        min_sample_bytes=min(sizes),
        max_sample_bytes=max(sizes),
        shards=len(manifest.shards),
        shard_bytes=sum(s.size_bytes for s in manifest.shards),
        image_size=manifest.image_size,
        seed=manifest.seed,
        created_at=manifest.created_at,
    )
