"""A geo job is a torchrun job: one c10d node group per region, the command per region host, a local run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from delibench.geo.launch import LocalJob, region_commands
from delibench.geo.links import RegionHost
from delibench.geo.regions import parse_regions
from delibench.geo.train import GeoRunSpec

RAW = {
    "regions": {n: {"accelerators": {"count": 2, "usd_per_hour": 1.0, "step_time_s": "20ms"}} for n in ("a", "b")},
    "links": [{"between": ["a", "b"], "rtt_s": "20ms", "bandwidth_bytes_per_s": "20MB", "egress_usd_per_gb": 0.02}],
}
REGIONS = parse_regions(RAW)


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_one_torchrun_agent_per_region_bound_to_its_host() -> None:
    spec = GeoRunSpec(strategy="ma", workers=(("a", 2), ("b", 1)), steps=4)
    hosts = {"a": RegionHost("a", "10.1.0.5", "eth1"), "b": RegionHost("b", "10.2.0.7", "ens4")}
    (ra, argv_a, env_a), (rb, argv_b, env_b) = region_commands(spec, hosts, job_dir="/jobs/x", run_id="geo-1")
    assert (ra, rb) == ("a", "b")
    for argv, host, nproc, rank in ((argv_a, hosts["a"], "2", "0"), (argv_b, hosts["b"], "1", "1")):
        assert argv[1:3] == ["-m", "torch.distributed.run"]
        assert _flag(argv, "--rdzv-backend") == "c10d"
        assert _flag(argv, "--rdzv-endpoint").startswith("10.1.0.5:")  # the first region hosts the rendezvous
        assert _flag(argv, "--nnodes") == "2:2" and _flag(argv, "--nproc-per-node") == nproc and _flag(argv, "--node-rank") == rank
        assert _flag(argv, "--local-addr") == host.address  # no loopback: the region's own address
        assert _flag(argv, "--rdzv-id") == "geo-1" and _flag(argv, "--max-restarts") == "3"
        assert argv[argv.index("-m", 3) :] == ["-m", "delibench", "geo", "worker", "--region", host.region, "--job-dir", "/jobs/x"]
    assert "is_host=1" in _flag(argv_a, "--rdzv-conf") and "is_host=0" in _flag(argv_b, "--rdzv-conf")
    assert env_a["GLOO_SOCKET_IFNAME"] == "eth1" and env_b["GLOO_SOCKET_IFNAME"] == "ens4"


def test_cli_prints_the_command_of_every_region_host(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from delibench.cli.app import main

    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(RAW))
    job = tmp_path / "job"
    code = main(["geo", "run", "--regions", str(path), "--print-commands", "--hosts", "a=10.1.0.5/eth1,b=10.2.0.7/ens4", "--job-dir", str(job), "--max-regions", "3"])
    assert code == 0
    assert (job / "job.pkl").exists()
    out = capsys.readouterr().out
    lines = [ln for ln in out.splitlines() if "torch.distributed.run" in ln]
    assert len(lines) == 2
    assert lines[0].startswith("GLOO_SOCKET_IFNAME=eth1 ") and "--local-addr 10.1.0.5" in lines[0] and "is_host=1" in lines[0]
    assert lines[1].startswith("GLOO_SOCKET_IFNAME=ens4 ") and "--local-addr 10.2.0.7" in lines[1] and "--rdzv-endpoint 10.1.0.5:" in lines[1]
    assert all("--nnodes 2:3" in line and f"--job-dir {job}" in line for line in lines)


@pytest.mark.slow
def test_geo_run_under_torchrun_ends_with_identical_parameters(tmp_path: Path) -> None:
    """2 regions x 2 workers, model averaging every 3 steps, 9 steps (about 15 s on 2 cores)."""
    spec = GeoRunSpec(strategy="ma", period=3, workers=(("a", 2), ("b", 2)), steps=9)
    with LocalJob(REGIONS, spec, links="model", checkpoint_every=0, job_dir=str(tmp_path)) as job:
        got = job.wait(90)
    assert got.result.world_size == 4 and got.links == "model" and got.events == ()
    assert sorted(r["region"] for r in got.ranks) == ["a", "a", "b", "b"]
    assert {r["steps_done"] for r in got.ranks} == {9}
    assert len({r["params_sha256"] for r in got.ranks}) == 1  # every rank holds the same parameters
    assert got.result.cross_region_collectives == 3
    assert "communication-level" in got.result.emulation
    assert "--rdzv-backend c10d" in got.commands and json.loads(json.dumps(got.to_dict()))["links"] == "model"


@pytest.mark.slow
def test_torchrun_worker_honours_region_steps_and_the_time_budget(tmp_path: Path) -> None:
    """The worker trains through the one loop (train._train_loop): region b stops at its own step count,
    region a (asked for 10,000 steps of 20 ms) at the time budget."""
    budget_s = 0.5
    spec = GeoRunSpec(strategy="asgd-ga", accum=2, staleness=None, workers=(("a", 1), ("b", 1)), steps=10_000, region_steps=(("b", 4),), time_budget_s=budget_s)
    with LocalJob(REGIONS, spec, links="model", checkpoint_every=0, job_dir=str(tmp_path)) as job:
        got = job.wait(90)
    done = {r["region"]: r["steps_done"] for r in got.ranks}
    assert done["b"] == 4
    assert 1 <= done["a"] <= budget_s / 0.020 + 1  # 20 ms steps: at most the budget's worth, then one more
    a = next(r for r in got.ranks if r["region"] == "a")
    assert a["steps_s"] >= budget_s and a["step_end_s"][-2] < budget_s
