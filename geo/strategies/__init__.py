"""Geo sync strategies as optimizer wrappers you add to your own (DDP) training loop.

Each strategy wraps the optimizer you already have, the way PyTorch's ``PostLocalSGDOptimizer``
wraps one: ``opt = ModelAveraging(torch.optim.SGD(...), model, period=8, group=comm)``, then
``opt.zero_grad()`` / ``loss.backward()`` / ``opt.step()`` as before and ``opt.finish()`` after the
last step. ``group`` is a :class:`~delibench.geo.sync.GeoComm` (which rank is in which region;
built collectively on every rank); inside a region, wrap the model in DDP over
``comm.region_group`` as usual (LAN), and the strategy takes care of what crosses regions (WAN).
Every rank must start from the same parameters: by default the wrappers broadcast rank 0's at
construction, as DDP does.

* :class:`ModelAveraging` (MA, local SGD): every ``period`` steps the parameters of all ranks are
  averaged, each rank weighted by the samples it processed since the last average.
  Optimizer state (momentum, Adam moments) stays local by default, as in PyTorch's post-local SGD;
  ``optimizer_state="average"`` averages it too (same weights, more bytes), ``"reset"`` clears it.
* :class:`AsyncGradientAccumulation` (ASGD-GA, after Cloudless-Training): every region accumulates
  ``accum`` local steps (a *round*), sends its update to every other region and goes on without
  waiting; updates from other regions are applied at the next round boundary after they arrive.
  The staleness of an update is how many rounds the receiving region has moved on since the round
  the update was made in; a region waits only when it would otherwise apply an update more than
  ``max_staleness`` rounds stale. Optimizer state stays local: received updates change the
  parameters only.
* :class:`DiLoCo` (beyond the paper): an inner optimizer (AdamW in the paper) runs ``period`` local
  steps, then the pseudo-gradient ``params_before - params_after`` is averaged over all ranks and
  an outer Nesterov SGD step is taken from ``params_before``. The inner optimizer's state stays
  local; the outer momentum is identical on every rank (it sees the same averaged pseudo-gradient).
* :class:`AllReduceGradients`: the synchronous baseline (gradients averaged over all ranks every step).

**Checkpoints.** Every strategy has ``state_dict()`` / ``load_state_dict()`` in the shape of
``torch.optim.Optimizer``'s (the wrapped optimizer's state nested under ``optim``, the strategy's
own counters, anchors, outer optimizer and compression state beside it, a ``version``): save it
with the model's ``state_dict()`` on every rank (ranks of model averaging differ between averages),
and on restart build model, optimizer and strategy as before, then load both. A restored run
continues as the uninterrupted one would (exactly, for the synchronous strategies and for
ASGD-GA with ``max_staleness=0``); :class:`AsyncGradientAccumulation` says what its checkpoint
holds of the updates in flight.

Compression of what crosses regions (:class:`Compression`) reuses PyTorch's DDP communication hooks
(``fp16_compress_hook``, ``bf16_compress_hook``, ``powerSGD_hook`` with ``PowerSGDState``) on one
flat bucket per exchange; the asynchronous strategy, whose exchange is point-to-point rather than an
all-reduce, takes fp16/bf16 only.

**How ASGD-GA exchanges without waiting.** Each region's leader runs, per other region, one sender
thread and one receiver thread, each on a process group of its own (one gloo group per directed
pair of leaders), with blocking ``send``/``recv``: a message is a 4-number header (round, flags,
emulated arrival time) then the update. Why this: ``isend``/``irecv`` issued from the training
thread would leave receives that the training loop must post ahead and poll; ``torch.distributed.rpc``
would add a second runtime (its TensorPipe agent, with its own initialisation) beside the process
group; the c10d ``TCPStore`` would route every update through the one store host (a star through
one region, values held in its memory). Dedicated groups keep the background traffic out of the
training thread's collectives (each gloo group has its own TCP pairs), a receiver always has a
receive posted so a sender never waits for the peer's training loop, and a slow link only delays
delivery: the groups get a long timeout (``timeout_s``) so that a peer minutes behind is not an
error. Each update goes to each of the R-1 other regions: (R-1) x its size per region per round,
against 2(R-1)/R x for a ring all-reduce -- the same for two regions, 1.5x for three. Within a region the leader
broadcasts what it applied (LAN), so all the region's ranks stay identical. Each region keeps its
model of record in float64 (the parameters are its float32 copy): the final parameters are the
initial ones minus the sum of every region's updates, and float64 sums of these float32 updates are
exact in practice, so after :meth:`AsyncGradientAccumulation.finish` every rank holds the same
parameters without another exchange (``finish(average=True)`` adds one all-reduce to guarantee it).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from delibench.errors import RuntimeFailure, UsageError
from delibench.geo.sync import GeoComm

__all__ = [
    "AllReduceGradients",
    "AsyncGradientAccumulation",
    "Compression",
    "DiLoCo",
    "ModelAveraging",
]

COMPRESSIONS = ("none", "fp16", "bf16", "powersgd")
#: The version of the dicts the strategies' ``state_dict()`` returns (``load_state_dict`` refuses others).
STATE_VERSION = 1


def _param_list(params: Any) -> list[torch.nn.Parameter]:
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    out = [p for p in params if p.requires_grad] if not isinstance(params, list) else list(params)
    if not out:
        raise UsageError("a geo strategy needs at least one parameter")
    return out


def _flat(params: list[torch.nn.Parameter]) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in params])


def _write_(params: list[torch.nn.Parameter], flat: torch.Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.data.copy_(flat[offset : offset + n].view_as(p))
        offset += n


class _Bucket:
    """The part of ``dist.GradBucket`` PyTorch's communication hooks use, over one flat tensor."""

    def __init__(self, buffer: torch.Tensor, shapes: list[torch.Size]) -> None:
        self._buffer = buffer
        self._views = []
        offset = 0
        for shape in shapes:
            n = shape.numel()
            self._views.append(buffer[offset : offset + n].view(shape))
            offset += n
        if offset < buffer.numel():  # a tail that is not a parameter (optimizer state, a weight)
            self._views.append(buffer[offset:])

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def set_buffer(self, tensor: torch.Tensor) -> None:
        self._buffer.copy_(tensor)

    def gradients(self) -> list[torch.Tensor]:
        return self._views

    def parameters(self) -> list[torch.Tensor]:
        return self._views

    def index(self) -> int:
        return 0

    def is_last(self) -> bool:
        return True


