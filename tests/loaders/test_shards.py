"""deli over WebDataset tar shards (``source=members``): every sample once per epoch, byte-identical
to its tar member, one ranged GET per sample, locally and on SeaweedFS; the manifest's member index."""

from __future__ import annotations

import io
import time
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from delibench.errors import UsageError
from delibench.loaders import publish
from delibench.loaders.deli import DeliLoader
from delibench.loaders.shards import add_member_index
from delibench.loaders.source import SampleSource
from delibench.loaders.testing import Corpus, make_context
from delibench.manifest import Manifest, SampleEntry, ShardEntry, checksum, read_manifest

_CREDS = {"key": "delibench-test", "secret": "delibench-test-secret"}


def write_tars(root: Path, samples: int = 29, shards: int = 3, seed: int = 0) -> dict[str, tuple[bytes, int]]:
    """WebDataset shards of random members (``<stem>.jpg`` + ``<stem>.cls``, some with a ``.json``
    and one with a name long enough for a pax header), shuffled across ``shards`` tars.

    Returns ``{member name: (bytes, label)}`` of the image members: what a reader must get back.
    """
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    stems = [f"s{i:05d}" for i in range(samples)]
    stems[3] = "long/" + "x" * 120 + "-0003"  # > 100 characters: a pax header
    order = rng.permutation(samples)
    expected: dict[str, tuple[bytes, int]] = {}
    for shard in range(shards):
        with tarfile.open(root / f"part-{shard:03d}.tar", "w", format=tarfile.PAX_FORMAT) as tar:
            for i in order[shard::shards]:
                data = rng.integers(0, 256, int(rng.integers(100, 3000)), dtype=np.uint8).tobytes()
                label = int(i % 4)
                members = [(f"{stems[i]}.jpg", data), (f"{stems[i]}.cls", str(label).encode())]
                if i % 5 == 0:
                    members.insert(0, (f"{stems[i]}.json", b'{"note": 1}'))
                for name, payload in members:
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                expected[f"{stems[i]}.jpg"] = (data, label)
    return expected


def upload_tars(tmp_path: Path, s3_server: Any, **tars: int) -> tuple[dict[str, tuple[bytes, int]], str, dict[str, Any]]:
    """:func:`write_tars` (``samples``, ``shards``, ``seed``) uploaded to a fresh SeaweedFS bucket:
    ``(members written, the tars' URL, storage options)``."""
    import s3fs

    members = write_tars(tmp_path / "tars", **tars)
    opts = {**_CREDS, "client_kwargs": {"endpoint_url": s3_server.endpoint_url}, "config_kwargs": {"s3": {"addressing_style": "path"}}}
    bucket = f"shards-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.mkdir(bucket)
    fs.pipe({f"{bucket}/wds/{p.name}": p.read_bytes() for p in sorted((tmp_path / "tars").glob("*.tar"))})
    return members, f"s3://{bucket}/wds", opts


def expected_of(manifest: Manifest, members: dict[str, tuple[bytes, int]]) -> list[str]:
    """What ``checksum_decode`` must give for each manifest index, from the bytes written (not the manifest)."""
    out = []
    for s in manifest.samples:
        data, label = members[s.key]
        assert manifest.classes[s.label] == str(label)
        out.append(f"{checksum(data)}:{s.label}")
    return out


def run_epochs(loader: Any, epochs: int, expected: list[str]) -> None:
    for epoch in range(epochs):
        seen = []
        for batch in loader.iter_epoch(epoch):
            idx = [int(i) for i in batch.indices]
            assert list(batch.inputs) == [expected[i] for i in idx]
            seen.extend(idx)
        assert sorted(seen) == list(range(len(expected))), f"epoch {epoch}: not every sample exactly once"


