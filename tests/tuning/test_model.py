"""The analytic wait model against hand-computed cases."""

from __future__ import annotations

import pytest

from delibench.errors import UsageError
from delibench.tuning.guide import Predictor
from delibench.tuning.model import EPOCH_START_S, STEP_OVERHEAD_S, Demand, LinkEstimate, pipeline_rate, predict_wait
from delibench.tuning.simulator import CacheSimulator
from delibench.tuning.space import SearchSpace, TuneConfig

# 50 ms RTT, 10 MB/s, 100 kB samples: one GET takes 0.05 + 0.01 = 0.06 s.
LINK = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3)
# 32 samples per 0.2 s step: the accelerator eats 160 samples/s.
DEMAND = Demand(batch_size=32, step_time_s=0.2, num_workers=2)


def cfg(conc: int, depth: int = 64, cache: int = 0, workers: int | None = None, eviction: str = "lru") -> TuneConfig:
    return TuneConfig(cache_size_bytes=cache, prefetch_depth=depth, concurrency=conc, eviction=eviction, num_workers=workers)


def steady_fraction(supply: float, demand: Demand = DEMAND) -> float:
    """Hand formula: per-step wait B/S - step (if positive) plus the hand-over overhead."""
    wait = max(0.0, demand.batch_size / supply - demand.step_time_s) + STEP_OVERHEAD_S
    return wait / (wait + demand.step_time_s)


def test_request_time_is_rtt_plus_transfer() -> None:
    assert LINK.request_time_s == pytest.approx(0.06)


def test_window_rate_is_littles_law() -> None:
    # All misses: min(conc, depth) = 4 GETs in flight, each 0.06 s -> 66.7 samples/s.
    assert pipeline_rate(4, 4, 1.0, 0.06, 1 / 400) == pytest.approx(66.67, rel=0.01)
    assert pipeline_rate(16, 4, 1.0, 0.06, 1 / 400) == pytest.approx(66.67, rel=0.01)
    # A consumer slower than the window is the limit.
    assert pipeline_rate(64, 32, 1.0, 0.06, 1 / 100) == pytest.approx(100, rel=0.01)


def test_cache_hits_hold_window_positions() -> None:
    # Half the samples cached (spread out, LRU): depth 4 holds ~2 misses in flight, not 4; the
    # old closed form said min(16, 4) / 0.06 / 0.5 = 133/s, the window plays out near 4 / 0.06 = 67-80/s.
    rate = pipeline_rate(4, 16, 0.5, 0.06, 1 / 400)
    assert 60 < rate < 90
    # A deep window is not held back by its hits: 16 in flight / 0.06 / 0.5 = 533/s > the consumer's 400/s.
    assert pipeline_rate(64, 16, 0.5, 0.06, 1 / 400) == pytest.approx(400, rel=0.01)


def test_latency_bound() -> None:
    # 4 in flight / 0.06 s = 66.67 samples/s < 160/s.
    p = predict_wait(cfg(4), LINK, DEMAND, miss_rate=1.0)
    assert p.bound == "latency"
    assert p.supply_samples_per_s == pytest.approx(66.67, rel=0.01)
    assert p.wait_fraction == pytest.approx(steady_fraction(66.67), abs=0.005)
    # Little's law: 160/s x 0.06 s = 9.6 requests must be in flight.
    assert p.in_flight_needed == pytest.approx(9.6)


def test_issue_18_environment_is_not_predicted_free() -> None:
    # 36 ms RTT, 116 MB/s, 38 kB JPEGs, 100 ms steps of 32 (320/s): depth 4 with 4 GETs in flight
    # delivers 4 / (0.036 + 0.00033) = 110/s: the accelerator waits about two thirds of the time.
    link = LinkEstimate(rtt_s=0.036, bandwidth_bytes_per_s=116e6, sample_bytes=38e3, decode_samples_per_s=800, cpu_count=8)
    demand = Demand(batch_size=32, step_time_s=0.1, num_workers=4)
    p = predict_wait(cfg(4, depth=4), link, demand, miss_rate=1.0)
    assert p.bound == "latency"
    assert p.wait_fraction == pytest.approx(1 - 110.1 / 320, abs=0.02)
    # Even with 60 % of the samples cached (LRU: hits spread), depth 4 still starves it.
    assert predict_wait(cfg(4, depth=4), link, demand, miss_rate=0.4).wait_fraction > 0.3


def test_bandwidth_bound() -> None:
    # 16 in flight allow 266.7/s but 10 MB/s / 100 kB = 100/s.
    p = predict_wait(cfg(16), LINK, DEMAND, miss_rate=1.0)
    assert p.bound == "bandwidth"
    assert p.wait_fraction == pytest.approx(steady_fraction(100))


