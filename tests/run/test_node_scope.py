"""``delibench run --nproc 2`` with deli's node service: one GET per sample for the node, and a clean end
after success, a killed rank, a killed service and Ctrl-C (no process, no ``/dev/shm`` segment left)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from delibench.loaders.node import leftover_segments
from delibench.reports.schema import validate_record
from tests.run.conftest import FAST, SAMPLES, cli_env, started_by_this_session

pytestmark = [pytest.mark.s3, pytest.mark.timeout(300)]

SLOW = ["--workload", "mnist-cnn", "--compute", "emulated:200ms", "--batch-size", "16", "--num-workers", "1",
        "--warmup-steps", "1", "--epochs", "10", "--no-diagnose", "--no-progress", "--json"]


def _services() -> list[psutil.Process]:
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if ("delibench.loaders.node" in " ".join(p.info["cmdline"] or []) and p.status() != psutil.STATUS_ZOMBIE
                    and started_by_this_session(p)):
                found.append(p)
        except psutil.NoSuchProcess:
            continue
    return found


def _nothing_left(before_segments: list[str], before_services: set[int], wait_s: float = 15.0) -> None:
    deadline = time.perf_counter() + wait_s
    while True:
        segments = [s for s in leftover_segments() if s not in before_segments]
        services = [p.pid for p in _services() if p.pid not in before_services]
        if not segments and not services:
            return
        assert time.perf_counter() < deadline, f"left behind: segments {segments}, services {services}"
        time.sleep(0.2)


@pytest.fixture
def clean_node():
    """Snapshot of node-service segments and processes; asserts the test added none that survived."""
    segs, procs = leftover_segments(), {p.pid for p in _services()}
    yield
    _nothing_left(segs, procs)


def _start(args: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen([sys.executable, "-m", "delibench", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env(), start_new_session=True)


def _wait_for_service(timeout_s: float = 90) -> psutil.Process:
    deadline = time.perf_counter() + timeout_s
    while time.perf_counter() < deadline:
        found = _services()
        if found:
            return found[0]
        time.sleep(0.1)
    raise AssertionError("no node service started")


def _wait_for_requests(link, at_least: int, timeout_s: float = 90) -> None:
    deadline = time.perf_counter() + timeout_s
    while link.stats().requests < at_least:
        assert time.perf_counter() < deadline, "the run never started fetching"
        time.sleep(0.1)


def test_nproc_2_node_scope_fetches_each_sample_once(s3_mnist, shaped_s3, tmp_path, cli_process, clean_node, no_leftover_processes):
    link = shaped_s3("local")
    before = link.stats().requests
    res = cli_process("run", "--data", s3_mnist, "--loader", "deli:cache_size=64MiB", *FAST, "--epochs", "3", "--nproc", "2",
                      "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    doc = res.json()
    assert not [i for i in doc["issues"] if i["severity"] == "invalid"], doc["issues"]
    per_epoch: dict[int, int] = {}
    for e in doc["metrics"]["epochs"]:
        per_epoch[e["epoch"]] = per_epoch.get(e["epoch"], 0) + e["samples"]
        assert e["samples"] == SAMPLES // 2
    assert per_epoch == {0: SAMPLES, 1: SAMPLES, 2: SAMPLES}
    assert doc["loader_stats"]["requests_count"] == SAMPLES  # one GET per sample for the node, 3 epochs
    sent = link.stats().requests - before
    assert SAMPLES <= sent <= SAMPLES + 8, sent  # + the manifest reads


def test_scope_rank_keeps_one_cache_per_rank(s3_mnist, tmp_path, cli_process, clean_node):
    res = cli_process("run", "--data", s3_mnist, "--loader", "deli:cache_size=64MiB,scope=rank", *FAST, "--epochs", "3",
                      "--nproc", "2", "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    assert res.json()["loader_stats"]["requests_count"] > SAMPLES  # each rank fetches what the other fetched before
    assert not _services()


def test_killed_service_fails_clearly_and_leaves_nothing(s3_mnist, tmp_path, clean_node, no_leftover_processes):
    proc = _start(["run", "--data", s3_mnist, "--loader", "deli", *SLOW, "--nproc", "2", "--results-dir", str(tmp_path)])
    try:
        service = _wait_for_service()
        time.sleep(3.0)  # the ranks are past start-up
        service.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "node service" in err, err


def test_killed_rank_stops_the_job_and_leaves_nothing(s3_mnist, tmp_path, clean_node, no_leftover_processes):
    proc = _start(["run", "--data", s3_mnist, "--loader", "deli", *SLOW, "--nproc", "2", "--results-dir", str(tmp_path)])
    try:
        service = _wait_for_service()
        time.sleep(3.0)
        launcher = psutil.Process(proc.pid)
        ranks = [p for p in launcher.children() if p.pid != service.pid]
        rank0 = next(r for r in ranks if r.environ().get("RANK") == "0")
        rank0.send_signal(signal.SIGKILL)  # the service's starter: the worst case for clean-up
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 1, err
    assert "rank 0 exited" in err, err


def test_ctrl_c_exits_130_with_a_partial_record(s3_mnist, shaped_s3, tmp_path, clean_node, no_leftover_processes):
    link = shaped_s3("local")
    results = tmp_path / "results"
    proc = _start(["run", "--data", s3_mnist, "--loader", "deli", *SLOW, "--nproc", "2", "--results-dir", str(results)])
    try:
        _wait_for_requests(link, 60)
        time.sleep(1.5)
        os.killpg(proc.pid, signal.SIGINT)  # a terminal's Ctrl-C: the whole foreground group
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    doc = json.loads(out)
    validate_record(doc)
    assert doc["status"] == "interrupted"
    assert 0 < doc["metrics"]["total_samples"] < 10 * SAMPLES
    assert Path(results / f"{doc['run_id']}.json").is_file()
