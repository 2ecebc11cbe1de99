"""A plan's copy on the testbed: one GET per object across the cross-region link, ``COPY_CONCURRENCY`` in flight.

Small objects are latency-bound: the planner's copy time counts a round trip per object over the
copy's concurrency (:func:`delibench.geo.planner.copy_time_s`); this checks that the copy really
overlaps its requests and that the model's round trips are a floor the measurement stays above.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from delibench.app.geo_lab import GeoLab
from delibench.geo.planner import COPY_CONCURRENCY, copy_time_s
from delibench.geo.regions import parse_regions
from delibench.geo.task import copy_dataset
from delibench.manifest import read_manifest
from delibench.testbed.profiles import get_profile

SAMPLES = 48


def test_copy_overlaps_its_requests_as_the_planner_assumes(tmp_path: Path) -> None:
    cross = get_profile("cross-region")
    config = parse_regions(
        {
            "regions": {n: {"accelerators": {"count": 1, "usd_per_hour": 1.0, "step_time_s": 0.01}} for n in ("a", "b")},
            "links": [{"between": ["a", "b"], "rtt_s": cross.rtt_s, "bandwidth_bytes_per_s": cross.bandwidth_bytes_per_s, "egress_usd_per_gb": 0.02}],
        }
    )
    with GeoLab.start(tmp_path, ("a", "b"), samples_per_region=SAMPLES, held_out=10) as lab:
        src, opts = lab.urls["b"], lab.storage_options("b", "a")
        direct = lab.lab.route(direct=True).storage_options
        seconds = {}
        for n in (COPY_CONCURRENCY, 1):
            dst = lab.lab.make_bucket(f"copy-{n}") + "/shard"
            t0 = time.perf_counter()
            nbytes = copy_dataset(src, opts, dst, direct, concurrency=n)
            seconds[n] = time.perf_counter() - t0
            copied = read_manifest(dst, dict(direct))
            assert len(copied.samples) == SAMPLES and nbytes == sum(s.size_bytes for s in copied.samples)
    predicted = {n: copy_time_s(config, "b", "a", nbytes, nbytes // SAMPLES, concurrency=n) for n in seconds}
    print({n: f"measured {seconds[n]:.2f} s, model {predicted[n]:.2f} s" for n in seconds})
    # One at a time, every object costs at least its round trip. With 16 in flight the copy beats that
    # serial floor, which it can only do by overlapping requests (a correctness check with a wide
    # margin, about 2-3x here; how much faster is a performance figure: benchmarks/geo_bench.py).
    serial_floor = SAMPLES * cross.rtt_s
    assert seconds[1] >= serial_floor
    assert seconds[COPY_CONCURRENCY] < serial_floor
    assert seconds[COPY_CONCURRENCY] >= predicted[COPY_CONCURRENCY] * 0.9  # the model's round trips are a floor
