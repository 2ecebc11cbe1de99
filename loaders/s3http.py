"""Plain-HTTP GETs of S3 objects: s3fs's own client presigns each URL, one aiohttp session reads it.

Why: a ``GetObject`` through s3fs/aiobotocore runs botocore's whole request pipeline (parameter
validation, endpoint rules, event hooks, header signing, response parsing) for every object.
``benchmarks/get_paths.py`` (512 objects of 110 KB, 32 in flight, SeaweedFS on the same 2-core
machine) measured 1.9-2.4 ms of client CPU per object through s3fs and 0.66-0.68 ms through this
path, at 2.3x the objects per second. When the loader's process also feeds the decode workers,
that CPU is throughput: it decides whether the fetcher keeps up with the decode workers or
starves them.

What stays the same: credentials, endpoint, region and addressing style all come from the s3fs
client (``generate_presigned_url`` is its public API), so every way a user configures s3fs keeps
working. Exactly one HTTP request is sent per call (no retries here; the caller's policy counts
and retries every attempt). Bytes are returned as stored: ``auto_decompress`` is off, as botocore
never decodes a ``Content-Encoding``.

Not covered (the caller falls back to s3fs): requester-pays buckets, versioned reads and
server-side encryption with customer keys (they need request headers or parameters a plain
presigned GET does not carry), and a bucket in another region than the client's (S3 answers
with a redirect that s3fs knows how to follow).
"""

from __future__ import annotations

import re
import ssl
from typing import Any

import yarl

__all__ = ["LeanS3Reader", "NeedsFullClient", "S3HttpError"]

#: Validity of a presigned URL: it is used at once, so this only has to outlast a slow queue.
URL_TTL_S = 900
#: S3 error codes that mean "ask s3fs" (it follows region redirects), not "the object is bad".
_REDIRECT_CODES = frozenset({"PermanentRedirect", "TemporaryRedirect", "AuthorizationHeaderMalformed",
                             "IllegalLocationConstraintException"})
_CODE = re.compile(rb"<Code>([^<]{1,100})</Code>")
_MESSAGE = re.compile(rb"<Message>([^<]{1,300})</Message>")


class S3HttpError(OSError):
    """A non-2xx answer to a GET; ``status`` is what :func:`~delibench.loaders.source.is_transient` reads."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"HTTP {status} {code}: {message}".rstrip(": "))
        self.status = status
        self.code = code

    @classmethod
    def from_body(cls, status: int, body: bytes) -> S3HttpError:
        """The error an S3 XML error body describes (``Code`` and ``Message``)."""
        code = _CODE.search(body)
        message = _MESSAGE.search(body)
        return cls(
            status,
            code.group(1).decode("utf-8", "replace") if code else "",
            message.group(1).decode("utf-8", "replace") if message else "",
        )


class NeedsFullClient(Exception):
    """This request needs s3fs's full client (a redirect to another region); not a failure of the object."""


def supports(fs: Any) -> bool:
    """Whether plain presigned GETs read exactly what ``fs.cat_file`` would for this filesystem."""
    extra = getattr(fs, "req_kw", {}) or {}
    additional = getattr(fs, "s3_additional_kwargs", {}) or {}
    if extra or getattr(fs, "version_aware", False):
        return False
    return not any(k.startswith("SSECustomer") or k == "RequestPayer" for k in additional)


def _ssl_setting(fs: Any) -> ssl.SSLContext | bool:
    """The TLS verification s3fs's client uses: ``client_kwargs['verify']``, then the CA bundle of
    botocore's own configuration chain (``AWS_CA_BUNDLE``, ``ca_bundle`` in ``~/.aws/config``)."""
    verify = (getattr(fs, "client_kwargs", {}) or {}).get("verify", None)
    if verify is False:
        return False
    session = getattr(fs, "session", None)
    configured = session.get_config_variable("ca_bundle") if hasattr(session, "get_config_variable") else None
    cafile = verify if isinstance(verify, str) else configured or None
    return ssl.create_default_context(cafile=cafile)


