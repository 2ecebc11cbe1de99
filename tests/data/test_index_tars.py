"""``delibench data index`` over a prefix of WebDataset tars, and ``push`` recording where samples lie in shards."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.loaders import publish
from delibench.manifest import checksum, read_manifest
from delibench.storage import resolve

_CREDS = {"key": "delibench-test", "secret": "delibench-test-secret"}


def _tars(root: Path, samples: int, per_shard: int, size: int, seed: int = 0) -> dict[str, tuple[bytes, int]]:
    """Shards of ``<stem>.png`` + ``<stem>.cls`` members of about ``size`` random bytes; ``{name: (bytes, label)}``."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    out: dict[str, tuple[bytes, int]] = {}
    for first in range(0, samples, per_shard):
        with tarfile.open(root / f"train-{first // per_shard:04d}.tar", "w") as tar:
            for i in range(first, min(samples, first + per_shard)):
                data = rng.integers(0, 256, size + int(rng.integers(0, 100)), dtype=np.uint8).tobytes()
                for name, payload in ((f"img{i:04d}.png", data), (f"img{i:04d}.cls", f"{i % 3}\n".encode())):
                    info = tarfile.TarInfo(name)
                    info.size = len(payload)
                    tar.addfile(info, io.BytesIO(payload))
                out[f"img{i:04d}.png"] = (data, i % 3)
    return out


def _check(manifest: Any, members: dict[str, tuple[bytes, int]], root: Path, checksums: bool) -> None:
    assert manifest.source == "tars" and not manifest.sample_objects and manifest.has_member_index
    assert [s.key for s in manifest.samples] == sorted(members)  # shard order, then member order
    assert manifest.classes == ("0", "1", "2")
    for s in manifest.samples:
        data, label = members[s.key]
        shard = (root / manifest.shards[s.shard].key).read_bytes()
        assert shard[s.offset : s.offset + s.size_bytes] == data and s.label == label
        assert s.sha256 == (checksum(data) if checksums else "")
    for shard in manifest.shards:
        assert shard.sha256 == (checksum((root / shard.key).read_bytes()) if checksums else "")


def test_cli_index_of_a_directory_of_tars(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    members = _tars(tmp_path / "wds", samples=10, per_shard=4, size=700)
    capsys.readouterr()
    code = main(["data", "index", str(tmp_path / "wds"), "--json"])
    out, _ = capsys.readouterr()
    assert code == 0 and json.loads(out)["samples"] == 10
    manifest = read_manifest(str(tmp_path / "wds"))
    _check(manifest, members, tmp_path / "wds", checksums=True)
    assert [s.sample_count for s in manifest.shards] == [4, 4, 2]


def test_index_of_tars_without_samples_is_a_usage_error(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    with tarfile.open(tmp_path / "t" / "a.tar", "w") as tar:
        info = tarfile.TarInfo("readme.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    with pytest.raises(UsageError, match="no samples found in the tar shards"):
        publish.index(str(tmp_path / "t"))
    (tmp_path / "t" / "b.tar").write_bytes(b"not a tar" * 100)
    with pytest.raises(UsageError, match="not a readable tar"):
        publish.index(str(tmp_path / "t"))


def test_push_of_shards_only_records_member_offsets(tmp_path: Path) -> None:
    from delibench.workloads.datagen import make_dataset

    make_dataset(tmp_path / "ds", samples=20, preset="cifar", layout="shards", shard_samples=7, workers=1)
    pushed = publish.push(tmp_path / "ds", "memory://index-tars/ds")
    remote = read_manifest("memory://index-tars/ds")
    assert remote.has_member_index and not remote.sample_objects and remote.samples == pushed.samples
    fs = resolve("memory://index-tars/ds").filesystem()
    for s in remote.samples:
        shard = fs.cat_file(f"/index-tars/ds/{remote.shards[s.shard].key}")
        assert checksum(shard[s.offset : s.offset + s.size_bytes]) == s.sha256


@pytest.mark.s3
def test_index_a_bucket_of_tars_headers_only_reads_a_fraction(tmp_path: Path, s3_server: Any, shaped_s3: Any) -> None:
    import s3fs

    members = _tars(tmp_path / "wds", samples=24, per_shard=8, size=200_000)  # big members: headers are far apart
    opts = {**_CREDS, "client_kwargs": {"endpoint_url": s3_server.endpoint_url}, "config_kwargs": {"s3": {"addressing_style": "path"}}}
    bucket = f"tars-{uuid.uuid4().hex[:10]}"
    fs = s3fs.S3FileSystem(**opts, skip_instance_cache=True)
    fs.mkdir(bucket)
    fs.pipe({f"{bucket}/in/deep/{p.name}": p.read_bytes() for p in sorted((tmp_path / "wds").glob("*.tar"))})
    link = shaped_s3("local")
    routed = {**opts, "client_kwargs": {"endpoint_url": link.endpoint_url}}
    total = sum(p.stat().st_size for p in (tmp_path / "wds").glob("*.tar"))

    before = link.stats().bytes_server_to_client
    manifest = publish.index(f"s3://{bucket}/in", storage_options=routed, checksums=False)
    headers_only = link.stats().bytes_server_to_client - before
    assert [s.key.rsplit("/", 1)[-1] for s in manifest.shards] == ["train-0000.tar", "train-0001.tar", "train-0002.tar"]
    assert manifest.shards[0].key == "deep/train-0000.tar"
    for s in manifest.samples:
        assert s.label == members[s.key][1] and s.size_bytes == len(members[s.key][0])
    assert headers_only < total / 2, (headers_only, total)

    before = link.stats().bytes_server_to_client
    full = publish.index(f"s3://{bucket}/in", storage_options=routed)
    assert link.stats().bytes_server_to_client - before >= total  # read once, checksummed
    assert [(s.shard, s.offset) for s in full.samples] == [(s.shard, s.offset) for s in manifest.samples]
    for s in full.samples:
        assert s.sha256 == checksum(members[s.key][0])
    assert read_manifest(f"s3://{bucket}/in", opts).samples == full.samples
