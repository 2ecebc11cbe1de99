"""The public geo strategies in real 2-rank gloo jobs (one region per rank), as a user's loop calls them.

Each test starts 2 processes (forkserver, torch preloaded), runs one function per rank and
compares what the ranks return. Pinned down: model averaging with period 1 equals DDP, ASGD-GA
with K=1 and S=0 equals synchronous SGD, the stale path (S=1) equals a trajectory computed by hand,
every rank ends with the same parameters, a fast region is not held to a slow one's pace unless
the bound says so, bytes follow 1/H and 1/K, DiLoCo equals its single-process definition.
"""

from __future__ import annotations

import multiprocessing as mp
import socket
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import pytest
import torch

from delibench.errors import UsageError
from delibench.geo.regions import parse_regions

pytestmark = pytest.mark.slow

LR = 0.1
#: Rank 1's injected step time in the stale-path test, and the emulated link's RTT: the schedule
#: below is deterministic because 2 x RTT/2 plus rank 0's step is far below STEP_S.
STEP_S = 0.15
LINK = parse_regions(
    {
        "regions": {
            "a": {"accelerators": {"count": 1, "usd_per_hour": 1.0, "step_time_s": "1ms"}},
            "b": {"accelerators": {"count": 1, "usd_per_hour": 1.0, "step_time_s": "1ms"}},
        },
        "links": [{"between": ["a", "b"], "rtt_s": "40ms", "bandwidth_bytes_per_s": "1GB", "egress_usd_per_gb": 0.02}],
    }
)


# ---------------------------------------------------------------------------------------------
# Harness: 2 real processes, gloo over 127.0.0.1


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _entry(target: Any, rank: int, world: int, port: int, out_dir: str, kwargs: dict[str, Any]) -> None:
    import os
    from datetime import timedelta

    import torch.distributed as dist

    try:
        torch.set_num_threads(1)
        if os.path.exists("/sys/class/net/lo"):
            os.environ["GLOO_SOCKET_IFNAME"] = "lo"
        dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world, timeout=timedelta(seconds=60))
        try:
            result = target(rank, world, **kwargs)
            torch.save(result, Path(out_dir, f"rank{rank}.pt"))
        finally:
            dist.destroy_process_group()
    except BaseException:
        Path(out_dir, f"rank{rank}.error").write_text(traceback.format_exc())
        raise


def _launch(target: Any, world: int = 2, timeout_s: float = 30.0, **kwargs: Any) -> list[Any]:
    """Run ``target(rank, world, **kwargs)`` in ``world`` processes; return what each returned."""
    if "forkserver" in mp.get_all_start_methods():
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["torch", "torch.distributed", "delibench.geo.strategies"])
    else:
        ctx = mp.get_context("spawn")
    with tempfile.TemporaryDirectory(prefix="geo-strat-") as out:
        port = _free_port()
        procs = [ctx.Process(target=_entry, args=(target, r, world, port, out, kwargs), daemon=True) for r in range(world)]
        for p in procs:
            p.start()
        deadline = time.monotonic() + timeout_s
        try:
            while any(p.exitcode is None for p in procs):
                errors = sorted(Path(out).glob("*.error"))
                if errors:
                    raise AssertionError(errors[0].read_text())
                if time.monotonic() > deadline:
                    raise AssertionError(f"ranks still running after {timeout_s} s")
                time.sleep(0.02)
            errors = sorted(Path(out).glob("*.error"))
            if errors:
                raise AssertionError(errors[0].read_text())
            return [torch.load(Path(out, f"rank{r}.pt"), weights_only=False) for r in range(world)]
        finally:
            for p in procs:
                if p.is_alive():
                    p.kill()
                p.join(5)


def _model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3))


def _batch(rank: int, step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1000 * rank + step)
    return torch.randn(5, 6, generator=g), torch.randint(0, 3, (5,), generator=g)


def _loss(model: torch.nn.Module, rank: int, step: int) -> torch.Tensor:
    x, y = _batch(rank, step)
    return torch.nn.functional.cross_entropy(model(x), y)


def _vec(model: torch.nn.Module) -> torch.Tensor:
    return torch.nn.utils.parameters_to_vector(model.parameters()).detach().clone()


def _ddp_reference(steps: int, momentum: float) -> torch.Tensor:
    """Parameters after ``steps`` of DDP (gradients averaged over the ranks) with SGD."""
    from torch.nn.parallel import DistributedDataParallel as DDP

    import torch.distributed as dist

    model = _model()
    ddp = DDP(model)
    opt = torch.optim.SGD(ddp.parameters(), lr=LR, momentum=momentum)
    for step in range(steps):
        opt.zero_grad()
        _loss(ddp, dist.get_rank(), step).backward()
        opt.step()
    return _vec(model)


