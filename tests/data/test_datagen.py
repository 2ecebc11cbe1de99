"""Synthetic datasets: real JPEGs, deterministic bytes, sizes near target, valid WebDataset shards."""

from __future__ import annotations

import io
import statistics
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from delibench.errors import UsageError
from delibench.manifest import MANIFEST_NAME, checksum, read_manifest
from delibench.workloads.datagen import make_dataset


def _file_digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): checksum(p.read_bytes()) for p in sorted(root.rglob("*")) if p.is_file() and p.name != MANIFEST_NAME}


def test_same_seed_gives_identical_bytes_in_process_and_in_a_pool(tmp_path: Path) -> None:
    a = make_dataset(tmp_path / "a", samples=48, classes=4, mean_bytes=20_000, layout="both", shard_samples=20, seed=7, workers=1)
    b = make_dataset(tmp_path / "b", samples=48, classes=4, mean_bytes=20_000, layout="both", shard_samples=20, seed=7, workers=2)
    c = make_dataset(tmp_path / "c", samples=48, classes=4, mean_bytes=20_000, layout="both", shard_samples=20, seed=8, workers=1)
    assert a.samples == b.samples and a.shards == b.shards
    assert _file_digests(tmp_path / "a") == _file_digests(tmp_path / "b")
    assert a.dataset_id == b.dataset_id != c.dataset_id
    assert sum(x.sha256 != y.sha256 for x, y in zip(a.samples, c.samples)) == len(a.samples)


def test_files_are_real_jpegs_in_class_folders_matching_the_manifest(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, samples=30, classes=3, mean_bytes=30_000)
    assert read_manifest(str(tmp_path)).samples == manifest.samples
    assert manifest.classes == ("class_000", "class_001", "class_002")
    assert [s.label for s in manifest.samples] == sorted(s.label for s in manifest.samples)
    assert [s.key for s in manifest.samples] == sorted(s.key for s in manifest.samples)
    assert manifest.samples[0].key == "class_000/000000.jpg"
    for entry in manifest.samples:
        data = (tmp_path / entry.key).read_bytes()
        assert entry.key.startswith(f"class_{entry.label:03d}/")
        assert len(data) == entry.size_bytes and checksum(data) == entry.sha256
        with Image.open(io.BytesIO(data)) as img:
            assert img.format == "JPEG" and img.mode == "RGB"
            img.load()  # decodes fully: a truncated file fails here
    assert manifest.image_size is None  # ImageNet-like shapes vary
    shapes = {Image.open(tmp_path / s.key).size for s in manifest.samples}
    assert len(shapes) > 10


@pytest.mark.parametrize("mean_bytes", [10_000, 110_000])
def test_mean_size_is_near_target_and_sizes_vary(tmp_path: Path, mean_bytes: int) -> None:
    manifest = make_dataset(tmp_path, samples=120, classes=6, mean_bytes=mean_bytes, workers=1)
    sizes = [s.size_bytes for s in manifest.samples]
    assert abs(statistics.mean(sizes) / mean_bytes - 1) < 0.25
    assert max(sizes) > 1.5 * min(sizes)  # log-normal spread, not one size


def test_zero_sigma_gives_near_equal_sizes(tmp_path: Path) -> None:
    sizes = [s.size_bytes for s in make_dataset(tmp_path, samples=40, mean_bytes=20_000, size_sigma=0).samples]
    assert statistics.pstdev(sizes) / statistics.mean(sizes) < 0.25


@pytest.mark.parametrize(("preset", "mode", "shape"), [("cifar", "RGB", (32, 32)), ("mnist", "L", (28, 28))])
def test_small_presets_have_their_shape_and_mode(tmp_path: Path, preset: str, mode: str, shape: tuple[int, int]) -> None:
    manifest = make_dataset(tmp_path, samples=40, classes=10, preset=preset)
    assert manifest.image_size == shape
    for entry in manifest.samples[::7]:
        with Image.open(tmp_path / entry.key) as img:
            assert img.mode == mode and img.size == (shape[1], shape[0])


def test_fixed_shape_reaches_a_size_target_through_quality(tmp_path: Path) -> None:
    low = make_dataset(tmp_path / "low", samples=40, image_size=(64, 96), mean_bytes=2_500, size_sigma=0)
    high = make_dataset(tmp_path / "high", samples=40, image_size=(64, 96), mean_bytes=6_000, size_sigma=0)
    assert abs(low.mean_sample_bytes / 2_500 - 1) < 0.25
    assert abs(high.mean_sample_bytes / 6_000 - 1) < 0.25
    assert Image.open(tmp_path / "low" / low.samples[0].key).size == (96, 64)


