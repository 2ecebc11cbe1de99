"""The analytic wait model against hand-computed cases."""

from __future__ import annotations

import pytest

from delibench.errors import UsageError
from delibench.tuning.model import Demand, LinkEstimate, predict_wait
from delibench.tuning.space import TuneConfig

# 50 ms RTT, 10 MB/s, 100 kB samples: one GET takes 0.05 + 0.01 = 0.06 s.
LINK = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3)
# 32 samples per 0.2 s step: the accelerator eats 160 samples/s.
DEMAND = Demand(batch_size=32, step_time_s=0.2, num_workers=2)


def cfg(conc: int, depth: int = 64, cache: int = 0, workers: int | None = None) -> TuneConfig:
    return TuneConfig(cache_size_bytes=cache, prefetch_depth=depth, concurrency=conc, eviction="lru", num_workers=workers)


def test_request_time_is_rtt_plus_transfer() -> None:
    assert LINK.request_time_s == pytest.approx(0.06)


def test_latency_bound() -> None:
    # 4 in flight / 0.06 s = 66.67 samples/s < 160/s -> wait = 1 - 66.67/160 = 0.5833.
    p = predict_wait(cfg(4), LINK, DEMAND, miss_rate=1.0)
    assert p.bound == "latency"
    assert p.supply_samples_per_s == pytest.approx(66.667, rel=1e-4)
    assert p.wait_fraction == pytest.approx(1 - 66.667 / 160, rel=1e-4)
    # Little's law: 160/s x 0.06 s = 9.6 requests must be in flight.
    assert p.in_flight_needed == pytest.approx(9.6)


def test_bandwidth_bound() -> None:
    # 16 in flight allow 266.7/s but 10 MB/s / 100 kB = 100/s -> wait = 1 - 100/160 = 0.375.
    p = predict_wait(cfg(16), LINK, DEMAND, miss_rate=1.0)
    assert p.bound == "bandwidth"
    assert p.wait_fraction == pytest.approx(0.375)


def test_prefetch_depth_caps_requests_in_flight() -> None:
    # depth 2 < concurrency 16: 2 / 0.06 = 33.3/s -> wait = 1 - 33.33/160 = 0.7917.
    p = predict_wait(cfg(16, depth=2), LINK, DEMAND, miss_rate=1.0)
    assert p.bound == "latency"
    assert p.wait_fraction == pytest.approx(1 - (2 / 0.06) / 160)


def test_cache_hits_divide_the_fetch_load() -> None:
    # miss 0.5: 100 fetched/s deliver 200 samples/s >= 160/s -> no wait.
    p = predict_wait(cfg(16), LINK, DEMAND, miss_rate=0.5)
    assert p.wait_fraction == 0.0
    assert p.bound == "none"
    # miss 0.8: 100 / 0.8 = 125/s -> wait = 1 - 125/160 = 0.21875.
    assert predict_wait(cfg(16), LINK, DEMAND, miss_rate=0.8).wait_fraction == pytest.approx(0.21875)


def test_server_ceiling() -> None:
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, server_objects_per_s=50)
    p = predict_wait(cfg(16), link, DEMAND, miss_rate=1.0)
    assert p.bound == "server"
    assert p.wait_fraction == pytest.approx(1 - 50 / 160)


def test_decode_bound_with_workers() -> None:
    # 50 samples/s per process x min(2 workers, 2 CPUs) = 100/s; everything cached.
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=50, cpu_count=2)
    p = predict_wait(cfg(16, workers=2), link, DEMAND, miss_rate=0.0)
    assert p.bound == "decode"
    assert p.wait_fraction == pytest.approx(0.375)
    # Four workers on two CPUs decode no faster.
    assert predict_wait(cfg(16, workers=4), link, DEMAND, 0.0).wait_fraction == pytest.approx(0.375)


def test_decode_in_main_process_adds_to_the_wait() -> None:
    # num_workers=0: 32 / 400 = 0.08 s of decode per step, not overlapped: 0.08 / (0.08 + 0.2).
    link = LinkEstimate(rtt_s=0.05, bandwidth_bytes_per_s=10e6, sample_bytes=100e3, decode_samples_per_s=400, cpu_count=2)
    p = predict_wait(cfg(16, workers=0), link, DEMAND, miss_rate=0.0)
    assert p.wait_fraction == pytest.approx(0.08 / 0.28)
    assert p.bound == "decode"


def test_more_concurrency_never_predicts_more_wait() -> None:
    waits = [predict_wait(cfg(c), LINK, DEMAND, 1.0).wait_fraction for c in (1, 2, 4, 8, 16, 32)]
    assert waits == sorted(waits, reverse=True)


@pytest.mark.parametrize("miss", [-0.1, 1.5])
def test_bad_miss_rate(miss: float) -> None:
    with pytest.raises(UsageError):
        predict_wait(cfg(4), LINK, DEMAND, miss)


def test_bad_inputs() -> None:
    with pytest.raises(UsageError):
        LinkEstimate(rtt_s=0.01, bandwidth_bytes_per_s=0, sample_bytes=1)
    with pytest.raises(UsageError):
        Demand(batch_size=0, step_time_s=0.1)
