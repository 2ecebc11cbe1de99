"""ASGD-GA: asynchronous SGD with gradient accumulation across regions, staleness-bounded (Cloudless-Training).

The exchange itself (threads, groups, arrival times) is :class:`~delibench.geo.strategies.peer_links.PeerLinks`;
this module is the optimizer wrapper: rounds, the float64 model of record, staleness, checkpoints.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from delibench.errors import UsageError
from delibench.geo.strategies.base import GeoOptimizer
from delibench.geo.strategies.compression import Compression
from delibench.geo.strategies.flat import flatten, write_params_
from delibench.geo.strategies.peer_links import PeerLinks
from delibench.geo.sync import GeoComm

__all__ = ["AsyncGradientAccumulation"]


class AsyncGradientAccumulation(GeoOptimizer):
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
        start = flatten(self.params)
        self._wire = comp.wire_dtype or start.dtype
        self._start32 = start.clone()
        self._start64 = start.to(torch.float64)
        self.round = 0
        self.local_steps = 0
        self.staleness: list[int] = []
        self.waited_s = 0.0
        self._links = PeerLinks(self.comm, self.numel, self._wire, timeout_s) if self.comm.cross_region else None
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
            UsageError: As :meth:`GeoOptimizer.load_state_dict`, or another region's state, or
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

    def _incoming(self, need: int | None, upto: int | None) -> torch.Tensor:
        """The sum (float64) of the other regions' updates taken now (see :meth:`PeerLinks.take`), on every rank of the region.

        The leader takes them, records their staleness and the wait; the region's other ranks get the
        sum by broadcast.
        """
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
        return incoming

    def _apply_(self, own: torch.Tensor | None, need: int | None, upto: int | None) -> None:
        """``start - own - (updates from the other regions)`` becomes the parameters and the next round's start."""
        new = self._start64 - self._incoming(need, upto)
        if own is not None:
            new.sub_(own.to(torch.float64))
        self._start64 = new
        self._start32 = new.to(self._start32.dtype)
        write_params_(self.params, self._start32)

    @torch.no_grad()
    def _end_round(self) -> None:
        own_change = self._start32.to(torch.float64) - flatten(self.params).to(torch.float64)
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
            flat = flatten(self.params)
            self.comm.all_sum_(flat)
            write_params_(self.params, flat.div_(self.comm.topology.world_size))