def test_prefetch_depth_caps_requests_in_flight() -> None:
    # depth 2 < concurrency 16: 2 / 0.06 = 33.3/s.
    p = predict_wait(cfg(16, depth=2), LINK, DEMAND, miss_rate=1.0)
    assert p.bound == "latency"
    assert p.wait_fraction == pytest.approx(steady_fraction(33.33), abs=0.005)


def test_cache_hits_divide_the_fetch_load() -> None:
    # miss 0.5: 100 fetched/s deliver 200 samples/s >= 160/s -> only the hand-over overhead.
    p = predict_wait(cfg(16), LINK, DEMAND, miss_rate=0.5)
    assert p.wait_fraction == pytest.approx(steady_fraction(1e9))
    assert p.bound == "none"
    # miss 0.8: 100 / 0.8 = 125/s.
    assert predict_wait(cfg(16), LINK, DEMAND, miss_rate=0.8).wait_fraction == pytest.approx(steady_fraction(125))


def test_belady_hits_come_first_then_a_run_of_misses() -> None:
    # Belady keeps what the next epoch needs soonest: half the epoch is hits (no wait), the other
    # half all misses at the bandwidth's 100/s: wait per step averages 0.5 x (32/100 - 0.2) = 0.06 s.
    p = predict_wait(cfg(16, cache=1, eviction="belady"), LINK, DEMAND, miss_rate=0.5)
    wait = 0.5 * (32 / 100 - 0.2) + STEP_OVERHEAD_S
    assert p.wait_fraction == pytest.approx(wait / (wait + 0.2))


def test_server_ceiling() -> None:
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, server_objects_per_s=50)
    p = predict_wait(cfg(16), link, DEMAND, miss_rate=1.0)
    assert p.bound == "server"
    assert p.wait_fraction == pytest.approx(steady_fraction(50))
    # A ceiling read from a few round trips may be a burst's start-up: twice as high is still possible.
    assert p.low == pytest.approx(steady_fraction(100), abs=0.005)
    assert not p.trusted and "store ceiling" in p.uncertain_reason


def test_decode_bound_with_workers() -> None:
    # 50 samples/s per worker x min(2 workers, 2 CPUs) = 100/s; everything cached.
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=50, cpu_count=2)
    p = predict_wait(cfg(16, workers=2), link, DEMAND, miss_rate=0.0)
    assert p.bound == "decode"
    assert p.wait_fraction == pytest.approx(steady_fraction(100))
    # Four workers on two CPUs decode no faster.
    assert predict_wait(cfg(16, workers=4), link, DEMAND, 0.0).wait_fraction == pytest.approx(steady_fraction(100))


def test_fetching_takes_cpu_from_decoding_in_the_pessimistic_reading() -> None:
    # The no-fetch pipeline delivers 200/s with 2 workers on 2 CPUs. Fetching every sample costs
    # 10 ms of host CPU each (read host-wide, other tenants included): nominally not counted, in the
    # pessimistic reading 1 / (1/180 + 1.0 x 0.01 / 2 CPUs) = 94.7/s (the pipeline's rate less 10 %).
    link = LinkEstimate(rtt_s=0.001, bandwidth_bytes_per_s=1e9, sample_bytes=100e3, decode_samples_per_s=100, cpu_count=2,
                        fetch_cpu_s=0.01, pipeline_samples_per_s=((2, 200.0),))
    p = predict_wait(cfg(32, workers=2), link, DEMAND, 1.0)
    assert p.wait_fraction == pytest.approx(steady_fraction(200))
    assert p.high == pytest.approx(steady_fraction(1 / (1 / 180 + 0.005)))
    assert not p.trusted and "host CPU per GET" in p.uncertain_reason
    # From a warm cache nothing is fetched: the band is the pipeline's own +5/-10 %.
    q = predict_wait(cfg(32, workers=2), link, DEMAND, 0.0)
    assert q.high == pytest.approx(steady_fraction(180))


def test_measured_pipeline_replaces_decode_times_workers() -> None:
    # The probe decodes 400/s per worker, but the measured pipeline (decode + hand-over) gives 120/s with 2 workers.
    link = LinkEstimate(rtt_s=0.001, bandwidth_bytes_per_s=1e9, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2,
                        pipeline_samples_per_s=((2, 120.0), (0, 60.0)))
    p = predict_wait(cfg(32, workers=2), link, DEMAND, 0.0)
    assert p.bound == "decode"
    assert p.wait_fraction == pytest.approx(steady_fraction(120))
    # num_workers=0: the loop's process delivers 60/s: 32 / 60 s of decode per step inside next().
    wait = 32 / 60 + STEP_OVERHEAD_S
    assert predict_wait(cfg(32, workers=0), link, DEMAND, 0.0).wait_fraction == pytest.approx(wait / (wait + 0.2))