class LeanS3Reader:
    """GETs objects of one s3fs filesystem through presigned URLs and one aiohttp connection pool.

    Must be used on the filesystem's event loop (the session is created there, on first use).

    Args:
        fs: The s3fs filesystem whose client signs the URLs.
        pool_size: Most connections kept open (requests in flight beyond it queue).
        connect_timeout_s: Seconds to open a connection.
        read_timeout_s: Seconds without a byte arriving before the read fails.
    """

    def __init__(self, fs: Any, pool_size: int, *, connect_timeout_s: float = 60.0, read_timeout_s: float = 60.0) -> None:
        self.fs = fs
        self.pool_size = max(1, pool_size)
        self.connect_timeout_s = connect_timeout_s
        self.read_timeout_s = read_timeout_s
        self._session: Any = None
        self._proxies: dict[tuple[str, str | None], str | None] = {}

    def _http(self) -> Any:
        if self._session is None or self._session.closed:
            import aiohttp

            connector = aiohttp.TCPConnector(limit=self.pool_size, ssl=_ssl_setting(self.fs), ttl_dns_cache=300)
            timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.connect_timeout_s, sock_read=self.read_timeout_s)
            # NOTE: trust_env=False: with it aiohttp reads ~/.netrc and the proxy variables in a
            # thread for every request (0.4 ms of CPU per GET here); the proxy is looked up once
            # per host instead (proxy_for). auto_decompress=False keeps the stored bytes
            # (botocore never decodes a Content-Encoding either).
            self._session = aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)
        return self._session

    def proxy_for(self, url: Any) -> str | None:
        """The ``HTTP(S)_PROXY`` to use for ``url``'s host (``NO_PROXY`` honoured), looked up once per host."""
        key = (url.scheme, url.host)
        if key not in self._proxies:
            import urllib.request

            proxies = urllib.request.getproxies()
            proxy = proxies.get(url.scheme)
            if proxy and url.host and urllib.request.proxy_bypass(url.host):
                proxy = None
            self._proxies[key] = proxy or None
        return self._proxies[key]

    async def get(self, path: str, byte_range: tuple[int, int] | None = None) -> bytes:
        """The whole object at ``bucket/key`` in one GET, or its bytes ``[start, end)`` with ``byte_range``.

        A range goes as a ``Range`` header, which the presigned URL does not sign (only ``host``
        is signed; S3 and SeaweedFS accept unsigned ``Range``). The answer must be ``206`` with
        those bytes; a store that ignores the header (``200``, whole object) is sliced here.

        Raises:
            S3HttpError: The store answered with an error status.
            NeedsFullClient: The bucket lives in another region (s3fs follows that redirect).
        """
        bucket, key, _ = self.fs.split_path(path)
        await self.fs.set_session()  # returns at once once the client exists
        client = await self.fs.get_s3(bucket)
        url = await client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key},
                                                  ExpiresIn=URL_TTL_S)
        # NOTE: encoded=True: the signature covers the URL exactly as the signer encoded it.
        target = yarl.URL(url, encoded=True)
        headers = None
        if byte_range is not None:
            start, end = byte_range
            if not 0 <= start < end:
                raise ValueError(f"bad byte range [{start}, {end})")
            headers = {"Range": f"bytes={start}-{end - 1}"}
        async with self._http().get(target, allow_redirects=False, proxy=self.proxy_for(target), headers=headers) as response:
            body = await response.read()
            if response.status == 200:
                return body if byte_range is None else body[byte_range[0]:byte_range[1]]
            if response.status == 206 and byte_range is not None:
                return body
            error = S3HttpError.from_body(response.status, body)
            if 300 <= response.status < 400 or error.code in _REDIRECT_CODES:
                raise NeedsFullClient(str(error))
            raise error

    async def close(self) -> None:
        """Close the connection pool (idempotent)."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
