"""A rank that hangs in its step (a deadlocked loader, a stuck GPU) under DDP over 2 real gloo ranks.

Nothing raises on the hung rank, so only the process group's timeout can release the healthy one
from DDP's all-reduce: torch's default for gloo is 30 minutes. ``--collective-timeout`` sets it; the
healthy rank's collective then times out, and the session takes the path of a rank failing in its
step (tests/run/test_rank_failure.py): rank 0 records what was measured, marked failed, names the
rank that never joined, and exits 1; the ``--nproc`` launcher then kills the hung rank.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
import sys
import time

import pytest

from delibench.distributed import check_collective_timeout, is_collective_timeout
from delibench.errors import ExitCode, UsageError

pytestmark = [pytest.mark.timeout(120)]

#: The step (counting from 0) at which rank 1 hangs.
HANG_AT = 2
#: The collective timeout the test runs with (seconds).
TIMEOUT_S = 6

@pytest.mark.slow
def test_nproc_2_a_hung_rank_ends_the_run_after_the_collective_timeout_with_a_failed_record(mnist_dir, tmp_path, no_leftover_processes):
    from tests.run.conftest import cpu_args, rank_1_step_env

    # rank 1 notes the time and sleeps in its step HANG_AT
    mark = tmp_path / "hang_at"
    env = rank_1_step_env(tmp_path, HANG_AT, """
        with open(os.environ["HANG_MARK"], "w") as f:
            f.write(repr(time.time()))
        time.sleep(3600)
    """, HANG_MARK=str(mark))
    args = cpu_args()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "delibench", "run", "--data", str(mnist_dir), "--loader", "bucket", *args,
                           "--max-steps", "6", "--nproc", "2", "--collective-timeout", str(TIMEOUT_S),
                           "--results-dir", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=100, check=False)
    elapsed = time.monotonic() - start
    assert proc.returncode == ExitCode.RUNTIME_ERROR, proc.stderr
    assert "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [
        f"error: the run failed on rank 1: did not join a collective within {TIMEOUT_S} s (--collective-timeout), "
        "hung or dead; rank 0 timed out waiting for it"
    ], proc.stderr
    (path,) = (tmp_path / "results").glob("*.json")
    # rank 0 recorded the run within the timeout plus the grace it gives ranks failing alike (2 s) and
    # its own bookkeeping, counted from the moment rank 1 hung; the launcher ended soon after
    hung_at = float(mark.read_text())
    recorded_after_s = path.stat().st_mtime - hung_at
    assert TIMEOUT_S - 1 < recorded_after_s < TIMEOUT_S + 20, recorded_after_s  # the timeout, not gloo's 30 minutes (CI is loaded)
    assert elapsed < 90, elapsed  # not gloo's 30-minute default
    record = json.loads(path.read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith(f"rank 0: a collective timed out: another rank did not join it within {TIMEOUT_S} s (--collective-timeout)")
    assert "Timed out waiting" in record["error"]
    assert f"rank 1: did not join a collective within {TIMEOUT_S} s (--collective-timeout) and sent no results (hung or dead)" in record["error"]
    assert [i["code"] for i in record["issues"]][0] == "failed"
    # rank 0's steps before the hung one are kept (it stopped in step HANG_AT, waiting for rank 1)
    timeline = list(csv.DictReader(path.with_name(record["steps_path"]).open()))
    assert {int(s["rank"]) for s in timeline} == {0}
    assert len(timeline) == HANG_AT
    print(f"hung rank: record written {recorded_after_s:.1f} s after the hang, command ended after {elapsed:.1f} s")


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_a_collective_timeout_that_is_not_a_positive_number_is_a_usage_error(cli, mnist_dir, value):
    result = cli("run", "--data", str(mnist_dir), "--loader", "bucket", "--no-progress", "--collective-timeout", value)
    assert result.code == ExitCode.USAGE_ERROR, result.err
    (line,) = [ln for ln in result.err.splitlines() if ln.startswith("error:")]
    assert "--collective-timeout must be a positive number of seconds" in line


@pytest.mark.parametrize("value", [0, -1.0, math.nan, math.inf, True, "10"])
def test_the_python_api_refuses_a_bad_collective_timeout_before_anything_runs(value):
    from delibench.app.session import run
    from delibench.records import LoaderSpec, RunSpec

    with pytest.raises(UsageError, match="collective_timeout_s must be a positive number of seconds"):
        run(RunSpec(dataset_url="/nonexistent", workload="mnist-cnn", loader=LoaderSpec("bucket")), collective_timeout_s=value)
    assert check_collective_timeout(2) == 2.0


def test_a_collective_timeout_is_told_from_a_peer_that_left():
    assert is_collective_timeout(RuntimeError("[../gloo/transport/tcp/unbound_buffer.cc:78] Timed out waiting 6000ms for recv operation to complete"))
    assert not is_collective_timeout(RuntimeError("[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242"))
    assert not is_collective_timeout(ValueError("timed out"))
    # torch's NCCL watchdog words it so; a CUDA launch timeout or a workload's own timeout is not a peer missing
    assert is_collective_timeout(RuntimeError("[Rank 0] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=7, OpType=ALLREDUCE) ran for 600000 milliseconds"))
    assert not is_collective_timeout(RuntimeError("CUDA error: the launch timed out and was terminated"))
    assert not is_collective_timeout(RuntimeError("read timeout on s3://bucket/key"))
