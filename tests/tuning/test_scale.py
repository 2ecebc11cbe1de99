"""The scale model (``delibench scale``): hand-checkable small jobs, the scaling rule, prices, the CLI."""

from __future__ import annotations

import json

import pytest

from delibench.errors import UsageError
from delibench.tuning.scale import ScaleJob, predict_scale, replay_node_cache
from delibench.tuning.simulator import CacheSimulator

KB = 1000


def _job(**kw: object) -> ScaleJob:
    base = dict(nodes=1, gpus_per_node=2, samples=2000, sample_bytes=KB, cache_size=10**9, epochs=3)
    base.update(kw)
    return ScaleJob(**base)  # type: ignore[arg-type]


def test_node_scope_with_a_cache_holding_the_dataset_fetches_each_sample_once_per_node():
    p = predict_scale(_job(), orders=("shuffle",))
    node = p.cell("node", "shuffle")
    assert node.gets == 2000 and node.gets_per_epoch == (2000, 0, 0)
    assert node.bytes_from_bucket == 2000 * KB
    assert node.hit_rate == pytest.approx(2 / 3)
    assert node.steady_hit_rate == 1.0


def test_rank_scope_with_shuffle_refetches_what_the_other_rank_read():
    """Each epoch a rank sees a fresh random half; after e epochs it holds 1 - (1/2)^e of the dataset,
    so epoch e misses (1/2)^e of its share: S (1 + 1/2 + 1/4) = 1.75 S GETs over 3 epochs."""
    p = predict_scale(_job(), orders=("shuffle",))
    rank = p.cell("rank", "shuffle")
    assert rank.gets_per_epoch[0] == 2000
    assert rank.gets == pytest.approx(1.75 * 2000, rel=0.04)
    assert rank.gets_per_epoch[1] == pytest.approx(1000, rel=0.06)
    assert rank.gets_per_epoch[2] == pytest.approx(500, rel=0.12)


def test_locality_order_keeps_a_rank_cache_hitting():
    p = predict_scale(_job(), orders=("locality",))
    assert p.cell("rank", "locality").gets_per_epoch == (2000, 0, 0)
    assert p.cell("node", "locality").gets_per_epoch == (2000, 0, 0)


def test_no_cache_fetches_every_sample_every_epoch_in_both_scopes():
    p = predict_scale(_job(cache_size=0))
    assert {c.gets for c in p.cells} == {3 * 2000}
    assert {c.hit_rate for c in p.cells} == {0.0}


def test_rank_scope_splits_the_node_budget_among_its_gpus():
    # the node cache holds the dataset (2 MB), each rank's half of it does not hold its share + more:
    # with locality each rank needs 1000 items = 1 MB, and gets exactly half of a 2 MB node budget
    p = predict_scale(_job(cache_size=2000 * KB - 1, gpus_per_node=2), orders=("locality",))
    assert p.cell("rank", "locality").gets > 2000  # 999 items per rank: some refetched
    assert p.cell("node", "locality").gets > 2000  # 1999 items for 2000 samples: one short


def test_the_cli_example_matches_the_measured_testbed_run():
    """`delibench run --nproc 2 --epochs 3` with deli (rank scope, shuffle) on 1,600 samples sent 2,774 GETs
    on the SeaweedFS testbed (README, 'Many GPUs per VM'); the replay of the same orders predicts it."""
    p = predict_scale(ScaleJob(nodes=1, gpus_per_node=2, samples=1600, sample_bytes=KB, cache_size=128 * 2**20, epochs=3))
    assert p.cell("rank", "shuffle").gets == 2774
    assert p.cell("rank", "locality").gets == 1600


def test_totals_scale_from_the_simulated_nodes():
    full = predict_scale(_job(nodes=4, samples=4000, simulate_nodes=4), orders=("shuffle",))
    one = predict_scale(_job(nodes=4, samples=4000, simulate_nodes=1), orders=("shuffle",))
    assert one.scale_factor == 4.0
    for scope in ("rank", "node"):
        assert one.cell(scope, "shuffle").gets == pytest.approx(full.cell(scope, "shuffle").gets, rel=0.05)
    # epoch 0 is cold everywhere: exactly the padded dataset in both
    assert one.cell("node", "shuffle").gets_per_epoch[0] == full.cell("node", "shuffle").gets_per_epoch[0] == 4000


def test_node_replay_of_one_rank_equals_the_cache_simulator():
    from delibench.loaders.sampler import epoch_order

    sizes = [KB] * 300
    orders = [[epoch_order(300, e, 0, 0, 1) for e in range(4)]]
    misses, lookups = replay_node_cache(orders, KB, 100 * KB, "belady")
    sim = CacheSimulator(sizes, epochs=3, seed=0, world_size=1).run(100 * KB, "belady")
    assert sum(misses) == sim.misses
    assert [1 - m / n for m, n in zip(misses, lookups)] == pytest.approx(list(sim.epoch_hit_rates))


def test_dollars_are_the_price_sheet_s_get_and_egress_prices():
    from delibench.reports.prices import default_sheet

    sheet = default_sheet()
    p = predict_scale(_job(cache_size=0), orders=("shuffle",), provider="aws", egress_class="internet", sheet=sheet)
    c = p.cell("rank", "shuffle")
    get = sheet.object_store("aws").get_usd_per_1000
    egress = sheet.egress_price("aws", "internet").usd_per_gb
    assert c.request_usd == pytest.approx(6000 / 1000 * get)
    assert c.egress_usd == pytest.approx(6000 * KB / 2**30 * egress)
    assert c.total_usd == pytest.approx(c.request_usd + c.egress_usd)


