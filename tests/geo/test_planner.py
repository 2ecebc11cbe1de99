"""Planner: the billing rule, per-direction prices, rounds from the batch, copy-once break-even, baselines.

Every expected number below is worked out by hand in the test's docstring. Link prices are per
billed GB (2^30 bytes).
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.geo import cost as geo_cost
from delibench.geo.cost import RegionUsage, billed_accelerator_s, geo_cost_usd
from delibench.geo.planner import READER_CACHE_BYTES, PlanWorkload, SyncChoice, baselines, evaluate, get_workload, plan_placement, stream_passes
from delibench.geo.regions import load_regions, parse_regions

GIB = 2**30
EXAMPLE = Path(__file__).resolve().parents[2] / "geo" / "example-regions.yaml"

# -- billing -------------------------------------------------------------------------------------


def test_billing_rule_by_hand() -> None:
    """4 workers held 100 s, busy 250 accelerator-seconds in all, at $3.60/h = $0.001/s.

    hourly (rented): 4 * 100 = 400 s -> $0.40; per_second (serverless): 250 s -> $0.25.
    """
    use = RegionUsage(workers=4, wall_s=100.0, busy_s=250.0)
    assert billed_accelerator_s("hourly", use) == 400.0
    assert billed_accelerator_s("per_second", use) == 250.0
    for billing, usd in (("hourly", 0.40), ("per_second", 0.25)):
        config = parse_regions({"regions": {"a": {"accelerators": {"count": 4, "usd_per_hour": 3.6, "step_time_s": 1, "billing": billing}}}})
        assert geo_cost_usd(config, {"a": use}, {}).compute_usd == pytest.approx(usd)


TWO = {
    "regions": {
        "a": {"accelerators": {"count": 2, "usd_per_hour": 3.6, "step_time_s": 1.0}, "provider": "aws", "shards": [{"name": "a0", "size_bytes": 100_000_000}]},
        "b": {"accelerators": {"count": 2, "usd_per_hour": 7.2, "step_time_s": 0.5}, "provider": "gcp", "shards": [{"name": "b0", "size_bytes": 100_000_000}]},
    },
    "links": [{"between": ["a", "b"], "rtt_s": 0.1, "bandwidth_bytes_per_s": 100e6, "egress_usd_per_gb": 0.02}],
}
#: 1 MB samples, 10 per worker step, a 40 MB model (1e7 fp32 parameters), 2 epochs.
TWO_WL = PlanWorkload("t", sample_bytes=1_000_000, batch_size=10, model_bytes=40_000_000, epochs=2)
LOCAL = {"a0": ("a", "local"), "b0": ("b", "local")}


def test_plan_and_run_bill_through_the_same_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    """The planner's compute cost goes through billed_accelerator_s; the run's cost through geo_cost_usd.

    The run (geo/train.py ``aggregate_ranks``) bills each region through
    ``billed_accelerator_s`` with ``RegionUsage(workers, wall, busy)``: hourly regions pay every
    worker's wall time.
    """
    from delibench.geo import train

    calls: list[str] = []
    real = geo_cost.billed_accelerator_s
    monkeypatch.setattr(geo_cost, "billed_accelerator_s", lambda billing, use: calls.append(billing) or real(billing, use))
    config = parse_regions(TWO)
    plan = evaluate(config, TWO_WL, {"a": 2, "b": 2}, LOCAL, SyncChoice("ma", 4), label="p")
    assert calls == ["hourly", "hourly"]
    assert plan.compute_usd == pytest.approx(geo_cost_usd(config, {r: RegionUsage(n, plan.time_s, 0.0) for r, n in plan.workers.items()}, {}).compute_usd)
    assert train.geo_cost_usd is geo_cost.geo_cost_usd
    spec = train.GeoRunSpec(strategy="ma", workers=(("a", 2), ("b", 2)), steps=2)
    ranks = [
        {"region": "ab"[i // 2], "wall_s": 10.0 if i else 12.0, "compute_s": 2.0, "sync_s": 1.0, "wan_wait_s": 0.5, "cross_region_bytes": 0, "link_bytes": {}, "cross_region_collectives": 1, "losses": [1.0, 0.5], "val_loss": 0.4, "val_accuracy": 0.9, "param_count": 10}
        for i in range(4)
    ]
    result = train.aggregate_ranks(config, spec, ranks)
    expected = geo_cost_usd(config, {"a": RegionUsage(2, 12.0, 4.0), "b": RegionUsage(2, 12.0, 4.0)}, {}).compute_usd
    assert result.compute_usd == pytest.approx(expected)  # 2*12*0.001 + 2*12*0.002 = 0.072
    assert expected == pytest.approx(0.072)


def test_run_bills_serverless_regions_for_busy_seconds() -> None:
    from delibench.geo import train

    raw = json.loads(json.dumps(TWO))
    raw["regions"]["a"]["accelerators"]["billing"] = "per_second"
    config = parse_regions(raw)
    spec = train.GeoRunSpec(strategy="ma", workers=(("a", 1),), steps=1)
    ranks = [{"region": "a", "wall_s": 10.0, "compute_s": 2.0, "sync_s": 0.0, "wan_wait_s": 0.0, "cross_region_bytes": 0, "link_bytes": {}, "cross_region_collectives": 0, "losses": [1.0], "val_loss": 1.0, "val_accuracy": 0.5, "param_count": 1}]
    assert train.aggregate_ranks(config, spec, ranks).compute_usd == pytest.approx(2.0 * 0.001)


# -- link prices, rounds, time -------------------------------------------------------------------


def test_sender_pays_per_direction() -> None:
    """a (aws) -> b (gcp) is cross-cloud: a pays AWS internet $0.09, b pays GCP internet $0.12
    (shipped price sheet); a per-sender price on the link wins; same provider or none: the link's $0.02."""
    config = parse_regions(TWO)
    assert config.egress_usd_per_gb("a", "b") == pytest.approx(0.09)
    assert config.egress_usd_per_gb("b", "a") == pytest.approx(0.12)
    raw = json.loads(json.dumps(TWO))
    raw["links"][0]["egress_usd_per_gb"] = {"a": 0.05, "b": 0.07}
    explicit = parse_regions(raw)
    assert (explicit.egress_usd_per_gb("a", "b"), explicit.egress_usd_per_gb("b", "a")) == (0.05, 0.07)
    for r in raw["regions"].values():
        r.pop("provider")
    raw["links"][0]["egress_usd_per_gb"] = 0.02
    plain = parse_regions(raw)
    assert plain.egress_usd_per_gb("a", "b") == plain.egress_usd_per_gb("b", "a") == 0.02
    # 1 GiB each way: a pays 0.09, b pays 0.12.
    assert geo_cost_usd(config, {}, {("a", "b"): GIB, ("b", "a"): GIB}).egress_usd == pytest.approx(0.21)


