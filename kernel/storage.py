"""Resolving dataset URLs to fsspec filesystems with the storage options given as data, and redaction.

Configuration is data: a URL and its ``storage_options`` (as fsspec takes them) travel from the CLI
edge in the run spec down to the loaders. Nothing here reads the environment, except what the cloud
clients' own configuration chains read for themselves (botocore: ``AWS_*`` credentials, profiles,
``AWS_ENDPOINT_URL``; Google application-default credentials). The CLI turns the environment it was
started with into storage options through :func:`storage_options_from_env`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from delibench.errors import UsageError

__all__ = [
    "SUPPORTED_PROTOCOLS",
    "Location",
    "close_filesystem",
    "join_url",
    "list_files",
    "endpoint_of",
    "gcs_emulator_options",
    "protocol_of",
    "redact",
    "redact_text",
    "resolve",
    "s3_endpoint_options",
    "run_on_loop",
    "storage_options_from_env",
]

#: URL schemes delibench reads and writes; ``gcs`` is an alias of ``gs``.
SUPPORTED_PROTOCOLS = ("file", "s3", "gs", "memory")
_ALIASES = {"gcs": "gs", "local": "file", "": "file"}


@dataclass(frozen=True, slots=True)
class Location:
    """A dataset root: the protocol, the fsspec path (no scheme) and the storage options to reach it.

    ``storage_options`` can hold an endpoint and, for explicit configuration, credentials, so it is
    never printed; use ``display_url`` for messages.
    """

    protocol: str
    path: str
    storage_options: dict[str, Any]

    @property
    def url(self) -> str:
        """The canonical URL (``s3://bucket/prefix``, ``/abs/dir`` for local files)."""
        return self.path if self.protocol == "file" else f"{self.protocol}://{self.path}"

    @property
    def display_url(self) -> str:
        """The URL safe to show: credentials removed."""
        return redact(self.url)

    def child(self, key: str) -> str:
        """The fsspec path (no scheme) of ``key`` under this root."""
        return join_url(self.path, key)

    def filesystem(self) -> Any:
        """A new or cached fsspec filesystem for this location (imports the backend lazily)."""
        import fsspec

        if self.protocol == "gs":
            skip_gcs_bucket_type_probe()
        try:
            return fsspec.filesystem(self.protocol, **self.storage_options)
        except ImportError as exc:
            raise UsageError(f"no filesystem for {self.protocol}://: {exc}", hint="pip install s3fs gcsfs") from exc


#: gcsfs >= 2025 probes each bucket's type over gRPC when this is not "false"; on an emulator the
#: probe hangs 60 s per call. gcsfs reads it when it is imported.
GCS_BUCKET_TYPE_PROBE = ("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")


def skip_gcs_bucket_type_probe() -> None:
    """Turn gcsfs's bucket-type probe off unless the user chose (call before gcsfs is imported)."""
    os.environ.setdefault(*GCS_BUCKET_TYPE_PROBE)


def list_files(fs: Any, location: Location, accept: Callable[[str], bool]) -> list[tuple[str, int]]:
    """``(key, size)`` of every file under ``location`` (any depth) whose key ``accept`` takes, sorted.

    Keys are relative to the location. The listing is fresh (fsspec's listing cache is dropped
    first); a missing root lists nothing, and other errors propagate for the caller to word.
    """
    root = location.path.rstrip("/")
    try:
        fs.invalidate_cache(root)
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    files = []
    for path, meta in found.items():
        path = path if location.protocol != "memory" else "/" + path.lstrip("/")
        if not path.startswith(root + "/"):
            continue
        key = path[len(root) + 1 :]
        if meta.get("type", "file") == "file" and accept(key):
            files.append((key, int(meta.get("size") or 0)))
    files.sort()
    return files


def redact(url: str) -> str:
    """Remove ``user:password@`` and credential-like query parameters from a URL, keeping its shape.

    ``memory:///ds`` stays ``memory:///ds`` and ``s3://`` stays ``s3://`` (``urlunsplit`` would
    drop the empty authority of schemes it does not know: ``memory:/ds``, ``s3:``).
    """
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit("@", 1)[-1] if "@" in parts.netloc else parts.netloc
    query = re.sub(
        r"(?i)((?:x-amz-)?(?:signature|credential|security-token|token|key|secret)[^=]*)=[^&]*",
        r"\1=REDACTED",
        parts.query,
    )
    if netloc == parts.netloc and query == parts.query:
        return url
    if "://" not in url:
        return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))
    tail = (f"?{query}" if query else "") + (f"#{parts.fragment}" if parts.fragment else "")
    return f"{parts.scheme}://{netloc}{parts.path}{tail}"


#: ``scheme://user:password@`` in free text, and credential-like ``name=value`` pairs (presigned URLs'
#: signatures, tokens, keys) as they appear in error messages and headers.
_TEXT_USERINFO = re.compile(r"(?i)\b([a-z][a-z0-9+.-]*://)[^/@\s:]+:[^/@\s]+@")
_TEXT_SECRET = re.compile(r"(?i)((?:x-amz-)?(?:signature|credential|security-token|access_?key\w*|secret\w*|token)=)[^&\s'\"]+")


def redact_text(text: str) -> str:
    """Remove ``user:password@`` and credential-like ``name=value`` values from free text (error messages).

    The free-text counterpart of :func:`redact`: URLs anywhere in ``text`` lose their user info and
    every ``signature=``/``credential=``/``token=``/``secret...=``/``access_key...=`` value becomes
    ``REDACTED``.
    """
    return _TEXT_SECRET.sub(r"\1REDACTED", _TEXT_USERINFO.sub(r"\1", text))


