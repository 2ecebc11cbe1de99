"""``delibench advise``'s arithmetic, against hand computations (pure functions, no I/O)."""

from __future__ import annotations

import math

import pytest

from delibench.errors import UsageError
from delibench.reports.prices import default_sheet
from delibench.tuning.advise import (
    StageStreamInputs,
    break_even_epochs,
    candidate_configs,
    pick_instance,
    stage_or_stream,
    will_starve,
)
from delibench.tuning.model import Demand, LinkEstimate, WaitPrediction
from delibench.units import BYTES_PER_BILLED_GB as GB

# 100 GiB, a million samples, 2 VMs at $36/h ($0.01 a second), 10,000 samples/s per VM from local
# disk, copies at 0.5 GiB/s; deli reaches AU 0.5 in the cold first epoch and 0.8 later, fetching
# half the samples then; GET $0.0004/1000, egress $0.02/GB, disk $0.073/GB-month.
INPUTS = StageStreamInputs(
    dataset_bytes=100 * GB,
    dataset_samples=1_000_000,
    vms=2,
    vm_usd_per_hour=36.0,
    train_samples_per_s=10_000.0,
    stage_bytes_per_s=GB / 2,
    stream_au_first=0.5,
    stream_au_steady=0.8,
    stream_miss_steady=0.5,
    get_usd_per_1000=0.0004,
    egress_usd_per_gb=0.02,
    disk_usd_per_gb_month=0.073,
)
DISK_PER_S = 2 * 100 * 0.073 / (730 * 3600)  # two local copies, dollars per second held


def test_stage_costs_by_hand() -> None:
    stage = stage_or_stream(INPUTS, 10).stage
    # copy: 100 GiB / 0.5 GiB/s = 200 s on each VM (in parallel)
    assert stage.setup_s == pytest.approx(200.0)
    # idle VMs 2 x 200 s x $0.01 = $4; GETs 2 x 1e6 / 1000 x $0.0004 = $0.80; egress 2 x 100 x $0.02 = $4
    assert stage.parts_usd["vm_idle"] == pytest.approx(4.0)
    assert stage.parts_usd["requests"] == pytest.approx(0.8)
    assert stage.parts_usd["egress"] == pytest.approx(4.0)
    assert stage.setup_usd == pytest.approx(8.8 + 200 * DISK_PER_S)
    # epoch: 500,000 samples per VM / 10,000/s = 50 s; 2 x 50 s x $0.01 = $1 (+ disk for 50 s)
    assert stage.epoch_s == pytest.approx(50.0)
    assert stage.epoch_usd == pytest.approx(1.0 + 50 * DISK_PER_S)
    # disk is pro-rated over the hours the copies exist: 200 s + 10 x 50 s
    assert stage.parts_usd["disk"] == pytest.approx(700 * DISK_PER_S)


def test_stream_costs_by_hand() -> None:
    stream = stage_or_stream(INPUTS, 10).stream
    assert stream.setup_s == 0 and stream.setup_usd == 0
    # first epoch: 50 s / AU 0.5 = 100 s -> $2; 1e6 GETs $0.40; 100 GiB egress $2
    assert stream.first_epoch_s == pytest.approx(100.0)
    assert stream.first_epoch_usd == pytest.approx(2.0 + 0.4 + 2.0)
    # later: 50 s / 0.8 = 62.5 s -> $1.25; half the samples: $0.20 GETs, $1.00 egress
    assert stream.epoch_s == pytest.approx(62.5)
    assert stream.epoch_usd == pytest.approx(1.25 + 0.2 + 1.0)
    assert stream.total_usd(10) == pytest.approx(4.4 + 9 * 2.45)
    assert stream.parts_usd["vm_idle"] == pytest.approx((2.0 - 1.0) + 9 * (1.25 - 1.0))


def test_break_even_by_hand() -> None:
    plan = stage_or_stream(INPUTS, 10)
    # dollars: staging owes 8.8011 + 1.0003 - 4.40 = 5.4014 after epoch 1 and gains
    # 2.45 - 1.0003 = 1.4497 per later epoch: 5.4014 / 1.4497 = 3.73 -> 4 more epochs -> 5
    assert plan.break_even_usd_epochs == 5
    assert plan.stage.total_usd(5) <= plan.stream.total_usd(5)
    assert plan.stage.total_usd(4) > plan.stream.total_usd(4)
    # time: 200 + 50 - 100 = 150 s owed, 62.5 - 50 = 12.5 s gained per epoch -> 12 more -> 13 (a tie)
    assert plan.break_even_time_epochs == 13
    assert plan.stage.total_s(13) == pytest.approx(plan.stream.total_s(13)) == pytest.approx(850.0)
    assert plan.cheaper == "stage"  # at 10 epochs: 8.8011 + 10.0028 = 18.80 vs 4.40 + 22.05 = 26.45
    assert stage_or_stream(INPUTS, 3).cheaper == "stream"