@pytest.mark.parametrize("checksums", [True, False], ids=["checksummed", "headers-only"])
def test_deli_reads_every_member_once_per_epoch_locally(tmp_path: Path, checksums: bool) -> None:
    members = write_tars(tmp_path / "tars")
    manifest = publish.index(str(tmp_path / "tars"), checksums=checksums)
    assert manifest.source == "tars" and not manifest.sample_objects and manifest.has_member_index
    assert len(manifest) == len(members) and all(bool(s.sha256) == checksums for s in manifest.samples)
    expected = expected_of(manifest, members)
    corpus = Corpus(str(tmp_path / "tars"), manifest)
    # No source option: a dataset that exists only as shards is read as members.
    with DeliLoader(make_context(corpus, num_workers=1, epochs=2), cache_size=0, concurrency=4) as loader:
        assert loader.source.members
        run_epochs(loader, 2, expected)
        stats = loader.stats()
    assert stats.requests_count == 2 * len(members)  # one ranged read per sample and epoch
    assert stats.bytes_read_remote == 2 * sum(len(d) for d, _ in members.values())  # the members, not the shards


def test_datagen_shards_read_as_members_match_the_objects(tmp_path: Path) -> None:
    from delibench.workloads.datagen import make_dataset

    made = make_dataset(tmp_path / "ds", samples=30, preset="cifar", layout="both", shard_samples=8, workers=1)
    indexed = add_member_index(made, str(tmp_path / "ds"))
    for s in indexed.samples:
        shard = (tmp_path / "ds" / indexed.shards[s.shard].key).read_bytes()
        assert shard[s.offset : s.offset + s.size_bytes] == (tmp_path / "ds" / s.key).read_bytes()
    corpus = Corpus(str(tmp_path / "ds"), made)  # no offsets recorded: deli reads the headers at start-up
    expected = [f"{s.sha256}:{s.label}" for s in made.samples]
    with DeliLoader(make_context(corpus, num_workers=0, epochs=2), source="members", cache_size="40KiB", eviction="lru",
                    prefetch_depth=6) as loader:
        assert loader.source.members and loader.source.target_of(0)[1] is not None
        run_epochs(loader, 2, expected)
    with DeliLoader(make_context(corpus, num_workers=0), source="objects") as loader:
        assert not loader.source.members
        run_epochs(loader, 1, expected)


def test_source_option_and_member_index_errors(tmp_path: Path, local_corpus: Corpus) -> None:
    with pytest.raises(UsageError, match="unknown source"):
        DeliLoader(make_context(local_corpus), source="tarballs")
    with pytest.raises(UsageError, match="no tar shards"):
        DeliLoader(make_context(local_corpus, num_workers=0), source="members")
    with pytest.raises(UsageError, match="does not say where"):
        SampleSource(local_corpus.url, local_corpus.manifest, members=True)


def test_a_corrupt_member_range_is_caught_by_verify(tmp_path: Path) -> None:
    members = write_tars(tmp_path / "tars", samples=6, shards=1)
    manifest = publish.index(str(tmp_path / "tars"))
    first = manifest.samples[0]
    moved = Manifest(samples=(SampleEntry(first.key, first.size_bytes, first.label, first.sha256, 0, first.offset + 1),
                              *manifest.samples[1:]), classes=manifest.classes, shards=manifest.shards, sample_objects=False)
    source = SampleSource(str(tmp_path / "tars"), moved, members=True, verify=True)
    try:
        assert source.fetch_sync(1) == members[manifest.samples[1].key][0]
        with pytest.raises(Exception, match="checksum mismatch") as info:
            source.fetch_sync(0)
        assert "part-000.tar (bytes" in str(info.value)  # the URL names the shard and the range
    finally:
        source.close()


def test_manifest_v2_rows_round_trip_and_v1_still_reads(tmp_path: Path) -> None:
    members = write_tars(tmp_path / "tars", samples=5, shards=2)
    manifest = publish.index(str(tmp_path / "tars"))
    doc = json.loads(manifest.to_json())
    assert doc["schema_version"] == 2 and doc["sample_objects"] is False and all(len(r) == 6 for r in doc["samples"])
    again = read_manifest(str(tmp_path / "tars"))
    assert [(s.shard, s.offset) for s in again.samples] == [(s.shard, s.offset) for s in manifest.samples]
    assert not again.sample_objects and len(members) == 5
    # A manifest without member offsets is still written, and read, as version 1.
    plain = Manifest(samples=(SampleEntry("a.bin", 3, 0, ""),), classes=("c",))
    v1 = json.loads(plain.to_json())
    assert v1["schema_version"] == 1 and "sample_objects" not in v1
    assert Manifest.from_json(plain.to_json()).samples == plain.samples
    v1["samples"] = [["a.bin", 3, 0, "", 0, 0]]
    with pytest.raises(UsageError, match="4 fields"):
        Manifest.from_json(json.dumps(v1))
    shard = ShardEntry("s.tar", 1024, 1, "")
    with pytest.raises(UsageError, match="outside shard"):
        Manifest(samples=(SampleEntry("a.bin", 600, 0, "", 0, 512),), classes=("c",), shards=(shard,))
    with pytest.raises(UsageError, match="outside the 1 shards"):
        Manifest(samples=(SampleEntry("a.bin", 6, 0, "", 1, 512),), classes=("c",), shards=(shard,))