def test_rounds_from_the_batch_and_sync_inside_the_time() -> None:
    """Two regions, 2 workers each, local data of 100 samples each, 2 epochs, 10 samples per worker step.

    steps = ceil(2 * 100 / (2 * 10)) = 10; ma H=4 -> rounds = ceil(10 / 4) = 3; global batch per
    round = 4 workers * 10 * 4 = 160. Compute: 10 steps at the slower region's 1.0 s = 10 s.
    One round: ring of 2 regions, 2 steps of a 20 MB chunk, each rtt/2 + 20e6/100e6 = 0.05 + 0.2
    = 0.25 s -> 0.5 s; 3 rounds = 1.5 s. ma: T = 10 + 1.5 = 11.5 s. Each direction carries
    3 * 40 MB = 120 MB of sync. asgd-ga K=4 S=1 sends the 40 MB update point to point each way per
    round and overlaps: rounds cost 3 * 40e6 / 100e6 = 1.2 s < 10 s of compute, plus the last
    message's 0.05 + 0.4 = 0.45 s: T = 10.45 s.
    Cost (ma, hourly): a 2 * 11.5 * $0.001 = 0.023, b 2 * 11.5 * $0.002 = 0.046; sync egress
    120e6 / 2^30 * (0.09 + 0.12) = 0.023469.
    """
    config = parse_regions(TWO)
    ma = evaluate(config, TWO_WL, {"a": 2, "b": 2}, LOCAL, SyncChoice("ma", 4), label="ma")
    assert (ma.steps, ma.rounds, ma.global_batch) == (10, 3, 160)
    assert ma.round_s == pytest.approx(0.5)
    assert ma.compute_time_s == pytest.approx(10.0) and ma.sync_time_s == pytest.approx(1.5) and ma.time_s == pytest.approx(11.5)
    assert ma.link_bytes == {("a", "b"): 120_000_000, ("b", "a"): 120_000_000}
    assert ma.compute_usd == pytest.approx(0.069)
    assert ma.sync_egress_usd == pytest.approx(120e6 / GIB * 0.21)
    assert ma.data_egress_usd == 0.0 and ma.storage_usd == 0.0
    ga = evaluate(config, TWO_WL, {"a": 2, "b": 2}, LOCAL, SyncChoice("asgd-ga", 4, 1), label="ga")
    assert ga.rounds == 3 and ga.time_s == pytest.approx(10.45) and ga.sync_time_s == pytest.approx(0.45)
    assert ga.link_bytes == ma.link_bytes
    # Twice the workers in a (4 there is over its cap of 2) -> error, not a silent clamp.
    with pytest.raises(UsageError, match="has 2 accelerators"):
        evaluate(config, TWO_WL, {"a": 4, "b": 2}, LOCAL, SyncChoice("ma", 4), label="x")


