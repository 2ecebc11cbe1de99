"""Fixtures for the reports tests: RunRecords built from real dataclasses with figures derived from a timeline."""

from __future__ import annotations

import datetime as dt
import random
import statistics
from collections.abc import Callable
from pathlib import Path

import pytest

from delibench.records import (
    ComputeSpec,
    EpochMetrics,
    Issue,
    LoaderSpec,
    LoaderStats,
    MachineInfo,
    RankMetrics,
    RunMetrics,
    RunRecord,
    RunSpec,
    StepSample,
)
from delibench.reports.store import new_run_id

DATA_DIR = Path(__file__).parent / "data"


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def build_record(
    loader: str = "deli",
    *,
    wait_s: float = 0.004,
    compute_s: float = 0.05,
    steps_per_epoch: int = 30,
    epochs: int = 2,
    batch_size: int = 16,
    sample_bytes: int = 110_000,
    dataset_samples: int = 480,
    hit_rate_epoch2: float = 0.0,
    warmup_steps: int = 3,
    seed: int = 0,
    when: dt.datetime | None = None,
    dataset_url: str = "s3://bench/imgs",
    issues: tuple[Issue, ...] = (),
    options: dict | None = None,
) -> RunRecord:
    """A plausible RunRecord whose metrics are computed from a jittered per-step timeline.

    Cached loaders read ``(1 - hit_rate_epoch2)`` of the samples from storage in epoch 2+.
    """
    rng = random.Random(f"{loader}-{seed}")
    timeline: list[StepSample] = []
    clock = 0.0
    for epoch in range(epochs):
        for step in range(steps_per_epoch):
            w = max(0.0, rng.gauss(wait_s, wait_s * 0.3))
            c = max(1e-4, rng.gauss(compute_s, compute_s * 0.05))
            timeline.append(StepSample(epoch, step, 0, w, c, batch_size, clock))
            clock += w + c
    measured = timeline[warmup_steps:]
    sum_w = sum(s.wait_s for s in measured)
    sum_c = sum(s.compute_s for s in measured)
    fraction = sum_w / (sum_w + sum_c)
    whole_w = sum(s.wait_s for s in timeline)
    whole = whole_w / (whole_w + sum(s.compute_s for s in timeline))
    total_samples = batch_size * len(timeline)
    fetched = batch_size * steps_per_epoch + round(batch_size * steps_per_epoch * (epochs - 1) * (1 - hit_rate_epoch2))
    hits = total_samples - fetched if hit_rate_epoch2 else 0
    remote = "://" in dataset_url  # a local path (disk baseline) issues no GETs and pays no egress
    stats = LoaderStats(
        requests_count=fetched if remote else 0,
        bytes_read_remote=fetched * sample_bytes if remote else 0,
        cache_hits=hits,
        cache_misses=fetched if hit_rate_epoch2 else 0,
        cache_peak_bytes=min(fetched, 200) * sample_bytes if hit_rate_epoch2 else 0,
        fetch_latency_s_p50=0.045,
        fetch_latency_s_p95=0.08,
        fetch_latency_s_p99=0.12,
    )
    epoch_rows = []
    for epoch in range(epochs):
        rows = [s for s in timeline if s.epoch == epoch]
        ew, ec = sum(s.wait_s for s in rows), sum(s.compute_s for s in rows)
        epoch_rows.append(
            EpochMetrics(epoch, 0, len(rows), batch_size * len(rows), ew + ec, ew, ec, ew / (ew + ec), batch_size * len(rows) / (ew + ec))
        )
    waits = [s.wait_s for s in measured]
    metrics = RunMetrics(
        data_wait_fraction=fraction,
        accelerator_utilization=1 - fraction,
        data_wait_fraction_whole_run=whole,
        time_to_first_batch_s=timeline[0].wait_s + 0.2,
        iterator_setup_s=0.05,
        epoch_time_s_mean=statistics.fmean(e.wall_s for e in epoch_rows),
        throughput_samples_per_s=batch_size * len(measured) / (sum_w + sum_c),
        throughput_bytes_per_s=sample_bytes * batch_size * len(measured) / (sum_w + sum_c),
        wait_s_p50=_quantile(waits, 0.5),
        wait_s_p90=_quantile(waits, 0.9),
        wait_s_p99=_quantile(waits, 0.99),
        compute_s_mean=sum_c / len(measured),
        measured_steps=len(measured),
        total_samples=total_samples,
        wall_s=clock,
        epochs=tuple(epoch_rows),
        ranks=(RankMetrics(0, fraction, sum_w, sum_c, 0.05, timeline[0].wait_s + 0.2, stats),),
    )
    spec = RunSpec(
        dataset_url=dataset_url,
        workload="emulated",
        loader=LoaderSpec(loader, dict(options or {})),
        compute=ComputeSpec("emulated", compute_s, "a100-resnet50"),
        batch_size=batch_size,
        epochs=epochs,
        warmup_steps=warmup_steps,
        seed=seed,
        max_steps_per_epoch=steps_per_epoch,
        link_profile="cross-region",
    )
    moment = when or dt.datetime(2026, 11, 23, 12, 0, seed % 60, tzinfo=dt.timezone.utc)
    return RunRecord(
        run_id=new_run_id(spec, moment),
        created_at=moment.isoformat(),
        delibench_version="0.1.0",
        spec=spec,
        machine=MachineInfo("testhost", "Linux-x86_64", "3.11.7", 2, 24 * 2**30, "2.14.1", "emulated", None, "0.1.0", "http://127.0.0.1:8333"),
        metrics=metrics,
        loader_stats=stats,
        dataset_sample_count=dataset_samples,
        dataset_bytes=dataset_samples * sample_bytes,
        dataset_id="imgs-480",
        issues=issues,
        timeline=tuple(timeline),
    )


@pytest.fixture
def make_record() -> Callable[..., RunRecord]:
    """The :func:`build_record` factory."""
    return build_record


@pytest.fixture
def loader_trio() -> list[RunRecord]:
    """bucket (slow, no cache), deli (cached, prefetched) and disk: the demo's comparison."""
    return [
        build_record("bucket", wait_s=0.06, seed=1),
        build_record("deli", wait_s=0.003, seed=2, hit_rate_epoch2=0.9, options={"cache_size_bytes": 64 * 2**20, "prefetch_depth": 32}),
        build_record("disk", wait_s=0.001, seed=3, dataset_url="/data/imgs"),
    ]
