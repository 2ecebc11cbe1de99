"""Elastic geo runs under torchrun: a killed worker costs at most one checkpoint interval, a joining region trains.

Each test starts real torchrun agents (one per region) on loopback with the communication-level
WAN model; about 30-40 s each on 2 shared cores, so they are ``slow``.
"""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import pytest

from delibench.errors import RuntimeFailure
from delibench.geo.launch import LocalJob
from delibench.geo.regions import parse_regions
from delibench.geo.train import GeoRunSpec, run_geo

pytestmark = pytest.mark.slow

REGIONS = parse_regions(
    {
        "regions": {n: {"accelerators": {"count": 2, "usd_per_hour": 1.0, "step_time_s": "40ms"}} for n in ("a", "b", "c")},
        "links": [{"between": [x, y], "rtt_s": "10ms", "bandwidth_bytes_per_s": "20MB", "egress_usd_per_gb": 0.02} for x, y in (("a", "b"), ("b", "c"), ("a", "c"))],
    }
)
EVERY = 10


def _sigkill_b_then_finish(spec: GeoRunSpec, job_dir: Path, at_step: int, *, timeout_s: float = 90) -> Any:
    """Run ``spec`` (checkpoints every EVERY steps), SIGKILL region b's worker once ``at_step`` is reached, wait for the end."""
    with LocalJob(REGIONS, spec, links="model", checkpoint_every=EVERY, job_dir=str(job_dir)) as job:
        job.wait_progress(at_step, timeout_s=timeout_s)
        victim = next(rank for rank, (_, region) in job.worker_pids().items() if region == "b")
        job.kill_worker(victim, signal.SIGKILL)
        return job.wait(timeout_s + 30)


def test_killed_worker_costs_at_most_one_checkpoint_interval(tmp_path: Path) -> None:
    spec = GeoRunSpec(strategy="ma", period=2, workers=(("a", 1), ("b", 1)), steps=50)
    got = _sigkill_b_then_finish(spec, tmp_path, 25, timeout_s=60)
    assert got.events, "no restart recorded"
    event = got.events[0]
    print("restart:", event)
    assert event["reached"] >= 25 and 0 <= event["lost_steps"] <= EVERY
    assert event["resumed_at"] % EVERY == 0 and event["resumed_at"] >= 20
    assert got.result.world_size == 2 and {r["start_step"] for r in got.ranks} == {event["resumed_at"]}
    assert {r["start_step"] + r["steps_done"] for r in got.ranks} == {spec.steps}  # training finished
    assert len({r["params_sha256"] for r in got.ranks}) == 1


def test_region_joining_mid_run_contributes_steps(tmp_path: Path) -> None:
    spec = GeoRunSpec(strategy="ma", period=2, workers=(("a", 1), ("b", 1)), steps=200)
    with LocalJob(REGIONS, spec, links="model", checkpoint_every=EVERY, max_regions=3, job_dir=str(tmp_path)) as job:
        assert job.nnodes == "2:3"
        job.wait_progress(15, timeout_s=60)
        job.start_region("c", 1)
        got = job.wait(120)
    assert [e["world_size"] for e in got.events] == [3]
    assert got.events[0]["lost_steps"] <= EVERY
    # another world: the documented rule (mean of the saved ranks' parameters, fresh strategy state)
    assert got.events[0]["restore"] == "mean" and got.events[0]["saved_world"]["regions"] == ["a", "b"]
    assert got.result.world_size == 3
    joined = [r for r in got.ranks if r["region"] == "c"]
    assert len(joined) == 1 and joined[0]["steps_done"] > 0
    assert joined[0]["cross_region_bytes"] > 0  # it took part in the model averaging
    assert len({r["params_sha256"] for r in got.ranks}) == 1


@pytest.mark.extended  # not a must-show (a killed worker and a joining region are, below and above); CI time
def test_region_leaving_mid_run_the_others_finish(tmp_path: Path) -> None:
    spec = GeoRunSpec(strategy="ma", period=2, workers=(("a", 1), ("b", 1)), steps=60)
    with LocalJob(REGIONS, spec, links="model", checkpoint_every=EVERY, min_regions=1, job_dir=str(tmp_path)) as job:
        assert job.nnodes == "1:2"
        job.wait_progress(2, timeout_s=60)
        # With min 1 region, a may form the group alone on a loaded host; b then joins elastically
        # (a re-rendezvous). Wait for it: a b that never joins is a failure, not a skip.
        deadline = time.monotonic() + 90
        while len({region for _, region in job.worker_pids().values()}) < 2:
            assert time.monotonic() < deadline, "region b never joined the group"
            time.sleep(0.5)
        job.wait_progress(25, timeout_s=60)
        job.kill_region("b")
        got = job.wait(90)
    assert got.events and got.events[-1]["world_size"] == 1 and got.events[-1]["regions"] == ["a"]
    assert got.events[-1]["lost_steps"] <= EVERY and got.events[-1]["restore"] == "mean"
    assert got.result.world_size == 1 and got.ranks[0]["start_step"] + got.ranks[0]["steps_done"] == spec.steps


