"""The physical bound (delibench.app.bench.bound) as a pure function of measured inputs, against hand-computed numbers."""

from __future__ import annotations

import math

import pytest

from delibench.app.bench.bound import (
    bound_for,
    compute_bound,
    epoch_bounds,
    fetch_term_rate,
    no_fetch_bounds,
    wait_reduction_at_bound,
)
from delibench.app.bench.figures import LoaderFigures, pipeline_cpu_s_per_sample, score_figures
from delibench.app.bench.probes import deli_miss_rates

#: A cell as measured: 2 cores, 100 KB samples, a 10 MB/s link (100 samples/s at a full miss),
#: a store of 1,000 objects/s, an accelerator eating 320 samples/s (32 per 100 ms).
CELL = dict(
    accelerator_per_s=320.0,
    cores=2.0,
    testbed_cpu_s_per_object=0.002,
    link_bytes_per_s=10e6,
    mean_sample_bytes=100_000.0,
    store_objects_per_s=1000.0,
    rtt_s=0.1,
    connect_rtts=2,
    step_time_s=0.1,
)


def test_each_term_by_hand() -> None:
    b = compute_bound(epoch=0, miss_rate=0.5, accelerator_per_s=320.0, cores=2.0, pipeline_cpu_s_per_sample=0.004,
                      testbed_cpu_s_per_object=0.002, link_bytes_per_s=10e6, mean_sample_bytes=100_000.0,
                      store_objects_per_s=1000.0, pipeline_per_s=400.0)
    assert b.accelerator_per_s == 320.0
    assert b.cpu_per_s == pytest.approx(2 / (0.004 + 0.5 * 0.002))  # 400/s
    assert b.link_per_s == pytest.approx(10e6 / 100_000 / 0.5)  # 200/s
    assert b.store_per_s == pytest.approx(1000 / 0.5)  # 2000/s
    assert (b.binds, b.samples_per_s) == ("link", pytest.approx(200.0))


def test_a_full_cache_leaves_the_fetch_terms_unbounded() -> None:
    b = compute_bound(epoch=1, miss_rate=0.0, accelerator_per_s=320.0, cores=2.0, pipeline_cpu_s_per_sample=0.01,
                      testbed_cpu_s_per_object=0.002, link_bytes_per_s=10e6, mean_sample_bytes=100_000.0,
                      store_objects_per_s=1000.0)
    assert math.isinf(b.link_per_s) and math.isinf(b.store_per_s)
    assert (b.binds, b.samples_per_s) == ("cpu", pytest.approx(200.0))  # 2 cores / 10 ms


def test_epoch_bounds_from_measured_inputs() -> None:
    # Epoch 0 misses everything; epoch 1 a quarter. The no-fetch loaders ran at 300/s and 250/s in
    # epoch 0 and 310/s in epoch 1 (disk's second epoch was not measured).
    bounds = epoch_bounds(miss_rates=[1.0, 0.25], pipeline_cpu_s_per_sample=0.005,
                          pipeline_epoch_rates=[(300.0, 310.0), (250.0,)], **CELL)
    e0, e1 = bounds
    # CPU per sample is capped by what 2 cores can burn at the pipeline's best rate: min(5 ms, 2/300 s) = 5 ms.
    assert e0.cpu_per_s == pytest.approx(2 / (0.005 + 1.0 * 0.002))  # 285.7/s
    assert e0.link_per_s == pytest.approx(100.0) and e0.store_per_s == pytest.approx(1000.0)
    assert e0.pipeline_per_s == 300.0 and e1.pipeline_per_s == 310.0
    assert (e0.binds, e0.samples_per_s) == ("link", pytest.approx(100.0))
    assert e1.link_per_s == pytest.approx(400.0)
    assert e1.cpu_per_s == pytest.approx(2 / (0.005 + 0.25 * 0.002))  # 363.6/s
    assert (e1.binds, e1.samples_per_s) == ("pipeline", pytest.approx(310.0))
    # Fill: a new connection's 2 round trips + the request's in epoch 0, one round trip after.
    assert e0.fill_s == pytest.approx(0.3) and e1.fill_s == pytest.approx(0.1)
    # Drain: the last step plus the last sample's decode.
    assert e0.drain_s == pytest.approx(0.1 + 0.005)


def test_epoch_bounds_cap_the_pipeline_cpu_at_every_core_busy() -> None:
    # Measured 20 ms per sample but the pipeline ran at 200/s on 2 cores: it cannot have used more than 10 ms.
    (b,) = epoch_bounds(miss_rates=[0.0], pipeline_cpu_s_per_sample=0.020, pipeline_epoch_rates=[(200.0,)], **CELL)
    assert b.cpu_per_s == pytest.approx(2 / 0.010)
    assert b.drain_s == pytest.approx(0.1 + 0.010)


def test_epoch_bounds_without_pipeline_measurements() -> None:
    (b,) = epoch_bounds(miss_rates=[1.0], pipeline_cpu_s_per_sample=None, pipeline_epoch_rates=[], **CELL)
    assert b.cpu_per_s == pytest.approx(2 / 0.002) and math.isinf(b.pipeline_per_s)
    assert b.drain_s == pytest.approx(0.1)


def test_no_fetch_bounds_drop_link_store_and_fetch_cpu() -> None:
    bounds = epoch_bounds(miss_rates=[1.0], pipeline_cpu_s_per_sample=0.005, pipeline_epoch_rates=[(300.0,)], **CELL)
    (local,) = no_fetch_bounds(bounds, cores=2.0, pipeline_cpu_s_per_sample=0.005, mean_sample_bytes=100_000.0)
    assert math.isinf(local.link_per_s) and math.isinf(local.store_per_s)
    assert local.cpu_per_s == pytest.approx(400.0) and local.pipeline_per_s == 300.0
    assert (local.binds, local.samples_per_s) == ("pipeline", 300.0)
    assert local.fill_s == 0.0 and local.drain_s == 0.0


