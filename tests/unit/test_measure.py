"""The data-wait arithmetic of ``delibench.measure``: exact figures from hand-made steps, no clock, no sleep."""

from __future__ import annotations

import statistics

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from delibench.measure import MIN_MEASURED_STEPS, check_validity, percentile, summarize
from delibench.records import LoaderStats, StepSample


def make_steps(waits, computes, *, rank=0, epoch=0, samples=8, steps_per_epoch=None):
    """Steps laid end to end on a timeline (start_s follows from the previous step)."""
    out = []
    t = 0.0
    for i, (w, c) in enumerate(zip(waits, computes)):
        e = epoch + (i // steps_per_epoch if steps_per_epoch else 0)
        s = i % steps_per_epoch if steps_per_epoch else i
        out.append(StepSample(epoch=e, step=s, rank=rank, wait_s=w, compute_s=c, samples=samples, start_s=t))
        t += w + c
    return out


def test_steady_state_excludes_warmup_and_whole_run_keeps_it():
    steps = make_steps([5.0, 2.0, 1.0] + [0.1] * 10, [0.3] * 13)
    m = summarize(steps, warmup_steps=3, iterator_setup_s=0.5, time_to_first_batch_s=5.0, bytes_per_sample=1000)
    assert m.data_wait_fraction == pytest.approx(0.25)
    assert m.accelerator_utilization == pytest.approx(0.75)
    whole = (8.0 + 1.0) / (8.0 + 1.0 + 13 * 0.3)
    assert m.data_wait_fraction_whole_run == pytest.approx(whole)
    assert m.measured_steps == 10
    assert m.total_samples == 13 * 8
    assert m.throughput_samples_per_s == pytest.approx(80 / 4.0)
    assert m.throughput_bytes_per_s == pytest.approx(80 / 4.0 * 1000)
    assert m.compute_s_mean == pytest.approx(0.3)
    assert m.iterator_setup_s == 0.5 and m.time_to_first_batch_s == 5.0
    assert m.wall_s == pytest.approx(8.0 + 1.0 + 13 * 0.3)


def test_first_step_is_never_steady_state_because_it_is_time_to_first_batch():
    steps = make_steps([9.0] + [0.2] * 4, [0.2] * 5)
    m = summarize(steps, warmup_steps=0)
    assert m.data_wait_fraction == pytest.approx(0.5)
    assert m.measured_steps == 4


def test_warmup_is_counted_from_the_start_of_the_run_not_each_epoch():
    # 3 epochs of 4 steps; epoch starts are slow, but only the first 2 steps of the run are warm-up.
    waits = [3.0, 1.0, 0.0, 0.0] * 3
    steps = make_steps(waits, [1.0] * 12, steps_per_epoch=4)
    m = summarize(steps, warmup_steps=2)
    kept_wait = sum(waits[2:])
    assert m.data_wait_fraction == pytest.approx(kept_wait / (kept_wait + 10.0))
    assert [e.epoch for e in m.epochs] == [0, 1, 2]
    assert m.epochs[1].wait_s == pytest.approx(4.0) and m.epochs[1].steps == 4
    assert m.epochs[1].data_wait_fraction == pytest.approx(0.5)
    assert m.epoch_time_s_mean == pytest.approx(8.0)


def test_percentiles_match_numpy():
    rng = np.random.default_rng(3)
    waits = list(rng.exponential(0.05, 200))
    steps = make_steps([1.0] + waits, [0.1] * 201)
    m = summarize(steps, warmup_steps=1)
    for q, got in ((50, m.wait_s_p50), (90, m.wait_s_p90), (99, m.wait_s_p99)):
        assert got == pytest.approx(float(np.percentile(waits, q)))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_function_agrees_with_numpy(values, q):
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)), rel=1e-9, abs=1e-9)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(0, 1e3, allow_nan=False), min_size=2, max_size=50))
def test_percentile_is_the_one_the_loaders_reported_before(values):
    """Loader latency p50/p95/p99 used ``statistics.quantiles(method="inclusive")``: the same interpolation."""
    qs = statistics.quantiles(values, n=100, method="inclusive")
    assert percentile(values, 50) == pytest.approx(statistics.median(values), rel=1e-9, abs=1e-9)
    assert percentile(values, 95) == pytest.approx(qs[94], rel=1e-9, abs=1e-9)
    assert percentile(values, 99) == pytest.approx(qs[98], rel=1e-9, abs=1e-9)