class Compression:
    """What a synchronous cross-region exchange puts on the wire, through PyTorch's DDP communication hooks.

    Args:
        kind: ``none`` (float32), ``fp16`` / ``bf16`` (``default_hooks.fp16_compress_hook`` /
            ``bf16_compress_hook``: half the bytes) or ``powersgd`` (``powerSGD_hook`` with a
            ``PowerSGDState``: rank-``rank`` factors of every matrix, vectors sent as they are,
            error feedback, a plain all-reduce for the first ``start_iter`` exchanges).
        rank: PowerSGD's matrix approximation rank.
        start_iter: PowerSGD: exchanges done uncompressed first (PyTorch requires at least 2).
        min_compression_rate: PowerSGD: compress a matrix only when it shrinks by more than this.
    """

    def __init__(self, kind: str = "none", *, rank: int = 1, start_iter: int = 2, min_compression_rate: float = 2.0) -> None:
        if kind not in COMPRESSIONS:
            raise UsageError(f"unknown compression {kind!r}", hint=f"choose one of {', '.join(COMPRESSIONS)}")
        self.kind, self.rank, self.start_iter, self.min_compression_rate = kind, rank, start_iter, min_compression_rate
        self._powersgd: Any = None
        self._restored: dict[str, Any] | None = None  # a loaded PowerSGD state, applied when PowerSGD starts

    def state_dict(self) -> dict[str, Any]:
        """``kind`` and, for PowerSGD, its state: exchanges done, error feedback, warm-start factors, random state."""
        state = self._powersgd
        if state is None:
            return {"kind": self.kind, "powersgd": self._restored}
        _, keys, pos, has_gauss, gauss = state.rng.get_state()
        return {
            "kind": self.kind,
            "powersgd": {
                "iter": int(state.iter),
                "error": {int(k): v.detach().clone() for k, v in state.error_dict.items()},
                "p_memory": {int(k): v.detach().clone() for k, v in state.p_memory_dict.items()},
                "q_memory": {int(k): v.detach().clone() for k, v in state.q_memory_dict.items()},
                "rng": [torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(gauss)],
                "numel_before": int(state.total_numel_before_compression),
                "numel_after": int(state.total_numel_after_compression),
            },
        }

    def check_state(self, state: Any) -> str | None:
        """What is wrong with ``state`` (from :meth:`state_dict`) for this compression, or ``None``."""
        if not isinstance(state, dict) or "kind" not in state or "powersgd" not in state:
            return "corrupt state: 'compression' is not a Compression state_dict()"
        if state["kind"] != self.kind:
            return f"the state was saved with compression {state['kind']!r}, this strategy uses {self.kind!r}"
        saved = state["powersgd"]
        keys = ("iter", "error", "p_memory", "q_memory", "rng", "numel_before", "numel_after")
        if saved is not None and (self.kind != "powersgd" or not isinstance(saved, dict) or any(k not in saved for k in keys)):
            return "corrupt state: its PowerSGD state is incomplete"
        return None

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (checked with :meth:`check_state`)."""
        self._restored = state["powersgd"]
        if self._powersgd is not None and self._restored is not None:
            self._restore_powersgd()

    def _restore_powersgd(self) -> None:
        import numpy as np

        saved, state = self._restored, self._powersgd
        if saved is None or state is None:
            return
        state.iter = int(saved["iter"])
        state.error_dict = {int(k): v.clone() for k, v in saved["error"].items()}
        state.p_memory_dict = {int(k): v.clone() for k, v in saved["p_memory"].items()}
        state.q_memory_dict = {int(k): v.clone() for k, v in saved["q_memory"].items()}
        keys, pos, has_gauss, gauss = saved["rng"]
        state.rng.set_state(("MT19937", np.asarray(keys.numpy(), dtype=np.uint32), int(pos), int(has_gauss), float(gauss)))
        state.total_numel_before_compression = int(saved["numel_before"])
        state.total_numel_after_compression = int(saved["numel_after"])
        self._restored = None

    @staticmethod
    def of(value: Compression | str | None) -> Compression:
        """``None``, a name or a :class:`Compression` -> a :class:`Compression`."""
        if isinstance(value, Compression):
            return value
        return Compression(value or "none")

    @property
    def wire_dtype(self) -> torch.dtype | None:
        """The element type cast to on the wire (``None``: as is)."""
        return {"fp16": torch.float16, "bf16": torch.bfloat16}.get(self.kind)

    def reduce_(self, flat: torch.Tensor, group: Any, shapes: list[torch.Size]) -> list[tuple[int, int]]:
        """Sum ``flat`` in place over ``group``; returns each all-reduce put on the wire as ``(elements, bytes each)``."""
        from torch.distributed.algorithms.ddp_comm_hooks import default_hooks, powerSGD_hook

        if self.kind == "none":
            dist.all_reduce(flat, group=group)
            return [(flat.numel(), flat.element_size())]
        size = group.size()
        bucket = _Bucket(flat, shapes)
        if self.kind in ("fp16", "bf16"):
            hook = default_hooks.fp16_compress_hook if self.kind == "fp16" else default_hooks.bf16_compress_hook
            flat.copy_(hook(group, bucket).wait()).mul_(size)  # the hooks return the mean
            return [(flat.numel(), 2)]
        if self._powersgd is None:
            self._powersgd = powerSGD_hook.PowerSGDState(
                process_group=group,
                matrix_approximation_rank=self.rank,
                start_powerSGD_iter=self.start_iter,
                min_compression_rate=self.min_compression_rate,
            )
            if self._restored is not None:
                self._restore_powersgd()
        state = self._powersgd
        vanilla = state.iter < state.start_powerSGD_iter
        flat.copy_(powerSGD_hook.powerSGD_hook(state, bucket).wait()).mul_(size)
        if vanilla:
            return [(flat.numel(), flat.element_size())]
        uncompressed = 0
        for view in bucket.gradients():
            matrix = view.view(view.shape[0], -1) if view.dim() > 0 else view.view(1, 1)
            rank = min(matrix.shape[0], matrix.shape[1], self.rank)
            if view.dim() <= 1 or not powerSGD_hook._should_compress(matrix.shape[0], matrix.shape[1], rank, self.min_compression_rate)[0]:
                uncompressed += view.numel()
        es = flat.element_size()
        return [(uncompressed, es), (state.p_memory_dict[0].numel(), es), (state.q_memory_dict[0].numel(), es)]


def _exchange_sum_(comm: GeoComm, flat: torch.Tensor, compression: Compression, shapes: list[torch.Size]) -> None:
    """Sum ``flat`` over every rank through ``comm`` (hierarchical, metered), compressed across regions."""
    if compression.kind == "none":
        comm.all_sum_(flat)
        return

    def reducer(tensor: torch.Tensor, group: Any) -> list[tuple[int, int]]:
        return compression.reduce_(tensor, group, shapes)

    comm.all_sum_(flat, reducer=reducer)


class _GeoOptimizer(torch.optim.Optimizer):
    """Shared plumbing: wraps ``optimizer`` (its ``param_groups`` and ``state`` are the wrapper's, as in ``PostLocalSGDOptimizer``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, group: GeoComm | None, *, sync_initial: bool, average_region_gradients: bool) -> None:
        # NOTE: Optimizer.__init__ is not called on purpose: the wrapper owns no parameters of its own.
        self.optim = optimizer
        self.param_groups = optimizer.param_groups
        self.defaults = optimizer.defaults
        self.params = _param_list(params)
        self.comm = group if group is not None else GeoComm.per_rank()
        self.average_region_gradients = average_region_gradients
        self._shapes = [p.shape for p in self.params]
        self.numel = sum(p.numel() for p in self.params)
        if sync_initial:
            self._broadcast_initial()

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optim.state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optim!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise UsageError(f"{type(self).__name__}: add parameter groups to the inner optimizer before wrapping it")

    #: The strategy's own keys in its state (besides the common ones and the inner optimizer's).
    _STATE_KEYS: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """This rank's state, to ``torch.save`` beside the model's ``state_dict()`` at a checkpoint.

        A plain dict (tensors, numbers, strings, lists; ``torch.load(..., weights_only=True)`` reads
        it): ``version`` (:data:`STATE_VERSION`), ``strategy`` (the class name), ``shapes`` (of the
        parameters it steps), ``optim`` (the wrapped optimizer's ``state_dict()``, momentum and Adam
        moments included) and the strategy's own fields (counters, anchors, outer optimizer,
        compression state). The parameters themselves are the model's: save ``model.state_dict()``.
        """
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "strategy": type(self).__name__,
            "shapes": [list(shape) for shape in self._shapes],
            "optim": self.optim.state_dict(),
        }
        state.update(self._own_state())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (this rank's own; the same strategy on the same model).

        Build the model, the optimizer and the strategy as for a fresh run, then load the model's
        parameters and this state: construction broadcasts rank 0's parameters (``sync_initial``),
        so load the model after it. Nothing is changed unless the whole state is valid.

        Raises:
            UsageError: Not a strategy state, another strategy's or another version's, or one for
                parameters of other shapes (the message names which).
        """
        self._check_state(state_dict)
        self._load_state(state_dict)

    def _own_state(self) -> dict[str, Any]:
        return {}

    def _check_own(self, state: dict[str, Any]) -> None:
        """Raise :func:`_bad_state` when the strategy's own fields do not fit (mutates nothing)."""

    def _load_own(self, state: dict[str, Any]) -> None:
        """Restore the strategy's own fields (``state`` already checked)."""

    def _check_tensor(self, value: Any, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            raise self._bad(f"corrupt state: {key!r} is not a {dtype} tensor of shape {tuple(shape)}")

    def _bad(self, problem: str) -> UsageError:
        return UsageError(f"{type(self).__name__}.load_state_dict: {problem}", hint="load the state_dict() this strategy saved, built on the same model")

    def _check_state(self, state: Any) -> None:
        name = type(self).__name__
        if not isinstance(state, dict):
            raise self._bad(f"expected the dict state_dict() returns, got {type(state).__name__}")
        if "version" not in state or "strategy" not in state:
            raise self._bad("not a geo strategy state (no 'version' or 'strategy' key)")
        version = state["version"]
        if version != STATE_VERSION:
            newer = isinstance(version, int) and version > STATE_VERSION
            raise self._bad(f"state version {version!r} {'is newer than' if newer else 'is not'} the version this delibench reads ({STATE_VERSION})")
        if state["strategy"] != name:
            raise self._bad(f"the state is {state['strategy']}'s, not {name}'s")
        missing = [key for key in ("shapes", "optim", *self._STATE_KEYS) if key not in state]
        if missing:
            raise self._bad(f"corrupt state: no {', '.join(repr(k) for k in missing)}")
        shapes = [list(shape) for shape in self._shapes]
        if state["shapes"] != shapes:
            saved = state["shapes"]
            count = sum(int(torch.Size(s).numel()) for s in saved) if isinstance(saved, list) and all(isinstance(s, list) for s in saved) else "?"
            raise self._bad(f"the state is for {len(saved) if isinstance(saved, list) else '?'} parameter tensors of {count} elements, this strategy steps {len(shapes)} of {self.numel}")
        optim = state["optim"]
        groups = optim.get("param_groups") if isinstance(optim, dict) else None
        if not isinstance(groups, list) or "state" not in optim or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
            raise self._bad("corrupt state: 'optim' is not an optimizer state_dict()")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.optim.param_groups]:
            raise self._bad(f"the inner optimizer's parameter groups differ ({[len(g['params']) for g in groups]} parameters saved, {[len(g['params']) for g in self.optim.param_groups]} here)")
        self._check_own(state)

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            self.optim.load_state_dict(state["optim"])
        except (ValueError, KeyError, TypeError) as exc:  # checked above; what torch still refuses
            raise self._bad(f"the inner optimizer refused its state: {exc}".replace("\n", " ")) from exc
        self._load_own(state)

    @torch.no_grad()
    def _broadcast_initial(self) -> None:
        """Give every rank rank 0's parameters (what DDP does at construction); metered across regions."""
        comm = self.comm
        flat = _flat(self.params)
        if comm.cross_region and comm.is_leader:
            t0 = time.perf_counter()
            leaders = comm.topology.leaders
            dist.broadcast(flat, src=leaders[0], group=comm.leaders_group)
            if comm.region_index == 0:
                for name in comm.topology.regions[1:]:
                    comm.meter_link_(name, flat.numel() * flat.element_size())
            comm.ledger.sync_s += time.perf_counter() - t0
        comm.region_broadcast_(flat)
        _write_(self.params, flat)

    @torch.no_grad()
    def _inner_step(self, closure: Callable[[], Any] | None) -> Any:
        if self.average_region_gradients and len(self.comm.region_ranks) > 1:
            grads = torch.cat([p.grad.reshape(-1) for p in self.params])
            self.comm.region_sum_(grads)
            grads.div_(len(self.comm.region_ranks))
            offset = 0
            for p in self.params:
                p.grad.copy_(grads[offset : offset + p.numel()].view_as(p))
                offset += p.numel()
        if closure is None:
            return self.optim.step()
        with torch.enable_grad():
            return self.optim.step(closure)

    def finish(self) -> None:
        """Synchronise whatever is pending so that every rank holds the same parameters."""


class AllReduceGradients(_GeoOptimizer):
    """Synchronous data parallelism through the metered WAN: gradients averaged over all ranks before every step.

    What DDP over all ranks computes (the baseline the other strategies are measured against).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, *, group: GeoComm | None = None, sync_initial: bool = True) -> None:
        super().__init__(optimizer, params, group, sync_initial=sync_initial, average_region_gradients=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is not None:
            with torch.enable_grad():
                closure()
        grads = torch.cat([p.grad.reshape(-1) for p in self.params])
        self.comm.all_sum_(grads)
        grads.div_(self.comm.topology.world_size)
        offset = 0
        for p in self.params:
            p.grad.copy_(grads[offset : offset + p.numel()].view_as(p))
            offset += p.numel()
        return self.optim.step()


class _PeriodicAverage(_GeoOptimizer):
    """A weighted average over all ranks of what each did since the last sync, every ``period`` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, group: GeoComm | None, *, period: int, compression: Any, weighting: str, sync_initial: bool, average_region_gradients: bool) -> None:
        if period < 1:
            raise UsageError(f"period must be >= 1, got {period}")
        if weighting not in ("samples", "uniform"):
            raise UsageError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
        super().__init__(optimizer, params, group, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.period, self.weighting = period, weighting
        self.compression = Compression.of(compression)
        self.steps = 0
        self.syncs = 0
        self._samples = 0.0

    _STATE_KEYS = ("steps", "syncs", "samples", "compression")

    def _own_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "syncs": self.syncs, "samples": self._samples, "compression": self.compression.state_dict()}

    def _check_own(self, state: dict[str, Any]) -> None:
        for key in ("steps", "syncs"):
            if not isinstance(state[key], int) or state[key] < 0:
                raise self._bad(f"corrupt state: {key!r} is {state[key]!r}")
        if not isinstance(state["samples"], (int, float)):
            raise self._bad(f"corrupt state: 'samples' is {state['samples']!r}")
        problem = self.compression.check_state(state["compression"])
        if problem:
            raise self._bad(problem)

    def _load_own(self, state: dict[str, Any]) -> None:
        self.steps, self.syncs, self._samples = int(state["steps"]), int(state["syncs"]), float(state["samples"])
        self.compression.load_state_dict(state["compression"])

    def _count(self, samples: float | None) -> bool:
        self.steps += 1
        self._samples += 1.0 if samples is None else float(samples)
        return self.steps % self.period == 0

    def _weight(self) -> float:
        """This rank's share of the samples processed by all ranks since the last sync (collective when weighting by samples)."""
        if self.weighting == "uniform":
            return 1.0 / self.comm.topology.world_size
        total = torch.tensor([self._samples], dtype=torch.float64)
        self.comm.all_sum_(total)
        return self._samples / float(total)

    def _average_(self, payload: torch.Tensor) -> torch.Tensor:
        """Weighted sum over all ranks of ``payload`` (each rank's own value times its weight), in place."""
        payload.mul_(self._weight())
        _exchange_sum_(self.comm, payload, self.compression, self._shapes)
        self._samples = 0.0
        self.syncs += 1
        return payload