def test_cnn_jpeg_worker_killed_resumes_its_loaders_from_the_checkpoint(tmp_path: Path) -> None:
    """cnn-jpeg under torchrun: after a SIGKILL every rank resumes at the checkpoint with its deli loaders'
    positions, so the batches of the final attempt are exactly those of an uninterrupted run from that step."""
    import zlib

    from delibench.geo.task import RegionBatches, make_region_shards

    shards = make_region_shards(tmp_path / "data", ("a", "b"), samples_per_region=64, held_out=40, seed=2)
    sources = shards.local_sources()
    spec = GeoRunSpec(strategy="ma", period=2, workers=(("a", 1), ("b", 1)), steps=30, batch_size=8, lr=0.1, task="cnn-jpeg", data=sources, val_url=shards.held_out)
    got = _sigkill_b_then_finish(spec, tmp_path / "job", 15)
    assert got.events and 0 <= got.events[0]["lost_steps"] <= EVERY
    resumed = got.events[-1]["resumed_at"]
    assert resumed >= 10 and resumed % EVERY == 0
    for r in got.ranks:
        assert r["start_step"] == resumed and r["start_step"] + r["steps_done"] == spec.steps
        whole = RegionBatches([s for s in sources if s.reader == r["region"]], 0, 1, batch_size=8, seed=spec.seed)
        try:
            expected = [zlib.crc32(whole.next()[1].numpy().tobytes()) for _ in range(spec.steps)]
        finally:
            whole.close()
        # 64 images / 8 = 8 batches an epoch: the resumed part spans epochs, in the uninterrupted order
        assert r["batch_digests"] == expected[resumed:], r["region"]
        assert r["batch_digests"] != expected[: spec.steps - resumed]  # not a loader started afresh
    assert len({r["params_sha256"] for r in got.ranks}) == 1


# -- restore: every rank's own model and strategy state ------------------------------------------------
# ma with momentum and period 3, checkpoints every 10 steps: at a checkpoint (10 % 3 = 1) the regions'
# models differ (between averages) and each holds its own momentum, so only a restart that restores
# every rank's own parameters and optimizer state ends where the uninterrupted run ends (bitwise: the
# mlp task's batches depend on (seed, rank, step) only and 2-rank gloo sums are deterministic).
RESTORE_SPEC = GeoRunSpec(strategy="ma", period=3, momentum=0.9, lr=0.1, workers=(("a", 1), ("b", 1)), steps=30)


def _final_params(got: Any) -> set[str]:
    return {r["params_sha256"] for r in got.ranks}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Any]:
    """The restore spec run once without failures, with checkpoints (its job folder and result)."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    with LocalJob(REGIONS, RESTORE_SPEC, links="model", checkpoint_every=EVERY, job_dir=str(folder)) as job:
        got = job.wait(90)
    assert not got.events and len(_final_params(got)) == 1
    return folder, got


def test_sigkill_restart_restores_every_ranks_model_and_momentum(tmp_path: Path, uninterrupted: tuple[Path, Any]) -> None:
    got = _sigkill_b_then_finish(RESTORE_SPEC, tmp_path, 15, timeout_s=60)
    assert got.events, "no restart recorded"
    event = got.events[-1]
    print("restart:", event)
    assert event["restore"] == "exact" and event["resumed_at"] in (10, 20) and event["skipped"] == []
    assert {r["start_step"] for r in got.ranks} == {event["resumed_at"]} and {r["restore"] for r in got.ranks} == {"exact"}
    assert _final_params(got) == _final_params(uninterrupted[1])  # the uninterrupted run's parameters, bitwise
    assert all(r["carried_s"] > 0 for r in got.ranks)  # the training time before the checkpoint counts towards a budget


def test_sigkill_restart_of_asgd_ga_restores_rounds_and_updates_in_flight(tmp_path: Path) -> None:
    """ASGD-GA (K=3, S=0: deterministic) with momentum, resumed mid-round: each region's model of
    record, its round, the other region's updates recorded at the cut and its momentum come back, so
    the run ends where the uninterrupted one does."""
    spec = GeoRunSpec(strategy="asgd-ga", accum=3, staleness=0, momentum=0.9, lr=0.1, workers=(("a", 1), ("b", 1)), steps=30)
    whole = run_geo(REGIONS, spec, timeout_s=90)
    got = _sigkill_b_then_finish(spec, tmp_path, 15, timeout_s=60)
    event = got.events[-1]
    print("restart:", event)
    assert event["restore"] == "exact" and event["resumed_at"] in (10, 20)
    assert _final_params(got) == {r["params_sha256"] for r in whole.rank_results}


def test_damaged_newest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path, uninterrupted: tuple[Path, Any]) -> None:
    """A restart finds the newest checkpoint damaged: it says so in events.jsonl and resumes from the one before."""
    import shutil

    from delibench.geo.train import complete_checkpoints

    folder, whole = uninterrupted
    shutil.copytree(folder / "ckpt", tmp_path / "ckpt")
    shutil.copy(folder / "progress.json", tmp_path / "progress.json")  # as if the job had died after step 29
    assert [s for s, _ in complete_checkpoints(tmp_path)] == [20, 10]  # rank 0 keeps the two newest complete steps
    (tmp_path / "ckpt" / "s00000020" / "r1-of-2.pt").write_bytes(b"not a checkpoint")
    with LocalJob(REGIONS, RESTORE_SPEC, links="model", checkpoint_every=EVERY, job_dir=str(tmp_path)) as job:
        got = job.wait(90)
    event = got.events[-1]
    print("restart:", event)
    assert event["resumed_at"] == 10 and event["restore"] == "exact"
    assert len(event["skipped"]) == 1 and "s00000020/r1-of-2.pt is unreadable" in event["skipped"][0]
    assert _final_params(got) == _final_params(whole)
    # Every checkpoint damaged: the run fails with the worker's one line (no traceback reaches the user).
    for f in (tmp_path / "ckpt").rglob("r0-of-2.pt"):
        f.write_bytes(b"")
    with pytest.raises(RuntimeFailure) as failed:
        with LocalJob(REGIONS, RESTORE_SPEC, links="model", checkpoint_every=EVERY, job_dir=str(tmp_path), max_restarts=0) as job:
            job.wait(90)
    print(failed.value)
    assert "error: no usable checkpoint in" in str(failed.value) and "Traceback" not in str(failed.value)