# ---------------------------------------------------------------------------------------------
# Equivalences with synchronous training


def _ma_and_asgd_vs_ddp(rank: int, world: int) -> dict[str, torch.Tensor]:
    from delibench.geo import AsyncGradientAccumulation, GeoComm, ModelAveraging

    steps = 6
    comm = GeoComm.per_rank()
    out = {"ddp_momentum": _ddp_reference(steps, momentum=0.9), "ddp_sgd": _ddp_reference(steps, momentum=0.0)}
    # Model averaging, period 1, SGD with momentum kept local: averaging is linear, so the mean of
    # the local momenta is DDP's momentum and the averaged parameters are DDP's.
    model = _model()
    opt = ModelAveraging(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model, period=1, group=comm)
    for step in range(steps):
        opt.zero_grad()
        _loss(model, rank, step).backward()
        opt.step(samples=5)
    opt.finish()
    out["ma1"] = _vec(model)
    # ASGD-GA with K=1 and S=0 is synchronous SGD.
    model = _model()
    opt = AsyncGradientAccumulation(torch.optim.SGD(model.parameters(), lr=LR), model, accum=1, max_staleness=0, group=comm)
    for step in range(steps):
        opt.zero_grad()
        _loss(model, rank, step).backward()
        opt.step()
    opt.finish()
    out["asgd_k1_s0"] = _vec(model)
    out["asgd_staleness"] = torch.tensor(opt.staleness)
    return out