def test_unbalanced_data_takes_more_steps() -> None:
    """a reads both shards with 2 workers, b none of them but 2 workers: a needs 2*200/(2*10) = 20 steps.

    b0 (100 MB) streamed into a's 2 workers for 2 epochs. Without a reader cache it crosses every
    epoch: 2 x 100 MB. With the default 256 MiB deli cache per worker each worker sees a fresh
    random half every epoch: 1 - (1/2)^2 = 3/4 of the shard (75 MB, fits) over the 2 epochs, each
    sample fetched once: 2 x 75 MB = 150 MB, 1.5 passes.
    """
    config = parse_regions(TWO)
    no_cache = replace(TWO_WL, reader_cache_bytes=0)
    p = evaluate(config, no_cache, {"a": 2, "b": 2}, {"a0": ("a", "local"), "b0": ("a", "stream")}, SyncChoice("ma", 4), label="u")
    assert p.steps == 20 and p.rounds == 5
    assert p.data_bytes == 2 * 100_000_000  # b0 streamed twice from b to a, at b's (gcp) 0.12
    assert p.data_egress_usd == pytest.approx(2e8 / GIB * 0.12)
    cached = evaluate(config, TWO_WL, {"a": 2, "b": 2}, {"a0": ("a", "local"), "b0": ("a", "stream")}, SyncChoice("ma", 4), label="u")
    assert cached.data_bytes == 150_000_000 and [d.passes for d in cached.data] == [0.0, 1.5]
    assert cached.data_egress_usd == pytest.approx(1.5e8 / GIB * 0.12)


# -- copy once vs stream -------------------------------------------------------------------------

COPY = {
    "regions": {
        "h": {"accelerators": {"count": 0, "usd_per_hour": 1.0, "step_time_s": 1.0}, "shards": [{"name": "s", "size_bytes": 10 * GIB}]},
        "r": {"accelerators": {"count": 1, "usd_per_hour": 3.6, "step_time_s": 10.0}, "storage_usd_per_gb_month": 2628.0},
    },
    "links": [{"between": ["h", "r"], "rtt_s": 0.0, "bandwidth_bytes_per_s": 1e15, "egress_usd_per_gb": 0.15}],  # a copy in ~0 s
}


@pytest.mark.parametrize(("epochs", "mode"), [(2, "stream"), (4, "copy")])
def test_copy_once_break_even(epochs: int, mode: str) -> None:
    """A 10 GiB shard (10 samples of 1 GiB) stored in h, read by r's one worker at 10 s per sample.

    T = 10 samples * 10 s * E = 100 E seconds. Storage in r: $2628 per GB-month = $0.001 per
    GB-second (2628 / (730 * 3600)), so 10 GB for 100 E s = $E. Egress $0.15/GB: 10 GB = $1.50.
    stream = 1.5 E; copy = 1.5 + E. Break-even at E = 3: E = 2 streams (3.0 < 3.5), E = 4 copies
    (6.0 > 5.5).
    """
    config = parse_regions(COPY)
    wl = PlanWorkload("g", sample_bytes=GIB, batch_size=1, model_bytes=0, epochs=epochs)
    stream = evaluate(config, wl, {"r": 1}, {"s": ("r", "stream")}, SyncChoice("allreduce"), label="stream")
    copy = evaluate(config, wl, {"r": 1}, {"s": ("r", "copy")}, SyncChoice("allreduce"), label="copy")
    assert stream.time_s == pytest.approx(100.0 * epochs)
    assert copy.time_s == pytest.approx(100.0 * epochs + copy.copy_time_s) and copy.copy_time_s == pytest.approx(10 * GIB / 1e15)
    assert stream.data_egress_usd == pytest.approx(1.5 * epochs) and stream.storage_usd == 0.0
    assert copy.data_egress_usd == pytest.approx(1.5) and copy.storage_usd == pytest.approx(float(epochs))
    best = plan_placement(config, wl, sync=SyncChoice("allreduce"))
    assert [d.mode for d in best.data] == [mode]
    assert best.total_usd == pytest.approx(min(stream.total_usd, copy.total_usd))


