"""Placement planner: a three-region case whose optimum is checked by hand."""

from __future__ import annotations

import json

import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.geo.planner import PlanWorkload, naive_placement, plan_placement
from delibench.geo.regions import parse_regions

#: Link prices are per billed GB (2^30 bytes); shard sizes typed as "100GB" are SI (1e11 bytes).
GIB = 2**30

THREE = {
    "regions": {
        "a": {"accelerators": {"count": 4, "usd_per_hour": 4.0, "step_time_s": 1.0}, "shards": [{"name": "a0", "size_bytes": "100GB"}]},
        "b": {"accelerators": {"count": 4, "usd_per_hour": 2.0, "step_time_s": 1.0}},
        "c": {"accelerators": {"count": 2, "usd_per_hour": 3.0, "step_time_s": 0.5}, "shards": [{"name": "c0", "size_bytes": "50GB"}]},
    },
    "links": [
        {"between": ["a", "b"], "rtt_s": 0.01, "bandwidth_bytes_per_s": "500MB", "egress_usd_per_gb": 0.002},
        {"between": ["a", "c"], "rtt_s": 0.01, "bandwidth_bytes_per_s": "500MB", "egress_usd_per_gb": 0.08},
        {"between": ["b", "c"], "rtt_s": 0.01, "bandwidth_bytes_per_s": "500MB", "egress_usd_per_gb": 0.05},
    ],
}
# 100 samples of 1 MB per step: a worker processes 0.1 GB/s in a and b (1 s/step), 0.2 GB/s in c
# (GB = 1e9 bytes for sizes and rates). 150 GB / (1 MB * 15000 global batch) = 10 global steps, one
# sync per step -> 10 rounds of 100 MB. Egress is priced per billed GB = 2^30 bytes: the 100 GB
# shard is 1e11 / 2^30 = 93.1323 billed GB, the 50 GB shard 46.5661, 2 GB of sync 1.8626.
WORKLOAD = PlanWorkload("t", sample_bytes=1_000_000, batch_size=100, model_bytes=100_000_000, global_batch=15_000, sync_period=1)


def test_three_region_cost_optimum_matches_hand_arithmetic() -> None:
    """Hand-checked optimum, deadline 600 s, objective cost.

    Compute USD per GB (1e9 B) processed: a = 4 / (0.1 * 3600) = 0.011111, b = 2 / 360 = 0.005556,
    c = 3 / 720 = 0.004167. Egress per billed GB (2^30 B): a0 = 93.1323, c0 = 46.5661 billed GB.
    Shard a0 (100 GB, in a): in a 1.1111; in b 0.5556 + 93.1323 * 0.002 = 0.5556 + 0.1863 = 0.7418;
    in c 0.4167 + 93.1323 * 0.08 = 7.8673 -> b.
    Shard c0 (50 GB, in c):  in c 0.2083; in b 0.2778 + 46.5661 * 0.05 = 2.6061; in a 0.5556 + 3.7253
    = 4.2808 -> c.
    Sync: 2 active regions -> 10 rounds * 2 * 0.1 GB * (2 - 1) = 2e9 B = 1.8626 billed GB at the
    dearest link 0.08 = 0.1490.
    Total 0.5556 + 0.1863 + 0.2083 + 0.1490 = 1.0992; the next best ({a, c}: 1.1111 + 0.2083 + 0.1490
    = 1.4685, {b} alone: 0.8333 + 0.1863 + 2.3283 = 3.3479) cost more.
    Workers for the deadline: b needs 100 GB / 0.1 GB/s = 1000 worker-s -> ceil(1000 / 600) = 2;
    c needs 50 / 0.2 = 250 worker-s -> 1. The link a->b carries 100 GB at 0.5 GB/s = 200 s <= 600.
    Finish: max(100 / (2 * 0.1), 50 / 0.2, 200) = 500 s.
    """
    config = parse_regions(THREE)
    best = plan_placement(config, WORKLOAD, objective="cost", deadline_s=600)
    assert best.shards == {"a0": "b", "c0": "c"}
    assert best.workers == {"b": 2, "c": 1}
    assert best.compute_usd == pytest.approx(100 / 180 + 50 / 240)
    assert best.egress_usd == pytest.approx(100e9 / GIB * 0.002 + 2e9 / GIB * 0.08)  # 0.18626 + 0.14901
    assert best.total_usd == pytest.approx(1.099165, abs=1e-6)
    assert best.time_s == pytest.approx(500.0)
    assert best.meets_deadline


def test_naive_placement_priced_by_the_same_model() -> None:
    """Naive: all 4 accelerators of b (cheapest, $2/h) read both shards.

    Compute 150 GB / 0.1 GB/s * $2/3600 = 0.8333; egress 93.1323 billed GB * 0.002 + 46.5661 * 0.05
    = 0.1863 + 2.3283 = 2.5146;
    time max(150 / 0.4, 100 / 0.5, 50 / 0.5) = 375 s.
    """
    config = parse_regions(THREE)
    naive = naive_placement(config, WORKLOAD, deadline_s=600)
    assert naive.workers == {"b": 4}
    assert naive.egress_usd == pytest.approx(100e9 / GIB * 0.002 + 50e9 / GIB * 0.05)
    assert naive.total_usd == pytest.approx(0.8333333 + 2.5145710)
    assert naive.time_s == pytest.approx(375.0)
    assert plan_placement(config, WORKLOAD, deadline_s=600).total_usd < naive.total_usd


def test_time_objective_prefers_the_cheapest_of_the_fastest() -> None:
    """Fastest finish is 250 s (a0 in a or b with 4 workers: 100 / 0.4; c0 in c: 125 s); of those, the cheapest is b + c."""
    config = parse_regions(THREE)
    fast = plan_placement(config, WORKLOAD, objective="time")
    assert fast.time_s == pytest.approx(250.0)
    assert fast.shards == {"a0": "b", "c0": "c"}
    assert fast.total_usd == pytest.approx(1.099165, abs=1e-6)


def test_impossible_deadline_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no placement meets the deadline"):
        plan_placement(parse_regions(THREE), WORKLOAD, deadline_s=100)


def test_cli_plan_json(tmp_path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(THREE))
    assert main(["geo", "plan", "--regions", str(path), "--workload", "resnet50", "--deadline", "10h", "--json"]) == 0
    best, naive = json.loads(capsys.readouterr().out)
    assert best["label"] == "optimal" and naive["label"] == "naive"
    assert best["total_usd"] <= naive["total_usd"] + 1e-9