def test_ma_period_1_equals_ddp_and_asgd_k1_s0_equals_synchronous_sgd() -> None:
    ranks = _launch(_ma_and_asgd_vs_ddp)
    for r in ranks:
        torch.testing.assert_close(r["ma1"], r["ddp_momentum"], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(r["asgd_k1_s0"], r["ddp_sgd"], rtol=1e-5, atol=1e-6)
        assert r["asgd_staleness"].tolist() == [0] * 6  # lockstep: every update applied fresh
    assert torch.equal(ranks[0]["ma1"], ranks[1]["ma1"])
    assert torch.equal(ranks[0]["asgd_k1_s0"], ranks[1]["asgd_k1_s0"])


# ---------------------------------------------------------------------------------------------
# The stale path against a hand-computed trajectory

#: Fixed gradients of a 3-element parameter: GRADS[rank][step].
GRADS = [
    [[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-2.0, 1.0, 0.0], [1.0, 1.0, 1.0]],
    [[3.0, 0.0, 1.0], [-1.0, 2.0, 0.5], [0.0, -3.0, 1.0], [2.0, -1.0, -2.0]],
]
THETA0 = [0.5, -0.25, 1.0]


def _stale_path(rank: int, world: int) -> dict[str, Any]:
    from delibench.geo import AsyncGradientAccumulation, GeoComm

    comm = GeoComm.from_regions(["a", "b"], LINK)
    p = torch.nn.Parameter(torch.tensor(THETA0))
    opt = AsyncGradientAccumulation(torch.optim.SGD([p], lr=LR), [p], accum=1, max_staleness=1, group=comm)
    trajectory = []
    import torch.distributed as dist

    dist.barrier()
    for step in range(len(GRADS[rank])):
        if rank == 1:
            time.sleep(STEP_S)  # the slow region
        p.grad = torch.tensor(GRADS[rank][step])
        opt.step()
        trajectory.append(p.detach().clone())
    opt.finish()
    return {"trajectory": torch.stack(trajectory), "final": p.detach().clone(), "staleness": list(opt.staleness), "waited_s": opt.waited_s}


def test_stale_updates_match_a_trajectory_computed_by_hand() -> None:
    ranks = _launch(_stale_path)
    # Each region's update of a round is its SGD change times its share of the workers (1/2).
    u = [[[0.5 * LR * g for g in step] for step in GRADS[r]] for r in range(2)]

    def minus(theta: list[float], *updates: list[float]) -> list[float]:
        out = list(theta)
        for upd in updates:
            out = [a - b for a, b in zip(out, upd, strict=True)]
        return out

    # Rank 1 sleeps STEP_S per step; rank 0 is fast. A region sends its round, then applies what
    # arrived. With S=1, rank 0 ends round j needing rank 1's round j-1: it waits for it and applies
    # it 1 round stale (rank 1's round j is STEP_S away). So rank 0 sends round j+1 as soon as rank 1's
    # round j-1 arrives (2 x RTT/2 before rank 1 ends round j), and rank 1, at the end of its round
    # j, applies rank 0's rounds up to j+1 (the bound is symmetric: never more than S rounds from
    # its own; round j+2 is not sent yet). finish() applies what is left.
    theta, expect0 = THETA0, []
    for j in range(4):
        theta = minus(theta, u[0][j], *([u[1][j - 1]] if j >= 1 else []))
        expect0.append(theta)
    theta, expect1 = THETA0, []
    for j in range(4):
        ahead = [u[0][k] for k in range(4) if (k <= j + 1 if j == 0 else k == j + 1)]
        theta = minus(theta, u[1][j], *ahead)
        expect1.append(theta)
    torch.testing.assert_close(ranks[0]["trajectory"], torch.tensor(expect0), rtol=0, atol=1e-6)
    torch.testing.assert_close(ranks[1]["trajectory"], torch.tensor(expect1), rtol=0, atol=1e-6)
    assert ranks[0]["staleness"] == [1, 1, 1, 0]
    assert ranks[1]["staleness"] == [0, 0, 0, 0]
    assert ranks[0]["waited_s"] > 2 * STEP_S  # the fast region waited only for the bound
    # After finish(): the initial parameters minus every update, bit for bit the same on both ranks.
    final = minus(THETA0, *u[0], *u[1])
    torch.testing.assert_close(ranks[0]["final"], torch.tensor(final), rtol=0, atol=1e-6)
    assert torch.equal(ranks[0]["final"], ranks[1]["final"])


# ---------------------------------------------------------------------------------------------
# Pace: a fast region is not held to the slow region's pace


def _pace(rank: int, world: int, duration_s: float, slow_s: float) -> dict[str, int]:
    import torch.distributed as dist

    from delibench.geo import AsyncGradientAccumulation, GeoComm

    comm = GeoComm.per_rank()
    counts: dict[str, int] = {}
    params: dict[str, torch.Tensor] = {}
    for name, bound in (("async", None), ("bounded3", 3), ("lockstep", 0)):
        model = _model()
        opt = AsyncGradientAccumulation(torch.optim.SGD(model.parameters(), lr=0.01), model, accum=1, max_staleness=bound, group=comm)
        dist.barrier()
        end = time.perf_counter() + duration_s
        steps = 0
        while time.perf_counter() < end:
            time.sleep(slow_s if rank == 1 else 0.002)  # injected step time: rank 1 is the slow region
            opt.zero_grad()
            _loss(model, rank, steps).backward()
            opt.step()
            steps += 1
        opt.finish()
        counts[name] = steps
        counts[f"{name}_max_staleness"] = opt.max_staleness_seen
        params[name] = _vec(model)
    return {"counts": counts, "params": params}


def test_fast_region_keeps_its_pace_unless_the_staleness_bound_holds_it() -> None:
    duration_s, slow_s = 1.0, 0.04
    fast, slow = (r["counts"] for r in _launch(_pace, duration_s=duration_s, slow_s=slow_s))
    # Unbounded: the fast region steps at its own pace (2 ms + compute vs 40 ms), many times more.
    assert fast["async"] >= 4 * slow["async"], (fast, slow)
    assert slow["async"] <= duration_s / slow_s + 1
    # Lockstep (S=0) holds it to the slow region's pace; S=3 lets it run at most 3 rounds ahead.
    assert fast["lockstep"] <= slow["lockstep"] + 1, (fast, slow)
    assert fast["bounded3"] <= slow["bounded3"] + 3 + 1, (fast, slow)
    assert fast["bounded3_max_staleness"] <= 3 and slow["bounded3_max_staleness"] <= 3
    assert fast["lockstep_max_staleness"] == 0
    assert fast["async_max_staleness"] > 3  # the fast region applied the slow one's updates many rounds late


def test_every_rank_holds_the_same_parameters_after_finish() -> None:
    a, b = _launch(_pace, duration_s=0.4, slow_s=0.02)
    for name in ("async", "bounded3", "lockstep"):
        assert torch.equal(a["params"][name], b["params"][name]), name


# ---------------------------------------------------------------------------------------------
# Bytes on the wire follow 1/H and 1/K


def _bytes(rank: int, world: int) -> dict[str, int]:
    from delibench.geo import AllReduceGradients, AsyncGradientAccumulation, DiLoCo, GeoComm, ModelAveraging

    steps = 16

    def run(make: Any) -> int:
        comm = GeoComm.per_rank()
        model = _model()
        opt = make(model, comm)
        before = comm.ledger.cross_region_bytes  # the initial broadcast is not the strategy's traffic
        for step in range(steps):
            opt.zero_grad()
            _loss(model, rank, step).backward()
            opt.step()
        opt.finish()
        return comm.ledger.cross_region_bytes - before

    def sgd(model: torch.nn.Module) -> torch.optim.Optimizer:
        return torch.optim.SGD(model.parameters(), lr=LR)

    return {
        "allreduce": run(lambda m, c: AllReduceGradients(sgd(m), m, group=c)),
        "ma1": run(lambda m, c: ModelAveraging(sgd(m), m, period=1, group=c)),
        "ma4": run(lambda m, c: ModelAveraging(sgd(m), m, period=4, group=c)),
        "ma4_fp16": run(lambda m, c: ModelAveraging(sgd(m), m, period=4, group=c, compression="fp16")),
        "ma4_powersgd": run(lambda m, c: ModelAveraging(sgd(m), m, period=4, group=c, compression="powersgd")),
        "diloco1": run(lambda m, c: DiLoCo(torch.optim.AdamW(m.parameters(), lr=1e-3), m, period=1, group=c)),
        "diloco8": run(lambda m, c: DiLoCo(torch.optim.AdamW(m.parameters(), lr=1e-3), m, period=8, group=c)),
        "asgd1": run(lambda m, c: AsyncGradientAccumulation(sgd(m), m, accum=1, max_staleness=1, group=c)),
        "asgd4": run(lambda m, c: AsyncGradientAccumulation(sgd(m), m, accum=4, max_staleness=1, group=c)),
        "asgd4_bf16": run(lambda m, c: AsyncGradientAccumulation(sgd(m), m, accum=4, max_staleness=1, group=c, compression="bf16")),
        "params": sum(p.numel() for p in _model().parameters()),
    }


def test_bytes_follow_one_over_h_and_one_over_k() -> None:
    b, _ = _launch(_bytes)
    n = b["params"]
    assert b["allreduce"] == 16 * n * 4  # 2 regions: each leader sends its half twice per all-reduce
    assert b["ma1"] / b["allreduce"] == pytest.approx(1.0, rel=0.15)
    assert b["ma4"] / b["ma1"] == pytest.approx(1 / 4, rel=0.15)
    assert b["diloco8"] / b["diloco1"] == pytest.approx(1 / 8, rel=0.15)
    assert b["asgd1"] / b["allreduce"] == pytest.approx(1.0, rel=0.15)
    assert b["asgd4"] / b["asgd1"] == pytest.approx(1 / 4, rel=0.15)
    assert b["ma4_fp16"] / b["ma4"] == pytest.approx(1 / 2, rel=0.15)
    assert b["asgd4_bf16"] / b["asgd4"] == pytest.approx(1 / 2, rel=0.15)
    assert b["ma4_powersgd"] < 0.8 * b["ma4"]  # first exchange plain, then rank-1 factors


# ---------------------------------------------------------------------------------------------
# DiLoCo and optimizer state


def _diloco(rank: int, world: int) -> dict[str, Any]:
    from delibench.geo import DiLoCo, GeoComm, ModelAveraging

    comm = GeoComm.per_rank()
    out: dict[str, Any] = {}
    steps, period = 10, 4

    def train(opt: Any, model: torch.nn.Module) -> torch.Tensor:
        for step in range(steps):
            opt.zero_grad()
            _loss(model, rank, step).backward()
            opt.step()
        opt.finish()
        return _vec(model)

    model = _model()
    out["diloco"] = train(DiLoCo(torch.optim.AdamW(model.parameters(), lr=0.01), model, outer_lr=0.7, momentum=0.9, period=period, group=comm), model)
    model = _model()
    out["diloco_as_ma"] = train(DiLoCo(torch.optim.SGD(model.parameters(), lr=LR), model, outer_lr=1.0, momentum=0.0, period=period, group=comm), model)
    model = _model()
    out["ma"] = train(ModelAveraging(torch.optim.SGD(model.parameters(), lr=LR), model, period=period, group=comm), model)
    for mode in ("average", "reset"):
        model = _model()
        opt = ModelAveraging(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model, period=period, group=comm, optimizer_state=mode)
        for step in range(period):
            opt.zero_grad()
            _loss(model, rank, step).backward()
            opt.step()
        out[f"state_{mode}"] = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()] if mode == "average" else len(opt.state)
    return out