def test_stream_passes_by_hand() -> None:
    """Bytes a streamed shard moves, in shard sizes, when its readers' deli caches keep what they fetched.

    A worker of n sees a fresh random 1/n of the shard each epoch: over E epochs 1 - (1 - 1/n)^E of it.
    n=1, E=5: the whole shard once if it fits (cache 100 of 100 bytes), else 5 passes (99 bytes).
    n=2, E=2: each worker 3/4 of it: 1.5 passes. n=4, E=1: 1 pass. n=3, E=3: 1 - 8/27 = 19/27
    each, 3 x 19/27 = 19/9 passes; a cache of 70 bytes < 100 x 19/27 = 70.4: 3 passes.
    """
    assert stream_passes(100, epochs=5, readers=1, cache_bytes=100) == 1.0
    assert stream_passes(100, epochs=5, readers=1, cache_bytes=99) == 5.0
    assert stream_passes(100, epochs=2, readers=2, cache_bytes=75) == pytest.approx(1.5)
    assert stream_passes(100, epochs=1, readers=4, cache_bytes=25) == pytest.approx(1.0)
    assert stream_passes(100, epochs=3, readers=3, cache_bytes=71) == pytest.approx(19 / 9)
    assert stream_passes(100, epochs=3, readers=3, cache_bytes=70) == 3.0
    assert stream_passes(100, epochs=3, readers=1, cache_bytes=0) == 3.0


def test_cache_that_holds_the_shard_makes_streaming_win() -> None:
    """COPY's 10 GiB shard, 4 epochs (copying wins without a cache: 6.0 stream vs 5.5 copy, above).

    With a 10 GiB deli cache on r's one worker the stream crosses once: egress $1.50, no storage;
    the copy still pays $1.50 plus $4 of storage. Compute is the same 400 s at $0.001/s = $0.40:
    stream $1.90, copy $5.90; the program streams and moves 10 GiB, not 40.
    """
    config = parse_regions(COPY)
    wl = PlanWorkload("g", sample_bytes=GIB, batch_size=1, model_bytes=0, epochs=4, reader_cache_bytes=10 * GIB)
    stream = evaluate(config, wl, {"r": 1}, {"s": ("r", "stream")}, SyncChoice("allreduce"), label="stream")
    copy = evaluate(config, wl, {"r": 1}, {"s": ("r", "copy")}, SyncChoice("allreduce"), label="copy")
    assert stream.data_bytes == 10 * GIB and stream.data[0].passes == 1.0
    assert stream.total_usd == pytest.approx(1.9) and copy.total_usd == pytest.approx(5.9)
    best = plan_placement(config, wl, sync=SyncChoice("allreduce"))
    assert [d.mode for d in best.data] == ["stream"] and best.data_bytes == 10 * GIB
    assert best.total_usd == pytest.approx(1.9)


REQUESTS = {
    "regions": {
        "h": {"accelerators": {"count": 0, "usd_per_hour": 1.0, "step_time_s": 1.0}, "shards": [{"name": "s", "size_bytes": 1_000_000}]},
        "r": {"accelerators": {"count": 1, "usd_per_hour": 3.6, "step_time_s": 0.01}},
    },
    "links": [{"between": ["h", "r"], "rtt_s": 0.1, "bandwidth_bytes_per_s": 1e6, "egress_usd_per_gb": 0.0}],
}


