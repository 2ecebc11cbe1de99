"""Ctrl-C during ``delibench run``: exit 130, the partial result saved and marked invalid, nothing left running."""

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

from delibench.reports.schema import validate_record

pytestmark = [pytest.mark.s3, pytest.mark.timeout(240)]

SLOW = [
    "--workload", "mnist-cnn",
    "--compute", "emulated:200ms",
    "--batch-size", "16",
    "--num-workers", "1",
    "--warmup-steps", "1",
    "--epochs", "10",
    "--no-diagnose",
    "--no-progress",
    "--json",
]


def _start(args: list[str], env: dict[str, str]) -> subprocess.Popen[str]:
    # its own session, so the test can deliver Ctrl-C the way a terminal does: to the whole process group
    return subprocess.Popen(
        [sys.executable, "-m", "delibench", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )


def _wait_for_requests(link, at_least: int, timeout_s: float = 90) -> None:
    """Wait until the run's GETs cross the link: the loop has started (not just the interpreter)."""
    deadline = time.perf_counter() + timeout_s
    while link.stats().requests < at_least:
        assert time.perf_counter() < deadline, "the run never started fetching"
        time.sleep(0.1)


def _check_interrupted(proc: subprocess.Popen[str], results: Path, descendants: set[int]) -> dict:
    out, err = proc.communicate(timeout=90)
    assert proc.returncode == 130, err
    assert "Traceback" not in err, err
    doc = json.loads(out)
    validate_record(doc)
    assert doc["status"] == "interrupted"
    assert any(i["severity"] == "invalid" and i["code"] == "interrupted" for i in doc["issues"]), doc["issues"]
    assert 0 < doc["metrics"]["total_samples"] < 10 * 128  # some, not all, of the 10 epochs
    stored = results / f"{doc['run_id']}.json"
    assert stored.is_file() and json.loads(stored.read_text())["status"] == "interrupted"
    assert (results / f"{doc['run_id']}.steps.csv").is_file()
    assert err.count("SIGINT: stopping") == 1, err  # one message, not one per process
    time.sleep(0.5)
    left = [p for p in descendants if psutil.pid_exists(p) and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]
    assert not left, f"processes left behind: {left}"
    return doc


def _tree(pid: int) -> set[int]:
    try:
        return {p.pid for p in psutil.Process(pid).children(recursive=True)}
    except psutil.NoSuchProcess:
        return set()


def test_ctrl_c_saves_partial_result_and_exits_130(s3_mnist, shaped_s3, tmp_path, no_leftover_processes):
    link = shaped_s3("local")
    results = tmp_path / "results"
    proc = _start(["run", "--data", s3_mnist, "--loader", "deli", *SLOW, "--results-dir", str(results)], dict(os.environ))
    try:
        _wait_for_requests(link, 40)
        time.sleep(1.0)  # a few 200 ms steps
        children = _tree(proc.pid)
        assert children, "the run has DataLoader workers by now"
        os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole foreground group
        _check_interrupted(proc, results, children | {proc.pid})
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)


def test_ctrl_c_with_nproc_2(s3_mnist, shaped_s3, tmp_path, no_leftover_processes):
    link = shaped_s3("local")
    results = tmp_path / "results"
    proc = _start(["run", "--data", s3_mnist, "--loader", "bucket", *SLOW, "--nproc", "2", "--results-dir", str(results)],
                  dict(os.environ))
    try:
        _wait_for_requests(link, 60)
        time.sleep(1.0)
        children = _tree(proc.pid)
        os.killpg(proc.pid, signal.SIGINT)
        doc = _check_interrupted(proc, results, children | {proc.pid})
        assert sorted(r["rank"] for r in doc["metrics"]["ranks"]) == [0, 1]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