def join_url(root: str, key: str) -> str:
    """Join a root path or URL and a relative ``/``-separated key."""
    return f"{root.rstrip('/')}/{key.lstrip('/')}" if key else root


def s3_endpoint_options(endpoint_url: str) -> dict[str, Any]:
    """s3fs options for an S3-compatible endpoint (path-style addressing, as such stores expect)."""
    return {"client_kwargs": {"endpoint_url": endpoint_url}, "config_kwargs": {"s3": {"addressing_style": "path"}}}


def gcs_emulator_options(endpoint_url: str) -> dict[str, Any]:
    """gcsfs options for a GCS emulator (anonymous, a fixed project)."""
    return {"endpoint_url": endpoint_url, "token": "anon", "project": "delibench"}


def storage_options_from_env(protocol: str, environ: Mapping[str, str]) -> dict[str, Any]:
    """Storage options for ``protocol`` from an environment mapping (the CLI passes ``os.environ``).

    Credentials are left to each client's usual provider chain (``AWS_*`` variables, profiles,
    instance metadata; Google application-default credentials). Only endpoints are read here:
    ``AWS_ENDPOINT_URL_S3`` / ``AWS_ENDPOINT_URL`` for S3-compatible stores (as the testbed
    prints them) and ``STORAGE_EMULATOR_HOST`` for a GCS emulator.
    """
    if protocol in ("s3", "gs", "gcs"):
        endpoint = (environ.get("AWS_ENDPOINT_URL_S3") or environ.get("AWS_ENDPOINT_URL")) if protocol == "s3" \
            else environ.get("STORAGE_EMULATOR_HOST")
        if endpoint:
            return s3_endpoint_options(endpoint) if protocol == "s3" else gcs_emulator_options(endpoint)
    return {}


def protocol_of(url: str) -> str:
    """The canonical protocol of ``url`` (``s3``, ``gs``, ``file``, ``memory``), without validating the rest."""
    scheme, sep, _ = url.strip().partition("://")
    return _ALIASES.get(scheme.lower(), scheme.lower()) if sep else "file"


def endpoint_of(location: Location) -> str | None:
    """The endpoint a location's options point at (None: the provider's default), without credentials."""
    opts = location.storage_options
    endpoint = (opts.get("client_kwargs") or {}).get("endpoint_url") or opts.get("endpoint_url")
    return redact(str(endpoint)) if endpoint else None


def resolve(url: str, storage_options: dict[str, Any] | None = None) -> Location:
    """Turn a user's URL (``s3://b/p``, ``gs://b/p``, ``file:///d``, ``./d``, ``memory://p``) into a Location.

    Args:
        url: The dataset root or object URL.
        storage_options: fsspec options (endpoint, client options); None or empty: the client's defaults.

    Raises:
        UsageError: Empty URL, unsupported scheme, or a bucket URL without a bucket name.
    """
    if not url or not url.strip():
        raise UsageError("empty URL", hint="give a path or an s3://, gs://, file:// URL")
    url = url.strip()
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "file", url
    scheme = _ALIASES.get(scheme.lower(), scheme.lower())
    if scheme not in SUPPORTED_PROTOCOLS:
        raise UsageError(
            f"unsupported URL scheme {scheme + '://'!r} in {redact(url)!r}",
            hint=f"use one of: {', '.join(p + '://' for p in SUPPORTED_PROTOCOLS)} or a local path",
        )
    if scheme == "file":
        path = os.path.abspath(os.path.expanduser(rest))
    elif scheme == "memory":
        path = "/" + rest.strip("/")
    else:
        path = rest.strip("/")
        bucket = path.split("/", 1)[0]
        if not bucket:
            raise UsageError(f"no bucket name in {redact(url)!r}", hint=f"e.g. {scheme}://my-bucket/prefix")
        if not re.fullmatch(r"[a-z0-9][a-z0-9._-]{1,62}", bucket):
            raise UsageError(f"bad bucket name in {redact(url)!r}", hint="bucket names are 3-63 lower-case letters, digits, '-', '.'")
    return Location(protocol=scheme, path=path, storage_options=dict(storage_options or {}))


def close_filesystem(fs: Any, timeout_s: float = 5.0) -> None:
    """Close an async filesystem's HTTP client on its loop and drop the backend's GC-time close of it."""
    import weakref

    loop = getattr(fs, "loop", None)
    if not getattr(fs, "async_impl", False) or loop is None or loop.is_closed() or not loop.is_running():
        return
    creator = getattr(fs, "_s3creator", None)  # s3fs: the aiobotocore client context
    session = getattr(fs, "_session", None)  # gcsfs: the aiohttp session
    if creator is not None:
        close = creator.__aexit__(None, None, None)
    elif session is not None and not getattr(session, "closed", True):
        close = session.close()
    else:
        return
    run_on_loop(close, loop, timeout_s)
    # NOTE: weakref.finalize has no public lookup; its registry is a stable CPython detail.
    registry = getattr(weakref.finalize, "_registry", {})
    for finalizer, info in list(registry.items()):
        if info.weakref() is fs:
            finalizer.detach()


def run_on_loop(coro: Any, loop: Any, timeout_s: float = 5.0) -> None:
    """Run ``coro`` on ``loop`` (another thread's) and wait; for closing clients, so failures are dropped."""
    import asyncio

    if loop is None or loop.is_closed() or not loop.is_running():
        coro.close()
        return
    try:
        asyncio.run_coroutine_threadsafe(coro, loop).result(timeout_s)
    except Exception:  # noqa: BLE001 - a client that fails to close cleanly is dropped all the same
        pass