def test_copy_and_stream_pay_a_round_trip_per_object() -> None:
    """A 1 MB shard of 1,000 objects of 1 kB over a 100 ms, 1 MB/s link; 2 epochs.

    Training: 2 * 1000 / 10 = 200 steps of 10 ms = 2 s. Copy (before training): the manifest's 2
    round trips, then ceil(1000 / 16) = 63 with 16 GETs in flight: 65 * 0.1 = 6.5 s, + 1 MB / 1
    MB/s = 1 s: 7.5 s, then 2 s of training: 9.5 s. Stream (32 GETs in flight for the one reading
    worker, overlapped with training): 2 MB / 1 MB/s = 2 s + 2 * 1000 * 0.1 / 32 = 6.25 s of
    requests: 8.25 s, more than training. Bandwidth alone would say 1 + 2 = 3 s and 2 s.
    """
    from delibench.geo.planner import copy_time_s, shard_objects

    config = parse_regions(REQUESTS)
    wl = PlanWorkload("small", sample_bytes=1000, batch_size=10, model_bytes=0, epochs=2, reader_cache_bytes=0)  # no cache: every epoch
    assert shard_objects(1_000_000, 1000) == 1000
    assert copy_time_s(config, "h", "r", 1_000_000, 1000) == pytest.approx(7.5)
    copy = evaluate(config, wl, {"r": 1}, {"s": ("r", "copy")}, SyncChoice("allreduce"), label="copy")
    stream = evaluate(config, wl, {"r": 1}, {"s": ("r", "stream")}, SyncChoice("allreduce"), label="stream")
    assert copy.steps == stream.steps == 200
    assert copy.copy_time_s == pytest.approx(7.5) and copy.time_s == pytest.approx(9.5)
    assert stream.copy_time_s == 0.0 and stream.time_s == pytest.approx(8.25)
    fastest = plan_placement(config, wl, sync=SyncChoice("allreduce"), objective="time")  # the program sees the same times
    assert [d.mode for d in fastest.data] == ["stream"] and fastest.time_s == pytest.approx(8.25)
    # Packed into 100 kB objects (tar shards), the same bytes copy in (2 + 1) * 0.1 + 1 = 1.3 s.
    packed = evaluate(config, PlanWorkload("small", 1000, 10, 0, 2, object_bytes=100_000), {"r": 1}, {"s": ("r", "copy")}, SyncChoice("allreduce"), label="p")
    assert packed.copy_time_s == pytest.approx(1.3) and packed.time_s == pytest.approx(3.3)
    # Through deli's cache (the default 256 MiB per worker holds the 1 MB shard) the stream's bytes
    # and requests are paid once: 1 MB / 1 MB/s = 1 s + 1000 * 0.1 / 32 = 3.125 s: 4.125 s.
    cached = evaluate(config, replace(wl, reader_cache_bytes=READER_CACHE_BYTES), {"r": 1}, {"s": ("r", "stream")}, SyncChoice("allreduce"), label="c")
    assert cached.data_bytes == 1_000_000 and cached.time_s == pytest.approx(4.125)


def _with_store(raw: dict, rates: dict[str, float], rtt_s: float | None = None) -> dict:
    import copy

    out = copy.deepcopy(raw)
    for name, rate in rates.items():
        out["regions"][name]["store_requests_per_s"] = rate
    if rtt_s is not None:
        out["links"][0]["rtt_s"] = rtt_s
    return out


def test_copy_time_counts_the_stores_time_per_request_latency_bound() -> None:
    """REQUESTS's 1,000 objects of 1 kB over 100 ms and 1 MB/s, both stores serving 10,000 requests/s.

    k = ceil(1000 / 16) = 63 cycles of 16 threads, each a GET across and a PUT: (2 + 63) * 0.1 =
    6.5 s of round trips; each request holds the store 16 / 10,000 s (Little's law with 16 in
    flight), a GET at h and a PUT at r: 63 * 16 * (1e-4 + 1e-4) = 0.2016 s; bytes 1 s. 7.7016 s, the
    round trips dominating. Without a rate it stays the earlier 7.5 s.
    """
    from delibench.geo.planner import copy_time_s

    config = parse_regions(_with_store(REQUESTS, {"h": 10_000, "r": 10_000}))
    assert copy_time_s(config, "h", "r", 1_000_000, 1000) == pytest.approx(6.5 + 0.2016 + 1.0)
    assert copy_time_s(parse_regions(REQUESTS), "h", "r", 1_000_000, 1000) == pytest.approx(7.5)
    # 5 objects: one cycle with 5 in flight, (2 + 1) * 0.1 + 1 * 5 * 2e-4 + 5 kB / 1 MB/s = 0.306 s.
    assert copy_time_s(config, "h", "r", 5000, 1000) == pytest.approx(0.3 + 0.001 + 0.005)


