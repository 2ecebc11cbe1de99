"""Functional tests of the performance work: bound math, figures, deli's epoch boundary, peers, bench CLI.

No timing is asserted (the machine is shared); what is checked is behaviour that must hold at any speed.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from delibench.loaders.deli import DeliLoader
from delibench.loaders.prefetch import DecodePipeline
from delibench.records import StepSample
from delibench.loaders.testing import Corpus, copy_corpus, make_context, make_corpus
from delibench.app.bench import CpuMeter, build_matrix, compute_bound, format_table, loader_figures


def _bound(**kw: float) -> object:
    args = dict(epoch=0, miss_rate=1.0, accelerator_per_s=100.0, cores=2.0, pipeline_cpu_s_per_sample=0.004,
                testbed_cpu_s_per_object=0.001, link_bytes_per_s=50e6, mean_sample_bytes=1e6, store_objects_per_s=400.0)
    args.update(kw)
    return compute_bound(**args)  # type: ignore[arg-type]


def test_bound_is_the_smallest_term_and_names_it() -> None:
    b = _bound()
    assert b.link_per_s == pytest.approx(50.0) and b.binds == "link" and b.samples_per_s == pytest.approx(50.0)
    assert b.cpu_per_s == pytest.approx(2 / 0.005)
    fast = _bound(accelerator_per_s=10.0)
    assert fast.binds == "accelerator" and fast.samples_per_s == 10.0


def test_warm_cache_removes_the_fetch_terms_but_not_the_cpu() -> None:
    b = _bound(miss_rate=0.0)
    assert math.isinf(b.link_per_s) and math.isinf(b.store_per_s)
    assert b.cpu_per_s == pytest.approx(2 / 0.004)
    half = _bound(miss_rate=0.5)
    assert half.link_per_s == pytest.approx(100.0) and half.store_per_s == pytest.approx(800.0)


def test_no_fetch_pipeline_rate_caps_the_bound() -> None:
    b = _bound(accelerator_per_s=300.0, link_bytes_per_s=0.0, miss_rate=0.0, pipeline_per_s=280.0)
    assert b.binds == "pipeline" and b.samples_per_s == 280.0 and b.pipeline_per_s == 280.0
    assert _bound(pipeline_per_s=1e6).binds == "link"  # a fast pipeline leaves the other terms


def test_epoch0_bound_credits_the_link_time_of_the_warmup() -> None:
    from delibench.app.bench import fetch_term_rate

    link_bound = _bound(link_bytes_per_s=10e6, accelerator_per_s=100.0, pipeline_per_s=50.0)  # link: 10/s
    assert fetch_term_rate(link_bound, 80, warmup_samples=20, warmup_s=2.0) == pytest.approx(10.0)  # slow warm-up: nothing
    assert fetch_term_rate(link_bound, 80, warmup_samples=20, warmup_s=5.0) == pytest.approx(80 / (100 / 10 - 5))  # 16/s
    assert fetch_term_rate(link_bound, 80, warmup_samples=20, warmup_s=60.0) == pytest.approx(50.0)  # the pipeline binds


def test_fill_and_drain_lengthen_a_whole_epoch_of_the_fetch_terms_only() -> None:
    from delibench.app.bench import fetch_term_rate

    b = _bound(link_bytes_per_s=10e6, accelerator_per_s=100.0, fill_s=0.5, drain_s=1.5)  # link: 10/s
    assert b.samples_per_s == pytest.approx(10.0)  # the steady-state rate is unchanged
    assert fetch_term_rate(b, 100) == pytest.approx(100 / (0.5 + 10 + 1.5))
    assert fetch_term_rate(b, 100, whole_epoch=False) == pytest.approx(100 / 10.5)  # a slice ends before the drain
    assert fetch_term_rate(b, 80, warmup_samples=20, warmup_s=5.0) == pytest.approx(80 / (0.5 + 10 + 1.5 - 5))
    warm = _bound(miss_rate=0.0, accelerator_per_s=100.0, fill_s=0.5, drain_s=1.5)
    assert fetch_term_rate(warm, 100) == pytest.approx(100.0)  # nothing to fetch: no fill, no drain


def test_unshaped_link_is_no_bound() -> None:
    assert math.isinf(_bound(link_bytes_per_s=0.0).link_per_s)


def test_loader_figures_leave_out_warmup_and_split_epochs() -> None:
    steps = [StepSample(epoch=e, step=i, rank=0, wait_s=w, compute_s=0.1, samples=10)
             for e, ws in enumerate([[5.0, 0.1, 0.0], [0.2, 0.0]]) for i, w in enumerate(ws)]
    fig = loader_figures("x", steps, warmup_steps=1)
    assert fig.samples_per_epoch == (20, 20) and fig.samples == 40
    assert fig.wait_fraction == pytest.approx(0.3 / (0.3 + 0.4))
    assert fig.wait_s_per_sample == pytest.approx(0.3 / 40)
    assert fig.epoch_throughput_per_s[0] == pytest.approx(20 / 0.3)


def test_matrix_defaults_cover_three_regimes_and_reject_bad_input() -> None:
    from delibench.errors import UsageError

    cells = build_matrix()
    assert [c.regime for c in cells] == ["latency", "bandwidth", "cpu"]
    product = build_matrix(["same-region", "cross-region"], ["small"], quick=True)
    assert [c.profile for c in product] == ["same-region", "cross-region"] and all(c.samples >= 128 for c in product)
    with pytest.raises(UsageError):
        build_matrix(sizes=["huge"])
    with pytest.raises(UsageError):
        build_matrix(["moon"], ["small"])


def test_cpu_meter_counts_reaped_workers() -> None:
    meter = CpuMeter()
    before = meter.snapshot()
    pid = os.fork()
    if pid == 0:  # burn a little CPU in a child, then exit
        x = 0
        for i in range(3_000_000):
            x += i
        os._exit(0)
    os.waitpid(pid, 0)
    after = meter.snapshot()
    assert after["workers"] > before["workers"]
    assert meter.rss_bytes() > 0


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> Corpus:
    return make_corpus(tmp_path_factory.mktemp("perf"), samples=40, min_bytes=1000, max_bytes=1000)


def _pid_decode(data: bytes, label: int) -> int:
    return os.getpid()


def test_deli_keeps_its_workers_across_epochs_and_stops_them_on_close(corpus: Corpus) -> None:
    import psutil

    import dataclasses

    ctx = dataclasses.replace(make_context(corpus, num_workers=2), decode=_pid_decode)
    loader = DeliLoader(ctx, cache_size=0)
    pids = []
    for epoch in range(3):
        pids.append({int(p) for b in loader.iter_epoch(epoch) for p in b.inputs.tolist()})
    assert pids[0] == pids[1] == pids[2] and len(pids[0]) == 2
    loader.close()
    alive = [p for p in pids[0] if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert alive == []


def test_epoch_stopped_early_does_not_leak_into_the_next(corpus: Corpus) -> None:
    n = len(corpus.manifest)
    with DeliLoader(make_context(corpus, num_workers=2), cache_size=0, prefetch_depth=8) as loader:
        it = loader.iter_epoch(0)
        next(it)
        it.close()  # as measure_loader does at max_steps_per_epoch
        seen = [int(i) for b in loader.iter_epoch(1) for i in b.indices]
    assert sorted(seen) == list(range(n))


def test_cross_epoch_prefetch_fetches_the_next_order_within_depth(corpus: Corpus) -> None:
    n = len(corpus.manifest)
    depth = 6
    with DeliLoader(make_context(corpus, num_workers=1), cache_size=0, prefetch_depth=depth,
                    prefetch_across_epochs=True) as loader:
        first = [int(i) for b in loader.iter_epoch(0) for i in b.indices]
        ahead = loader.look_ahead()
        assert ahead is not None and ahead[0] == 1  # the walk of epoch 1 started when epoch 0 ended
        ahead_prefetcher = ahead[1]
        ahead_prefetcher.take(0)  # blocks until the first sample of epoch 1 is in: no wait for iter_epoch
        requests = loader.stats().requests_count
        assert n < requests <= n + depth + 1  # take(0) let the walk move one further
    assert sorted(first) == list(range(n))
    assert ahead_prefetcher.peak_bytes <= depth * 1000


def test_cross_epoch_prefetch_delivers_every_sample_once_and_counts_hits_delivered(corpus: Corpus) -> None:
    n = len(corpus.manifest)
    with DeliLoader(make_context(corpus, num_workers=2), cache_size=n * 1000, prefetch_depth=8,
                    prefetch_across_epochs=True) as loader:
        for epoch in range(3):
            seen = [int(i) for b in loader.iter_epoch(epoch) for i in b.indices]
            assert sorted(seen) == list(range(n))
        stats = loader.stats()
    assert stats.requests_count == n  # epochs 2 and 3 from the cache
    assert stats.cache_hits == 2 * n  # the walk of an epoch 4 that never ran is not counted


def test_no_look_ahead_past_the_last_known_epoch(corpus: Corpus) -> None:
    n = len(corpus.manifest)
    with DeliLoader(make_context(corpus, num_workers=1, epochs=2), cache_size=0, prefetch_depth=4) as loader:
        for epoch in range(2):
            assert sorted(int(i) for b in loader.iter_epoch(epoch) for i in b.indices) == list(range(n))
            assert (loader.look_ahead() is not None) == (epoch == 0)  # on by default, but not after the last epoch
        assert loader.stats().requests_count == 2 * n  # no GET for an epoch that never runs


def test_paused_look_ahead_fetches_nothing_until_its_epoch_then_delivers_it_exactly(corpus: Corpus) -> None:
    import time

    n = len(corpus.manifest)
    with DeliLoader(make_context(corpus, num_workers=1, epochs=2), cache_size=0, prefetch_depth=8) as loader:
        assert sorted(int(i) for b in loader.iter_epoch(0) for i in b.indices) == list(range(n))
        loader.pause_background()
        paused = loader.stats().requests_count
        time.sleep(0.3)
        assert loader.stats().requests_count == paused  # no GET while another loader would be measured
        assert n <= paused <= n + 8  # the look-ahead ran until the pause: at most prefetch_depth GETs
        assert sorted(int(i) for b in loader.iter_epoch(1) for i in b.indices) == list(range(n))
        stats = loader.stats()
    assert stats.cache_misses == 2 * n  # a request re-sent after the pause is not a second miss
    assert 2 * n <= stats.requests_count <= 2 * n + 8


def test_decode_pipeline_without_workers_runs_inline() -> None:
    class Double:
        def __getitem__(self, x: int) -> int:
            return 2 * x

    pipe = DecodePipeline(Double(), 0)
    assert list(pipe.run(range(4))) == [0, 2, 4, 6]
    pipe.close()


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["s3torchconnector", "webdataset", "s3torchconnector-shards", "litdata-raw"])
def test_peers_deliver_every_sample_from_seaweedfs(kind: str, s3_bucket: str, tmp_path: Path) -> None:
    pytest.importorskip({"s3torchconnector-shards": "s3torchconnector", "litdata-raw": "litdata"}.get(kind, kind))
    from delibench.loaders import build_loader
    from delibench.loaders.base import LoaderContext
    from delibench.records import LoaderSpec
    from delibench.workloads.datagen import make_dataset
    from delibench.workloads.models import get_workload

    local = tmp_path / "imgs"
    make_dataset(local, samples=24, preset="cifar", layout="both", shard_samples=8, seed=3)
    from delibench.loaders.publish import push

    manifest = push(local, f"{s3_bucket}/imgs")
    ctx = LoaderContext(dataset_url=f"{s3_bucket}/imgs", manifest=manifest, decode=get_workload("mnist-cnn").decoder(),
                        batch_size=8, num_workers=2, seed=0)
    loader = build_loader(LoaderSpec(kind), ctx)
    try:
        seen = [int(i) for b in loader.iter_epoch(0) for i in b.indices]
    finally:
        loader.close()
    assert sorted(seen) == list(range(24))
    assert loader.stats().requests_count >= (24 if kind in ("s3torchconnector", "litdata-raw") else 3)


def test_bench_cli_bad_size_is_a_usage_error() -> None:
    from delibench.cli.app import main

    assert main(["bench", "--sizes", "huge"]) == 2


_SAVED_CELL: dict = {
    "cell": {"name": "cross-region/small", "regime": "latency"},
    "bounds": [{"epoch": 0, "samples_per_s": 100.0, "binds": "accelerator", "miss_rate": 1.0, "accelerator_per_s": 100.0,
                "cpu_per_s": 500.0, "link_per_s": None, "store_per_s": 400.0}],
    "ceilings": [{"endpoint": "direct", "objects_per_s": 400.0}],
    "load_average": [1.0, 1.0, 1.0],
    "figures": [
        {"loader": "bucket", "throughput_per_s": 10.0, "wait_fraction": 0.9, "efficiency": 0.1, "wait_reduction_vs_bucket": 0.0,
         "cpu_s_per_sample": {"main": 0.001}, "requests": 10, "sliced": True},
        {"loader": "deli", "throughput_per_s": 95.0, "wait_fraction": 0.05, "efficiency": 0.95, "wait_reduction_vs_bucket": 0.99,
         "cpu_s_per_sample": {"main": 0.002, "workers": 0.003}, "requests": 10, "sliced": False},
        {"loader": "fsspec-cache", "throughput_per_s": 19.0, "wait_fraction": 0.8, "efficiency": 0.19,
         "wait_reduction_vs_bucket": 0.1, "cpu_s_per_sample": {}, "requests": 10, "sliced": True},
    ],
}


def test_format_table_reads_a_saved_cell() -> None:
    cell = _SAVED_CELL
    text = format_table(cell)
    deli_line = next(line for line in text.splitlines() if line.strip().startswith("deli"))
    assert "5.00x" in deli_line and "95.0%" in deli_line and "99.0%" in deli_line


def test_bench_show_reprints_a_saved_result_and_rejects_other_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from delibench.cli.app import main

    saved = tmp_path / "bench.json"
    saved.write_text(json.dumps({"command": "delibench bench", "created_at": "now", "cells": [_SAVED_CELL]}))
    assert main(["bench", "--show", str(saved)]) == 0
    out = capsys.readouterr().out
    assert "cross-region/small [latency]" in out and any(line.strip().startswith("deli") for line in out.splitlines())
    other = tmp_path / "run.json"
    other.write_text(json.dumps({"schema": "delibench.run/1"}))
    assert main(["bench", "--show", str(other)]) == 2
    assert "not a delibench bench result" in capsys.readouterr().err


@pytest.mark.s3
def test_bench_cell_end_to_end_on_a_real_store(tmp_path: Path) -> None:
    """One tiny cell through run_bench: every figure, bound and invariant a report relies on (no timing)."""
    from delibench.app.bench import BenchOptions, Cell, run_bench

    cell = Cell(regime="custom", profile="local", size="small", samples=96, step_time_s=0.02, cache_fraction=1.0,
                batch_size=16)
    options = BenchOptions(workdir=tmp_path / "bench", cells=(cell,), loaders=("disk", "bucket", "deli"), epochs=2,
                           warmup_steps=1, naive_steps=2, workload="resnet18", probe_s=0.3)
    doc = run_bench(options, out=tmp_path / "out.json", log=lambda _line: None)
    (result,) = doc["cells"]
    by = {f["loader"]: f for f in result["figures"]}
    assert set(by) == {"disk", "bucket", "deli", "memory"}
    n = cell.samples
    assert sum(by["deli"]["samples_per_epoch"]) == 2 * n - 16  # every sample of both epochs, warm-up step left out
    assert by["deli"]["requests"] == n  # a cache of the whole dataset: epoch 2 sends no GET
    assert by["bucket"]["sliced"] and not by["deli"]["sliced"]
    for f in result["figures"]:
        assert f["bound_per_s"] > 0 and f["efficiency"] == pytest.approx(f["throughput_per_s"] / f["bound_per_s"])
        assert f["cpu_s_per_sample"]["main"] >= 0 and f["cpu_s_per_sample"]["workers"] > 0
    assert by["bucket"]["wait_reduction_vs_bucket"] == 0.0 and by["bucket"]["fetch_stall_removed"] == 0.0
    assert all(b["binds"] in ("accelerator", "cpu", "link", "store", "pipeline") for b in result["bounds"])
    assert result["ceilings"][0]["objects_per_s"] > 0 and result["memory"]["within_budget"] in (True, False)
    assert (tmp_path / "out.json").exists()


def test_wait_reduction_at_the_bound_says_how_much_wait_is_reachable() -> None:
    from delibench.app.bench import wait_reduction_at_bound

    # 10/s with 50 ms of wait per sample: 50 ms of compute; at a 12.5/s bound it would still wait 30 ms.
    fig = {"throughput_per_s": 10.0, "wait_s_per_sample": 0.05, "bound_per_s": 12.5}
    assert wait_reduction_at_bound(fig, {"wait_s_per_sample": 0.3}) == pytest.approx(0.9)
    assert wait_reduction_at_bound(fig | {"bound_per_s": 1000.0}, {"wait_s_per_sample": 0.3}) == pytest.approx(1.0)
    assert wait_reduction_at_bound(fig, None) is None