def test_bad_jobs_are_usage_errors():
    with pytest.raises(UsageError, match="simulate"):
        _job(nodes=2, simulate_nodes=3)
    with pytest.raises(UsageError, match="ranks"):
        _job(samples=1)
    with pytest.raises(UsageError, match="order"):
        predict_scale(_job(), orders=("random",))


def test_cli_prints_a_labelled_prediction_and_json(capsys):
    from delibench.cli.app import main

    args = ["scale", "--nodes", "2", "--gpus-per-node", "2", "--samples", "800", "--sample-bytes", "110KB", "--cache-size", "1GiB", "--epochs", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "PREDICTION" in out and "locality" in out and "node" in out
    assert main([*args, "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "prediction"
    assert doc["job"]["world_size"] == 4
    assert {(c["scope"], c["order"]) for c in doc["cells"]} == {(s, o) for s in ("rank", "node") for o in ("shuffle", "locality")}
    assert main(["scale", "--nodes", "2", "--gpus-per-node", "2", "--samples", "800", "--sample-bytes", "lots", "--cache-size", "1GiB"]) == 2


def test_a_window_changes_nothing_for_one_rank_and_adds_the_other_ranks_last_batches_for_several():
    """One rank: nothing it looks up early is wanted by anyone else, so the windowed replay equals the
    cache-only one. Two ranks in lockstep, 30 % cache: at each epoch's end rank 0's look-ahead into the
    next epoch settles its hits, and the cache keeps rank 1's last batch on top: one batch per epoch."""
    from delibench.loaders.sampler import epoch_order

    one = [[epoch_order(300, e, 0, 0, 1) for e in range(4)]]
    assert replay_node_cache(one, KB, 100 * KB, window=40, batch_size=8) == replay_node_cache(one, KB, 100 * KB)
    two = [[epoch_order(400, e, 0, r, 2) for e in range(4)] for r in range(2)]
    plain, _ = replay_node_cache(two, KB, 120 * KB)
    windowed, lookups = replay_node_cache(two, KB, 120 * KB, window=40, batch_size=8)
    assert plain == [400, 280, 280] and lookups == [400, 400, 400]
    assert windowed == [400, 272, 272]
    with pytest.raises(UsageError, match="window"):
        replay_node_cache(one, KB, 100 * KB, window=-1)


def test_node_scope_replays_the_service_window_and_rank_scope_does_not():
    """The job's window reaches the node replay (2 ranks in lockstep, 30 % cache: one batch more kept per
    epoch, as test_a_window... counts by hand); rank scope, with no shared window, is the same either way;
    the default window is the node service's own for deli's defaults (service_window, 256 at batch 32)."""
    from delibench.loaders.deli import DeliOptions
    from delibench.loaders.node import service_window

    def cells(**kw: object) -> tuple[tuple[int, ...], tuple[int, ...]]:
        p = predict_scale(_job(samples=400, cache_size=120 * KB, seed=0, **kw), orders=("shuffle",))
        return p.cell("node", "shuffle").gets_per_epoch, p.cell("rank", "shuffle").gets_per_epoch

    windowed, rank_windowed = cells(batch_size=8, window=40)
    alone, rank_alone = cells(batch_size=8, window=0)
    assert windowed == (400, 272, 272) and alone == (400, 280, 280)
    assert rank_windowed == rank_alone
    assert _job().window == service_window(DeliOptions(), 32) == 256 and _job(batch_size=200).window == 400
    with pytest.raises(UsageError, match="window"):
        _job(window=-1)


def test_node_scope_prediction_checked_against_the_measured_node_run():
    """benchmarks/results/node-scope.txt, run node-30: 4 ranks, 2,000 samples (mean 49,416 B), node cache
    29,649,594 B (30 %), batch 32, 3 epochs, shuffle: the service sent 4,738 GETs, hit rate 0.210. The
    prediction with the service's window (uniform sizes) is within 2 % and 2 points of it."""
    p = predict_scale(ScaleJob(nodes=1, gpus_per_node=4, samples=2000, sample_bytes=49416, cache_size=29649594, epochs=3),
                      orders=("shuffle",), scopes=("node",))
    node = p.cell("node", "shuffle")
    assert p.job.window == 256
    assert node.gets == pytest.approx(4738, rel=0.02) and abs(node.hit_rate - 0.210) <= 0.02, (node.gets, node.hit_rate)


def test_cli_takes_batch_size_and_prefetch_depth_into_the_window(capsys):
    from delibench.cli.app import main

    args = ["scale", "--nodes", "1", "--gpus-per-node", "2", "--samples", "400", "--sample-bytes", "1KB", "--cache-size", "120KB",
            "--epochs", "3", "--order", "shuffle", "--json"]
    assert main([*args, "--batch-size", "8", "--prefetch-depth", "10"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["kind"] == "prediction" and (doc["job"]["batch_size"], doc["job"]["window"]) == (8, 16)  # two batches at least
    assert main([*args, "--batch-size", "8", "--prefetch-depth", "40"]) == 0
    node = next(c for c in json.loads(capsys.readouterr().out)["cells"] if c["scope"] == "node")
    assert node["gets_per_epoch"] == [400, 272, 272]
    assert main([*args, "--batch-size", "0"]) == 2