def test_copy_time_counts_the_stores_time_per_request_rate_bound() -> None:
    """The same 1,000 objects over a 1 ms link from a store serving 100 requests/s into one serving 400.

    Round trips (2 + 63) * 0.001 = 0.065 s; the stores 63 * 16 * (1/100 + 1/400) = 12.6 s; bytes
    1 s: 13.665 s, the stores dominating (the earlier model said 1.065 s). The copy and the plan
    see the same time: evaluate's copy is this, before 200 steps of 10 ms.
    """
    from delibench.geo.planner import copy_time_s

    config = parse_regions(_with_store(REQUESTS, {"h": 100, "r": 400}, rtt_s=0.001))
    assert copy_time_s(config, "h", "r", 1_000_000, 1000) == pytest.approx(0.065 + 12.6 + 1.0)
    wl = PlanWorkload("small", sample_bytes=1000, batch_size=10, model_bytes=0, epochs=2, reader_cache_bytes=0)
    copy = evaluate(config, wl, {"r": 1}, {"s": ("r", "copy")}, SyncChoice("allreduce"), label="copy")
    assert copy.copy_time_s == pytest.approx(13.665) and copy.time_s == pytest.approx(13.665 + 2.0)


def test_stream_pays_the_home_stores_time_per_request() -> None:
    """REQUESTS streamed twice (no cache) from a home store serving 1,000 requests/s.

    32 GETs in flight: each object 0.1 / 32 s of round trip plus 32 / 1000 s at the store over 32
    in flight = 1 ms: 2 * 1000 * (0.003125 + 0.001) = 8.25 s of requests, + 2 MB / 1 MB/s = 10.25 s
    on the link (6.25 + 2 = 8.25 s without the store). The reader's store is not involved. A copy
    instead: 6.5 + 63 * 16 * 0.001 + 1 = 8.508 s, then 2 s of training: 10.508 s; the program
    streams, as evaluate prices both.
    """
    from delibench.geo.planner import stream_request_s

    config = parse_regions(_with_store(REQUESTS, {"h": 1000}))
    assert stream_request_s(config, "h", "r", 1_000_000, 1000, epochs=2, readers=1) == pytest.approx(8.25)
    wl = PlanWorkload("small", sample_bytes=1000, batch_size=10, model_bytes=0, epochs=2, reader_cache_bytes=0)
    stream = evaluate(config, wl, {"r": 1}, {"s": ("r", "stream")}, SyncChoice("allreduce"), label="stream")
    assert stream.time_s == pytest.approx(10.25)
    copy = evaluate(config, wl, {"r": 1}, {"s": ("r", "copy")}, SyncChoice("allreduce"), label="copy")
    assert copy.time_s == pytest.approx(10.508)
    fastest = plan_placement(config, wl, sync=SyncChoice("allreduce"), objective="time")
    assert [d.mode for d in fastest.data] == ["stream"] and fastest.time_s == pytest.approx(10.25)


# -- the program and the baselines ---------------------------------------------------------------


def test_plan_is_never_worse_than_the_single_region_baseline_it_could_have_chosen() -> None:
    config = load_regions(EXAMPLE)
    wl = get_workload("resnet50", epochs=10)
    plan = plan_placement(config, wl, sync=SyncChoice("ma", 8))
    single, multi = baselines(config, wl, plan)
    assert single.label.startswith("single-region DDP") and all(d.mode in ("local", "copy") for d in single.data)
    assert plan.total_usd <= single.total_usd + 0.005
    # The plan keeps to us-east (copying eu-0 and ap-0 once), so the DDP baseline spans every region.
    assert plan.workers == {"us-east": 8} and plan.total_usd == pytest.approx(single.total_usd)
    assert multi.label == "multi-region DDP (all regions)" and multi.sync.strategy == "allreduce"
    assert multi.workers == {"us-east": 8, "eu-west": 4, "ap-northeast": 8} and all(d.mode == "local" for d in multi.data)


def test_deadline_is_met_with_sync_inside_it() -> None:
    """90 epochs of resnet50 under 50 minutes: one region (61 min, 7 of them copying two shards in
    before training) cannot; the plan spreads and its predicted time, copy and sync included, is
    within the deadline."""
    config = load_regions(EXAMPLE)
    wl = get_workload("resnet50", epochs=90)
    plan = plan_placement(config, wl, sync=SyncChoice("ma", 64), deadline_s=3000)
    assert plan.meets_deadline and plan.time_s <= 3000 and len(plan.workers) > 1 and plan.sync_time_s > 0
    single, multi = baselines(config, wl, plan, deadline_s=3000)
    assert not single.meets_deadline
    assert multi.workers == plan.workers and multi.shards == plan.shards and multi.sync.strategy == "allreduce"
    assert multi.rounds == multi.steps and multi.time_s > plan.time_s


