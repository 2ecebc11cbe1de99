"""``--layout both`` is an ImageFolder root and a WebDataset at once, as downloaded from a bucket.

The issue: shards in a ``shards/`` folder inside the dataset root made torchvision's ImageFolder see
an eleventh (empty) class. Shards are now files at the root, beside the class folders (ImageFolder
skips files), so a plain ``aws s3 cp --recursive`` of the pushed prefix is usable by both readers as
is. Datasets made with the old layout still load through the manifest's shard keys.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from delibench.manifest import MANIFEST_NAME, Manifest, read_manifest, write_manifest
from delibench.workloads.datagen import make_dataset

CLASSES = 10
SAMPLES = 60


def _make(root: Path) -> Manifest:
    return make_dataset(root, samples=SAMPLES, classes=CLASSES, preset="cifar", layout="both", shard_samples=25, seed=4, workers=1)


def _assert_image_folder(root: Path, manifest: Manifest) -> None:
    """torchvision's ImageFolder (no allow_empty) sees the manifest's classes, samples and labels."""
    from torchvision.datasets import ImageFolder

    folder = ImageFolder(str(root))
    assert folder.classes == list(manifest.classes) and len(folder.classes) == CLASSES
    assert len(folder) == len(manifest) == SAMPLES
    labels = {s.key: s.label for s in manifest.samples}
    assert {Path(p).relative_to(root).as_posix(): t for p, t in folder.samples} == labels


def _assert_webdataset(root: Path, manifest: Manifest) -> None:
    """webdataset.WebDataset over the root's shards yields every sample once, with its label."""
    import webdataset as wds

    shards = sorted(str(p) for p in root.glob("shard-*.tar"))
    assert [Path(p).name for p in shards] == [s.key for s in manifest.shards]
    labels = {Path(s.key).stem: s.label for s in manifest.samples}
    seen = {}
    for sample in wds.WebDataset(shards, shardshuffle=False, empty_check=False):
        assert "jpg" in sample
        seen[sample["__key__"]] = int(sample["cls"])
    assert len(seen) == sum(s.sample_count for s in manifest.shards) == len(manifest) == SAMPLES
    assert seen == labels


def test_both_layout_keeps_shards_out_of_the_class_folders(tmp_path: Path) -> None:
    manifest = _make(tmp_path / "ds")
    root = tmp_path / "ds"
    folders = sorted(p.name for p in root.iterdir() if p.is_dir())
    assert folders == list(manifest.classes)  # nothing but classes: no shards/ folder
    assert all("/" not in s.key for s in manifest.shards)
    _assert_image_folder(root, manifest)
    _assert_webdataset(root, manifest)


def _old_layout(root: Path, manifest: Manifest) -> Manifest:
    """Turn a dataset into what ``data make --layout both`` wrote before: shards under ``shards/``."""
    from dataclasses import replace

    (root / "shards").mkdir()
    moved = []
    for shard in manifest.shards:
        (root / shard.key).rename(root / "shards" / shard.key)
        moved.append(replace(shard, key=f"shards/{shard.key}"))
    old = replace(manifest, shards=tuple(moved))
    write_manifest(old, str(root))
    return old


def test_an_old_layout_dataset_still_streams_and_is_replaced_cleanly(tmp_path: Path) -> None:
    pytest.importorskip("webdataset")
    from delibench.loaders import build_loader
    from delibench.loaders.base import LoaderContext
    from delibench.records import LoaderSpec
    from delibench.workloads.models import get_workload

    root = tmp_path / "ds"
    old = _old_layout(root, _make(root))
    assert read_manifest(str(root)).shards[0].key == "shards/shard-000000.tar"
    ctx = LoaderContext(dataset_url=str(root), manifest=old, decode=get_workload("mnist-cnn").decoder(),
                        batch_size=16, num_workers=0, seed=0)
    loader = build_loader(LoaderSpec("webdataset"), ctx)
    try:
        seen = [int(i) for b in loader.iter_epoch(0) for i in b.indices]
    finally:
        loader.close()
    assert sorted(seen) == list(range(SAMPLES))
    # --force replaces it with the new layout and leaves no shards/ folder behind
    new = make_dataset(root, samples=SAMPLES, classes=CLASSES, preset="cifar", layout="both", shard_samples=25,
                       seed=4, workers=1, overwrite=True)
    assert not (root / "shards").exists()
    _assert_image_folder(root, new)


@pytest.mark.s3
def test_a_pushed_both_dataset_downloaded_with_the_aws_cli_reads_with_imagefolder_and_webdataset(
    tmp_path: Path, s3_bucket: str, s3_server: Any
) -> None:
    """What a user gets from ``aws s3 cp --recursive`` of a pushed ``--layout both`` dataset."""
    pytest.importorskip("awscli", reason="the test extra installs awscli (it vendors its own botocore)")
    pytest.importorskip("webdataset")
    from delibench.loaders.publish import push

    made = _make(tmp_path / "src")
    url = f"{s3_bucket}/cifar"
    push(tmp_path / "src", url, concurrency=4)
    dest = tmp_path / "download"
    env = {**os.environ, **s3_server.env, "AWS_ENDPOINT_URL": s3_server.endpoint_url}
    done = subprocess.run(
        [sys.executable, "-m", "awscli", "s3", "cp", "--recursive", "--only-show-errors",
         "--endpoint-url", s3_server.endpoint_url, url, str(dest)],
        env=env, capture_output=True, text=True, timeout=120,
    )
    assert done.returncode == 0, done.stderr
    downloaded = Manifest.from_json((dest / MANIFEST_NAME).read_text())
    assert downloaded.samples == made.samples and downloaded.shards == made.shards
    assert json.loads((dest / MANIFEST_NAME).read_text())["sample_count"] == SAMPLES
    _assert_image_folder(dest, downloaded)
    _assert_webdataset(dest, downloaded)
