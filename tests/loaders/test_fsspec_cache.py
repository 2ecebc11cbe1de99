"""The fsspec-cache peer: a truncated file left in fsspec's cache is read again, never served."""

from __future__ import annotations

from pathlib import Path

import pytest

from delibench.errors import FetchError
from delibench.loaders.fsspec_cache import CachedReader
from delibench.loaders.source import SampleSource
from delibench.loaders.testing import Corpus


def _truncate_cached_copy(reader: CachedReader, key: str) -> Path:
    copy = reader.cached_copy(key)
    assert copy is not None, f"{key} is not in fsspec's cache"
    local = Path(copy)
    local.write_bytes(local.read_bytes()[:-11])  # what a worker killed mid-download leaves
    return local


def test_truncated_cache_file_is_read_again(local_corpus: Corpus, tmp_path: Path) -> None:
    reader = CachedReader(SampleSource(local_corpus.url, local_corpus.manifest), "simplecache", str(tmp_path))
    entry = local_corpus.manifest.samples[3]
    (first,), meter = reader([3])
    assert len(first) == entry.size_bytes and meter.requests_count == 1
    _truncate_cached_copy(reader, entry.key)
    (again,), meter = reader([3])
    assert again == first and meter.retries_count == 1 and meter.requests_count == 1


def test_source_shorter_than_the_manifest_is_a_fetch_error(local_corpus: Corpus, tmp_path: Path) -> None:
    import dataclasses

    entry = local_corpus.manifest.samples[5]
    wrong = dataclasses.replace(entry, size_bytes=entry.size_bytes + 7)
    samples = list(local_corpus.manifest.samples)
    samples[5] = wrong
    manifest = dataclasses.replace(local_corpus.manifest, samples=tuple(samples))
    reader = CachedReader(SampleSource(local_corpus.url, manifest), "simplecache", str(tmp_path))
    with pytest.raises(FetchError) as info:
        reader([5])
    assert entry.key in str(info.value) and "short read through fsspec simplecache" in str(info.value)
