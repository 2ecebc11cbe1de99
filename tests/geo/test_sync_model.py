"""The byte and time model of the cross-region ring all-reduce (pure arithmetic, no processes)."""

from __future__ import annotations

import pytest

from delibench.geo.regions import parse_regions
from delibench.geo.sync import ring_allreduce_traffic


def _config(n_regions: int) -> object:
    names = [f"r{i}" for i in range(n_regions)]
    regions = {n: {"accelerators": {"count": 1, "usd_per_hour": 1.0, "step_time_s": 1.0}} for n in names}
    links = [
        {"between": [a, b], "rtt_s": 0.1 * (i + j + 1), "bandwidth_bytes_per_s": 1e6 * (i + 1), "egress_usd_per_gb": 0.02}
        for i, a in enumerate(names)
        for j, b in enumerate(names)
        if i < j
    ]
    return parse_regions({"regions": regions, "links": links})


def test_two_regions_pay_rtt_plus_bytes_over_bandwidth() -> None:
    config = _config(2)
    traffic = ring_allreduce_traffic(1000, 4, ("r0", "r1"), config)
    # Each leader sends its half in reduce-scatter and the other half in all-gather: 4000 B each.
    assert traffic.sent_bytes == {("r0", "r1"): 4000, ("r1", "r0"): 4000}
    link = config.link("r0", "r1")
    assert traffic.time_s == pytest.approx(link.rtt_s + 4000 / link.bandwidth_bytes_per_s)


@pytest.mark.parametrize("numel", [1, 7, 1000, 1001])
def test_ring_total_is_2_r_minus_1_n(numel: int) -> None:
    config = _config(3)
    traffic = ring_allreduce_traffic(numel, 4, ("r0", "r1", "r2"), config)
    assert traffic.total_bytes == 2 * (3 - 1) * numel * 4
    assert set(traffic.sent_bytes) == {("r0", "r1"), ("r1", "r2"), ("r2", "r0")}


def test_single_region_sends_nothing() -> None:
    traffic = ring_allreduce_traffic(1000, 4, ("r0",), _config(1))
    assert traffic.total_bytes == 0 and traffic.time_s == 0
