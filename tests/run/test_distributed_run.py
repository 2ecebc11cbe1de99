"""``delibench run --nproc 2`` on CPU (gloo): both ranks measured, each partition read once, nothing left running."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import psutil
import pytest

from tests.run.conftest import FAST, SAMPLES

pytestmark = [pytest.mark.s3, pytest.mark.timeout(240)]


def test_nproc_2_reports_both_ranks_and_reads_each_partition_once(s3_mnist, tmp_path, cli_process, no_leftover_processes):
    res = cli_process("run", "--data", s3_mnist, "--loader", "deli:cache_size=64MiB", *FAST, "--epochs", "2", "--nproc", "2",
                      "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    assert "Traceback" not in res.err
    doc = res.json()  # rank 0 alone prints
    assert doc["spec"]["world_size"] == 2
    metrics = doc["metrics"]
    assert sorted(r["rank"] for r in metrics["ranks"]) == [0, 1]
    per_epoch: dict[int, int] = {}
    for e in metrics["epochs"]:
        per_epoch[e["epoch"]] = per_epoch.get(e["epoch"], 0) + e["samples"]
        assert e["samples"] == SAMPLES // 2  # each rank read its own half
    assert sorted((e["rank"], e["epoch"]) for e in metrics["epochs"]) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    assert per_epoch == {0: SAMPLES, 1: SAMPLES}  # the partitions cover the dataset once per epoch
    assert metrics["total_samples"] == 2 * SAMPLES
    assert not [i for i in doc["issues"] if i["severity"] == "invalid"], doc["issues"]
    # every rank fetched at least its own half in epoch 1; each rank's cache is its own
    assert doc["loader_stats"]["requests_count"] >= SAMPLES
    assert {r["rank"] for r in metrics["ranks"] if r["loader_stats"]["requests_count"] >= SAMPLES // 2} == {0, 1}
    assert len(list(tmp_path.glob("*.json"))) == 1  # only rank 0 writes


def test_nproc_bad_input_fails_once_before_launching(mnist_dir, cli_process):
    res = cli_process("run", "--data", mnist_dir, *FAST, "--batch-size", "0", "--nproc", "2")
    assert res.code == 2
    assert res.err.count("error:") == 1, res.err


@pytest.mark.extended  # the launcher itself is covered by every other --nproc test here
def test_nproc_in_process_main_uses_its_own_arguments(mnist_dir, tmp_path, cli, no_leftover_processes):
    """``main([... '--nproc', '2'])`` launches ranks with *its* arguments, not the host program's sys.argv."""
    res = cli("run", "--data", mnist_dir, "--loader", "bucket", *FAST, "--max-steps", "4", "--nproc", "2", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1


def _ranks(launcher: psutil.Process) -> list[psutil.Process]:
    return [p for p in launcher.children() if "delibench" in " ".join(p.cmdline())]


def test_a_dead_rank_stops_the_others_at_once(s3_mnist, tmp_path, no_leftover_processes):
    """Killing rank 1 mid-run ends the job promptly (no hang in a collective) and leaves no process behind."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "delibench", "run", "--data", s3_mnist, "--loader", "bucket", *FAST,
         "--compute", "emulated:300ms", "--epochs", "20", "--nproc", "2", "--results-dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        launcher = psutil.Process(proc.pid)
        deadline = time.perf_counter() + 60
        ranks: list[psutil.Process] = []
        while time.perf_counter() < deadline:
            ranks = _ranks(launcher)
            # running: both ranks exist and have DataLoader workers (past the rendezvous)
            if len(ranks) == 2 and all(r.children() for r in ranks):
                break
            time.sleep(0.2)
        assert len(ranks) == 2, "ranks did not start"
        rank1 = next(r for r in ranks if r.environ().get("RANK") == "1")
        killed_at = time.perf_counter()
        rank1.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=60)
        elapsed_s = time.perf_counter() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode not in (0, None)
    assert "rank 1 exited" in err
    # the run had 20 epochs x 4 steps x 300 ms = 24 s left on rank 0; it was stopped long before
    assert elapsed_s < 20, elapsed_s
    assert not list(tmp_path.glob("*.json"))
