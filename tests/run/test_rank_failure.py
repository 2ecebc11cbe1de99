"""A rank that raises inside its training step (a CUDA OOM, injected) with DDP over 2 real gloo ranks.

Without care the other rank waits in DDP's gradient all-reduce, which the failed rank never joins,
until the process group's timeout (30 minutes by default). The session sends each rank's results
through the job's store and aborts the group instead: every rank ends within seconds with a
one-line error and rank 0 writes what was measured, marked failed.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.timeout(120)]

#: The step (per rank, counting from 0) that raises on the failing rank.
FAIL_AT = 2


def _rank_main(rank: int, world: int, store: str, data: str, results: str, out: str, failing: int) -> None:
    os.environ.update(OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from delibench.app.session import run
    from delibench.distributed import RankInfo
    from delibench.errors import DelibenchError
    from delibench.records import ComputeSpec, LoaderSpec, RunSpec
    from delibench.workloads.compute import TorchCompute

    calls = {"n": 0}
    step = TorchCompute.step
    doc: dict[str, Any] = {"rank": rank}

    def failing_step(self: Any, batch: Any) -> None:
        if rank == failing and calls["n"] == FAIL_AT:
            doc["injected_at"] = time.time()
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        calls["n"] += 1
        step(self, batch)

    TorchCompute.step = failing_step  # type: ignore[method-assign]
    spec = RunSpec(dataset_url=data, workload="mnist-cnn", loader=LoaderSpec("bucket"), compute=ComputeSpec(kind="cpu"),
                   batch_size=8, num_workers=0, epochs=1, warmup_steps=1, seed=0, world_size=world, max_steps_per_epoch=6)
    try:
        run(spec, results_dir=results, price=False, rank=RankInfo(rank=rank, world_size=world, local_rank=rank))
        doc["error"] = None
    except DelibenchError as exc:
        doc.update(error=exc.message, exit_code=int(exc.exit_code), record_paths=list(getattr(exc, "record_paths", ())))
    except Exception as exc:  # noqa: BLE001 - the test reports what leaked
        doc.update(error=f"{type(exc).__name__}: {exc}", exit_code=None)
    doc["ended_at"] = time.time()
    try:  # the group was left inside a collective: a second run in this process is told so at once
        run(spec, results_dir=results, price=False, rank=RankInfo(rank=rank, world_size=world, local_rank=rank))
    except DelibenchError as exc:
        doc["second_run"] = exc.message
    Path(f"{out}.{rank}").write_text(json.dumps(doc))
    # Leave as the CLI's ranks do (delibench.cli.app.entry): interpreter teardown of a gloo group a peer
    # left mid-collective aborts now and then in PyTorch ("terminate called without an active exception").
    os._exit(0)


@pytest.mark.slow
@pytest.mark.parametrize("failing", [0], ids=["rank-0-fails"])
def test_a_rank_raising_in_its_step_ends_every_rank_promptly_and_the_record_says_failed(mnist_dir, tmp_path, failing):
    import torch.multiprocessing as mp  # its spawn leaves multiprocessing's resource tracker, shared by the session, running

    out, results = tmp_path / "out", tmp_path / "results"
    ctx = mp.start_processes(_rank_main, args=(2, str(tmp_path / "store"), str(mnist_dir), str(results), str(out), failing),
                             nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + 90
    try:
        while not ctx.join(timeout=0.5):
            assert time.monotonic() < deadline, "a rank is still blocked in a collective"
    finally:
        for p in ctx.processes:
            if p.is_alive():
                p.kill()
    docs = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    injected_at = docs[failing]["injected_at"]
    other = 1 - failing
    # every rank ended with a one-line error and exit code 1, within seconds of the failure
    for d in docs:
        assert d["exit_code"] == 1 and "\n" not in d["error"], d
        assert d["ended_at"] - injected_at < 15, d
    assert "CUDA out of memory" in docs[failing]["error"]
    assert all("cannot be used again" in d["second_run"] for d in docs), docs
    assert docs[0]["error"].startswith(f"the run failed on rank {failing}: RuntimeError: CUDA out of memory"), docs[0]
    assert docs[1]["error"].startswith("rank 1 stopped: ")
    # rank 0 wrote what both ranks measured, marked failed, the failing rank's error first
    (path,) = docs[0]["record_paths"]
    record = json.loads(Path(path).read_text())
    assert record["status"] == "failed"
    assert record["error"].startswith(f"rank {failing}: RuntimeError: CUDA out of memory"), record["error"]
    assert [i["code"] for i in record["issues"]][0] == "failed"
    import csv

    timeline = list(csv.DictReader(Path(path).with_name(record["steps_path"]).open()))
    steps = {r: [s for s in timeline if int(s["rank"]) == r] for r in (0, 1)}
    assert len(steps[failing]) == FAIL_AT  # the steps before the one that raised
    if failing == 1:
        # rank 1 sent its steps through the store before it left; rank 0 was released and recorded both
        assert len(steps[0]) == FAIL_AT and sorted(r["rank"] for r in record["metrics"]["ranks"]) == [0, 1]
    else:
        # rank 1 stays blocked until rank 0's process ends: rank 0 records its own steps after a short
        # grace (for ranks failing at the same step), and says rank 1 was left blocked, not dead
        assert not steps[other] and "rank 1: no results (left blocked in the step rank 0 failed in)" in record["error"]


@pytest.mark.slow
def test_nproc_2_a_rank_raising_in_its_step_exits_1_with_one_line_and_rank_0_records_both_ranks(mnist_dir, tmp_path, no_leftover_processes):
    """The CLI path: ``--nproc 2`` (torchrun's variables, a TCP store on rank 0, the launcher's grace)."""
    import csv
    import subprocess
    import sys

    from tests.run.conftest import cpu_args, rank_1_step_env

    # rank 1's step raises at its step FAIL_AT
    env = rank_1_step_env(tmp_path, FAIL_AT, 'raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")')
    args = cpu_args()
    start = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "delibench", "run", "--data", str(mnist_dir), "--loader", "bucket", *args,
                           "--max-steps", "6", "--nproc", "2", "--results-dir", str(tmp_path / "results")],
                          capture_output=True, text=True, env=env, timeout=90, check=False)
    assert time.monotonic() - start < 60  # not the process group's 30-minute timeout
    assert proc.returncode == 1, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if "the run failed on rank 1" in line]
    assert len(errors) == 1 and "CUDA out of memory" in errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    (path,) = (tmp_path / "results").glob("*.json")
    record = json.loads(path.read_text())
    assert record["status"] == "failed" and record["error"].startswith("rank 1: RuntimeError: CUDA out of memory")
    timeline = list(csv.DictReader(path.with_name(record["steps_path"]).open()))
    assert {int(s["rank"]) for s in timeline} == {0, 1}
    assert len([s for s in timeline if s["rank"] == "1"]) == FAIL_AT
