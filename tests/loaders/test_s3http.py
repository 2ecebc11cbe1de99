"""The lean S3 GET path: the same bytes as s3fs, one request each, clear errors, s3fs where it must."""

from __future__ import annotations

import asyncio
import gzip
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from delibench.errors import FetchError
from delibench.loaders.s3http import LeanS3Reader, S3HttpError, supports
from delibench.loaders.source import SampleSource, is_transient
from delibench.manifest import Manifest, SampleEntry, checksum
from delibench.storage import resolve
from delibench.loaders.testing import Corpus


def _read(fs: Any, paths: list[str]) -> list[bytes | BaseException]:
    """Every path through one LeanS3Reader on the filesystem's loop, results or errors in order."""
    import fsspec.asyn

    reader = LeanS3Reader(fs, pool_size=4)

    async def run() -> list[bytes | BaseException]:
        try:
            return list(await asyncio.gather(*(reader.get(p) for p in paths), return_exceptions=True))
        finally:
            await reader.close()

    return fsspec.asyn.sync(fs.loop, run)


@pytest.mark.s3
def test_same_bytes_as_s3fs_for_awkward_keys_and_encoded_objects(s3_bucket: str) -> None:
    loc = resolve(s3_bucket)
    fs = loc.filesystem()
    blobs = {
        "plain.bin": bytes(range(256)) * 40,
        "dir with space/ü+x=1&y.jpg": b"\xff\xd8" + b"a" * 5000,
        "empty.bin": b"",
    }
    for key, data in blobs.items():
        fs.pipe_file(loc.child(key), data)
    # Stored gzip-encoded: S3 returns the stored bytes, and so must we (no transparent decoding).
    packed = gzip.compress(b"hello " * 1000)
    fs.pipe_file(loc.child("packed.txt"), packed, ContentEncoding="gzip")
    blobs["packed.txt"] = packed

    keys = list(blobs)
    got = _read(fs, [loc.child(k) for k in keys])
    assert got == [fs.cat_file(loc.child(k)) for k in keys] == [blobs[k] for k in keys]


@pytest.mark.s3
def test_missing_key_is_a_permanent_404(s3_bucket: str) -> None:
    loc = resolve(s3_bucket)
    (error,) = _read(loc.filesystem(), [loc.child("nope/missing.bin")])
    assert isinstance(error, S3HttpError)
    assert error.status == 404 and error.code == "NoSuchKey"
    assert not is_transient(error)
    assert is_transient(S3HttpError(503, "SlowDown", "Please reduce your request rate."))


@pytest.mark.s3
def test_lean_source_sends_one_request_per_sample(s3_corpus: Corpus, shaped_s3) -> None:
    link = shaped_s3("local")
    source = SampleSource(s3_corpus.url, s3_corpus.manifest, lean_http=True, verify=True)
    try:
        source.fetch_sync(0)  # the client's first call; connection setup is not a sample request
        assert source.uses_lean_http  # the lean path is what was measured
        before = link.stats().requests
        blobs = source.fetch_many_sync(list(range(1, 11)), concurrency=4)
        assert link.stats().requests - before == 10
        assert [checksum(b) for b in blobs] == [s.sha256 for s in s3_corpus.manifest.samples[1:11]]
        assert source.meter.requests_count == 11
    finally:
        source.close()


@pytest.mark.s3
def test_lean_source_names_a_missing_key_without_secrets(s3_corpus: Corpus) -> None:
    manifest = Manifest(samples=(SampleEntry("train/never-there.bin", 10, 0, ""),), classes=("c0",))
    source = SampleSource(s3_corpus.url, manifest, lean_http=True)
    try:
        with pytest.raises(FetchError) as info:
            source.fetch_sync(0)
    finally:
        source.close()
    text = str(info.value)
    assert "train/never-there.bin" in text and "404" in text and "gave up" not in text
    assert "Signature=" not in text and "delibench-test-secret" not in text