def test_classes_look_different(tmp_path: Path) -> None:
    """A nearest-centroid classifier on tiny thumbnails beats chance by far: there is signal to learn."""
    manifest = make_dataset(tmp_path, samples=80, classes=4, preset="cifar")
    feats = np.stack([np.asarray(Image.open(tmp_path / s.key).resize((8, 8)), np.float32).ravel() for s in manifest.samples])
    labels = np.array([s.label for s in manifest.samples])
    train, test = np.arange(len(labels)) % 2 == 0, np.arange(len(labels)) % 2 == 1
    centroids = np.stack([feats[train & (labels == c)].mean(0) for c in range(4)])
    predicted = np.argmin(((feats[test][:, None, :] - centroids[None]) ** 2).sum(-1), axis=1)
    assert (predicted == labels[test]).mean() > 0.6  # chance is 0.25


def test_shards_are_webdataset_tars_holding_every_sample_once(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, samples=45, classes=3, mean_bytes=8_000, layout="both", shard_samples=20)
    assert [s.key for s in manifest.shards] == [f"shard-{i:06d}.tar" for i in range(3)]
    assert [s.sample_count for s in manifest.shards] == [20, 20, 5]
    by_stem = {Path(s.key).stem: s for s in manifest.samples}
    seen: list[str] = []
    for shard in manifest.shards:
        data = (tmp_path / shard.key).read_bytes()
        assert len(data) == shard.size_bytes and checksum(data) == shard.sha256
        with tarfile.open(tmp_path / shard.key) as tar:
            names = tar.getnames()
            assert len(names) == 2 * shard.sample_count
            for jpg, cls in zip(names[::2], names[1::2]):
                stem = jpg.removesuffix(".jpg")
                assert jpg.endswith(".jpg") and cls == f"{stem}.cls"
                payload = tar.extractfile(jpg).read()  # type: ignore[union-attr]
                assert checksum(payload) == by_stem[stem].sha256
                assert int(tar.extractfile(cls).read()) == by_stem[stem].label  # type: ignore[union-attr]
                seen.append(stem)
    assert sorted(seen) == sorted(by_stem)
    first = [int(n) for n in seen[:20]]
    assert first != sorted(first)  # shuffled across shards, so each shard mixes classes


def test_shards_only_layout_writes_no_class_folders(tmp_path: Path) -> None:
    manifest = make_dataset(tmp_path, samples=12, classes=2, mean_bytes=5_000, layout="shards", shard_samples=5)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MANIFEST_NAME, *(f"shard-{i:06d}.tar" for i in range(3))]
    assert sum(s.sample_count for s in manifest.shards) == 12


def test_progress_reports_every_sample(tmp_path: Path) -> None:
    calls: list[tuple[int, int]] = []
    make_dataset(tmp_path, samples=10, mean_bytes=5_000, progress=lambda done, total: calls.append((done, total)))
    assert calls == [(i, 10) for i in range(1, 11)]


def test_refuses_to_overwrite_unless_forced(tmp_path: Path) -> None:
    make_dataset(tmp_path / "d", samples=10, classes=2, mean_bytes=5_000)
    with pytest.raises(UsageError, match="already holds a dataset"):
        make_dataset(tmp_path / "d", samples=10, mean_bytes=5_000)
    replaced = make_dataset(tmp_path / "d", samples=4, classes=1, mean_bytes=5_000, overwrite=True)
    assert len(list((tmp_path / "d").rglob("*.jpg"))) == len(replaced) == 4
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(UsageError, match="not empty"):
        make_dataset(tmp_path / "other", samples=4, classes=1, overwrite=True)
    assert (tmp_path / "other" / "notes.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"samples": 0}, "samples"),
        ({"classes": 20, "samples": 10}, "classes"),
        ({"layout": "zip"}, "layout"),
        ({"preset": "coco"}, "preset"),
        ({"mean_bytes": 100}, "header"),
        ({"image_size": (4, 4)}, "image size"),
        ({"shard_samples": 0}, "shard"),
    ],
)
def test_bad_arguments_are_usage_errors(tmp_path: Path, kwargs: dict, message: str) -> None:
    with pytest.raises(UsageError, match=message):
        make_dataset(tmp_path / "x", **kwargs)