def test_bottleneck_rank_is_the_one_with_the_largest_wait_and_sets_the_fraction():
    fast = make_steps([0.0] + [0.1] * 9, [0.4] * 10, rank=0)
    slow = make_steps([0.0] + [0.4] * 9, [0.4] * 10, rank=1)
    stats = {0: LoaderStats(cache_hits=5), 1: LoaderStats(cache_misses=7)}
    m = summarize(fast + slow, warmup_steps=1, iterator_setup_s={0: 0.1, 1: 0.7}, time_to_first_batch_s={0: 1.0, 1: 2.0}, loader_stats=stats)
    assert m.bottleneck_rank == 1
    assert m.data_wait_fraction == pytest.approx(0.5)
    assert [r.rank for r in m.ranks] == [0, 1]
    assert m.ranks[0].data_wait_fraction == pytest.approx(0.2)
    assert m.ranks[1].loader_stats.cache_misses == 7 and m.ranks[1].iterator_setup_s == 0.7
    assert m.time_to_first_batch_s == 2.0  # the slowest rank gates the start
    # Global throughput: every rank's samples over the slowest rank's window.
    assert m.throughput_samples_per_s == pytest.approx(2 * 9 * 8 / (9 * 0.8))


def test_world_size_adds_ranks_that_measured_nothing():
    m = summarize(make_steps([0.0] + [0.1] * 5, [0.1] * 6), warmup_steps=1, world_size=2)
    assert [r.rank for r in m.ranks] == [0, 1]
    assert m.bottleneck_rank == 0


def test_bad_arguments_raise():
    with pytest.raises(ValueError):
        summarize([], warmup_steps=1)
    with pytest.raises(ValueError):
        summarize(make_steps([0.1], [0.1]), warmup_steps=-1)


def _codes(issues):
    return {(i.severity, i.code) for i in issues}


def test_partial_read_is_invalid_and_full_read_is_clean():
    steps = make_steps([0.1] * 8, [0.1] * 8, samples=10, steps_per_epoch=4)  # 40 samples per epoch
    m = summarize(steps, warmup_steps=1)
    assert check_validity(m, expected_samples_per_epoch=40) == []
    issues = check_validity(m, expected_samples_per_epoch=42)
    assert ("invalid", "partial-read") in _codes(issues)
    bad = [i for i in issues if i.code == "partial-read"]
    assert len(bad) == 2 and bad[0].expected == "42" and bad[0].actual == "40"
    # A sliced epoch expects only max_steps * batch_size samples.
    assert check_validity(m, expected_samples_per_epoch=1000, max_steps_per_epoch=4, batch_size=10) == []
    # Stopping early forgives only the last epoch.
    short = summarize(steps[:6], warmup_steps=1)
    assert ("invalid", "partial-read") not in _codes(check_validity(short, expected_samples_per_epoch=40, stopped_early=True))
    assert ("info", "stopped-early") in _codes(check_validity(short, expected_samples_per_epoch=40, stopped_early=True))
    assert ("invalid", "partial-read") in _codes(check_validity(short, expected_samples_per_epoch=40))


def test_too_few_steps_is_invalid():
    m = summarize(make_steps([0.1] * 3, [0.1] * 3), warmup_steps=1)
    assert m.measured_steps == 2 < MIN_MEASURED_STEPS
    issues = check_validity(m)
    assert issues[0].severity == "invalid" and issues[0].code == "too-few-steps"
    assert "--warmup-steps" in issues[0].message


def test_cold_cache_warning_when_epoch_one_is_much_slower():
    waits = [0.9] * 4 + [0.1] * 8
    m = summarize(make_steps(waits, [0.1] * 12, steps_per_epoch=4), warmup_steps=1)
    issues = check_validity(m)
    assert ("warning", "cold-cache") in _codes(issues)
    assert "--warmup-epochs 1" in next(i.message for i in issues if i.code == "cold-cache")
    even = summarize(make_steps([0.1] * 12, [0.1] * 12, steps_per_epoch=4), warmup_steps=1)
    assert check_validity(even) == []


def test_page_cache_warning_only_for_disk_when_dataset_fits_in_ram():
    m = summarize(make_steps([0.1] * 5, [0.1] * 5), warmup_steps=1)
    assert ("warning", "page-cache") in _codes(check_validity(m, loader_kind="disk", dataset_bytes=10**9, memory_bytes=10**10))
    assert check_validity(m, loader_kind="disk", dataset_bytes=10**11, memory_bytes=10**10) == []
    assert check_validity(m, loader_kind="bucket", dataset_bytes=10**9, memory_bytes=10**10) == []


def test_issues_are_sorted_most_severe_first():
    m = summarize(make_steps([0.1] * 2, [0.1] * 2), warmup_steps=1)
    issues = check_validity(m, loader_kind="disk", dataset_bytes=1, memory_bytes=2, stopped_early=True)
    assert [i.severity for i in issues] == ["invalid", "warning", "info"]