def test_setups_a_presigned_get_cannot_express_use_s3fs() -> None:
    class Fs:
        req_kw: dict[str, str] = {}
        version_aware = False
        s3_additional_kwargs: dict[str, str] = {}

    assert supports(Fs())
    payer = Fs()
    payer.req_kw = {"RequestPayer": "requester"}
    versioned = Fs()
    versioned.version_aware = True
    sse_c = Fs()
    sse_c.s3_additional_kwargs = {"SSECustomerKey": "k", "SSECustomerAlgorithm": "AES256"}
    assert not any(supports(fs) for fs in (payer, versioned, sse_c))


@pytest.mark.s3
def test_requester_pays_bucket_is_read_through_s3fs(s3_corpus: Corpus) -> None:
    source = SampleSource(s3_corpus.url, s3_corpus.manifest, {"requester_pays": True}, lean_http=True)
    try:
        assert checksum(source.fetch_sync(2)) == s3_corpus.manifest.samples[2].sha256
        assert not source.uses_lean_http and not source.lean_http
    finally:
        source.close()


def test_proxy_from_the_environment_honours_no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    import yarl

    monkeypatch.setenv("http_proxy", "http://proxy.example:3128")
    monkeypatch.setenv("no_proxy", "127.0.0.1,internal.example")
    reader = LeanS3Reader(object(), pool_size=1)
    assert reader.proxy_for(yarl.URL("http://store.example/b/k")) == "http://proxy.example:3128"
    assert reader.proxy_for(yarl.URL("http://127.0.0.1:9000/b/k")) is None
    assert reader.proxy_for(yarl.URL("https://other.example/b/k")) is None  # no https_proxy set


# -- a store that redirects presigned GETs (as S3 does for a bucket in another region) ---------


@pytest.fixture
def redirecting_store() -> Iterator[tuple[str, list[str]]]:
    """A tiny S3 look-alike: presigned GETs get 301 PermanentRedirect, signed-header GETs the object.

    Yields its endpoint and the log of what it answered (``presigned`` or ``signed``).
    """
    from aiohttp import web

    body = b"payload-bytes" * 100
    redirect = (b'<?xml version="1.0"?><Error><Code>PermanentRedirect</Code><Message>The bucket you are '
                b"attempting to access must be addressed using the specified endpoint.</Message></Error>")

    seen: list[str] = []

    async def get(request: web.Request) -> web.Response:
        if any(k in request.query for k in ("X-Amz-Signature", "Signature")):
            seen.append("presigned")
            return web.Response(status=301, body=redirect, content_type="application/xml")
        seen.append("signed")
        if request.match_info["key"] != "obj.bin":
            return web.Response(status=404, body=b"<Error><Code>NoSuchKey</Code></Error>")
        return web.Response(body=body, headers={"ETag": '"x"', "Content-Length": str(len(body))})

    loop = asyncio.new_event_loop()
    ready = threading.Event()
    holder: dict[str, Any] = {}

    async def start() -> None:
        app = web.Application()
        app.router.add_get("/{bucket}/{key:.+}", get)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        holder["runner"] = runner
        holder["port"] = runner.addresses[0][1]
        ready.set()

    thread = threading.Thread(target=lambda: (loop.run_until_complete(start()), loop.run_forever()), daemon=True)
    thread.start()
    assert ready.wait(10)
    try:
        yield f"http://127.0.0.1:{holder['port']}", seen
    finally:
        asyncio.run_coroutine_threadsafe(holder["runner"].cleanup(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)


def test_redirect_falls_back_to_s3fs_for_good(redirecting_store: tuple[str, list[str]],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    endpoint, seen = redirecting_store
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    body = b"payload-bytes" * 100
    manifest = Manifest(samples=(SampleEntry("obj.bin", len(body), 0, checksum(body)),), classes=("c0",))
    source = SampleSource("s3://bucket", manifest, {"config_kwargs": {"s3": {"addressing_style": "path"}}},
                          lean_http=True, verify=True)
    try:
        assert source.fetch_sync(0) == body
        assert not source.lean_http and not source.uses_lean_http  # later GETs go straight to s3fs
        assert source.fetch_sync(0) == body
        assert source.meter.requests_count == 3 and source.meter.retries_count == 0  # each one sent
        assert seen == ["presigned", "signed", "signed"]  # tried once, then s3fs only
    finally:
        source.close()
