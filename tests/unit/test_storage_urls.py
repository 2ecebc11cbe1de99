"""``resolve``/``redact`` messages keep the URL the user typed recognisable."""

from __future__ import annotations

import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.storage import redact, resolve


@pytest.mark.parametrize("url", ["s3://", "gs://", "s3:///"])
def test_missing_bucket_says_so(url):
    with pytest.raises(UsageError) as info:
        resolve(url)
    assert info.value.message == f"no bucket name in {url!r}"


def test_bad_bucket_name_still_says_bad():
    with pytest.raises(UsageError, match="bad bucket name in 's3://Bad_Bucket/x'"):
        resolve("s3://Bad_Bucket/x")


def test_data_info_without_bucket(capsys):
    assert main(["data", "info", "s3://"]) == 2
    assert "no bucket name in 's3://'" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("memory:///ds/a", "memory:///ds/a"),
        ("memory://ds/a", "memory://ds/a"),
        ("s3://", "s3://"),
        ("file:///data/imgs", "file:///data/imgs"),
        ("/data/imgs", "/data/imgs"),
        ("s3://bucket/p?versionId=3#f", "s3://bucket/p?versionId=3#f"),
        ("s3://user:pw@bucket/p", "s3://bucket/p"),
        ("memory://user:pw@/ds", "memory:///ds"),
        ("https://h:9000/b/k?X-Amz-Signature=abc&part=1", "https://h:9000/b/k?X-Amz-Signature=REDACTED&part=1"),
    ],
)
def test_redact_keeps_the_url_shape(url, shown):
    assert redact(url) == shown
