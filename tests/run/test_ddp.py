"""Real DDP in the measured loop (issue 15 item 5), the pin-ahead helper, and the slowest-rank-per-step figures.

The distributed tests start two real processes joined by a gloo process group, on CPU, with the
tiny ``mnist-cnn`` workload.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest

from delibench.measure import summarize
from delibench.records import StepSample
from tests.run.conftest import FAST

pytestmark = [pytest.mark.timeout(240)]


# --------------------------------------------------------------------------- slowest rank per step


def _step(rank: int, step: int, wait: float, compute: float, epoch: int = 0) -> StepSample:
    return StepSample(epoch=epoch, step=step, rank=rank, wait_s=wait, compute_s=compute, samples=4, start_s=float(step))


def test_slowest_rank_per_step_is_the_largest_wait_at_each_aligned_step():
    # steps 1..3 are measured (warm-up 1); rank 1 is slow at steps 1 and 3, rank 0 at step 2
    steps = [
        _step(0, 0, 9.0, 1.0), _step(0, 1, 0.1, 1.0), _step(0, 2, 0.5, 1.0), _step(0, 3, 0.0, 1.0),
        _step(1, 0, 9.0, 1.0), _step(1, 1, 0.3, 0.8), _step(1, 2, 0.2, 1.0), _step(1, 3, 0.4, 1.0),
    ]
    m = summarize(steps, warmup_steps=1, world_size=2)
    assert m.aligned_steps == 3
    assert m.slowest_rank_wait_s == pytest.approx(0.3 + 0.5 + 0.4)
    # step walls: max(0.1+1.0, 0.3+0.8)=1.1, max(1.5, 1.2)=1.5, max(1.0, 1.4)=1.4
    assert m.slowest_rank_wait_fraction == pytest.approx(1.2 / (1.1 + 1.5 + 1.4))
    assert {r.rank: r.slowest_steps for r in m.ranks} == {0: 1, 1: 2}
    # each rank's own figure is smaller than the job's: that is what the per-step maximum adds
    assert max(r.wait_s for r in m.ranks) < m.slowest_rank_wait_s


def test_slowest_rank_on_one_rank_is_that_rank():
    steps = [_step(0, i, 0.1 * i, 1.0) for i in range(5)]
    m = summarize(steps, warmup_steps=1)
    assert m.aligned_steps == 4
    assert m.slowest_rank_wait_s == pytest.approx(m.ranks[0].wait_s)
    assert m.slowest_rank_wait_fraction == pytest.approx(m.data_wait_fraction)
    assert m.ranks[0].slowest_steps == 4


# --------------------------------------------------------------------------- pinned batches ahead


class _ListLoader:
    def __init__(self, batches: list[Any]) -> None:
        self.batches = batches
        self.closed = 0

    def iter_epoch(self, epoch: int):
        try:
            yield from self.batches
        finally:
            self.closed += 1


class _PinningCompute:
    kind = "fake"
    pin_memory = True

    def __init__(self) -> None:
        self.pinned_in: list[str] = []
        self.stepped: list[Any] = []

    def pin_batch(self, batch: Any) -> Any:
        self.pinned_in.append(threading.current_thread().name)
        return ("pinned", batch)

    def to_device(self, batch: Any) -> Any:
        return batch

    def step(self, batch: Any) -> None:
        self.stepped.append(batch)

    def sync(self) -> None:
        pass


def test_the_loop_pins_the_next_batch_in_a_helper_thread_in_order():
    from delibench.workloads.loop import measure_loader

    batches = [([0] * 4, [1] * 4), ([2] * 4, [3] * 4), ([4] * 2, [5] * 2)]
    loader, compute = _ListLoader(batches), _PinningCompute()
    result = measure_loader(loader, compute, epochs=2)
    assert compute.stepped == [("pinned", b) for b in batches] * 2
    assert compute.pinned_in and all(name.startswith("delibench-pin") for name in compute.pinned_in)
    assert [e.complete for e in result.epochs] == [True, True]
    assert loader.closed == 2


def test_fetch_and_pin_overlap_the_step_so_the_wait_counts_only_what_the_step_did_not_hide():
    """A batch that takes 60 ms to arrive behind a 150 ms step costs no wait (DataLoader pin thread's shape)."""
    import time

    from delibench.workloads.loop import measure_loader

    class Slow(_ListLoader):
        def iter_epoch(self, epoch: int):
            for b in self.batches:
                time.sleep(0.06)
                yield b

    class Stepping(_PinningCompute):
        def step(self, batch: Any) -> None:
            time.sleep(0.15)

    result = measure_loader(Slow([([i], [i]) for i in range(6)]), Stepping(), epochs=1)
    later = sorted(s.wait_s for s in result.steps[1:])
    assert later[len(later) // 2] < 0.03, later  # the first step waits for its batch; the rest were fetched during a step
    assert result.steps[0].wait_s >= 0.05


def test_a_stopped_epoch_closes_the_loader_after_the_batch_in_flight():
    from delibench.workloads.loop import measure_loader

    batches = [([i], [i]) for i in range(6)]
    loader, compute = _ListLoader(batches), _PinningCompute()
    result = measure_loader(loader, compute, epochs=1, max_steps_per_epoch=2)
    assert len(result.steps) == 2 and len(compute.stepped) == 2
    assert loader.closed == 1
    assert threading.active_count() < 50 and not [t for t in threading.enumerate() if t.name.startswith("delibench-pin")]


def test_an_error_of_the_loader_reaches_the_loop_from_the_helper_thread():
    from delibench.workloads.loop import measure_loader

    class Broken:
        def iter_epoch(self, epoch: int):
            yield ([0], [0])
            raise OSError("GET s3://b/k failed")

    with pytest.raises(OSError, match="s3://b/k"):
        measure_loader(Broken(), _PinningCompute(), epochs=1)


# --------------------------------------------------------------------------- two real ranks over gloo


def _rank_main(rank: int, world: int, store: str, data: str, out: str) -> None:
    """One rank: join a gloo group, run the session's measured loop on CPU, gather parameters and gradients."""
    os.environ.update(OMP_NUM_THREADS="1")
    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from delibench.app.session import run
    from delibench.distributed import RankInfo
    from delibench.records import ComputeSpec, LoaderSpec, RunSpec
    from delibench.workloads import models

    built: list[Any] = []
    original = models.Workload.build

    def capture(self: Any, *args: Any, **kwargs: Any) -> Any:
        compute = original(self, *args, **kwargs)
        built.append(compute)
        return compute

    models.Workload.build = capture  # type: ignore[method-assign]
    # different seeds per rank: equal parameters afterwards can only come from DDP's broadcast + all-reduce
    spec = RunSpec(dataset_url=data, workload="mnist-cnn", loader=LoaderSpec("bucket"), compute=ComputeSpec(kind="cpu"),
                   batch_size=8, num_workers=0, epochs=1, warmup_steps=1, seed=rank, world_size=world, max_steps_per_epoch=3)
    record = run(spec, write=False, price=False, rank=RankInfo(rank=rank, world_size=world, local_rank=rank))
    (compute,) = built
    params = [p.detach().clone() for p in compute.model.parameters()]
    grads = [p.grad.detach().clone() for p in compute.model.parameters()]
    gathered = [None] * world
    dist.all_gather_object(gathered, (params, grads))
    if rank == 0:
        (p0, g0), (p1, g1) = gathered
        doc = {
            "ddp": type(compute.model).__name__,
            "params_equal": all(torch.equal(a, b) for a, b in zip(p0, p1)),
            "grads_equal": all(torch.allclose(a, b, rtol=1e-5, atol=1e-7) for a, b in zip(g0, g1)),
            "grads_nonzero": any(float(g.abs().sum()) > 0 for g in g0),
            "ranks": sorted(r.rank for r in record.metrics.ranks),
            "aligned_steps": record.metrics.aligned_steps,
            "slowest_rank_wait_s": record.metrics.slowest_rank_wait_s,
            "rank_wait_s": [r.wait_s for r in record.metrics.ranks],
        }
        Path(out).write_text(json.dumps(doc))
    dist.barrier()
    dist.destroy_process_group()


def test_the_loop_wraps_the_model_in_ddp_for_world_above_1_gradients_equal_across_ranks(mnist_dir, tmp_path):
    import torch.multiprocessing as mp  # its spawn leaves multiprocessing's resource tracker, shared by the session, running

    out = tmp_path / "out.json"
    mp.start_processes(_rank_main, args=(2, str(tmp_path / "store"), str(mnist_dir), str(out)), nprocs=2, join=True,
                       start_method="spawn")
    doc = json.loads(out.read_text())
    assert doc["ddp"] == "DistributedDataParallel"
    assert doc["grads_nonzero"]
    assert doc["grads_equal"]  # each rank saw its own half of the data: only the all-reduce makes these equal
    assert doc["params_equal"]  # ranks started from different seeds: DDP broadcast rank 0's, then equal steps
    assert doc["ranks"] == [0, 1]
    assert doc["aligned_steps"] == 2  # 3 steps per rank, 1 warm-up
    assert doc["slowest_rank_wait_s"] >= max(doc["rank_wait_s"]) - 1e-9


def _emulated_main(rank: int, world: int, store: str, out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from delibench.records import ComputeSpec
    from delibench.workloads.models import get_workload

    wl = get_workload("mnist-cnn")
    compute = wl.build(compute=ComputeSpec(kind="emulated", step_time_s=0.01), world_size=world)
    compute._grads.fill_(rank + 1.0)
    compute.step(None)
    if rank == 0:
        Path(out).write_text(json.dumps({"numel": compute.allreduce_numel, "params": wl.parameter_count(),
                                         "value": float(compute._grads[0]), "last": float(compute._grads[-1])}))
    dist.barrier()
    dist.destroy_process_group()


def test_an_emulated_step_all_reduces_a_gradient_sized_tensor_across_ranks(tmp_path):
    import torch.multiprocessing as mp  # its spawn leaves multiprocessing's resource tracker, shared by the session, running

    out = tmp_path / "out.json"
    mp.start_processes(_emulated_main, args=(2, str(tmp_path / "store"), str(out)), nprocs=2, join=True, start_method="spawn")
    doc = json.loads(out.read_text())
    assert doc["numel"] == doc["params"] == 1_199_882  # mnist-cnn with 10 classes
    assert doc["value"] == doc["last"] == 3.0  # 1 + 2: summed over both ranks


# extended: DDP wrapping is proven by test_the_loop_wraps_the_model_in_ddp...; slowest-rank fields by the unit tests above
@pytest.mark.extended
def test_nproc_2_with_cpu_compute_trains_through_ddp(mnist_dir, tmp_path, cli_process, no_leftover_processes):
    args = [a for a in FAST]
    args[args.index("emulated:20ms")] = "cpu"
    res = cli_process("run", "--data", mnist_dir, "--loader", "bucket", *args, "--max-steps", "4", "--nproc", "2",
                      "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    metrics = res.json()["metrics"]
    assert res.json()["spec"]["compute"]["kind"] == "cpu"
    assert sorted(r["rank"] for r in metrics["ranks"]) == [0, 1]
    assert metrics["aligned_steps"] == 3
    assert sum(r["slowest_steps"] for r in metrics["ranks"]) == 3
    assert metrics["slowest_rank_wait_s"] >= max(r["wait_s"] for r in metrics["ranks"]) - 1e-9


# --------------------------------------------------------------------------- stopping together


class _RankLoader:
    """Batches of 2 MNIST-sized images; raises at batch ``fail_at`` (None: never)."""

    def __init__(self, batches: int, fail_at: int | None = None) -> None:
        self.batches, self.fail_at = batches, fail_at

    def iter_epoch(self, epoch: int):
        import torch

        for i in range(self.batches):
            if i == self.fail_at:
                raise OSError(f"GET s3://b/k{i} failed for good")
            yield torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.long)


def _stop_main(rank: int, world: int, store: str, out: str, scenario: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    from delibench.records import ComputeSpec
    from delibench.workloads.loop import measure_loader
    from delibench.workloads.models import get_workload

    kind = "cpu" if scenario.endswith("ddp") else "emulated"
    spec = ComputeSpec(kind=kind, step_time_s=0.005 if kind == "emulated" else None)
    compute = get_workload("mnist-cnn").build("cpu" if kind == "cpu" else None, spec, world_size=world)
    calls = {"n": 0}

    def stop_on_rank_1_at_step_3() -> bool:
        calls["n"] += 1
        return rank == 1 and calls["n"] >= 4  # polls: epoch top, before steps 0, 1, 2: stop before step 2

    doc: dict[str, Any] = {"rank": rank}
    try:
        if scenario.startswith("fail"):
            result = measure_loader(_RankLoader(10, fail_at=4 if rank == 1 else None), compute, epochs=1)
        else:
            result = measure_loader(_RankLoader(10), compute, epochs=2, should_stop=stop_on_rank_1_at_step_3)
        doc.update(steps=len(result.steps), stopped=result.stopped)
    except OSError as exc:
        doc.update(error=str(exc))
    Path(f"{out}.{rank}").write_text(json.dumps(doc))
    dist.barrier()  # both ranks reach it: nobody is left in a collective
    dist.destroy_process_group()


@pytest.mark.parametrize("scenario", ["fail-emulated", "fail-ddp", "stop-emulated", "stop-ddp"])
def test_ranks_stop_after_the_same_step_when_one_fails_or_is_asked_to(tmp_path, scenario):
    import torch.multiprocessing as mp  # its spawn leaves multiprocessing's resource tracker, shared by the session, running

    out = tmp_path / "out"
    ctx = mp.start_processes(_stop_main, args=(2, str(tmp_path / "store"), str(out), scenario), nprocs=2, join=False,
                             start_method="spawn")
    import time

    deadline = time.monotonic() + 120
    while not ctx.join(timeout=1):
        assert time.monotonic() < deadline, "a rank hung in a collective"
    docs = [json.loads(Path(f"{out}.{r}").read_text()) for r in (0, 1)]
    if scenario.startswith("fail"):
        assert "failed for good" in docs[1]["error"]
        assert docs[0] == {"rank": 0, "steps": 4, "stopped": "should_stop"}  # rank 1 delivered 4 batches, then failed
    else:
        assert [d["steps"] for d in docs] == [2, 2]  # stopped before step 2 on both, though only rank 1 asked
        assert [d["stopped"] for d in docs] == ["should_stop", "should_stop"]
