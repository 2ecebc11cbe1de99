"""``delibench geo run --task cnn-jpeg``: each region reads its data_url through deli (storage options from the
environment), the local ``--testbed``, ``--plan`` executing its data placement, and one-line errors on bad input.

Every run here is a real torchrun job (one agent per region, gloo, the communication-level WAN model)
reading real buckets (SeaweedFS); the runs are a few steps on a few hundred 16x16 images.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from delibench.cli.app import main
from delibench.geo.task import make_region_shards
from delibench.loaders.publish import push

ACC = {"count": 1, "type": "a100", "usd_per_hour": 1.0, "step_time_s": "20ms"}
LINK = {"between": ["a", "b"], "rtt_s": "20ms", "bandwidth_bytes_per_s": "50MB", "egress_usd_per_gb": 0.02}


def _regions(tmp_path: Path, regions: dict[str, Any]) -> str:
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump({"regions": regions, "links": [LINK]}))
    return str(path)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture
def bucket_data(s3_bucket: str, tmp_path: Path) -> dict[str, str]:
    """Two regional shards and a held-out split pushed to the test bucket (AWS_ENDPOINT_URL points at it)."""
    shards = make_region_shards(tmp_path / "data", ("a", "b"), samples_per_region=64, held_out=64, seed=1)
    urls = {}
    for region, local in shards.shards.items():
        urls[region] = f"{s3_bucket}/{region}"
        push(local, urls[region])
    urls["val"] = f"{s3_bucket}/held-out"
    push(shards.held_out, urls["val"])
    return urls


def test_cnn_jpeg_reads_each_regions_data_url(bucket_data: dict[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _regions(tmp_path, {r: {"accelerators": ACC, "data_url": bucket_data[r]} for r in ("a", "b")})
    args = ["geo", "run", "--regions", path, "--task", "cnn-jpeg", "--val-url", bucket_data["val"], "--sync", "ma", "--period", "2"]
    code = main([*args, "--steps", "6", "--batch-size", "8", "--links", "model", "--step-time-scale", "0", "--checkpoint-every", "0", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    doc = json.loads(out)
    assert doc["spec"]["task"] == "cnn-jpeg"
    assert {(d["reader"], d["url"]) for d in doc["spec"]["data"]} == {("a", bucket_data["a"]), ("b", bucket_data["b"])}
    # each region read its own bucket through deli (6 batches of 8 images: a few KB each), nothing across
    assert set(doc["data_link_bytes"]) == {"a->a", "b->b"} and min(doc["data_link_bytes"].values()) > 6 * 8 * 200
    assert doc["cross_region_collectives"] == 3 and 0.0 <= doc["val_accuracy"] <= 1.0
    assert "storage_options" not in json.dumps(doc["spec"])


def test_bad_cnn_input_is_one_line(bucket_data: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    no_url = _regions(tmp_path, {"a": {"accelerators": ACC, "data_url": bucket_data["a"]}, "b": {"accelerators": ACC}})
    assert main(["geo", "run", "--regions", no_url, "--task", "cnn-jpeg", "--val-url", bucket_data["val"]]) == 2
    assert "region b has no data_url" in _one_error_line(capsys.readouterr().err)

    both = _regions(tmp_path, {r: {"accelerators": ACC, "data_url": bucket_data[r]} for r in ("a", "b")})
    assert main(["geo", "run", "--regions", both, "--task", "cnn-jpeg"]) == 2
    assert "--val-url" in _one_error_line(capsys.readouterr().err)

    assert main(["geo", "run", "--regions", both, "--task", "cnn-jpeg", "--val-url", bucket_data["val"] + "-missing"]) == 2
    assert "held-out split" in _one_error_line(capsys.readouterr().err)

    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # nothing listens: the bucket is unreachable
    assert main(["geo", "run", "--regions", both, "--task", "cnn-jpeg", "--val-url", bucket_data["val"]]) == 1
    assert "cannot reach the object store" in _one_error_line(capsys.readouterr().err)

    assert main(["geo", "run", "--regions", both, "--testbed", "--task", "mlp"]) == 2
    assert "--testbed is for --task cnn-jpeg" in _one_error_line(capsys.readouterr().err)


def test_plan_out_then_run_plan_on_the_testbed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The plan copies b's shard (b has no accelerators) into a's bucket; the run does that copy, trains, and
    prints the plan's predicted time and cost beside the measured ones. (With no reader cache: a
    shard deli's cache keeps crosses once streamed, so the plan would stream it.)"""
    samples = 96
    shard = {"name": "shard", "size_bytes": samples * 800}
    path = _regions(
        tmp_path,
        {
            "a": {"accelerators": ACC, "shards": [{**shard, "name": "a-0"}]},
            "b": {"accelerators": {**ACC, "count": 0}, "shards": [{**shard, "name": "b-0"}]},
        },
    )
    plan = tmp_path / "plan.yaml"
    assert main(["geo", "plan", "--regions", path, "--workload", "cnn-jpeg", "--epochs", "2", "--sync", "allreduce", "--reader-cache", "0", "--out", str(plan)]) == 0
    doc = yaml.safe_load(plan.read_text())
    assert [(d["home"], d["reader"], d["mode"]) for d in doc["plan"]["data"]] == [("a", "a", "local"), ("b", "a", "copy")]
    capsys.readouterr()
    args = ["geo", "run", "--plan", str(plan), "--task", "cnn-jpeg", "--testbed", "--samples-per-region", str(samples)]
    code = main([*args, "--links", "model", "--checkpoint-every", "0", "--job-dir", str(tmp_path / "job")])
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "copied b-shard from b into a's bucket" in out
    assert "predicted (geo plan's model) vs measured" in out
    cells = [[c.strip() for c in line.strip("│ ").split("│")] for line in out.splitlines()]
    rows = {c[0]: c[1:] for c in cells if c[0] in ("time_s", "steps", "total_usd")}
    assert set(rows) == {"time_s", "steps", "total_usd"}
    assert rows["steps"][0] == rows["steps"][1] == str(doc["plan"]["predicted"]["steps"])  # the plan's steps were run
    assert "predicted " in out and "measured " in out and "$" in out