def test_decode_in_main_process_adds_to_the_wait() -> None:
    # num_workers=0: 32 / 400 = 0.08 s of decode per step, not overlapped.
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2)
    p = predict_wait(cfg(16, workers=0), link, DEMAND, miss_rate=0.0)
    wait = 0.08 + STEP_OVERHEAD_S
    assert p.wait_fraction == pytest.approx(wait / (wait + 0.2))
    assert p.bound == "decode"
    # The loop's own process decodes at its own (probed) rate when known: 32 / 200 = 0.16 s.
    slow = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2,
                        decode_main_samples_per_s=200)
    wait = 0.16 + STEP_OVERHEAD_S
    assert predict_wait(cfg(16, workers=0), slow, DEMAND, 0.0).wait_fraction == pytest.approx(wait / (wait + 0.2))


def test_short_epoch_waits_for_its_first_batch() -> None:
    # A 10-step measured epoch from a warm cache: the epoch's start (iterator reset), then one worker
    # decodes the first batch (32 / 400 = 0.08 s) while the accelerator waits; then only the hand-over.
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2)
    demand = Demand(batch_size=32, step_time_s=0.2, num_workers=2, steps_per_epoch=10)
    wait = EPOCH_START_S + 0.08 + 10 * STEP_OVERHEAD_S
    assert predict_wait(cfg(16), link, demand, 0.0).wait_fraction == pytest.approx(wait / (wait + 2.0))


def test_short_epoch_starts_with_the_prefetch_lead() -> None:
    # Bandwidth-bound at 100/s, 10 steps of 32: steady wait 10 x (0.32 - 0.2) = 1.2 s. During the
    # previous epoch's tail (2 workers' last batches: 2 x 0.2 s, + first-batch decode 0.08 s) the
    # link fetched 48 samples (under the depth of 64): 0.48 s less wait.
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2)
    demand = Demand(batch_size=32, step_time_s=0.2, num_workers=2, steps_per_epoch=10)
    wait = EPOCH_START_S + 0.08 + (1.2 - 0.48) + 10 * STEP_OVERHEAD_S
    assert predict_wait(cfg(16), link, demand, 1.0).wait_fraction == pytest.approx(wait / (wait + 2.0))
    # A shallow window carries only its depth over: 4 samples at 66.7/s = 0.06 s.
    wait4 = EPOCH_START_S + 0.08 + (10 * (32 / 66.67 - 0.2) - 4 / 66.67) + 10 * STEP_OVERHEAD_S
    assert predict_wait(cfg(4, depth=4), link, demand, 1.0).wait_fraction == pytest.approx(wait4 / (wait4 + 2.0), abs=0.01)


def test_workers_race_through_belady_hits() -> None:
    # Belady, half cached, 10 steps of 32: the misses' run alone would wait 5 x (0.32 - 0.2) = 0.6 s,
    # but the 2 workers pass the 160 hits up to 2 x 2 x 32 = 128 samples ahead of the loop, which
    # starts the run of misses 128 / 160 = 0.8 s early: only the epoch's start and hand-overs remain.
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2)
    demand = Demand(batch_size=32, step_time_s=0.2, num_workers=2, steps_per_epoch=10)
    wait = EPOCH_START_S + 0.08 + 10 * STEP_OVERHEAD_S
    assert predict_wait(cfg(16, cache=1, eviction="belady"), link, demand, 0.5).wait_fraction == pytest.approx(wait / (wait + 2.0))
    # One worker, half the lead (64 samples = 0.4 s): 0.2 s of the misses' wait is left.
    one = Demand(batch_size=32, step_time_s=0.2, num_workers=1, steps_per_epoch=10)
    wait1 = EPOCH_START_S + 0.08 + 0.2 + 10 * STEP_OVERHEAD_S
    assert predict_wait(cfg(16, cache=1, eviction="belady", workers=1), link, one, 0.5).wait_fraction == pytest.approx(wait1 / (wait1 + 2.0))


def test_more_concurrency_never_predicts_more_wait() -> None:
    waits = [predict_wait(cfg(c), LINK, DEMAND, 1.0).wait_fraction for c in (1, 2, 4, 8, 16, 32)]
    assert waits == sorted(waits, reverse=True)


def test_deeper_window_never_predicts_more_wait() -> None:
    waits = [predict_wait(cfg(16, depth=d), LINK, DEMAND, 0.6).wait_fraction for d in (1, 2, 4, 8, 16, 64)]
    assert waits == sorted(waits, reverse=True)


