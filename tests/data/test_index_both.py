"""``delibench data index`` of a dataset with layout ``both`` (an ImageFolder tree and tar shards of
the same samples): the manifest keeps the shards and each sample's shard and offset, equals the one
``data make`` + ``push`` give, and files and shards that disagree fail in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.loaders import publish
from delibench.loaders.deli import DeliLoader
from delibench.loaders.shards import add_member_index
from delibench.loaders.testing import Corpus, make_context
from delibench.manifest import MANIFEST_NAME, Manifest, read_manifest
from delibench.storage import resolve


@pytest.fixture(scope="module")
def made(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Manifest]:
    """A generated ``both`` dataset (21 samples, 3 shards) and its manifest with the member index."""
    from delibench.workloads.datagen import make_dataset

    root = tmp_path_factory.mktemp("both") / "ds"
    manifest = make_dataset(root, samples=21, classes=3, preset="cifar", layout="both", shard_samples=8, workers=1)
    return root, add_member_index(manifest, str(root))


def _copy(made: tuple[Path, Manifest], to: Path) -> Path:
    shutil.copytree(made[0], to)
    (to / MANIFEST_NAME).unlink()
    return to


def _fields(manifest: Manifest) -> dict[str, tuple[Any, ...]]:
    """What must survive re-indexing, by key: size, class name, checksum, shard key and member offset."""
    assert manifest.has_member_index
    return {s.key: (s.size_bytes, manifest.classes[s.label], s.sha256, manifest.shards[s.shard].key, s.offset)  # type: ignore[index]
            for s in manifest.samples}


def _read_all_as_shards(url: str, manifest: Manifest, **options: Any) -> None:
    """deli with ``source=shards``: every sample once, its bytes' checksum and label as the manifest says."""
    corpus = Corpus(url, manifest)
    with DeliLoader(make_context(corpus, num_workers=0, **options), source="shards", cache_size="1MiB", concurrency=4) as loader:
        seen = []
        for batch in loader.iter_epoch(0):
            idx = [int(i) for i in batch.indices]
            assert list(batch.inputs) == [corpus.expected(i) for i in idx]
            seen.extend(idx)
        assert loader.source.shard_reads == len(manifest.shards)
    assert sorted(seen) == list(range(len(manifest)))


def test_index_of_both_keeps_the_shards_and_member_offsets(made: tuple[Path, Manifest], tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    root, expected = made
    ds = _copy(made, tmp_path / "ds")
    capsys.readouterr()
    assert main(["data", "index", str(ds), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["shards"] == 3
    indexed = read_manifest(str(ds))
    assert indexed.source == "listed" and indexed.sample_objects
    assert _fields(indexed) == _fields(expected)
    assert indexed.shards == expected.shards  # keys, sizes, sample counts, checksums
    # Equivalent to what push records for the generated dataset.
    pushed = publish.push(root, "memory://index-both/ds")
    assert _fields(indexed) == _fields(pushed) and indexed.shards == pushed.shards
    _read_all_as_shards(str(ds), indexed)
    # Headers only: the shards unread, the offsets the same.
    lean = publish.index(str(ds), checksums=False)
    assert {k: v[:3] + v[4:] for k, v in _fields(lean).items()} == {k: v[:3] + v[4:] for k, v in _fields(expected).items()}


def _corrupt(ds: Path) -> None:
    path = next(ds.glob("class_001/*.jpg"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _resize(ds: Path) -> None:
    path = next(ds.glob("class_002/*.jpg"))
    path.write_bytes(path.read_bytes() + b"\0")


def _extra_file(ds: Path) -> None:
    shutil.copy(next(ds.glob("class_000/*.jpg")), ds / "class_000" / "999999.jpg")


def _missing_file(ds: Path) -> None:
    next(ds.glob("class_000/*.jpg")).unlink()


@pytest.mark.parametrize(("damage", "message"), [
    (_corrupt, r"'class_001/\d+\.jpg' and its member '\d+\.jpg' of shard-00000\d\.tar differ \(same size, different bytes\)"),
    (_resize, r"'class_002/\d+\.jpg' is \d+ bytes but its member '\d+\.jpg' of shard-00000\d\.tar is \d+"),
    (_extra_file, r"1 of 22 files are in no tar shard \(first: 'class_000/999999\.jpg'\)"),
    (_missing_file, r"member '\d+\.jpg' of shard shard-00000\d\.tar has no file in the ImageFolder tree"),
], ids=["different-bytes", "different-size", "not-in-shards", "not-in-files"])
def test_files_and_shards_that_disagree_fail_in_one_line(made: tuple[Path, Manifest], tmp_path: Path,
                                                         damage: Any, message: str) -> None:
    ds = _copy(made, tmp_path / "ds")
    damage(ds)
    with pytest.raises(UsageError, match=message) as caught:
        publish.index(str(ds))
    assert "\n" not in caught.value.message and "same samples" in (caught.value.hint or "")
    assert not (ds / MANIFEST_NAME).exists()


@pytest.mark.s3
def test_index_of_both_on_seaweedfs(made: tuple[Path, Manifest], s3_bucket: str) -> None:
    root, expected = made
    url = f"{s3_bucket}/both"
    pushed = publish.push(root, url)
    fs = resolve(url).filesystem()
    fs.rm_file(f"{url.removeprefix('s3://')}/{MANIFEST_NAME}")
    indexed = publish.index(url)
    assert _fields(indexed) == _fields(pushed) == _fields(expected) and indexed.shards == expected.shards
    assert read_manifest(url).samples == indexed.samples
    _read_all_as_shards(url, read_manifest(url))