def test_fetch_term_rate_adds_fill_and_drain_and_credits_the_warmup() -> None:
    (b,) = epoch_bounds(miss_rates=[1.0], pipeline_cpu_s_per_sample=0.005, pipeline_epoch_rates=[(300.0,)], **CELL)
    # 200 samples over a 100/s link: 0.3 s fill + 2 s + 0.105 s drain.
    assert fetch_term_rate(b, 200) == pytest.approx(200 / 2.405)
    assert fetch_term_rate(b, 200, whole_epoch=False) == pytest.approx(200 / 2.3)
    # 40 warm-up samples took 1 s: the link only owes (0.3 + 240/100 + 0.105 - 1) s for the 200 counted.
    assert fetch_term_rate(b, 200, warmup_samples=40, warmup_s=1.0) == pytest.approx(200 / 1.805)


def test_bound_for_weights_epochs_by_samples() -> None:
    e0 = compute_bound(epoch=0, miss_rate=1.0, accelerator_per_s=1000.0, cores=2.0, pipeline_cpu_s_per_sample=None,
                       testbed_cpu_s_per_object=0.0, link_bytes_per_s=10e6, mean_sample_bytes=100_000.0,
                       store_objects_per_s=0.0)  # link: 100/s
    e1 = compute_bound(epoch=1, miss_rate=0.0, accelerator_per_s=400.0, cores=2.0, pipeline_cpu_s_per_sample=None,
                       testbed_cpu_s_per_object=0.0, link_bytes_per_s=10e6, mean_sample_bytes=100_000.0,
                       store_objects_per_s=0.0)  # accelerator: 400/s
    # 100 samples at 100/s (1 s) + 200 at 400/s (0.5 s): 300 / 1.5 s.
    assert bound_for((100, 200), [e0, e1]) == pytest.approx(200.0)
    assert bound_for((100, 200, 400), [e0, e1]) == pytest.approx(700 / 2.5)  # epoch 2 takes the last bound


def test_wait_reduction_at_bound_by_hand() -> None:
    # 100/s with 4 ms of wait per sample: 6 ms of compute. At a bound of 125/s (8 ms) 2 ms would
    # remain waiting, against the bucket loader's 20 ms: 90 % reachable.
    fig = {"throughput_per_s": 100.0, "wait_s_per_sample": 0.004, "bound_per_s": 125.0}
    assert wait_reduction_at_bound(fig, {"wait_s_per_sample": 0.020}) == pytest.approx(0.9)
    assert wait_reduction_at_bound(fig, None) is None
    assert wait_reduction_at_bound(dict(fig, bound_per_s=math.inf), {"wait_s_per_sample": 0.02}) is None


def _fig(name: str, throughput: float, wait: float, cpu: dict[str, float] | None = None) -> LoaderFigures:
    return LoaderFigures(loader=name, samples=100, samples_per_epoch=(100,), throughput_per_s=throughput,
                         epoch_throughput_per_s=(throughput,), wait_fraction=0.0, wait_s_per_sample=wait,
                         cpu_s_per_sample=cpu or {})


def test_scores_against_the_bound_and_the_bucket_loader() -> None:
    figures = [
        _fig("disk", 300.0, 0.001, {"main": 0.001, "workers": 0.005}),
        _fig("memory", 310.0, 0.0005, {"main": 0.002, "workers": 0.002}),
        _fig("bucket", 20.0, 0.045),
        _fig("deli", 90.0, 0.005),
    ]
    assert pipeline_cpu_s_per_sample(figures) == pytest.approx(0.004)  # the cheaper no-fetch loader
    bound = compute_bound(epoch=0, miss_rate=1.0, accelerator_per_s=1000.0, cores=2.0, pipeline_cpu_s_per_sample=None,
                          testbed_cpu_s_per_object=0.0, link_bytes_per_s=10e6, mean_sample_bytes=100_000.0,
                          store_objects_per_s=0.0)  # link: 100/s, no fill or drain
    local = compute_bound(epoch=0, miss_rate=0.0, accelerator_per_s=1000.0, cores=2.0, pipeline_cpu_s_per_sample=None,
                          testbed_cpu_s_per_object=0.0, link_bytes_per_s=0.0, mean_sample_bytes=100_000.0,
                          store_objects_per_s=0.0, pipeline_per_s=400.0)
    scored = {f.loader: f for f in score_figures(figures, [bound], [local])}
    assert scored["deli"].bound_per_s == pytest.approx(100.0) and scored["deli"].efficiency == pytest.approx(0.9)
    assert scored["disk"].bound_per_s == pytest.approx(400.0) and scored["disk"].efficiency == pytest.approx(0.75)
    assert scored["deli"].wait_reduction_vs_bucket == pytest.approx(1 - 0.005 / 0.045)
    # Fetch stall: beyond the 0.5 ms the pipeline waits with the bytes in RAM.
    assert scored["deli"].fetch_stall_removed == pytest.approx(1 - 0.0045 / 0.0445)
    assert scored["bucket"].wait_reduction_vs_bucket == pytest.approx(0.0)


def test_deli_miss_rates_spread_the_later_misses() -> None:
    assert deli_miss_rates(cache_misses=150, samples=100, epochs=3) == [1.0, 0.25, 0.25]
    assert deli_miss_rates(cache_misses=90, samples=100, epochs=2) == [1.0, 0.0]
    assert deli_miss_rates(cache_misses=100, samples=100, epochs=1) == [1.0]