def test_band_and_trust() -> None:
    decoded = dict(rtt_s=0.05, sample_bytes=100e3, decode_samples_per_s=1000, cpu_count=2)
    # Bandwidth only a lower bound: a bandwidth-bound prediction may be far too pessimistic.
    unresolved = LinkEstimate(bandwidth_bytes_per_s=10e6, bandwidth_resolved=False, **decoded)
    p = predict_wait(cfg(16), unresolved, DEMAND, 1.0)
    assert not p.trusted and "bandwidth not resolved" in p.uncertain_reason
    assert p.low < 0.05 < p.high
    # ... but a shallow, latency-bound config is just as slow whatever the bandwidth.
    assert predict_wait(cfg(2, depth=2), unresolved, DEMAND, 1.0).trusted
    # A resolved probe: trusted, with a narrow band around the prediction.
    q = predict_wait(cfg(16), LinkEstimate(bandwidth_bytes_per_s=10e6, **decoded), DEMAND, 1.0)
    assert q.trusted and q.low <= q.wait_fraction <= q.high and q.high - q.low < 0.1
    # A request rate beyond the one the probe reached (the store's ceiling unknown there).
    far = LinkEstimate(bandwidth_bytes_per_s=1e9, probed_objects_per_s=120, probed_in_flight=8, **decoded)
    r = predict_wait(cfg(64, depth=256), far, DEMAND, 1.0)
    assert not r.trusted and "beyond the probe" in r.uncertain_reason
    # Decode in the training process, measured only in a quieter one: untrusted.
    w0 = predict_wait(cfg(16, workers=0), LinkEstimate(bandwidth_bytes_per_s=1e9, **{**decoded, "decode_samples_per_s": 300}), DEMAND, 0.0)
    assert not w0.trusted and "num_workers=0" in w0.uncertain_reason


def _predictor(link: LinkEstimate) -> tuple[Predictor, SearchSpace]:
    sizes = [100_000] * 64
    sim = CacheSimulator(sizes, epochs=2, seed=0)
    space = SearchSpace(mem_budget_bytes=8 << 20, dataset_bytes=sum(sizes), prefetch_depths=(4, 8), concurrencies=(4, 8), cache_levels=2)
    return Predictor(link, Demand(32, 0.2, 2, steps_per_epoch=2), sim), space


def test_untrusted_model_proposes_nothing() -> None:
    # A thin link whose bandwidth the probe could not resolve: every fetching config is open.
    unsure, space = _predictor(LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=2e6, sample_bytes=100e3, decode_samples_per_s=1000,
                                            cpu_count=2, bandwidth_resolved=False))
    ok, why = unsure.assess(space)
    assert ok is False and "bandwidth not resolved" in why
    assert unsure.best_guesses(space, "wait", k=3) == []
    sure, space = _predictor(LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=1000, cpu_count=2))
    assert sure.assess(space)[0] is True
    guesses = sure.best_guesses(space, "wait", k=2)
    assert guesses and all(g.prediction.trusted for g in guesses)


@pytest.mark.parametrize("miss", [-0.1, 1.5])
def test_bad_miss_rate(miss: float) -> None:
    with pytest.raises(UsageError):
        predict_wait(cfg(4), LINK, DEMAND, miss)


def test_bad_inputs() -> None:
    with pytest.raises(UsageError):
        LinkEstimate(rtt_s=0.01, bandwidth_bytes_per_s=0, sample_bytes=1)
    with pytest.raises(UsageError):
        Demand(batch_size=0, step_time_s=0.1)
    with pytest.raises(UsageError):
        Demand(batch_size=1, step_time_s=0.1, steps_per_epoch=0)


def test_a_busy_host_makes_cpu_bound_predictions_untrusted() -> None:
    # The pipeline's 400/s covers the 320/s the loop eats. Probed while other work kept 80 % of the
    # host's CPUs busy, the pessimistic reading cuts the pipeline to 30 % (120/s): the band is wide.
    base = dict(rtt_s=0.002, bandwidth_bytes_per_s=1e9, sample_bytes=100e3, decode_samples_per_s=600, cpu_count=2,
                pipeline_samples_per_s=((2, 400.0),))
    demand = Demand(batch_size=16, step_time_s=0.05, num_workers=2)
    quiet = predict_wait(cfg(16, workers=2), LinkEstimate(**base, host_busy_fraction=0.05), demand, 0.0)
    busy = predict_wait(cfg(16, workers=2), LinkEstimate(**base, host_busy_fraction=0.8), demand, 0.0)
    assert quiet.wait_fraction == busy.wait_fraction == pytest.approx(steady_fraction(400, demand))
    assert quiet.trusted
    assert not busy.trusted and "busy with other work" in busy.uncertain_reason
    # A latency-bound config far from the CPU's limit stays trusted on the same busy host.
    slow_link = LinkEstimate(**{**base, "rtt_s": 0.1}, host_busy_fraction=0.8)
    assert predict_wait(cfg(2, depth=2), slow_link, demand, 1.0).trusted
