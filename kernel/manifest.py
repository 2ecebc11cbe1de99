"""The dataset manifest: keys, sizes, labels and checksums stored beside the data, so no LIST is needed."""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from delibench.errors import RuntimeFailure, UsageError

__all__ = [
    "MANIFEST_NAME",
    "MANIFEST_SCHEMA_VERSION",
    "Manifest",
    "SampleEntry",
    "ShardEntry",
    "checksum",
    "read_manifest",
    "write_manifest",
]

#: File name of the manifest at the dataset root.
MANIFEST_NAME = "_delibench_manifest.json"
#: Version 2 added each sample's place in a tar shard (``SampleEntry.shard``/``offset``); a manifest
#: without those is still written as version 1, so older delibench reads it as before.
MANIFEST_SCHEMA_VERSION = 2

#: Connect timeout of the first read of a dataset (botocore's own default is 60 s, s3fs's 5 s).
FIRST_READ_CONNECT_TIMEOUT_S = 3
#: Attempts of the first read (botocore's legacy default of 5 with backoff takes ~15 s to give up).
FIRST_READ_MAX_ATTEMPTS = 2

# Exception classes (by name, anywhere in the MRO, so botocore/aiohttp/google-auth need not be
# imported here) that mean "the endpoint cannot be reached" or "no credentials were found".
_UNREACHABLE = frozenset({
    "ClientConnectorError", "ClientOSError", "ConnectTimeoutError", "ConnectionError",
    "EndpointConnectionError", "HTTPClientError", "ServerDisconnectedError", "TimeoutError",
})
_NO_CREDENTIALS = frozenset({
    "CredentialRetrievalError", "DefaultCredentialsError", "NoCredentialsError", "PartialCredentialsError", "RefreshError",
})


def checksum(data: bytes) -> str:
    """The checksum recorded for every sample and shard (hex SHA-256)."""
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True, slots=True)
class SampleEntry:
    """One training sample stored as one object.

    Attributes:
        key: Path relative to the dataset root, ``/``-separated (e.g. ``train/class_003/000123.jpg``).
        size_bytes: Object size; lets a loader issue exactly one GET without a HEAD.
        label: Class index into ``Manifest.classes``.
        sha256: Hex SHA-256 of the object's bytes ("" when not known: an index built from tar
            headers alone; such samples are not verified).
        shard: Index into ``Manifest.shards`` of the tar shard holding this sample's bytes as one
            member, or None (no member index: the sample is read as its own object).
        offset: Byte offset of that member's data in the shard (tar members are 512-byte
            aligned); with ``size_bytes`` it is the byte range a loader reads. Neither takes
            part in equality: a sample is the same with or without its member location.
    """

    key: str
    size_bytes: int
    label: int
    sha256: str
    # Not part of the sample's identity (equality, ``dataset_id``): where else its bytes lie.
    shard: int | None = field(default=None, compare=False)
    offset: int | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class ShardEntry:
    """One tar shard (WebDataset layout) holding ``sample_count`` samples.

    Attributes:
        key: Path relative to the dataset root. ``data make`` writes ``shard-000000.tar``, a file at
            the root beside the class folders, so the root stays an ImageFolder tree (which takes
            every folder for a class and skips files); datasets made before kept them under
            ``shards/``. Loaders read whatever key is here, so both load.
        size_bytes: Shard size.
        sample_count: Samples in the shard.
        sha256: Hex SHA-256 of the shard's bytes.
    """

    key: str
    size_bytes: int
    sample_count: int
    sha256: str


