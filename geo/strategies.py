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
    "make_strategy",
]

COMPRESSIONS = ("none", "fp16", "bf16", "powersgd")


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

    def state_dict(self) -> dict[str, Any]:
        return {"optim": self.optim.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optim.load_state_dict(state_dict["optim"])

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

    def state_dict(self) -> dict[str, Any]:
        return {"optim": self.optim.state_dict(), "outer": self.outer_optimizer.state_dict(), "outer_params": [p.detach().clone() for p in self.outer_params]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.optim.load_state_dict(state_dict["optim"])
        self.outer_optimizer.load_state_dict(state_dict["outer"])
        for op, saved in zip(self.outer_params, state_dict["outer_params"], strict=True):
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
        deadline = time.monotonic() + self.timeout_s
        with self._cond:
            while True:
                if self._error is not None:
                    raise RuntimeFailure(f"geo update exchange failed: {self._error}") from self._error
                if self._ready(need):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RuntimeFailure(f"no update from another region within {self.timeout_s:.0f} s", hint="a region stopped or its link is down")
                self._cond.wait(timeout=min(left, 1.0))
            out = []
            for peer in self.peers:
                inbox = self._inbox[peer]  # in round order: one FIFO link per peer
                n = len(inbox) if upto is None else sum(1 for round_, _ in inbox if round_ <= upto)
                out.extend((peer, round_, payload) for round_, payload in inbox[:n])
                self._taken[peer] += n
                self._inbox[peer] = inbox[n:]
        return out, time.perf_counter() - t0

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


def make_strategy(name: str, comm: GeoComm, params: list[torch.nn.Parameter], lr: float, *, period: int = 8, accum: int = 4, staleness: int = 1) -> _GeoOptimizer:
    """The optimizer ``delibench geo run`` trains with: plain SGD wrapped in the named strategy.

    Ranks start identical (same seed), so no initial broadcast; every worker's batch is equal, so
    model averaging weighs ranks uniformly (the same as by samples, without the extra exchange);
    there is no DDP inside a region, so the wrappers average gradients over the region's ranks.
    """
    from delibench.geo.sync import STRATEGIES

    sgd = torch.optim.SGD(params, lr=lr)
    if name == "allreduce":
        return AllReduceGradients(sgd, params, group=comm, sync_initial=False)
    if name == "ma":
        return ModelAveraging(sgd, params, period=period, group=comm, weighting="uniform", sync_initial=False, average_region_gradients=True)
    if name == "asgd-ga":
        return AsyncGradientAccumulation(sgd, params, accum=accum, max_staleness=staleness, group=comm, sync_initial=False, average_region_gradients=True)
    raise UsageError(f"unknown sync strategy {name!r}", hint=f"choose one of {', '.join(STRATEGIES)}")