def test_break_even_edges() -> None:
    assert break_even_epochs(10.0, 1.0, 2.0, 1.0) is None  # streaming never costs more per epoch
    assert break_even_epochs(0.0, 1.0, 3.0, 2.0) == 1  # nothing to recover
    assert break_even_epochs(3.0, 1.0, 1.0, 2.0) == 4  # 3 owed, 1 gained per epoch
    with pytest.raises(UsageError):
        stage_or_stream(INPUTS, 0)


def _roofline(cfg, link, demand, miss):
    """The wait model at its simplest, for exact hand arithmetic: supply = min(in flight / t_req, bandwidth) / miss."""
    fetch = min(min(cfg.concurrency, cfg.prefetch_depth) / link.request_time_s, link.bandwidth_bytes_per_s / link.sample_bytes)
    supply = math.inf if miss == 0 else fetch / miss
    bound = "none" if supply >= demand.samples_per_s else ("bandwidth" if fetch == link.bandwidth_bytes_per_s / link.sample_bytes else "latency")
    wait = max(0.0, demand.batch_size / supply - demand.step_time_s)
    return WaitPrediction(wait / (wait + demand.step_time_s), supply, demand.samples_per_s, bound, demand.samples_per_s * miss * link.request_time_s)


# 20 ms + 100 kB / 100 MB/s = 21 ms per GET; demand 1000 samples per 0.1 s step = 10,000/s;
# half the samples miss, so the 1,000 objects/s the link carries supply 2,000 samples/s: AU 0.2.
SLOW = LinkEstimate(rtt_s=0.02, bandwidth_bytes_per_s=100e6, sample_bytes=100_000)


def test_will_starve_names_the_bandwidth_bound_by_hand() -> None:
    advice = will_starve(SLOW, Demand(1000, 0.1), candidate_configs([0]), lambda cfg: 0.5, predict=_roofline)
    assert not advice.reaches_target and advice.bound == "bandwidth"
    assert advice.prediction.accelerator_utilization == pytest.approx(0.2)
    assert advice.recommended.concurrency == 32  # the fewest requests in flight that reach the bound (>= 21)
    assert advice.ceilings_samples_per_s["bandwidth"] == pytest.approx(2000.0)
    assert advice.needs["objects_per_s"] == pytest.approx(4500.0)  # 0.9 x 10,000 x 0.5
    assert advice.needs["bandwidth_bytes_per_s"] == pytest.approx(450e6)
    assert advice.needs["requests_in_flight"] == pytest.approx(94.5)  # 4,500/s x 21 ms


def test_will_starve_with_the_real_wait_model_finds_the_same_bound() -> None:
    advice = will_starve(SLOW, Demand(1000, 0.1), candidate_configs([0]), lambda cfg: 0.5)
    assert not advice.reaches_target and advice.bound == "bandwidth"
    assert advice.prediction.accelerator_utilization == pytest.approx(0.2, rel=0.05)  # a hard cap: 2,000 of 10,000/s


def test_will_starve_picks_the_cheapest_configuration_that_feeds_the_gpus() -> None:
    # 10 GB/s: latency binds. 20.01 ms per GET; 64 in flight give 3,198 objects/s = 6,397 samples/s
    # at a miss rate of 0.5 (AU 0.64); 128 give 12,794 (AU 1). A 1 GiB cache that holds everything
    # also reaches it, but costs memory: the smallest cache comes first.
    link = LinkEstimate(rtt_s=0.02, bandwidth_bytes_per_s=10e9, sample_bytes=100_000)
    advice = will_starve(link, Demand(1000, 0.1), candidate_configs([0, GB]), lambda cfg: 0.0 if cfg.cache_size_bytes else 0.5, predict=_roofline)
    assert advice.reaches_target and advice.bound == "none"
    assert (advice.recommended.cache_size_bytes, advice.recommended.concurrency) == (0, 128)
    assert advice.prediction.accelerator_utilization == pytest.approx(1.0)
    assert advice.first_epoch.accelerator_utilization == pytest.approx(128 / 0.02001 / 10_000)  # every sample fetched: 6,397/s


def test_pick_instance_matches_the_gpu_family() -> None:
    sheet = default_sheet()
    assert pick_instance(sheet, "aws", "NVIDIA A100-SXM4-80GB (DGX A100)", 8).key == "p4d.24xlarge"
    assert pick_instance(sheet, "gcp", "NVIDIA A100-SXM4-80GB (DGX A100)", 1).key == "a2-highgpu-1g"
    assert pick_instance(sheet, "aws", "NVIDIA H100-SXM5-80GB", 16).key == "p5.48xlarge"
    assert pick_instance(sheet, "aws", "Some TPU", 1).key == sheet.default_instance("aws").key
    assert math.isfinite(sheet.instance("p4d.24xlarge").usd_per_hour)
