"""The training script of README.md ("The loader in your own training script") runs as written.

It is taken from the README, pointed at a tiny MNIST-size ImageFolder tree uploaded to SeaweedFS
and indexed with ``delibench data index`` (as the README says), and run in a fresh process: a
real model trains on CPU and checkpoints with the loader's state; a second run resumes from that
checkpoint. The ``keys=`` path for a user's own Dataset is checked beside it.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.readme_snippets import readme_python_block

SECTION = "### The loader in your own training script"


def readme_script() -> str:
    """The first ``python`` block of the README section (the complete training script)."""
    return readme_python_block(SECTION)


def _substitute(script: str, old: str, new: str) -> str:
    assert script.count(old) == 1, f"the README script no longer has {old!r}"
    return script.replace(old, new)


@pytest.fixture
def imagefolder_bucket(s3_bucket: str, s3_server: Any, tmp_path: Path) -> str:
    """40 MNIST-size JPEGs in 4 class folders in a bucket, indexed by the CLI as the README says."""
    import s3fs

    from delibench.workloads.datagen import make_dataset

    local = tmp_path / "mnist"
    make_dataset(local, samples=40, classes=4, preset="mnist", seed=1)
    fs = s3fs.S3FileSystem(key="delibench-test", secret="delibench-test-secret", skip_instance_cache=True,
                           client_kwargs={"endpoint_url": s3_server.endpoint_url})
    url = f"{s3_bucket}/imgs"
    images = [p for p in local.rglob("*.jpg")]
    assert len(images) == 40
    fs.pipe({f"{url}/{p.relative_to(local).as_posix()}": p.read_bytes() for p in images})  # the tree only, no manifest
    done = subprocess.run([sys.executable, "-m", "delibench", "data", "index", url], env={**os.environ, **s3_server.env},
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    return url


def test_readme_training_script_trains_checkpoints_and_resumes(imagefolder_bucket: str, s3_server: Any, tmp_path: Path) -> None:
    import torch

    script = readme_script()
    script = _substitute(script, 'DATA = "s3://my-bucket/imgs"', f'DATA = "{imagefolder_bucket}"')
    script = _substitute(script, "EPOCHS = 90", "EPOCHS = 2")
    script = _substitute(script, "batch_size=64", "batch_size=8")  # 5 steps an epoch
    path = tmp_path / "train.py"
    path.write_text(script)
    env = {**os.environ, **s3_server.env}

    first = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert re.findall(r"^epoch (\d): loss \d+\.\d+$", first.stdout, re.M) == ["0", "1"], first.stdout
    checkpoint = torch.load(tmp_path / "checkpoint.pt")
    # Saved at step 0 of epoch 1: one batch of 8 delivered.
    assert checkpoint["loader"]["epoch"] == 1 and checkpoint["loader"]["samples_yielded"] == 8
    assert set(checkpoint["model"]) and checkpoint["optimizer"]["state"]  # a real step was taken

    # A restart from that checkpoint (as after a crash) trains the 4 batches left of epoch 1 only.
    second = subprocess.run([sys.executable, str(path)], env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert second.returncode == 0, second.stderr[-3000:]
    assert re.findall(r"^epoch (\d)", second.stdout, re.M) == ["1"], second.stdout


def _decode_grey(data: bytes, label: int) -> Any:
    """A user's own __getitem__ after its read (module level, so picklable)."""
    import io

    from PIL import Image
    from torchvision.transforms.functional import pil_to_tensor

    return pil_to_tensor(Image.open(io.BytesIO(data)).convert("L"))


def test_own_dataset_keys_with_decode(imagefolder_bucket: str, s3_server: Any) -> None:
    """deli_loader(keys=, labels=, decode=) over objects named by a user's Dataset: its index order is
    the sampler's index space, its labels come with the batch."""
    from delibench.errors import UsageError
    from delibench.loaders import deli_loader, keys_manifest
    from delibench.manifest import read_manifest
    from delibench.storage import s3_endpoint_options

    options = s3_endpoint_options(s3_server.endpoint_url) | {"key": "delibench-test", "secret": "delibench-test-secret"}
    listed = read_manifest(imagefolder_bucket, options)
    keys = [s.key for s in listed.samples][::-1]  # the user's own index order
    labels = [7 - s.label for s in listed.samples][::-1]
    manifest = keys_manifest(imagefolder_bucket, keys, labels, options)
    assert [s.size_bytes for s in manifest.samples] == [s.size_bytes for s in listed.samples][::-1]

    with deli_loader(imagefolder_bucket, decode=_decode_grey, keys=keys, labels=labels, batch_size=16, num_workers=1,
                     storage_options=options) as loader:
        got = [(tuple(x.shape), int(y)) for inputs, ys in loader for x, y in zip(inputs, ys)]
    assert len(got) == 40 and {shape for shape, _ in got} == {(1, 28, 28)}
    assert sorted(y for _, y in got) == sorted(labels)

    with pytest.raises(UsageError, match=r"1 of 41 keys not found .* e.g. 'nope/x.jpg'"):
        keys_manifest(imagefolder_bucket, [*keys, "nope/x.jpg"], storage_options=options)
    with pytest.raises(UsageError, match="labels= has 3 entries for 40 keys"):
        keys_manifest(imagefolder_bucket, keys, [0, 1, 2], options)


def test_pinned_batches_keep_their_structure(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """pin_memory=True pins every tensor of a batch (walking tuples, lists, dicts) where CUDA is
    available; here a stand-in tensor records the call, as CPU-only torch cannot pin."""
    from collections import namedtuple

    from delibench.loaders import api

    class FakeTensor:
        pinned = False

        def pin_memory(self) -> FakeTensor:
            out = FakeTensor()
            out.pinned = True
            return out

    Pair = namedtuple("Pair", "a b")
    batch = {"x": [FakeTensor(), (FakeTensor(), "label")], "p": Pair(FakeTensor(), 3)}
    pinned = api._pin(batch)
    assert pinned["x"][0].pinned and pinned["x"][1][0].pinned and pinned["x"][1][1] == "label"
    assert isinstance(pinned["p"], Pair) and pinned["p"].a.pinned and pinned["p"].b == 3
    monkeypatch.setattr(api, "_can_pin", lambda: False)
    from delibench.loaders.testing import make_corpus

    corpus = make_corpus(tmp_path / "c", samples=4)
    with api.deli_loader(corpus.url, decode=_decode_len, pin_memory=True, num_workers=0) as loader:
        assert loader.pin_memory is False  # no accelerator: nothing to pin for, as DataLoader (which warns)


def _decode_len(data: bytes, label: int) -> int:
    return len(data)