def _diloco_reference(steps: int, period: int) -> torch.Tensor:
    """DiLoCo by its definition in one process: 2 inner AdamW copies, averaged pseudo-gradient, outer Nesterov SGD."""
    models = [_model(), _model()]
    inner = [torch.optim.AdamW(m.parameters(), lr=0.01) for m in models]
    outer_params = [p.detach().clone() for p in models[0].parameters()]
    outer = torch.optim.SGD(outer_params, lr=0.7, momentum=0.9, nesterov=True)
    for step in range(steps):
        for rank, (m, opt) in enumerate(zip(models, inner, strict=True)):
            opt.zero_grad()
            _loss(m, rank, step).backward()
            opt.step()
        if (step + 1) % period == 0 or step == steps - 1:
            with torch.no_grad():
                for i, op in enumerate(outer_params):
                    locals_ = [list(m.parameters())[i] for m in models]
                    op.grad = sum(op - lp for lp in locals_) / 2
                outer.step()
                for m in models:
                    for p, op in zip(m.parameters(), outer_params, strict=True):
                        p.copy_(op)
    return _vec(models[0])


def test_diloco_matches_its_definition_and_state_options() -> None:
    a, b = _launch(_diloco)
    torch.testing.assert_close(a["diloco"], _diloco_reference(10, 4), rtol=1e-5, atol=1e-6)
    assert torch.equal(a["diloco"], b["diloco"])
    # Outer learning rate 1 without momentum is model averaging.
    torch.testing.assert_close(a["diloco_as_ma"], a["ma"], rtol=1e-5, atol=1e-6)
    for ma, mb in zip(a["state_average"], b["state_average"], strict=True):
        assert torch.equal(ma, mb)  # averaged momentum: the same on both ranks
    assert a["state_reset"] == 0 and b["state_reset"] == 0


