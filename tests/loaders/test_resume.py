"""Resumable iteration of the deli loader: state_dict/load_state_dict, exactly once across a SIGKILL.

The headline test kills a real training process (SIGKILL, no clean-up runs) mid-epoch while it
reads from SeaweedFS, restarts it from the last checkpoint it wrote, and checks that every
sample of the epoch was delivered exactly once across the two runs, byte-identical, in the
order of an uninterrupted run, and that the restart warm-started its cache from the disk tier
the killed process left behind.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from delibench.errors import UsageError
from delibench.loaders import build_loader, deli_loader
from delibench.loaders.deli import STATE_VERSION
from delibench.loaders.testing import Corpus, checksum_decode, make_context
from delibench.records import LoaderSpec

REPO = Path(__file__).resolve().parents[2]


def _indices(loader: Any, epoch: int) -> list[int]:
    return [int(i) for b in loader.iter_epoch(epoch) for i in b.indices]


@pytest.mark.parametrize("world_size,rank,batch_size,stop_after", [(1, 0, 5, 2), (2, 1, 3, 1), (1, 0, 4, 0)])
def test_resume_mid_epoch_continues_the_uninterrupted_order(
    local_corpus: Corpus, world_size: int, rank: int, batch_size: int, stop_after: int
) -> None:
    ctx = make_context(local_corpus, batch_size=batch_size, world_size=world_size, rank=rank, num_workers=1)
    with build_loader(LoaderSpec("deli"), ctx) as whole:
        expected = _indices(whole, 0) + _indices(whole, 1)

    first = build_loader(LoaderSpec("deli"), ctx)
    got: list[int] = []
    state = first.state_dict()
    for n, batch in enumerate(first.iter_epoch(0)):
        if n == stop_after:
            break
        got.extend(int(i) for i in batch.indices)
        state = json.loads(json.dumps(first.state_dict()))  # what a checkpoint file holds
    first.close()
    assert state["epoch"] == 0 and state["samples_yielded"] == len(got) and state["batches_yielded"] == stop_after

    with build_loader(LoaderSpec("deli"), ctx) as second:
        second.load_state_dict(state)
        assert second.state_dict()["samples_yielded"] == len(got)  # a loaded state is saved as loaded
        got += _indices(second, 0)
        assert second.state_dict()["epoch"] == 1 and second.state_dict()["samples_yielded"] == 0  # finished epoch
        got += _indices(second, 1)
    assert got == expected


def test_state_dict_shape_and_epoch_rollover(local_corpus: Corpus) -> None:
    ctx = make_context(local_corpus, num_workers=0)
    with build_loader(LoaderSpec("deli"), ctx) as loader:
        fresh = loader.state_dict()
        assert fresh == {
            "version": STATE_VERSION, "epoch": 0, "samples_yielded": 0, "batches_yielded": 0,
            "samples_per_epoch": 23, "batch_size": 5, "world_size": 1, "rank": 0,
            "dataset_id": local_corpus.manifest.dataset_id, "num_samples": 23, "seed": 7, "order": "shuffle",
            "exchange_fraction": 0.0, "drop_last": False,
        }
        states = []
        for _ in loader.iter_epoch(0):
            states.append((loader.state_dict()["epoch"], loader.state_dict()["samples_yielded"]))
        assert states == [(0, 5), (0, 10), (0, 15), (0, 20), (1, 0)]  # the last batch rolls over to epoch 1


def test_resuming_another_epoch_is_refused(local_corpus: Corpus) -> None:
    ctx = make_context(local_corpus, num_workers=0)
    with build_loader(LoaderSpec("deli"), ctx) as loader:
        state = loader.state_dict() | {"epoch": 2, "samples_yielded": 5, "batches_yielded": 1}
        loader.load_state_dict(state)
        with pytest.raises(UsageError, match="resumes epoch 2, but epoch 0 was asked for"):
            list(loader.iter_epoch(0))
        assert len(_indices(loader, 2)) == 18  # the state is still there for the right epoch


def _bad_states(good: dict[str, Any]) -> list[tuple[Any, str]]:
    return [
        ([1, 2], "must be the dict state_dict"),
        (good | {"version": 9}, "version 9 is not supported"),
        ({k: v for k, v in good.items() if k != "seed"}, "lacks 'seed'"),
        (good | {"samples_yielded": -3}, "'samples_yielded' must be a whole number"),
        (good | {"epoch": "1"}, "'epoch' must be a whole number"),
        (good | {"dataset_id": "0123456789ab"}, "dataset_id was '0123456789ab' when saved"),
        (good | {"seed": 8}, "seed was 8 when saved, is 7 now"),
        (good | {"order": "locality"}, "order was 'locality'"),
        (good | {"drop_last": True}, "drop_last was True"),
        (good | {"world_size": 4, "rank": 2}, "saved mid-epoch 0 at world size 4 rank 2; this job is world size 1 rank 0"),
        (good | {"samples_yielded": 24}, "samples_yielded 24 exceeds the 23 samples"),
        (good | {"rank": 3}, "rank 3 is outside its world size 1"),
    ]


def test_corrupt_or_mismatched_state_is_a_one_line_usage_error(local_corpus: Corpus) -> None:
    ctx = make_context(local_corpus, num_workers=0)
    with build_loader(LoaderSpec("deli"), ctx) as loader:
        good = loader.state_dict() | {"samples_yielded": 10, "batches_yielded": 2}
        for bad, words in _bad_states(good):
            with pytest.raises(UsageError) as info:
                loader.load_state_dict(bad)
            assert words in info.value.message and "\n" not in str(info.value), (bad, str(info.value))
        loader.load_state_dict(good)  # and the good one still loads


def test_world_size_change_resumes_only_at_an_epoch_boundary(local_corpus: Corpus) -> None:
    saved = make_context(local_corpus, num_workers=0, world_size=2, rank=0)
    with build_loader(LoaderSpec("deli"), saved) as loader:
        for _ in loader.iter_epoch(0):
            pass
        boundary = loader.state_dict()
    assert boundary["epoch"] == 1 and boundary["samples_yielded"] == 0
    seen: list[int] = []
    for rank in range(3):  # the job comes back on 3 ranks: epoch 1 is dealt over 3, each sample once
        with build_loader(LoaderSpec("deli"), make_context(local_corpus, num_workers=0, world_size=3, rank=rank)) as loader:
            loader.load_state_dict(boundary)
            with pytest.raises(UsageError, match="resumes epoch 1"):
                list(loader.iter_epoch(0))
            seen += _indices(loader, 1)
    assert sorted(set(seen)) == list(range(23)) and len(seen) == 24  # 23 padded to 3 x 8, as DistributedSampler


def test_deli_loader_api_resumes_and_pins(local_corpus: Corpus) -> None:
    """The iterable deli_loader returns: state_dict in the loop body, load_state_dict on a new one."""
    kwargs: dict[str, Any] = dict(decode=checksum_decode, batch_size=4, num_workers=1, seed=5, pin_memory=True)
    with deli_loader(local_corpus.url, **kwargs) as loader:
        whole = [x for _ in range(2) for inputs, _ in loader for x in inputs]
    got: list[str] = []
    with deli_loader(local_corpus.url, **kwargs) as loader:
        loader.set_epoch(0)
        assert loader.state_dict()["epoch"] == 0
        for inputs, _ in loader:
            got += inputs
            state = loader.state_dict()
            if len(got) == 8:
                break
    assert state["samples_yielded"] == 8
    with deli_loader(local_corpus.url, **kwargs) as loader:
        loader.set_epoch(3)
        assert loader.state_dict()["epoch"] == 3  # before any pass: the epoch the next pass runs
        loader.load_state_dict(state)
        assert loader.epoch == 0 and loader.state_dict() == state
        while loader.epoch < 2:
            for inputs, _ in loader:
                got += inputs
    assert got == whole


# -- the SIGKILL test against SeaweedFS ---------------------------------------------------------

_TRAINER = textwrap.dedent(
    '''
    """A training job stand-in: iterate deli, checkpoint (loader state + what was delivered) after each batch."""
    import json, os, sys, time
    from delibench.loaders import deli_loader
    from delibench.loaders.testing import checksum_decode

    url, options, ckpt, cache_dir, epochs, delay = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), float(sys.argv[6])
    saved = json.load(open(ckpt)) if os.path.exists(ckpt) else None
    # cache_dir "-": the memory tier only (nothing survives the kill); else a 1-byte memory tier, so
    # every sample lives in the disk tier.
    cache = {} if cache_dir == "-" else dict(cache_size=1, cache_tier="disk", cache_dir=cache_dir, disk_cache_size="1MiB")
    loader = deli_loader(url, decode=checksum_decode, batch_size=4, num_workers=2, seed=3, storage_options=options,
                         prefetch_across_epochs=False, **cache)
    delivered = saved["delivered"] if saved else []
    if saved:
        loader.load_state_dict(saved["loader"])
    while loader.epoch < epochs:
        epoch = loader.epoch
        for inputs, labels in loader:
            delivered.append([epoch, list(inputs)])
            # One checkpoint file, written atomically: the loader state and the "model" (what it trained on) agree.
            tmp = ckpt + ".tmp"
            with open(tmp, "w") as f:
                json.dump({"loader": loader.state_dict(), "delivered": delivered, "pid": os.getpid()}, f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, ckpt)
            time.sleep(delay)
    stats = loader.stats()
    # Samples fetched: requests less the repeats a loaded store may cause (retries, hedges).
    fetched = stats.requests_count - stats.retries_count - stats.hedges_count
    print(json.dumps({"fetched": fetched, "warm_started": loader.loader.warm_started}))
    loader.close()
    '''
)


def _run_trainer(script: Path, args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, str(script), *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


# the memory tier proves the must-show; the disk tier (same resume code, another cache) is extended
@pytest.mark.parametrize("tier", [pytest.param("disk", marks=pytest.mark.extended), "memory"])
def test_sigkill_mid_epoch_then_restart_delivers_each_sample_once_in_order(
    s3_corpus: Corpus, s3_server: Any, tmp_path: Path, tier: str
) -> None:
    from delibench.storage import s3_endpoint_options

    options = s3_endpoint_options(s3_server.endpoint_url) | {"key": "delibench-test", "secret": "delibench-test-secret"}
    script = tmp_path / "trainer.py"
    script.write_text(_TRAINER)
    ckpt, cache_dir = tmp_path / "ckpt.json", tmp_path / "disk-cache"
    args = [s3_corpus.url, json.dumps(options), str(ckpt), str(cache_dir) if tier == "disk" else "-", "2"]

    job = _run_trainer(script, [*args, "0.5"])  # slow steps, so the kill lands mid-epoch on a loaded machine
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and job.poll() is None:
        if ckpt.exists() and len(json.loads(ckpt.read_text())["delivered"]) >= 2:
            break
        time.sleep(0.02)
    assert job.poll() is None, f"the job ended before it could be killed: {job.communicate()}"
    job.send_signal(signal.SIGKILL)
    job.wait(30)
    assert job.returncode == -signal.SIGKILL
    killed = json.loads(ckpt.read_text())
    first_run = [x for _, batch in killed["delivered"] for x in batch]
    assert killed["loader"]["epoch"] == 0 and 0 < killed["loader"]["samples_yielded"] < 23  # mid-epoch
    if tier == "disk":
        assert list(cache_dir.glob("*.bin")), "the killed job left no disk tier to warm-start from"

    restart = _run_trainer(script, [*args, "0"])
    out, err = restart.communicate(timeout=180)
    assert restart.returncode == 0, err[-3000:]
    final = json.loads(ckpt.read_text())
    delivered = [(epoch, x) for epoch, batch in final["delivered"] for x in batch]

    # The uninterrupted run, in this process.
    with deli_loader(s3_corpus.url, decode=checksum_decode, batch_size=4, num_workers=1, seed=3, storage_options=options) as whole:
        expected = [(epoch, x) for epoch in range(2) for inputs, _ in whole for x in inputs]

    assert delivered == expected  # every sample of both epochs once, in the uninterrupted order
    by_sha = {e.sha256: i for i, e in enumerate(s3_corpus.manifest.samples)}
    epoch0 = [x for epoch, x in delivered if epoch == 0]
    assert sorted(by_sha[x.split(":")[0]] for x in epoch0) == list(range(23))
    assert all(x == s3_corpus.expected(by_sha[x.split(":")[0]]) for _, x in delivered)  # byte-identical (sha256)
    assert final["pid"] != killed["pid"]

    stats = json.loads(out.strip().splitlines()[-1])
    if tier == "disk":
        # Warm start: what the killed job had cached on disk (at least what it delivered, usually
        # the whole epoch it had prefetched) was adopted, and only the rest was fetched again.
        assert stats["warm_started"] >= len(first_run)
        assert stats["fetched"] == 23 - stats["warm_started"]
    else:
        # Cold restart: the rest of epoch 0 from the bucket, then epoch 1's samples not cached by it.
        assert stats["warm_started"] == 0 and stats["fetched"] == 23


def test_warm_start_adopts_only_files_that_match_the_manifest(local_corpus: Corpus, tmp_path: Path) -> None:
    """A disk tier that survived (copied aside before the clean close empties it) is adopted file by
    file; a corrupt file is dropped and its sample fetched again."""
    import shutil

    cache_dir, kept = tmp_path / "tier", tmp_path / "kept"
    options = {"cache_size": 1, "cache_tier": "disk", "cache_dir": str(cache_dir), "disk_cache_size": "1MiB",
               "prefetch_across_epochs": False}
    ctx = make_context(local_corpus, num_workers=0)
    with build_loader(LoaderSpec("deli", options), ctx) as first:
        _indices(first, 0)
        shutil.copytree(cache_dir, kept)
    assert not list(cache_dir.glob("*.bin"))  # close() empties the tier it filled
    shutil.copytree(kept, cache_dir, dirs_exist_ok=True)
    files = sorted(cache_dir.glob("*.bin"))
    assert len(files) == 23
    files[0].write_bytes(b"not the sample")
    with build_loader(LoaderSpec("deli", options), ctx) as second:
        assert sorted(_indices(second, 0)) == list(range(23))
        assert second.warm_started == 22 and second.stats().requests_count == 1
