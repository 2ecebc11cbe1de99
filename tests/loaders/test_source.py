"""SampleSource: one request per sample (counted on the wire), errors that name the key, fork safety."""

from __future__ import annotations

import os
import time

import pytest

from delibench.errors import FetchError
from delibench.loaders.source import RetryPolicy, SampleSource, clean_cause
from delibench.storage import resolve
from delibench.testbed.profiles import LinkProfile
from delibench.loaders.testing import Corpus


@pytest.mark.s3
def test_one_request_per_sample_counted_at_the_link(s3_corpus: Corpus, shaped_s3) -> None:
    link = shaped_s3("local")
    source = SampleSource(s3_corpus.url, s3_corpus.manifest)
    source.fetch_sync(0)  # the client's first call; connection setup is not a sample request
    before = link.stats().requests
    blobs = source.fetch_many_sync(list(range(1, 11)), concurrency=4)
    assert link.stats().requests - before == 10
    assert [len(b) for b in blobs] == [s.size_bytes for s in s3_corpus.manifest.samples[1:11]]
    assert source.meter.requests_count == 11 and len(source.meter.latencies_s) == 11

    # The finding this pins down: s3fs's own cat_file sends a HEAD before each GET.
    fs = resolve(s3_corpus.url).filesystem()
    fs.invalidate_cache()
    before = link.stats().requests
    fs.cat_file(resolve(s3_corpus.url).child(s3_corpus.manifest.samples[12].key))
    assert link.stats().requests - before == 2


@pytest.mark.s3
def test_concurrent_fetch_overlaps_round_trips(s3_corpus: Corpus, shaped_s3) -> None:
    rtt_s = 0.05
    shaped_s3(LinkProfile(name="rtt50", rtt_s=rtt_s))
    source = SampleSource(s3_corpus.url, s3_corpus.manifest)
    source.fetch_sync(0)
    start = time.perf_counter()
    source.fetch_many_sync(list(range(1, 9)), concurrency=1)
    sequential_s = time.perf_counter() - start
    start = time.perf_counter()
    source.fetch_many_sync(list(range(9, 17)), concurrency=8)
    concurrent_s = time.perf_counter() - start
    assert sequential_s >= 8 * rtt_s  # measured lower bound: one round trip each
    assert concurrent_s < sequential_s / 2


@pytest.mark.s3
def test_deleted_object_raises_fetch_error_without_credentials(s3_corpus: Corpus) -> None:
    from delibench.manifest import Manifest, SampleEntry, checksum

    loc = resolve(s3_corpus.url)
    fs = loc.filesystem()
    fs.pipe_file(loc.child("train/doomed.bin"), b"z" * 10)
    manifest = Manifest(samples=(SampleEntry("train/doomed.bin", 10, 0, checksum(b"z" * 10)),), classes=("c0",))
    options = {"key": "delibench-test", "secret": "delibench-test-secret"}
    source = SampleSource(s3_corpus.url, manifest, options)
    assert source.fetch_sync(0) == b"z" * 10
    fs.rm_file(loc.child("train/doomed.bin"))
    with pytest.raises(FetchError) as info:
        source.fetch_sync(0)
    text = str(info.value)
    assert "train/doomed.bin" in text and info.value.key == "train/doomed.bin"
    assert info.value.url == f"{s3_corpus.url}/train/doomed.bin" and info.value.url in text
    assert "delibench-test-secret" not in text
    assert source.meter.errors_count == 1


def test_short_read_is_a_fetch_error(local_corpus: Corpus, tmp_path) -> None:
    from dataclasses import replace

    entry = replace(local_corpus.manifest.samples[0], size_bytes=local_corpus.manifest.samples[0].size_bytes + 1)
    manifest = replace(local_corpus.manifest, samples=(entry,) + local_corpus.manifest.samples[1:])
    # a short read is retried as transient (a cut connection reads short too); a tight policy keeps the test fast
    with pytest.raises(FetchError, match="short read"):
        SampleSource(local_corpus.url, manifest, retry=RetryPolicy(retries=2, backoff_base_s=0.01)).fetch_sync(0)


def test_clean_cause_removes_signatures() -> None:
    cause = clean_cause(ValueError("GET https://b/k?X-Amz-Signature=abc123&X-Amz-Credential=AKIA/x failed"))
    assert "abc123" not in cause and "AKIA" not in cause and "REDACTED" in cause
    cause = clean_cause(OSError("cannot reach s3://user:hunter2@host/b?token=t0k"))
    assert "hunter2" not in cause and "t0k" not in cause and "s3://host/b" in cause


def test_source_pickles_without_its_client(local_corpus: Corpus) -> None:
    import pickle

    source = SampleSource(local_corpus.url, local_corpus.manifest)
    source.fetch_sync(0)
    clone = pickle.loads(pickle.dumps(source))
    assert clone.client_pid is None and clone.fetch_sync(1) == source.fetch_sync(1)
    source.close()
    clone.close()


@pytest.mark.s3
@pytest.mark.timeout(120)
def test_client_used_before_fork_does_not_hang_workers(s3_corpus: Corpus) -> None:
    """The parent reads (client and loop exist), then forked workers read through their own clients."""
    from delibench.loaders import build_loader
    from delibench.records import LoaderSpec
    from delibench.loaders.testing import make_context

    parent = SampleSource(s3_corpus.url, s3_corpus.manifest)
    parent.fetch_sync(0)
    resolve(s3_corpus.url).filesystem().ls(resolve(s3_corpus.url).path)
    loader = build_loader(LoaderSpec("bucket", {"concurrency": 2}), make_context(s3_corpus, num_workers=2))
    start = time.perf_counter()
    seen = [int(i) for batch in loader.iter_epoch(0) for i in batch.indices]
    assert sorted(seen) == list(range(len(s3_corpus.manifest)))
    assert time.perf_counter() - start < 120  # a hang would sit at the pytest timeout instead
    loader.close()
    assert parent.client_pid == os.getpid()
