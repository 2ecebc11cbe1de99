"""``delibench run`` end to end on CPU against SeaweedFS: JSON output, result files, config files, bad input, gates."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from tests.run.conftest import FAST, SAMPLES
import yaml

from delibench.reports.schema import validate_record

pytestmark = pytest.mark.timeout(240)


def _steps_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.mark.s3
def test_run_bucket_end_to_end_json_validates_and_files_written(s3_mnist, tmp_path, cli_process, no_leftover_processes):
    results = tmp_path / "results"
    res = cli_process("run", "--data", s3_mnist, "--loader", "bucket", *FAST, "--json", "--results-dir", results)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    doc = res.json()  # stdout holds exactly one JSON document
    validate_record(doc)
    assert doc["status"] == "complete"
    assert doc["spec"]["dataset_url"] == s3_mnist
    assert doc["spec"]["loader"]["kind"] == "bucket"
    assert not [i for i in doc["issues"] if i["severity"] == "invalid"]
    assert doc["metrics"]["total_samples"] == SAMPLES
    assert [e["samples"] for e in doc["metrics"]["epochs"]] == [SAMPLES]
    # bucket: exactly one GET per sample, every byte of the dataset read once
    assert doc["loader_stats"]["requests_count"] == SAMPLES
    assert doc["loader_stats"]["bytes_read_remote"] == doc["dataset_bytes"]
    assert doc["machine"]["endpoint"] and "127.0.0.1" in doc["machine"]["endpoint"]
    # credentials never appear in results
    assert "delibench-test-secret" not in res.out

    stored = results / f"{doc['run_id']}.json"
    assert stored.is_file()
    on_disk = json.loads(stored.read_text())
    validate_record(on_disk)
    assert on_disk["run_id"] == doc["run_id"]
    sidecar = results / on_disk["steps_path"]
    assert sidecar.name == f"{doc['run_id']}.steps.csv" and sidecar.is_file()
    rows = _steps_rows(sidecar)
    assert len(rows) == -(-SAMPLES // 16)
    assert sum(int(r["samples"]) for r in rows) == SAMPLES
    assert str(stored) in res.err  # the user is told where the results are


@pytest.mark.s3
def test_run_cpu_compute_real_model(s3_mnist, tmp_path, cli):
    res = cli(
        "run", "--data", s3_mnist, "--loader", "deli", "--workload", "mnist-cnn", "--compute", "cpu",
        "--batch-size", "16", "--num-workers", "0", "--max-steps", "4", "--warmup-steps", "0",
        "--no-diagnose", "--no-progress", "--json", "--results-dir", tmp_path,
    )
    assert res.code == 0, res.err
    doc = res.json()
    validate_record(doc)
    assert doc["spec"]["compute"]["kind"] == "cpu"
    assert doc["spec"]["max_steps_per_epoch"] == 4
    assert doc["metrics"]["measured_steps"] == 3  # the first step is always left out (time to first batch)
    assert doc["metrics"]["total_samples"] == 4 * 16
    assert doc["metrics"]["compute_s_mean"] > 0  # a real forward/backward pass ran
    assert doc["loader_stats"]["requests_count"] >= 4 * 16


@pytest.mark.s3
def test_deli_disk_tier_shows_in_the_record_and_the_report(s3_mnist, tmp_path, cli):
    """deli with a memory cache of ~16 samples over a disk tier that holds the whole set: epoch 1's
    samples evicted from memory come back from disk, and the record, its schema and ``report`` say so."""
    disk_budget = 1 << 20  # 128 samples of ~1 KB fit many times over
    results = tmp_path / "results"
    res = cli(
        "run", "--data", s3_mnist, "--loader", f"deli:cache_size=16KiB,cache_tier=disk,disk_cache_size={disk_budget},scope=rank",
        *FAST, "--epochs", "2", "--json", "--results-dir", results,
    )
    assert res.code == 0, res.err
    doc = res.json()
    validate_record(doc)
    stats = doc["loader_stats"]
    assert [e["samples"] for e in doc["metrics"]["epochs"]] == [SAMPLES, SAMPLES]
    assert stats["requests_count"] == SAMPLES  # memory + disk held everything: each sample fetched once
    assert 0 < stats["disk_hits"] <= stats["cache_hits"]  # the runner tells deli the last epoch: no undelivered look-ahead
    assert 0 < stats["disk_peak_bytes"] <= disk_budget
    assert stats["cache_peak_bytes"] <= 16 * 1024
    assert stats["disk_write_errors"] == stats["disk_corrupt_count"] == 0
    rank = doc["metrics"]["ranks"][0]["loader_stats"]  # the per-rank figures carry them too
    assert (rank["disk_hits"], rank["disk_peak_bytes"]) == (stats["disk_hits"], stats["disk_peak_bytes"])

    md = cli("report", results, "--md", "-")
    assert md.code == 0, md.err
    header, _, row = [line for line in md.out.splitlines() if line.startswith("|")][:3]
    titles = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert "disk write errors" not in titles  # none failed
    assert cells[titles.index("disk hits")] == f"{stats['disk_hits']:,d}"
    assert cells[titles.index("disk peak")] != "-"


@pytest.mark.s3
def test_config_file_round_trip_from_tuner_export(s3_mnist, tmp_path, cli):
    from delibench.tuning.space import TuneConfig

    loader = TuneConfig(cache_size_bytes=64 * 2**20, prefetch_depth=32, concurrency=8).to_yaml_loader()
    assert loader["cache_size"] == "64MiB"
    config = tmp_path / "best.yaml"
    config.write_text(
        "# delibench tune: study s, trial 3\n"
        + yaml.safe_dump({"loader": loader, "data": s3_mnist, "epochs": 1, "max_steps_per_epoch": 5}, sort_keys=False)
    )
    res = cli("run", "--config", config, *FAST, "--json", "--results-dir", tmp_path / "r")
    assert res.code == 0, res.err
    doc = res.json()
    validate_record(doc)
    assert doc["spec"]["loader"]["kind"] == "deli"
    assert doc["spec"]["loader"]["options"] == {"cache_size": "64MiB", "prefetch_depth": 32, "concurrency": 8, "eviction": "lru"}
    assert doc["spec"]["max_steps_per_epoch"] == 5
    assert doc["metrics"]["total_samples"] == 5 * 16

    # flags override the file
    res = cli("run", "--config", config, *FAST, "--max-steps", "2", "--dry-run")
    assert res.code == 0, res.err
    assert res.json()["specs"][0]["max_steps_per_epoch"] == 2


@pytest.mark.parametrize(
    ("doc", "expected", "hint"),
    [
        ({"loadr": {"kind": "deli"}}, "unknown key 'loadr'", "did you mean 'loader'"),
        ({"loader": {"kind": "deli", "cache_sise": "1GiB"}}, "unknown option 'cache_sise'", "cache_size"),
        ({"loader": {"cache_size": "1GiB"}}, "needs a 'kind'", None),
    ],
)
def test_config_file_bad_keys_exit_2_one_line(mnist_dir, tmp_path, cli, doc, expected, hint):
    config = tmp_path / "bad.yaml"
    config.write_text(yaml.safe_dump({"data": str(mnist_dir), **doc}))
    res = cli("run", "--config", config, *FAST, "--max-steps", "2")
    assert res.code == 2, res.err
    lines = res.err.strip().splitlines()
    error_lines = [line for line in lines if line.startswith("error:")]
    assert len(error_lines) == 1 and expected in error_lines[0], res.err
    assert len(lines) <= 2  # the error and, at most, one hint
    if hint:
        assert hint in res.err
    assert "Traceback" not in res.err and res.out == ""


def test_config_file_missing_and_invalid_yaml(tmp_path, cli):
    res = cli("run", "--config", tmp_path / "nope.yaml")
    assert res.code == 2 and "cannot read config" in res.err
    bad = tmp_path / "bad.yaml"
    bad.write_text("loader: [unclosed\n")
    res = cli("run", "--config", bad)
    assert res.code == 2 and "invalid YAML" in res.err
    assert "Traceback" not in res.err


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loader", "nope"], "unknown loader 'nope'"),
        (["--workload", "nope"], "unknown workload 'nope'"),
        (["--compute", "warp:9"], "bad --compute value"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--epochs", "0"], "--epochs must be at least 1"),
        (["--nproc", "0"], "--nproc must be at least 1"),
        (["--loader", "deli:bogus=1"], "unknown option 'bogus'"),
        (["--loader", "deli:cache_size=lots"], "not a size"),
        (["--loader", "bucket", "--loader", "bucket"], "two loaders share a name"),
        (["--min-au", "90"], "--min-au is a fraction between 0 and 1"),
        (["--order", "bogus"], "unknown order 'bogus'"),
    ],
)
def test_bad_flags_exit_2(mnist_dir, cli, args, message):
    res = cli("run", "--data", mnist_dir, *FAST, "--max-steps", "2", *args)
    assert res.code == 2, (res.code, res.err)
    assert f"error: {message}" in res.err.replace("\n", " ")
    assert "Traceback" not in res.err


def test_bad_urls_exit_2(tmp_path, cli):
    res = cli("run", "--data", "ftp://x/y", *FAST)
    assert res.code == 2 and "error: unsupported URL scheme" in res.err, res.err
    res = cli("run", "--data", tmp_path, *FAST)  # a directory with no manifest
    assert res.code == 2 and "error: no dataset manifest" in res.err, res.err
    assert "delibench data push" in res.err  # the hint names the cure
    res = cli("run", *FAST)
    assert res.code == 2 and "error: no dataset given" in res.err, res.err
    assert "Traceback" not in res.err


def test_bad_input_subprocess_one_line_no_traceback(tmp_path, cli_process):
    """The console entry point itself: exit 2, an ``error:`` line on stderr, nothing on stdout."""
    res = cli_process("run", "--data", "ftp://x/y", "--loader", "nope")
    assert res.code == 2
    assert res.err.startswith("error:"), res.err
    assert "Traceback" not in res.err and res.out == ""
    res = cli_process("demo", "--profile", "nowhere", "--dir", tmp_path / "demo")
    assert res.code == 2, res.err
    assert "error: unknown link profile 'nowhere'" in res.err and "Traceback" not in res.err
    assert not (tmp_path / "demo").exists()  # nothing was started or written


def test_dry_run_prints_specs_and_exits_0(mnist_dir, tmp_path, cli):
    res = cli("compare", "--data", mnist_dir, "--loader", "bucket", "--loader", "deli:cache_size=1MiB", *FAST, "--dry-run",
              "--results-dir", tmp_path / "r")
    assert res.code == 0, res.err
    doc = res.json()
    assert [s["loader"]["kind"] for s in doc["specs"]] == ["bucket", "deli"]
    assert doc["specs"][1]["loader"]["options"] == {"cache_size": "1MiB"}
    assert doc["dataset_samples"] == SAMPLES
    assert not (tmp_path / "r").exists()  # nothing ran


@pytest.mark.s3
def test_min_au_gate_exits_4_on_storage_bound_run(s3_server, s3_mnist, shaped_s3, tmp_path, cli):
    from delibench.testbed.profiles import LinkProfile

    # One worker fetching 16 samples one after another through a 20 ms link: far slower than a 20 ms step.
    shaped_s3(LinkProfile("slow", rtt_s=0.02))
    res = cli("run", "--data", s3_mnist, "--loader", "bucket", *FAST, "--min-au", "0.99", "--results-dir", tmp_path, "--max-steps", "5")
    assert res.code == 4, res.err
    assert "accelerator utilisation below 99%" in res.err.replace("\n", " ")
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1  # the result is still saved
    doc = json.loads(files[0].read_text())
    assert doc["status"] == "complete"
    assert doc["metrics"]["accelerator_utilization"] < 0.99


def test_unreachable_endpoint_is_a_clear_runtime_error(cli, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    import s3fs

    s3fs.S3FileSystem.clear_instance_cache()
    res = cli("run", "--data", "s3://some-bucket/imgs", *FAST)
    assert res.code == 1
    assert res.err.startswith("error:") and "unexpected" not in res.err, res.err


@pytest.mark.gcs
def test_run_on_gcs_deli(gcs_bucket, mnist_dir, tmp_path, cli):
    from delibench.loaders.publish import push

    url = f"{gcs_bucket}/mnist"
    push(mnist_dir, url, concurrency=8)
    res = cli("run", "--data", url, "--loader", "deli:cache_size=64MiB", *FAST, "--epochs", "2", "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    doc = res.json()
    validate_record(doc)
    assert [e["samples"] for e in doc["metrics"]["epochs"]] == [SAMPLES, SAMPLES]
    assert doc["loader_stats"]["requests_count"] == SAMPLES  # epoch 2 from the cache


def test_config_loaders_list_and_order_for_compare(mnist_dir, tmp_path, cli):
    config = tmp_path / "cmp.yaml"
    config.write_text(yaml.safe_dump({
        "data": str(mnist_dir),
        "order": "locality",
        "exchange_fraction": 0.1,
        "loaders": [{"kind": "bucket"}, {"kind": "deli", "label": "small", "cache_size": "1MiB"}],
    }))
    res = cli("compare", "--config", config, *FAST, "--dry-run")
    assert res.code == 0, res.err
    specs = res.json()["specs"]
    assert [(s["loader"]["kind"], s["loader"]["label"]) for s in specs] == [("bucket", None), ("deli", "small")]
    assert all(s["loader"]["options"]["order"] == "locality" and s["loader"]["options"]["exchange_fraction"] == 0.1 for s in specs)
    assert specs[1]["loader"]["options"]["cache_size"] == "1MiB"
    # --loader on the command line replaces the file's loaders
    res = cli("compare", "--config", config, *FAST, "--loader", "memory", "--dry-run")
    assert [s["loader"]["kind"] for s in res.json()["specs"]] == ["memory"]
