"""The benchmark's convergence criterion on real geo runs: lockstep-free ASGD-GA reaches DDP's held-out loss within
the tolerance on the cnn-jpeg task; the same training with the wrong sign or with no exchange misses it.

Three regions (two fast, one 2.5x slower: the A100/A100/V100 shape of benchmarks/geo_bench.py, shorter
steps), mostly-regional shards read by deli from local directories, one worker per region.
"""

from __future__ import annotations

import pytest

from delibench.geo.regions import parse_regions
from delibench.geo.task import make_region_shards, matches_reference
from delibench.geo.train import GeoRunSpec, run_geo

REGIONS = ("us-east", "us-west", "eu-west")
STEP_S = {"us-east": 0.008, "us-west": 0.008, "eu-west": 0.020}
STEPS = 240  # DDP's; at their own pace, regions train for the time the slow one needs for these (fast ones ~2.5x the steps)


def _config():
    return parse_regions(
        {
            "regions": {r: {"accelerators": {"count": 1, "type": "x", "usd_per_hour": 1.0, "step_time_s": STEP_S[r]}} for r in REGIONS},
            "links": [
                {"between": [a, b], "rtt_s": 0.02, "bandwidth_bytes_per_s": 100e6, "egress_usd_per_gb": 0.02}
                for i, a in enumerate(REGIONS)
                for b in REGIONS[i + 1 :]
            ],
        }
    )


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory):
    shards = make_region_shards(tmp_path_factory.mktemp("geo-bench"), REGIONS, samples_per_region=240, held_out=300, skew=0.7, seed=0)
    config = _config()
    equal_time = {"region_steps": tuple((r, 3 * STEPS) for r in REGIONS), "time_budget_s": STEPS * STEP_S["eu-west"]}
    common = dict(workers=tuple((r, 1) for r in REGIONS), steps=STEPS, batch_size=16, lr=0.1, task="cnn-jpeg", data=shards.local_sources(), val_url=shards.held_out, accum=4)
    out = {}
    for name, kw in {
        "ddp": {"strategy": "allreduce"},
        "asgd-ga": {"strategy": "asgd-ga", "staleness": None, **equal_time},
        "wrong-sign": {"strategy": "asgd-ga-wrong-sign", "staleness": None, **equal_time},
        # Its step counts fixed at the regions' unshared pace (fast ones 2.5x): with no exchange nothing
        # but the step count depends on time, and a loaded machine's time budget cut it short (fewer local
        # steps, less drift to the regional classes: 1.90 vs DDP's 1.57 once in CI, 2.40 unloaded).
        "no-exchange": {"strategy": "no-exchange", "region_steps": tuple((r, STEPS if r == "eu-west" else 5 * STEPS // 2) for r in REGIONS)},
    }.items():
        out[name] = run_geo(config, GeoRunSpec(**common, **kw), timeout_s=300)
    return out


def test_lockstep_free_asgd_ga_reaches_ddps_loss(runs) -> None:
    ddp, asgd = runs["ddp"], runs["asgd-ga"]
    assert matches_reference(asgd.val_loss, ddp.val_loss), (asgd.val_loss, ddp.val_loss)
    # lockstep-free: the fast regions stepped faster than the slow one, and saw stale updates
    assert asgd.region_step_rate["us-east"] > 1.5 * asgd.region_step_rate["eu-west"]
    assert max(asgd.staleness) >= 2


@pytest.mark.parametrize("broken", ["wrong-sign", "no-exchange"])
def test_a_broken_strategy_misses_the_tolerance(runs, broken: str) -> None:
    assert not matches_reference(runs[broken].val_loss, runs["ddp"].val_loss), (runs[broken].val_loss, runs["ddp"].val_loss)
