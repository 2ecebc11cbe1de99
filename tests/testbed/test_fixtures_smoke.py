"""The shared fixtures give real servers that s3fs and gcsfs can write to and read from."""

from __future__ import annotations

import os

import pytest


@pytest.mark.s3
def test_s3_bucket_roundtrip_through_s3fs(s3_bucket: str) -> None:
    import s3fs

    fs = s3fs.S3FileSystem(client_kwargs={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    payload = os.urandom(300_000)
    fs.pipe(f"{s3_bucket}/a/b.bin", payload)
    assert fs.cat(f"{s3_bucket}/a/b.bin") == payload
    assert fs.ls(f"{s3_bucket}/a") == [f"{s3_bucket[5:]}/a/b.bin"]


@pytest.mark.s3
def test_shaped_s3_roundtrip_counts_bytes(s3_bucket: str, shaped_s3) -> None:
    from delibench.storage import resolve

    link = shaped_s3("same-region")
    loc = resolve(s3_bucket)
    fs = loc.filesystem()
    payload = os.urandom(200_000)
    fs.pipe(loc.child("x.bin"), payload)
    assert fs.cat(loc.child("x.bin")) == payload
    stats = link.stats()
    assert stats.connections >= 1
    assert stats.bytes_client_to_server >= len(payload)
    assert stats.bytes_server_to_client >= len(payload)


@pytest.mark.gcs
def test_gcs_bucket_roundtrip_through_gcsfs(gcs_bucket: str) -> None:
    from delibench.storage import resolve

    loc = resolve(gcs_bucket)
    fs = loc.filesystem()
    payload = os.urandom(100_000)
    fs.pipe(loc.child("k/v.bin"), payload)
    assert fs.cat(loc.child("k/v.bin")) == payload