def test_impossible_deadline_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no placement meets the deadline"):
        plan_placement(parse_regions(TWO), TWO_WL, deadline_s=1)


def test_cli_plan_json_and_out(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "plan.yaml"
    assert main(["geo", "plan", "--regions", str(EXAMPLE), "--epochs", "10", "--out", str(out), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["format"] == "delibench-geo-plan" and doc["version"] == 1
    assert [b["label"].split(" (")[0] for b in doc["baselines"]] == ["single-region DDP", "multi-region DDP"]
    assert out.exists()


def test_three_region_sync_traffic_follows_the_strategy() -> None:
    """ma: a ring (3 directed links, 2(R-1)/R * M = 4/3 M each per round); asgd-ga: every region sends
    its M-byte update to both others (6 directed links, M each per round), as the run exchanges them."""
    config = load_regions(EXAMPLE)
    wl = PlanWorkload("t", sample_bytes=1_000_000, batch_size=100, model_bytes=3_000_000, epochs=1)
    workers = {"us-east": 1, "eu-west": 1, "ap-northeast": 1}
    data = {"us-0": ("us-east", "local"), "us-1": ("us-east", "local"), "eu-0": ("eu-west", "local"), "ap-0": ("ap-northeast", "local")}
    ma = evaluate(config, wl, workers, data, SyncChoice("ma", 4), label="ma")
    ga = evaluate(config, wl, workers, data, SyncChoice("asgd-ga", 4, 1), label="ga")
    assert ma.rounds == ga.rounds == 100  # us-east: 40e9 / 1e6 / 100 = 400 steps / 4
    assert ma.link_bytes == {("us-east", "eu-west"): 400_000_000, ("eu-west", "ap-northeast"): 400_000_000, ("ap-northeast", "us-east"): 400_000_000}
    assert len(ga.link_bytes) == 6 and set(ga.link_bytes.values()) == {300_000_000}
    # The sender pays: us-east -> eu-west at AWS's 0.09, eu-west -> us-east at GCP's 0.12, AWS to AWS 0.02.
    assert ga.sync_egress_usd == pytest.approx(3e8 / GIB * (0.09 + 0.12 + 0.02 + 0.02 + 0.12 + 0.09))


def test_tiny_shard_the_cache_keeps_is_streamed_not_copied() -> None:
    """A 76.8 kB shard (96 cnn-jpeg samples) in b, read by a's one worker for 2 epochs over 70 ms.

    Its cache keeps it: streamed, it crosses once (76.8 kB, the copy's egress) with no storage and
    no copy first ((2 + ceil(96/16)) x 0.07 = 0.56 s before training), so the plan streams (0.24 s
    of training). With --reader-cache 0 it would cross twice: copying is cheaper by that egress.
    The two differ by less than the solver's tolerance; the planner still picks by its objective.
    """
    acc = {"count": 1, "usd_per_hour": 1.0, "step_time_s": 0.01}
    config = parse_regions(
        {
            "regions": {"a": {"accelerators": acc, "shards": [{"name": "a-0", "size_bytes": 76_800}]}, "b": {"accelerators": {**acc, "count": 0}, "shards": [{"name": "b-0", "size_bytes": 76_800}]}},
            "links": [{"between": ["a", "b"], "rtt_s": 0.07, "bandwidth_bytes_per_s": 100e6, "egress_usd_per_gb": 0.02}],
        }
    )
    wl = get_workload("cnn-jpeg", epochs=2)
    cached = plan_placement(config, wl, sync=SyncChoice("allreduce"))
    assert [(d.mode, d.passes) for d in cached.data] == [("local", 0.0), ("stream", 1.0)] and cached.data_bytes == 76_800
    assert cached.time_s == pytest.approx(0.24)
    uncached = plan_placement(config, replace(wl, reader_cache_bytes=0), sync=SyncChoice("allreduce"))
    assert [d.mode for d in uncached.data] == ["local", "copy"] and uncached.copy_time_s == pytest.approx(0.56 + 76_800 / 100e6)