@pytest.mark.s3
@pytest.mark.parametrize("lean_http", [True, False], ids=["lean", "s3fs"])
def test_deli_over_shards_on_seaweedfs_one_ranged_get_per_sample(tmp_path: Path, s3_server: Any, shaped_s3: Any,
                                                                 lean_http: bool) -> None:
    members, url, opts = upload_tars(tmp_path, s3_server, samples=23, shards=3, seed=1)
    manifest = publish.index(url, storage_options=opts, checksums=False)  # headers only, by ranged GETs
    expected = expected_of(manifest, members)
    link = shaped_s3("local")
    routed = {**opts, "client_kwargs": {"endpoint_url": link.endpoint_url}}
    corpus = Corpus(url, read_manifest(url, opts))
    before = link.stats().requests
    ctx = make_context(corpus, num_workers=2, epochs=2, storage_options=routed)
    with DeliLoader(ctx, cache_size=0, concurrency=8, lean_http=lean_http, verify=True) as loader:
        run_epochs(loader, 2, expected)
        assert loader.source.uses_lean_http == lean_http
        stats = loader.stats()
    assert stats.requests_count == 2 * len(members) == link.stats().requests - before  # counted at the link too
    assert stats.bytes_read_remote == 2 * sum(len(d) for d, _ in members.values())


@pytest.mark.parametrize("buffer", ["0", "1MiB"], ids=["no-buffer", "all-shards-buffered"])
def test_whole_shard_variant_serves_exact_members(tmp_path: Path, buffer: str) -> None:
    members = write_tars(tmp_path / "tars", samples=17, shards=3, seed=2)
    manifest = publish.index(str(tmp_path / "tars"))
    expected = expected_of(manifest, members)
    corpus = Corpus(str(tmp_path / "tars"), manifest)
    with DeliLoader(make_context(corpus, num_workers=1, epochs=2), source="shards", cache_size=buffer, concurrency=4,
                    prefetch_depth=5) as loader:
        run_epochs(loader, 2, expected)
        stats = loader.stats()
        reads = loader.source.shard_reads
    shard_bytes = sum(s.size_bytes for s in manifest.shards)
    if buffer == "1MiB":  # every shard read once; the sample cache served epoch 2 from memory
        assert reads == stats.requests_count == 3 and stats.bytes_read_remote == shard_bytes
    else:  # each shard read again for most samples: the cost under a shuffled order
        assert 3 < reads == stats.requests_count <= 2 * len(members)
        assert stats.bytes_read_remote > shard_bytes


@pytest.mark.gcs
def test_deli_over_shards_on_fake_gcs(tmp_path: Path, gcs_bucket: str) -> None:
    from delibench.storage import resolve

    members = write_tars(tmp_path / "tars", samples=11, shards=2, seed=3)
    url = f"{gcs_bucket}/wds"
    fs = resolve(url).filesystem()
    fs.pipe({f"{url}/{p.name}": p.read_bytes() for p in sorted((tmp_path / "tars").glob("*.tar"))})
    manifest = publish.index(url, checksums=False)
    expected = expected_of(manifest, members)
    with DeliLoader(make_context(Corpus(url, manifest), num_workers=1, epochs=2), cache_size=0, concurrency=4) as loader:
        run_epochs(loader, 2, expected)
        stats = loader.stats()
    assert stats.requests_count == 2 * len(members)