@dataclass(frozen=True)
class Manifest:
    """Everything a loader needs to know about a dataset before reading a byte of it.

    Attributes:
        samples: Per-sample objects, in a fixed canonical order (the sampler's index space).
        classes: Class names; ``SampleEntry.label`` indexes into it.
        shards: Tar shards holding the same samples (optional second layout).
        source: ``"generated"`` (``data make``), ``"listed"`` (built by listing an ImageFolder tree) or
            ``"tars"`` (built by reading a bucket of WebDataset tar shards).
        image_size: ``(height, width)`` of generated images, when known.
        seed: Generation seed, when generated.
        sample_objects: False when the samples exist only inside the shards (no object per
            sample at its key): loaders then read them as byte ranges of the shards.
    """

    samples: tuple[SampleEntry, ...]
    classes: tuple[str, ...]
    shards: tuple[ShardEntry, ...] = ()
    source: str = "generated"
    image_size: tuple[int, int] | None = None
    seed: int | None = None
    sample_objects: bool = True
    created_at: str = field(default_factory=lambda: datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"))
    schema_version: int = MANIFEST_SCHEMA_VERSION

    def __post_init__(self) -> None:
        if not self.samples:
            raise UsageError("manifest lists no samples")
        for entry in self.samples:
            if not 0 <= entry.label < len(self.classes):
                raise UsageError(f"manifest: label {entry.label} of {entry.key!r} is outside the {len(self.classes)} classes")
            if (entry.shard is None) != (entry.offset is None):
                raise UsageError(f"manifest: {entry.key!r} names a shard without an offset, or an offset without a shard")
            if entry.shard is not None:
                assert entry.offset is not None
                if not 0 <= entry.shard < len(self.shards):
                    raise UsageError(f"manifest: shard {entry.shard} of {entry.key!r} is outside the {len(self.shards)} shards")
                if entry.offset < 0 or entry.offset + entry.size_bytes > self.shards[entry.shard].size_bytes:
                    raise UsageError(f"manifest: member range of {entry.key!r} ({entry.offset}+{entry.size_bytes}) is outside "
                                     f"shard {self.shards[entry.shard].key!r} ({self.shards[entry.shard].size_bytes} bytes)")

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def has_member_index(self) -> bool:
        """True when every sample's bytes can be read as a byte range of a tar shard (its shard and offset are known)."""
        return bool(self.shards) and all(s.shard is not None for s in self.samples)

    @property
    def total_bytes(self) -> int:
        """Sum of all sample sizes."""
        return sum(s.size_bytes for s in self.samples)

    @property
    def mean_sample_bytes(self) -> float:
        """Mean sample size in bytes."""
        return self.total_bytes / len(self.samples)

    @property
    def dataset_id(self) -> str:
        """A short content id: changes when any key or checksum changes."""
        h = hashlib.sha256()
        for s in self.samples:
            h.update(f"{s.key}\0{s.sha256}\n".encode())
        return h.hexdigest()[:12]

    def to_json(self) -> str:
        """Serialise to the JSON stored at ``<root>/_delibench_manifest.json``."""
        members = any(s.shard is not None for s in self.samples) or not self.sample_objects
        doc: dict[str, Any] = {
            # Version 1 when nothing needs version 2, so older delibench reads it.
            "schema_version": MANIFEST_SCHEMA_VERSION if members else 1,
            "created_at": self.created_at,
            "source": self.source,
            "seed": self.seed,
            "image_size": list(self.image_size) if self.image_size else None,
            "classes": list(self.classes),
            "sample_count": len(self.samples),
            "total_bytes": self.total_bytes,
            # Version 2: a sample stored as a tar member adds [shard index, data offset] to its row.
            "samples": [[s.key, s.size_bytes, s.label, s.sha256] + ([s.shard, s.offset] if s.shard is not None else [])
                        for s in self.samples],
            "shards": [asdict(s) for s in self.shards],
        }
        if not self.sample_objects:
            doc["sample_objects"] = False
        return json.dumps(doc, separators=(",", ":"))

    @classmethod
    def from_json(cls, text: str | bytes, *, origin: str = "manifest") -> Manifest:
        """Parse a manifest document.

        Raises:
            UsageError: Not a manifest, a newer schema version, or inconsistent content; names ``origin``.
        """
        try:
            doc = json.loads(text)
            version = int(doc["schema_version"])
            if version > MANIFEST_SCHEMA_VERSION:
                raise UsageError(
                    f"{origin}: manifest schema version {version} is newer than this delibench understands "
                    f"({MANIFEST_SCHEMA_VERSION})",
                    hint="upgrade delibench",
                )
            samples = tuple(_sample_of(row, version) for row in doc["samples"])
            shards = tuple(ShardEntry(**s) for s in doc.get("shards", []))
            image_size = tuple(doc["image_size"]) if doc.get("image_size") else None
            return cls(
                samples=samples,
                classes=tuple(doc["classes"]),
                shards=shards,
                source=doc.get("source", "generated"),
                image_size=image_size,  # type: ignore[arg-type]
                seed=doc.get("seed"),
                sample_objects=bool(doc.get("sample_objects", True)),
                created_at=doc.get("created_at", ""),
                schema_version=version,
            )
        except UsageError:
            raise
        except (ValueError, KeyError, TypeError) as exc:
            raise UsageError(f"{origin}: not a valid delibench manifest ({type(exc).__name__}: {exc})") from exc


def _sample_of(row: list[Any], version: int) -> SampleEntry:
    """A sample's row: ``[key, size, label, sha256]`` (version 1 and 2), ``+ [shard, offset]`` (version 2)."""
    if len(row) == 4:
        key, size, label, digest = row
        return SampleEntry(str(key), int(size), int(label), str(digest))
    if len(row) == 6 and version >= 2:
        key, size, label, digest, shard, offset = row
        return SampleEntry(str(key), int(size), int(label), str(digest), int(shard), int(offset))
    raise ValueError(f"a sample row of version {version} has 4{' or 6' if version >= 2 else ''} fields, not {len(row)}")


def read_manifest(url: str, storage_options: dict[str, Any] | None = None) -> Manifest:
    """Read the manifest at the dataset root ``url`` (any fsspec URL).

    This is usually a command's first contact with the store, so it is where a wrong endpoint,
    missing credentials or a denied bucket show up: they become one clear line, and an S3 read
    gives up within seconds (short connect timeout, :data:`FIRST_READ_MAX_ATTEMPTS` attempts, no
    s3fs retry loop) instead of botocore's and s3fs's minutes of multiplied retries.

    Raises:
        UsageError: No manifest there (with the command that makes one) or an invalid one.
        RuntimeFailure: The endpoint cannot be reached, no credentials were found, or access was
            denied; the message names the endpoint (never credentials).
    """
    from delibench.storage import Location, resolve

    loc = resolve(url, storage_options)
    first_read = loc
    if loc.protocol == "s3":
        config = dict(loc.storage_options.get("config_kwargs") or {})
        config.setdefault("connect_timeout", FIRST_READ_CONNECT_TIMEOUT_S)
        config["retries"] = {"total_max_attempts": FIRST_READ_MAX_ATTEMPTS, "mode": "standard"}
        first_read = Location(loc.protocol, loc.path, {**loc.storage_options, "config_kwargs": config})
    if loc.protocol in ("s3", "gs"):
        # NOTE: a client of its own, closed after the read: fsspec's shared instance may predate a
        # fork of DataLoader workers, and reusing one across forks once hung a later request here.
        first_read = Location(first_read.protocol, first_read.path, {**first_read.storage_options, "skip_instance_cache": True})
    fs = first_read.filesystem()
    if loc.protocol == "s3":
        fs.retries = 1
    path = loc.child(MANIFEST_NAME)
    where = f"{loc.display_url}/{MANIFEST_NAME}"
    try:
        data = _read_and_close(fs, path)
    except FileNotFoundError as exc:
        raise UsageError(
            f"no dataset manifest at {loc.display_url}",
            hint="create one with 'delibench data push SRC URL' or 'delibench data index URL'",
        ) from exc
    except PermissionError as exc:
        raise RuntimeFailure(
            f"access denied reading {where} at {_endpoint(loc)}",
            hint="the credentials in use may not read this bucket: check its policy/IAM (s3:GetObject, storage.objects.get)",
        ) from exc
    except Exception as exc:
        names = {c.__name__ for c in type(exc).__mro__}
        if names & _NO_CREDENTIALS:
            raise RuntimeFailure(f"no credentials to read {where} at {_endpoint(loc)} ({type(exc).__name__})", hint=_credentials_hint(loc.protocol)) from exc
        if names & _UNREACHABLE:
            raise RuntimeFailure(
                f"cannot reach the object store at {_endpoint(loc)} to read {where} ({type(exc).__name__})",
                hint="is the endpoint up? (local testbed: 'delibench testbed status'; check AWS_ENDPOINT_URL / STORAGE_EMULATOR_HOST)",
            ) from exc
        raise
    return Manifest.from_json(data, origin=where)


def _read_and_close(fs: Any, path: str) -> bytes:
    """``fs.cat_file(path)``, then close ``fs``'s client if it is an async one of its own."""
    from delibench.storage import close_filesystem

    try:
        return fs.cat_file(path)
    finally:
        if getattr(fs, "async_impl", False):
            close_filesystem(fs)


def _endpoint(loc: Any) -> str:
    """The endpoint a Location talks to, for messages: from its storage options, credentials removed."""
    from delibench.storage import redact

    options = loc.storage_options
    endpoint = (options.get("client_kwargs") or {}).get("endpoint_url") or options.get("endpoint_url")
    if endpoint:
        return redact(str(endpoint))
    return {"s3": "the default AWS S3 endpoint", "gs": "https://storage.googleapis.com"}.get(loc.protocol, loc.protocol)


def _credentials_hint(protocol: str) -> str:
    if protocol == "gs":
        return "run 'gcloud auth application-default login' (application-default credentials) or set GOOGLE_APPLICATION_CREDENTIALS"
    return "set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE (for the local testbed: eval $(delibench testbed env))"


def write_manifest(manifest: Manifest, url: str, storage_options: dict[str, Any] | None = None) -> str:
    """Write ``manifest`` at the dataset root ``url``; returns the manifest's display URL."""
    from delibench.storage import resolve

    loc = resolve(url, storage_options)
    fs = loc.filesystem()
    path = loc.child(MANIFEST_NAME)
    if loc.protocol == "file":
        fs.makedirs(loc.path, exist_ok=True)
    fs.pipe_file(path, manifest.to_json().encode())
    return f"{loc.display_url}/{MANIFEST_NAME}"