class ModelAveraging(_PeriodicAverage):
    """Local SGD with model averaging every ``period`` steps (MA), weighted by samples processed.

    Use it like PyTorch's ``PostLocalSGDOptimizer`` + ``PeriodicModelAverager``::

        opt = ModelAveraging(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model, period=8, group=comm)
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(samples=len(x))
        opt.finish()

    What is averaged is each rank's change since the last average (so compression only rounds the
    change). With ``period=1``, plain SGD and equal samples this is exactly what DDP computes.

    Args:
        optimizer: The inner (local) optimizer.
        params: The model or its parameters (the ones ``optimizer`` steps).
        period: Average after every ``period`` steps (H).
        group: The :class:`GeoComm`; default: every rank a region of its own.
        compression: ``None``/``"fp16"``/``"bf16"``/``"powersgd"`` or a :class:`Compression`.
        weighting: ``samples`` (each rank weighted by the samples its ``step(samples=...)`` calls
            declared since the last average, 1 per step by default; one tiny extra all-reduce per
            average) or ``uniform`` (every rank alike, no extra exchange: the same when all batches
            are equal).
        optimizer_state: At every average: ``local`` (keep each rank's momentum/Adam state, as
            PyTorch's post-local SGD does), ``average`` (average its floating-point tensors too,
            with the same weights) or ``reset`` (clear it).
        sync_initial: Broadcast rank 0's parameters at construction.
        average_region_gradients: Average gradients over the region's ranks before each local
            step (for a model that is not wrapped in DDP over ``group.region_group``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Any,
        *,
        period: int = 8,
        group: GeoComm | None = None,
        compression: Compression | str | None = None,
        weighting: str = "samples",
        optimizer_state: str = "local",
        sync_initial: bool = True,
        average_region_gradients: bool = False,
    ) -> None:
        if optimizer_state not in ("local", "average", "reset"):
            raise UsageError(f"optimizer_state must be local, average or reset, got {optimizer_state!r}")
        super().__init__(optimizer, params, group, period=period, compression=compression, weighting=weighting, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.optimizer_state = optimizer_state
        self._anchor = _flat(self.params).clone()

    _STATE_KEYS = (*_PeriodicAverage._STATE_KEYS, "anchor")

    def _own_state(self) -> dict[str, Any]:
        return {**super()._own_state(), "anchor": self._anchor.clone()}

    def _check_own(self, state: dict[str, Any]) -> None:
        super()._check_own(state)
        self._check_tensor(state["anchor"], "anchor", (self.numel,), self._anchor.dtype)

    def _load_own(self, state: dict[str, Any]) -> None:
        super()._load_own(state)
        self._anchor = state["anchor"].clone()

    def step(self, closure: Callable[[], Any] | None = None, *, samples: float | None = None) -> Any:  # type: ignore[override]
        loss = self._inner_step(closure)
        if self._count(samples):
            self.average()
        return loss

    def _state_tensors(self) -> list[torch.Tensor]:
        out = []
        for p in self.params:
            for key, value in sorted(self.optim.state.get(p, {}).items()):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() == p.numel() and key != "step":
                    out.append(value)
        return out

    @torch.no_grad()
    def average(self) -> None:
        """Average now (collective: every rank must call it at the same point)."""
        state = self._state_tensors() if self.optimizer_state == "average" else []
        delta = _flat(self.params) - self._anchor
        payload = torch.cat([delta] + [s.reshape(-1).to(delta.dtype) for s in state]) if state else delta
        self._average_(payload)
        new = self._anchor + payload[: self.numel]
        _write_(self.params, new)
        self._anchor = new
        offset = self.numel
        for s in state:
            s.copy_(payload[offset : offset + s.numel()].view_as(s))
            offset += s.numel()
        if self.optimizer_state == "reset":
            self.optim.state.clear()

    def finish(self) -> None:
        """Average once more unless the last step just did."""
        if self.steps % self.period:
            self.average()


class DiLoCo(_PeriodicAverage):
    """DiLoCo: ``period`` inner steps, then an outer Nesterov SGD step on the averaged pseudo-gradient.

    ``opt = DiLoCo(torch.optim.AdamW(model.parameters(), lr=4e-4), model, outer_lr=0.7, momentum=0.9, period=500, group=comm)``;
    ``opt.step()`` after every backward. Every ``period`` steps: ``pseudo = params_before - params_after``
    averaged over all ranks (weighted by samples), then ``outer_optimizer`` (``torch.optim.SGD`` with
    Nesterov momentum) steps the outer parameters ``params_before`` with it and every rank continues
    from the result. The inner optimizer's state stays local across outer steps (as in DiLoCo).
    With ``outer_lr=1`` and ``momentum=0`` this is model averaging.

    Args: as :class:`ModelAveraging`, plus ``outer_lr``, ``momentum`` and ``nesterov`` of the outer SGD.
    """

    def __init__(
        self,
        inner_optimizer: torch.optim.Optimizer,
        params: Any,
        *,
        outer_lr: float = 0.7,
        momentum: float = 0.9,
        nesterov: bool = True,
        period: int = 500,
        group: GeoComm | None = None,
        compression: Compression | str | None = None,
        weighting: str = "samples",
        sync_initial: bool = True,
        average_region_gradients: bool = False,
    ) -> None:
        super().__init__(inner_optimizer, params, group, period=period, compression=compression, weighting=weighting, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.outer_params = [p.detach().clone() for p in self.params]
        self.outer_optimizer = torch.optim.SGD(self.outer_params, lr=outer_lr, momentum=momentum, nesterov=nesterov and momentum > 0)

    def step(self, closure: Callable[[], Any] | None = None, *, samples: float | None = None) -> Any:  # type: ignore[override]
        loss = self._inner_step(closure)
        if self._count(samples):
            self.outer_step()
        return loss

    @torch.no_grad()
    def outer_step(self) -> None:
        """Average the pseudo-gradients and take the outer step now (collective)."""
        pseudo = _flat(self.outer_params) - _flat(self.params)
        self._average_(pseudo)
        offset = 0
        for op in self.outer_params:
            op.grad = pseudo[offset : offset + op.numel()].view_as(op).clone()
            offset += op.numel()
        self.outer_optimizer.step()
        for p, op in zip(self.params, self.outer_params, strict=True):
            p.data.copy_(op)

    _STATE_KEYS = (*_PeriodicAverage._STATE_KEYS, "outer", "outer_params")

    def _own_state(self) -> dict[str, Any]:
        return {**super()._own_state(), "outer": self.outer_optimizer.state_dict(), "outer_params": [p.detach().clone() for p in self.outer_params]}

    def _check_own(self, state: dict[str, Any]) -> None:
        super()._check_own(state)
        outer, saved = state["outer"], state["outer_params"]
        groups = outer.get("param_groups") if isinstance(outer, dict) else None
        if not isinstance(groups, list) or "state" not in outer or [len(g.get("params", ())) for g in groups] != [len(self.outer_params)]:
            raise self._bad("corrupt state: 'outer' is not the outer SGD's state_dict()")
        if not isinstance(saved, list) or len(saved) != len(self.outer_params):
            raise self._bad(f"corrupt state: 'outer_params' is not a list of {len(self.outer_params)} tensors")
        for i, (op, value) in enumerate(zip(self.outer_params, saved, strict=True)):
            self._check_tensor(value, f"outer_params[{i}]", tuple(op.shape), op.dtype)

    def _load_own(self, state: dict[str, Any]) -> None:
        super()._load_own(state)
        self.outer_optimizer.load_state_dict(state["outer"])
        for op, saved in zip(self.outer_params, state["outer_params"], strict=True):
            op.data.copy_(saved)

    def finish(self) -> None:
        """Take a last outer step unless the last step just did."""
        if self.steps % self.period:
            self.outer_step()


_HEADER = 4  # float64: round, flags, arrival time (time.time()), reserved
_DONE = 1.0


class _PeerLinks:
    """A region leader's point-to-point exchange with every other region's leader (background threads).

    Every rank constructs it (process groups are created collectively); only leaders start threads.
    """

    def __init__(self, comm: GeoComm, numel: int, wire_dtype: torch.dtype, timeout_s: float) -> None:
        self.comm, self.numel, self.wire_dtype, self.timeout_s = comm, numel, wire_dtype, timeout_s
        topo = comm.topology
        leaders = topo.leaders
        me = comm.region_index
        self.peers = [i for i in range(len(topo.regions)) if i != me]
        self._send_groups: dict[int, Any] = {}
        self._recv_groups: dict[int, Any] = {}
        for i in range(len(topo.regions)):
            for j in range(len(topo.regions)):
                if i != j:
                    g = dist.new_group([leaders[i], leaders[j]], timeout=timedelta(seconds=timeout_s))
                    if i == me:
                        self._send_groups[j] = g
                    if j == me:
                        self._recv_groups[i] = g
        self._cond = threading.Condition()
        self._inbox: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in self.peers}
        self._taken = {i: 0 for i in self.peers}
        self._skip = {i: 0 for i in self.peers}  # rounds <= this are dropped on arrival (see restore)
        self._done: dict[int, int | None] = {i: None for i in self.peers}
        self._error: BaseException | None = None
        self._queues: dict[int, queue.Queue[tuple[torch.Tensor, torch.Tensor | None]]] = {i: queue.Queue() for i in self.peers}
        self._busy_until = {i: 0.0 for i in self.peers}
        self._threads: list[threading.Thread] = []
        if comm.is_leader:
            for i in self.peers:
                for target, kind in ((self._sender, "send"), (self._receiver, "recv")):
                    t = threading.Thread(target=target, args=(i,), name=f"geo-{kind}-{topo.regions[i]}", daemon=True)
                    t.start()
                    self._threads.append(t)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def _sender(self, peer: int) -> None:
        dst, group = self.comm.topology.leaders[peer], self._send_groups[peer]
        try:
            while True:
                header, payload = self._queues[peer].get()
                dist.send(header, dst=dst, group=group, tag=1)
                if payload is None:
                    return
                dist.send(payload, dst=dst, group=group, tag=2)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._fail(exc)

    def _receiver(self, peer: int) -> None:
        src, group = self.comm.topology.leaders[peer], self._recv_groups[peer]
        try:
            while True:
                header = torch.empty(_HEADER, dtype=torch.float64)
                dist.recv(header, src=src, group=group, tag=1)
                round_, flags, arrive_at, _ = header.tolist()
                if flags == _DONE:
                    with self._cond:
                        self._done[peer] = int(round_)
                        self._cond.notify_all()
                    return
                payload = torch.empty(self.numel, dtype=self.wire_dtype)
                dist.recv(payload, src=src, group=group, tag=2)
                delay = arrive_at - time.time()
                if delay > 0:  # the emulated WAN: not before departure + rtt/2 + bytes/bandwidth
                    time.sleep(delay)
                with self._cond:
                    if int(round_) > self._skip[peer]:  # else: re-sent after a restore, already applied
                        self._inbox[peer].append((int(round_), payload))
                        self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._fail(exc)

    def send(self, round_: int, update: torch.Tensor) -> None:
        """Queue ``update`` (made in round ``round_``) to every other region; returns at once."""
        comm = self.comm
        nbytes = update.numel() * update.element_size() + _HEADER * 8
        for peer in self.peers:
            name = comm.topology.regions[peer]
            arrive_at = 0.0
            if comm.config is not None:
                link = comm.config.link(comm.region, name)
                depart = max(time.time(), self._busy_until[peer])
                self._busy_until[peer] = depart + nbytes / link.bandwidth_bytes_per_s
                arrive_at = self._busy_until[peer] + link.rtt_s / 2
            header = torch.tensor([float(round_), 0.0, arrive_at, 0.0], dtype=torch.float64)
            self._queues[peer].put((header, update))
            comm.meter_link_(name, nbytes)
        comm.ledger.cross_region_collectives += 1

    def _ready(self, need: int | None) -> bool:
        for peer in self.peers:
            have = self._taken[peer] + len(self._inbox[peer])
            done = self._done[peer]
            if need is None:  # drain: everything the peer will ever send
                if done is None or have < done:
                    return False
            elif have < (need if done is None else min(need, done)):
                return False
        return True

    def take(self, need: int | None, upto: int | None) -> tuple[list[tuple[int, int, torch.Tensor]], float]:
        """The updates that have arrived from rounds up to ``upto``, waiting first until each peer's rounds up to ``need`` are in.

        ``need=None``: wait for everything every peer sends before it closes; ``upto=None``: no
        limit. Returns ``[(peer, round, update)]`` and the seconds waited.
        """
        t0 = time.perf_counter()
        with self._cond:
            self._wait_locked(need)
            out = []
            for peer in self.peers:
                inbox = self._inbox[peer]  # in round order: one FIFO link per peer
                n = len(inbox) if upto is None else sum(1 for round_, _ in inbox if round_ <= upto)
                out.extend((peer, round_, payload) for round_, payload in inbox[:n])
                self._taken[peer] += n
                self._inbox[peer] = inbox[n:]
        return out, time.perf_counter() - t0

    def _wait_locked(self, need: int | None) -> None:
        """Wait (holding ``_cond``) until every peer's rounds up to ``need`` are in (see :meth:`take`)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._error is not None:
                raise RuntimeFailure(f"geo update exchange failed: {self._error}") from self._error
            if self._ready(need):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeFailure(f"no update from another region within {self.timeout_s:.0f} s", hint="a region stopped or its link is down")
            self._cond.wait(timeout=min(left, 1.0))

    def snapshot(self, upto: int) -> tuple[dict[int, int], dict[int, list[tuple[int, torch.Tensor]]], float]:
        """Wait until every peer's rounds up to ``upto`` are in; then, without taking anything, return
        per peer the rounds taken so far, the arrived rounds ``<= upto`` not taken yet, and the seconds waited."""
        t0 = time.perf_counter()
        with self._cond:
            self._wait_locked(upto)
            taken = dict(self._taken)
            pending = {peer: [(round_, payload.clone()) for round_, payload in self._inbox[peer] if round_ <= upto] for peer in self.peers}
        return taken, pending, time.perf_counter() - t0

    def restore(self, taken: dict[int, int], pending: dict[int, list[tuple[int, torch.Tensor]]], own_round: int) -> None:
        """Resume from a :meth:`snapshot` taken at round ``own_round`` (every peer resumes at that round too).

        A peer sends its rounds after ``own_round`` again: the ones already taken before the snapshot
        are dropped on arrival (also any that arrived before this call), so none is applied twice.
        """
        with self._cond:
            for peer in self.peers:
                self._taken[peer] = taken[peer]
                self._skip[peer] = max(taken[peer], own_round)
                early = [(round_, payload) for round_, payload in self._inbox[peer] if round_ > self._skip[peer]]
                self._inbox[peer] = list(pending[peer]) + early
            self._cond.notify_all()

    def close(self, final_round: int) -> None:
        """Tell every peer that no update follows round ``final_round``."""
        for peer in self.peers:
            self._queues[peer].put((torch.tensor([float(final_round), _DONE, 0.0, 0.0], dtype=torch.float64), None))

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=self.timeout_s)