def test_option_errors_need_no_process_group() -> None:
    from delibench.geo import Compression, GeoComm

    with pytest.raises(UsageError, match="contiguous"):
        GeoComm.from_regions(["a", "b", "a"])
    with pytest.raises(UsageError, match="unknown compression"):
        Compression("int8")


# ---------------------------------------------------------------------------------------------
# A user's DDP script: 3 regions, one of them with 2 ranks (DDP inside it), 4 processes


def _ddp_script(rank: int, world: int) -> dict[str, Any]:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel as DDP

    from delibench.geo import AsyncGradientAccumulation, DiLoCo, GeoComm, ModelAveraging

    comm = GeoComm.from_regions(["a", "a", "b", "c"])
    out: dict[str, Any] = {"region": comm.region}
    for name in ("asgd", "diloco"):
        net = _model(seed=rank)  # different on purpose: the wrapper broadcasts rank 0's, as DDP does
        model = DDP(net, process_group=comm.region_group)
        if name == "asgd":
            opt: Any = AsyncGradientAccumulation(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model, accum=2, max_staleness=1, group=comm)
        else:
            opt = DiLoCo(torch.optim.AdamW(model.parameters(), lr=0.01), model, period=3, group=comm)
        for step in range(7):
            if comm.region == "c":
                time.sleep(0.01)
            opt.zero_grad()
            _loss(model, rank, step).backward()
            opt.step()
        opt.finish()
        out[name] = _vec(net)
    # Model averaging weighted by samples: rank r declares r + 1 samples per step.
    net = _model()
    opt = ModelAveraging(torch.optim.SGD(net.parameters(), lr=LR), net, period=100, group=comm)
    for step in range(3):
        opt.zero_grad()
        _loss(net, rank, step).backward()
        opt.step(samples=rank + 1)
    local = [torch.empty_like(_vec(net)) for _ in range(world)]
    dist.all_gather(local, _vec(net))
    opt.average()
    out["ma_weighted"] = _vec(net)
    out["ma_expected"] = sum(3 * (r + 1) * local[r] for r in range(world)) / sum(3 * (r + 1) for r in range(world))
    return out


def test_user_ddp_script_with_uneven_regions() -> None:
    ranks = _launch(_ddp_script, world=4, timeout_s=40)
    for name in ("asgd", "diloco", "ma_weighted"):
        for r in ranks[1:]:
            assert torch.equal(r[name], ranks[0][name]), name
    torch.testing.assert_close(ranks[0]["ma_weighted"], ranks[0]["ma_expected"], rtol=1e-5, atol=1e-6)