def test_every_loader_reads_a_shards_only_dataset_by_range(tmp_path: Path) -> None:
    """A dataset pushed without per-sample objects: SampleSource defaults to members, so the
    bucket loader (and the diagnosis's memory loader) read it as deli does."""
    from delibench.loaders.bucket import BucketLoader
    from delibench.workloads.datagen import make_dataset

    make_dataset(tmp_path / "src", samples=21, preset="cifar", layout="shards", shard_samples=8, workers=1)
    manifest = publish.push(tmp_path / "src", str(tmp_path / "dst"))
    assert not manifest.sample_objects and not any((tmp_path / "dst").glob("class_*"))
    source = SampleSource(str(tmp_path / "dst"), manifest)
    try:
        assert source.members and checksum(source.fetch_sync(5)) == manifest.samples[5].sha256
    finally:
        source.close()
    corpus = Corpus(str(tmp_path / "dst"), manifest)
    expected = [f"{s.sha256}:{s.label}" for s in manifest.samples]
    with BucketLoader(make_context(corpus, num_workers=1)) as loader:
        run_epochs(loader, 1, expected)


@pytest.mark.s3
@pytest.mark.parametrize("source", ["members", "shards"])
def test_node_scope_serves_tar_shards_once_per_node_on_seaweedfs(tmp_path: Path, s3_server: Any, shaped_s3: Any,
                                                                  source: str) -> None:
    """World 2 on one node (no scope given: node scope, also for whole shards): the node service reads each member (ranged GET) or each
    whole shard once for 2 epochs with a cache larger than the dataset, counted at the link and in the
    ranks' stats; every rank gets its partition of every epoch in order, byte-identical to the tar
    members written (not the manifest); nothing is left in ``/dev/shm``."""
    import threading

    from delibench.loaders.node import NodeDeliLoader, leftover_segments
    from delibench.loaders.sampler import epoch_order

    members, url, opts = upload_tars(tmp_path, s3_server, samples=29, shards=3, seed=4)
    manifest = publish.index(url, storage_options=opts, checksums=False)
    expected = expected_of(manifest, members)
    link = shaped_s3("local")
    routed = {**opts, "client_kwargs": {"endpoint_url": link.endpoint_url}}
    corpus = Corpus(url, manifest)
    segments = set(leftover_segments())
    before = link.stats().requests
    job, world, epochs = uuid.uuid4().hex, 2, 2
    loaders = [DeliLoader(make_context(corpus, rank=r, world_size=world, local_rank=r, local_world_size=world, job_id=job,
                                       epochs=epochs, num_workers=1, storage_options=routed),
                          source=source, cache_size="1MiB", concurrency=4, prefetch_depth=6)  # scope: node by default
               for r in range(world)]
    got: dict[tuple[int, int], list[int]] = {}
    errors: list[BaseException] = []

    def rank(r: int) -> None:
        try:
            for e in range(epochs):
                for batch in loaders[r].iter_epoch(e):
                    idx = [int(i) for i in batch.indices]
                    if list(batch.inputs) != [expected[i] for i in idx]:
                        raise AssertionError(f"rank {r} epoch {e}: bytes differ from the tar members")
                    got.setdefault((r, e), []).extend(idx)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    try:
        assert all(isinstance(x, NodeDeliLoader) for x in loaders)
        threads = [threading.Thread(target=rank, args=(r,)) for r in range(world)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert not errors, errors[0]
        for e in range(epochs):
            for r in range(world):
                assert got[(r, e)] == epoch_order(len(manifest), e, 7, r, world), (r, e)  # its partition, once, in order
            assert set(got[(0, e)]) | set(got[(1, e)]) == set(range(len(manifest)))
        stats = [x.stats() for x in loaders]
    finally:
        for x in reversed(loaders):
            x.close()
    sent = link.stats().requests - before
    if source == "members":
        reads, nbytes = len(members), sum(len(d) for d, _ in members.values())
    else:
        reads, nbytes = len(manifest.shards), sum(s.size_bytes for s in manifest.shards)
    assert sum(s.requests_count for s in stats) == reads == sent
    assert sum(s.bytes_read_remote for s in stats) == nbytes
    assert sum(s.cache_misses for s in stats) == len(manifest)  # each sample looked up without a GET once cached
    deadline = time.monotonic() + 10
    while set(leftover_segments()) - segments and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not set(leftover_segments()) - segments
