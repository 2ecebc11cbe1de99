"""Checkpointing the public geo strategies: ``state_dict()`` / ``load_state_dict()`` across a real restart.

Two 2-rank gloo jobs (one region per rank): the first trains every strategy N steps without
interruption, and again only K steps, saving model and strategy state to files (then stops); the
second builds everything afresh in new processes, loads the files (``weights_only=True``) and trains
on to N. Pinned down: the restored run ends where the uninterrupted one does (momentum, Adam
moments, DiLoCo's outer Nesterov momentum and anchor, model averaging's counters and sample
weights, PowerSGD's error feedback, ASGD-GA's round and model of record); ASGD-GA checkpointed
mid-exchange (S=1, a slow region, updates in flight) neither loses nor double-applies an update,
against a sum computed by hand, also when a region had applied a round it is sent again; a state
that does not fit fails with one line (on every rank, for ASGD-GA).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import torch

from tests.geo.test_strategies import LINK, LR, _launch, _loss, _model, _vec

pytestmark = pytest.mark.slow

STEPS, CUT = 8, 5
#: ASGD-GA mid-exchange: fixed gradients of a 3-element parameter (rank, step) -> gradient, so
#: the final parameters are THETA0 minus every update, whatever the timing.
THETA0 = [0.5, -0.25, 1.0]
SLOW_S = 0.08  # rank 1's injected step time


def _grad(rank: int, step: int) -> list[float]:
    return [float((rank + 1) * (step + 1) % 5 - 2), float(step % 3) - 1.0, 0.5 * (rank - step % 2)]


def _build(case: str, model: Any, comm: Any) -> Any:
    from delibench.geo import AllReduceGradients, AsyncGradientAccumulation, Compression, DiLoCo, ModelAveraging

    if case == "allreduce":
        return AllReduceGradients(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model, group=comm)
    if case == "ma":
        return ModelAveraging(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model, period=3, group=comm)
    if case == "ma_powersgd":
        powersgd = Compression("powersgd", rank=1, start_iter=2)
        return ModelAveraging(torch.optim.SGD(model.parameters(), lr=LR), model, period=1, group=comm, compression=powersgd)
    if case == "diloco":
        return DiLoCo(torch.optim.AdamW(model.parameters(), lr=0.01), model, outer_lr=0.7, momentum=0.9, period=3, group=comm)
    if case == "asgd":
        return AsyncGradientAccumulation(torch.optim.SGD(model.parameters(), lr=LR, momentum=0.9), model, accum=2, max_staleness=0, group=comm)
    raise AssertionError(case)


CASES = ("allreduce", "ma", "ma_powersgd", "diloco", "asgd")


def _train(opt: Any, model: Any, rank: int, steps: range) -> None:
    from delibench.geo import ModelAveraging

    for step in steps:
        opt.zero_grad()
        _loss(model, rank, step).backward()
        if isinstance(opt, ModelAveraging):
            opt.step(samples=1 + rank * (step % 3))  # weights that change: the sample counts are state too
        else:
            opt.step()


def _stale_run(rank: int, comm: Any, steps: range, state: dict[str, Any] | None = None) -> tuple[Any, torch.nn.Parameter]:
    import torch.distributed as dist

    from delibench.geo import AsyncGradientAccumulation

    p = torch.nn.Parameter(torch.tensor(THETA0))
    opt = AsyncGradientAccumulation(torch.optim.SGD([p], lr=LR), [p], accum=2, max_staleness=1, group=comm)
    if state is not None:
        with torch.no_grad():
            p.copy_(state["param"])
        opt.load_state_dict(state["strategy"])
    dist.barrier()
    for step in steps:
        if rank == 1:
            time.sleep(SLOW_S)
        p.grad = torch.tensor(_grad(rank, step))
        opt.step()
    return opt, p


def _first(rank: int, world: int, ckpt: str) -> dict[str, Any]:
    """Uninterrupted runs, then runs stopped after CUT steps with their state saved."""
    from delibench.geo import GeoComm

    comm = GeoComm.per_rank()
    out: dict[str, Any] = {}
    for case in CASES:
        model = _model()
        opt = _build(case, model, comm)
        _train(opt, model, rank, range(STEPS))
        opt.finish()
        out[case] = _vec(model)
        model = _model()
        opt = _build(case, model, comm)
        _train(opt, model, rank, range(CUT))
        torch.save({"model": model.state_dict(), "strategy": opt.state_dict()}, Path(ckpt, f"{case}-r{rank}.pt"))
        opt.finish()  # the stopped run's threads end; what it does now is not in the checkpoint
    stale = GeoComm.from_regions(["a", "b"], LINK)
    opt, p = _stale_run(rank, stale, range(STEPS))
    opt.finish()
    out["stale"] = p.detach().clone()
    opt, p = _stale_run(rank, stale, range(CUT))
    state = opt.state_dict()
    torch.save({"param": p.detach().clone(), "strategy": state}, Path(ckpt, f"stale-r{rank}.pt"))
    out["stale_cut"] = {"applied": state["applied"], "pending": [(e["region"], e["round"]) for e in state["pending"]], "round": state["round"]}
    opt.finish()
    return out


def _error(fn: Any) -> str:
    from delibench.errors import UsageError

    try:
        fn()
    except UsageError as exc:
        return str(exc)
    return "no error"


def _second(rank: int, world: int, ckpt: str) -> dict[str, Any]:
    """Fresh processes: rebuild, load the saved state, train on to STEPS; then states that do not fit."""
    from delibench.geo import GeoComm, ModelAveraging

    comm = GeoComm.per_rank()
    out: dict[str, Any] = {}
    saved = {case: torch.load(Path(ckpt, f"{case}-r{rank}.pt"), weights_only=True) for case in (*CASES, "stale")}
    for case in CASES:
        model = _model(seed=99)  # not the saved parameters: loading must bring them
        opt = _build(case, model, comm)
        model.load_state_dict(saved[case]["model"])  # after construction, which broadcasts rank 0's
        opt.load_state_dict(saved[case]["strategy"])
        _train(opt, model, rank, range(CUT, STEPS))
        opt.finish()
        out[case] = _vec(model)
    stale = GeoComm.from_regions(["a", "b"], LINK)
    opt, p = _stale_run(rank, stale, range(CUT, STEPS), saved["stale"])
    opt.finish()
    out["stale"] = p.detach().clone()
    # The same cut, but region b had already applied region a's round 3 (the narrow race at a round
    # boundary): a's round 3 is b's model of record already, and a sends it again after the restore.
    doctored = saved["stale"]
    if rank == 1:
        doctored = {"param": doctored["param"].clone(), "strategy": dict(doctored["strategy"])}
        a3 = 0.5 * LR * (torch.tensor(_grad(0, 4), dtype=torch.float64) + torch.tensor(_grad(0, 5), dtype=torch.float64))
        doctored["strategy"]["model_of_record"] = doctored["strategy"]["model_of_record"] - a3
        doctored["param"] = doctored["param"] - a3.float()
        doctored["strategy"]["applied"] = {"a": 3}
    opt, p = _stale_run(rank, stale, range(CUT, STEPS), doctored)
    opt.finish()
    out["stale_resent"] = p.detach().clone()

    # States that do not fit: one line each, nothing loaded.
    ma_state = saved["ma"]["strategy"]
    model = _model()
    ma = _build("ma", model, comm)
    errors = {
        "not_a_dict": _error(lambda: ma.load_state_dict([1, 2])),
        "other_strategy": _error(lambda: _build("diloco", _model(), comm).load_state_dict(ma_state)),
        "newer_version": _error(lambda: ma.load_state_dict({**ma_state, "version": 99})),
        "missing_key": _error(lambda: ma.load_state_dict({k: v for k, v in ma_state.items() if k != "anchor"})),
        "bad_anchor": _error(lambda: ma.load_state_dict({**ma_state, "anchor": torch.zeros(3)})),
        "other_shapes": _error(lambda: ModelAveraging(torch.optim.SGD(torch.nn.Linear(6, 4).parameters(), lr=LR), torch.nn.Linear(6, 4), group=comm, sync_initial=False).load_state_dict(ma_state)),
        "compression": _error(lambda: _build("ma", _model(), comm).load_state_dict(saved["ma_powersgd"]["strategy"])),
        "diloco_outer": _error(lambda: _build("diloco", _model(), comm).load_state_dict({**saved["diloco"]["strategy"], "outer_params": []})),
    }
    assert ma.steps == 0 and ma.syncs == 0  # the failed loads changed nothing
    # ASGD-GA: a collective load; one rank's state from another step, or not fitting, fails both.
    asgd_state = saved["asgd"]["strategy"]
    mine = {**asgd_state, "round": asgd_state["round"] + 1} if rank == 1 else asgd_state
    asgd = _build("asgd", _model(), comm)
    errors["asgd_steps"] = _error(lambda: asgd.load_state_dict(mine))
    errors["asgd_other"] = _error(lambda: asgd.load_state_dict(ma_state if rank == 1 else asgd_state))
    errors["asgd_region"] = _error(lambda: asgd.load_state_dict(saved["asgd"]["strategy"] if rank == 0 else torch.load(Path(ckpt, "asgd-r0.pt"), weights_only=True)["strategy"]))
    asgd.finish()
    out["errors"] = errors
    return out


def test_restored_strategies_end_where_uninterrupted_ones_do(tmp_path: Path) -> None:
    whole = _launch(_first, ckpt=str(tmp_path))
    resumed = _launch(_second, ckpt=str(tmp_path))
    for rank in range(2):
        for case in CASES:
            torch.testing.assert_close(resumed[rank][case], whole[rank][case], rtol=0, atol=1e-6, msg=f"{case}, rank {rank}")
    for case in CASES:
        assert torch.equal(resumed[0][case], resumed[1][case]), case

    # ASGD-GA mid-exchange: at the cut (step 5, round 2), fast region a had region b's round 2 in
    # hand but not applied (recorded as pending); b had applied a's rounds 1-2.
    assert whole[0]["stale_cut"] == {"applied": {"b": 1}, "pending": [("b", 2)], "round": 2}
    assert whole[1]["stale_cut"]["applied"] == {"a": 2} and whole[1]["stale_cut"]["pending"] == []
    # Every update exactly once: THETA0 minus each region's SGD change times its share (1/2).
    total = sum(torch.tensor(_grad(r, s), dtype=torch.float64) for r in range(2) for s in range(STEPS))
    expected = (torch.tensor(THETA0, dtype=torch.float64) - 0.5 * LR * total).float()
    for rank in range(2):
        torch.testing.assert_close(whole[rank]["stale"], expected, rtol=0, atol=1e-6)
        for key in ("stale", "stale_resent"):
            torch.testing.assert_close(resumed[rank][key], expected, rtol=0, atol=1e-6, msg=f"{key}, rank {rank}")
    assert torch.equal(resumed[0]["stale"], resumed[1]["stale"])

    for rank in range(2):
        errors = resumed[rank]["errors"]
        for name, message in errors.items():
            assert "\n" not in message and message != "no error", (name, message)
        assert "expected the dict" in errors["not_a_dict"]
        assert "the state is ModelAveraging's, not DiLoCo's" in errors["other_strategy"]
        assert "version 99 is newer" in errors["newer_version"]
        assert "no 'anchor'" in errors["missing_key"]
        assert "'anchor' is not" in errors["bad_anchor"]
        assert "parameter tensors" in errors["other_shapes"]
        assert "compression 'powersgd'" in errors["compression"]
        assert "outer_params" in errors["diloco_outer"]
        assert "different steps (5 to 7)" in errors["asgd_steps"]
    assert "the state is ModelAveraging's, not AsyncGradientAccumulation's" in resumed[1]["errors"]["asgd_other"]
    assert "another rank's state does not fit" in resumed[0]["errors"]["asgd_other"]
    assert "region 'rank0''s, this rank is in 'rank1'" in resumed[1]["errors"]["asgd_region"]