class AsyncGradientAccumulation(_GeoOptimizer):
    """Asynchronous SGD with gradient accumulation across regions (ASGD-GA, Cloudless-Training), staleness-bounded.

    Each region trains at its own pace. After every ``accum`` local steps (a round) the region's
    update -- what its optimizer changed in the round, times its share of the workers -- goes to every
    other region in the background, the region's own change is replaced by that weighted update, and
    every update that has arrived from other regions is applied. A region waits only when applying
    would make an update more than ``max_staleness`` rounds stale: at the end of its round j it needs
    every other region's rounds up to ``j - max_staleness`` (``0``: lockstep, and with ``accum=1``
    synchronous SGD; ``None``: never waits). The bound is symmetric: a region applies updates from
    rounds ``j - S`` to ``j + S`` only (another region can have sent round ``j + S + 1`` already; that
    one waits for the next boundary), so no update is applied more than S rounds from the round the
    region is in. ``staleness`` lists, per applied update, how many rounds behind it was (0 for
    one from a region ahead), on region leaders.

    **Checkpoints.** ``state_dict()`` is collective: every rank calls it at the same step ``k`` (as a
    loop that checkpoints every N steps does). It describes the cut at this region's last round
    boundary, round ``r = k // accum``: the model of record (float64), the optimizer, the
    ``k - r * accum`` local steps since (their change is in the model's parameters, saved with the
    model), and per other region how many of its rounds have been applied and which of its rounds
    ``<= r`` have arrived but are not applied yet. Before it returns, the leader waits until every
    other region's rounds ``<= r`` have arrived: updates in flight are *recorded*, not drained
    (applied). Every update made before the cut is so in the checkpoint of each region exactly
    once, applied or pending; an update made after it (round ``> r``, made after its region's own
    ``state_dict()`` at step ``k``) is in none, and after a restart its region, resumed at step
    ``k``, makes it again and sends it. A receiving region drops a re-sent round it had already
    applied (possible only in a narrow race at the boundary; then it keeps the copy it applied,
    the same update when training is deterministic). So a restore neither loses an update nor
    applies one twice. Why record rather than drain: applying the pending updates inside
    ``state_dict()`` would change what the run applies at every checkpoint, so a run that
    checkpoints would train differently from one that does not; recording only adds a wait (a
    region ahead waits once per checkpoint for the others to finish round ``r``, as ``S=0``
    would) and with ``max_staleness=0`` a restored run equals an uninterrupted one.
    ``load_state_dict()`` is collective too: every rank loads its region's state from the same
    step (any rank of the region's; they are equal), and a mismatch fails every rank at once.

    Args:
        optimizer: The inner (local) optimizer; its state stays local.
        params: The model or its parameters.
        accum: Local steps per round (K).
        max_staleness: The bound S (rounds), or ``None`` for none.
        group: The :class:`GeoComm`; default: every rank a region of its own.
        compression: ``None``, ``"fp16"`` or ``"bf16"`` (the update is cast on the wire; the sender
            applies the same rounded update).
        sync_initial: Broadcast rank 0's parameters at construction.
        timeout_s: Longest wait for another region (and the p2p groups' timeout).
        average_region_gradients: As in :class:`ModelAveraging`.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Any,
        *,
        accum: int = 4,
        max_staleness: int | None = 1,
        group: GeoComm | None = None,
        compression: Compression | str | None = None,
        sync_initial: bool = True,
        timeout_s: float = 1800.0,
        average_region_gradients: bool = False,
    ) -> None:
        if accum < 1:
            raise UsageError(f"accum must be >= 1, got {accum}")
        if max_staleness is not None and max_staleness < 0:
            raise UsageError(f"max_staleness must be >= 0 or None, got {max_staleness}")
        comp = Compression.of(compression)
        if comp.kind == "powersgd":
            raise UsageError("AsyncGradientAccumulation exchanges point to point: PowerSGD needs an all-reduce", hint="use fp16 or bf16")
        super().__init__(optimizer, params, group, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.accum, self.max_staleness, self.compression = accum, max_staleness, comp
        self.weight = self.comm.region_share
        start = _flat(self.params)
        self._wire = comp.wire_dtype or start.dtype
        self._start32 = start.clone()
        self._start64 = start.to(torch.float64)
        self.round = 0
        self.local_steps = 0
        self.staleness: list[int] = []
        self.waited_s = 0.0
        self._links = _PeerLinks(self.comm, self.numel, self._wire, timeout_s) if self.comm.cross_region else None
        self._finished = False

    _STATE_KEYS = ("accum", "round", "local_steps", "model_of_record", "regions", "region", "applied", "pending", "staleness", "waited_s", "compression")

    @torch.no_grad()
    def state_dict(self) -> dict[str, Any]:
        """This region's state at the cut described under "Checkpoints" (collective: every rank, at the same step).

        Waits until every other region's rounds up to this region's ``round`` have arrived; every
        rank of a region returns the same state.
        """
        return super().state_dict()

    def _own_state(self) -> dict[str, Any]:
        comm, regions = self.comm, self.comm.topology.regions
        applied: dict[str, int] = {}
        pending: list[dict[str, Any]] = []
        if self._links is not None:
            peers = self._links.peers
            header = torch.zeros(2 * len(peers), dtype=torch.float64)
            stack = torch.empty(0, self.numel, dtype=torch.float32)
            if comm.is_leader:
                taken, arrived, waited = self._links.snapshot(self.round)
                self.waited_s += waited
                comm.ledger.sync_s += waited
                for i, peer in enumerate(peers):
                    header[i], header[len(peers) + i] = taken[peer], len(arrived[peer])
                updates = [payload for peer in peers for _, payload in arrived[peer]]
                if updates:
                    stack = torch.stack(updates).to(torch.float32)  # exact for fp16/bf16; gloo broadcasts float32
            comm.region_broadcast_(header)  # every rank of the region holds the region's state
            counts = [int(n) for n in header[len(peers) :].tolist()]
            if sum(counts) and not comm.is_leader:
                stack = torch.empty(sum(counts), self.numel, dtype=torch.float32)
            if sum(counts):
                comm.region_broadcast_(stack)
            row = 0
            for i, peer in enumerate(peers):
                applied[regions[peer]] = int(header[i])
                for j in range(counts[i]):
                    pending.append({"region": regions[peer], "round": applied[regions[peer]] + 1 + j, "update": stack[row].to(self._wire).clone()})
                    row += 1
        return {
            "accum": self.accum,
            "round": self.round,
            "local_steps": self.local_steps,
            "model_of_record": self._start64.clone(),
            "regions": list(regions),
            "region": comm.region,
            "applied": applied,
            "pending": pending,
            "staleness": torch.tensor(self.staleness, dtype=torch.int64),
            "waited_s": float(self.waited_s),
            "compression": self.compression.state_dict(),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume this region from its :meth:`state_dict` (collective: every rank, before its first step).

        Every rank must load a state saved at the same step (the same checkpoint); if one rank's
        state does not fit, every rank raises instead of waiting for it.

        Raises:
            UsageError: As :meth:`_GeoOptimizer.load_state_dict`, or another region's state, or
                the ranks' states are from different steps.
        """
        problem: UsageError | None = None
        try:
            self._check_state(state_dict)
        except UsageError as exc:
            problem = exc
        step = 0 if problem else state_dict["round"] * self.accum + state_dict["local_steps"]
        flags = torch.tensor([1.0 if problem else 0.0, step, -step], dtype=torch.float64)
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # over every rank: GeoComm's topology is the world
        if problem is not None:
            raise problem
        if flags[0] > 0:
            raise self._bad("another rank's state does not fit (its error says why); nothing was loaded")
        if flags[1] != -flags[2]:
            raise self._bad(f"the ranks' states are from different steps ({int(-flags[2])} to {int(flags[1])}): load every rank's state from the same checkpoint")
        self._load_state(state_dict)

    def _check_own(self, state: dict[str, Any]) -> None:
        if self._finished:
            raise self._bad("the strategy has finished: build a new one to load a state into")
        if state["accum"] != self.accum:
            raise self._bad(f"the state is for accum={state['accum']!r}, this strategy has accum={self.accum}")
        round_, local = state["round"], state["local_steps"]
        if not isinstance(round_, int) or round_ < 0 or not isinstance(local, int) or not 0 <= local < self.accum:
            raise self._bad(f"corrupt state: round {round_!r}, local_steps {local!r}")
        regions = list(self.comm.topology.regions)
        if state["regions"] != regions:
            raise self._bad(f"the state is for regions {state['regions']!r}, this job has {regions!r}")
        if state["region"] != self.comm.region:
            raise self._bad(f"the state is region {state['region']!r}'s, this rank is in {self.comm.region!r}")
        self._check_tensor(state["model_of_record"], "model_of_record", (self.numel,), torch.float64)
        problem = self.compression.check_state(state["compression"])
        if problem:
            raise self._bad(problem)
        peers = [regions[i] for i in self._links.peers] if self._links is not None else []
        applied, pending = state["applied"], state["pending"]
        if not isinstance(applied, dict) or sorted(applied) != sorted(peers) or not all(isinstance(n, int) and n >= 0 for n in applied.values()):
            raise self._bad(f"corrupt state: 'applied' does not count the rounds of {peers or 'no other region'}")
        expect = dict(applied)
        for entry in pending if isinstance(pending, list) else [None]:
            if not isinstance(entry, dict) or entry.get("region") not in expect or entry.get("round") != expect[entry["region"]] + 1 or entry["round"] > round_:
                raise self._bad("corrupt state: 'pending' is not the consecutive rounds after 'applied' up to 'round'")
            expect[entry["region"]] += 1
            self._check_tensor(entry.get("update"), "pending update", (self.numel,), self._wire)
        if not isinstance(state["staleness"], torch.Tensor) or not isinstance(state["waited_s"], (int, float)):
            raise self._bad("corrupt state: 'staleness' or 'waited_s'")

    def _load_own(self, state: dict[str, Any]) -> None:
        self.round, self.local_steps = int(state["round"]), int(state["local_steps"])
        self._start64 = state["model_of_record"].clone()
        self._start32 = self._start64.to(self._start32.dtype)
        self.staleness = [int(x) for x in state["staleness"].tolist()]
        self.waited_s = float(state["waited_s"])
        if self._links is not None:
            index = {name: i for i, name in enumerate(self.comm.topology.regions)}
            taken = {index[name]: n for name, n in state["applied"].items()}
            pending: dict[int, list[tuple[int, torch.Tensor]]] = {peer: [] for peer in self._links.peers}
            for entry in state["pending"]:
                pending[index[entry["region"]]].append((int(entry["round"]), entry["update"].clone()))
            self._links.restore(taken, pending, self.round)

    @property
    def max_staleness_seen(self) -> int:
        """The stalest update applied so far (0 if none)."""
        return max(self.staleness, default=0)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if self._finished:
            raise UsageError("AsyncGradientAccumulation: step() after finish()")
        loss = self._inner_step(closure)
        self.local_steps += 1
        if self.local_steps == self.accum:
            self._end_round()
        return loss

    def _apply_(self, own: torch.Tensor | None, need: int | None, upto: int | None) -> None:
        """``start - own - (updates from the other regions)`` becomes the parameters and the next round's start."""
        comm = self.comm
        incoming = torch.zeros(self.numel, dtype=torch.float64)
        if self._links is not None:
            if comm.is_leader:
                t0 = time.perf_counter()
                arrived, waited = self._links.take(need, upto)
                for _, round_, payload in arrived:
                    incoming.add_(payload.to(torch.float64))
                    self.staleness.append(max(0, self.round - round_))
                self.waited_s += waited
                comm.ledger.sync_s += time.perf_counter() - t0
            comm.region_broadcast_(incoming)
        new = self._start64 - incoming
        if own is not None:
            new.sub_(own.to(torch.float64))
        self._start64 = new
        self._start32 = new.to(self._start32.dtype)
        _write_(self.params, self._start32)

    @torch.no_grad()
    def _end_round(self) -> None:
        own_change = self._start32.to(torch.float64) - _flat(self.params).to(torch.float64)
        update = own_change.mul_(self.weight).to(self._wire)
        self.round += 1
        if self._links is not None and self.comm.is_leader:
            self._links.send(self.round, update)
        if self.max_staleness is None:
            self._apply_(update, -1, None)
        else:
            self._apply_(update, self.round - self.max_staleness, self.round + self.max_staleness)
        self.local_steps = 0

    @torch.no_grad()
    def finish(self, *, average: bool = False) -> None:  # type: ignore[override]
        """End the exchange: flush a partial round, apply every update still coming, stop the threads (collective).

        Afterwards every rank holds the same parameters (the initial ones minus every region's
        updates); ``average=True`` also averages them over all ranks (one all-reduce) to guarantee
        bitwise equality whatever the float64 sums rounded. ``step`` may not follow.
        """
        if self._finished:
            return
        if self.local_steps:
            self._end_round()
        if self._links is not None:
            if self.comm.is_leader:
                self._links.close(self.round)
            self._apply_(None, None, None)
            self._links.join()
        self._finished = True
        if average:
            flat = _flat(self.params)
            self.comm.all_sum_(flat)
            _write_(self.params, flat.div_(self.comm.topology.world_size))

