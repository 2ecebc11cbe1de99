"""Cross-region synchronisation: a hierarchical communicator behind an emulated WAN, and the three sync strategies.

WAN emulation (communication level; no root, no kernel shaping). Every rank belongs to a region;
the first rank of each region is its *leader*. A collective over all ranks runs hierarchically and
for real with ``torch.distributed`` (gloo):

1. sum inside the region (``all_reduce`` on the region's group; LAN, not shaped, not counted),
2. sum across regions (``all_reduce`` on the leaders' group) — this is the only traffic that
   crosses regions,
3. broadcast the result from the leader inside the region (LAN).

Step 2 is modelled as a bandwidth-optimal **ring all-reduce** among the R active leaders (in
regions-file order; leader i sends to leader i+1 mod R): the n elements are cut into R chunks
(``n // R`` or ``n // R + 1`` elements), then R-1 reduce-scatter steps and R-1 all-gather steps each
send one chunk over every ring link at once. Bytes crossing regions are counted exactly from that
schedule (in total ``2 (R-1) n * element_size`` per collective; each directed link's share is kept
for egress pricing). The result of step 2 is released no earlier than
``issue time + sum over the 2(R-1) steps of max over ring links (rtt/2 + chunk_bytes/bandwidth)``
— for two regions this is exactly ``rtt + bytes/bandwidth`` — the wait being injected after the
real collective finishes. The time spent waiting (real + injected) is the rank's sync time.

Sync strategies (plain SGD, no momentum, so that the equivalences below hold exactly):

* ``allreduce``: every step the gradients are summed over all ranks and divided by the world
  size N (what DDP computes), then ``theta -= lr * g``.
* ``ma`` (model averaging, local SGD): inside a region gradients are averaged every step (LAN);
  regions step independently and every H steps all ranks' parameters are averaged (each region
  weighted by its worker count). Scheduling follows PyTorch's ``PeriodicModelAverager`` (subclass
  of its ``ModelAverager``) with ``warmup_steps = H - 1``: average after steps H-1, 2H-1, ...
  (0-based), i.e. once every H steps, plus a final average if the last step was not one.
  With H = 1 this equals ``allreduce`` (up to float rounding).
* ``asgd-ga`` (asynchronous SGD with gradient accumulation): each step a region applies its own
  share of the update at once (``theta -= lr * G_r / N`` with G_r the region's gradient sum) and
  adds G_r to an accumulator. Every K steps (one *round*) the accumulator is sent to all other
  regions with a non-blocking ``all_reduce(async_op=True)`` and reset; the round's result A (the sum
  of all regions' accumulators) is applied as ``theta -= lr * (A - a_r) / N`` — the other regions'
  contributions — exactly S rounds later (the staleness bound S; S = 0 waits at once). Training
  goes on while the exchange is in flight, so WAN time overlaps compute; a region blocks only when
  a round S rounds old has not arrived yet. Leftover accumulation is flushed and every round is
  drained at the end, after which all regions hold the same parameters. With K = 1 and S = 0 this
  is synchronous SGD (up to float rounding).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from delibench.errors import UsageError
from delibench.geo.regions import RegionsConfig

if TYPE_CHECKING:
    import torch

__all__ = [
    "EMULATION",
    "STRATEGIES",
    "GeoComm",
    "RingTraffic",
    "SyncLedger",
    "Topology",
    "make_strategy",
    "ring_allreduce_traffic",
]

#: How the WAN is emulated; stored in every result.
EMULATION = "communication-level: hierarchical all-reduce, cross-region ring modelled as rtt/2 + chunk/bandwidth per step, injected wait"

#: Strategy names accepted by ``geo run --sync``.
STRATEGIES = ("allreduce", "asgd-ga", "ma")


@dataclass(frozen=True, slots=True)
class Topology:
    """Which rank lives in which region.

    Attributes:
        regions: Names of the regions that have workers, in regions-file order (the ring order).
        workers: Workers per region, aligned with ``regions``.
    """

    regions: tuple[str, ...]
    workers: tuple[int, ...]

    def __post_init__(self) -> None:
        if len(self.regions) != len(self.workers) or not self.regions:
            raise UsageError("topology: one worker count per region is needed")
        if any(n < 1 for n in self.workers):
            raise UsageError("topology: every listed region needs at least one worker")

    @property
    def world_size(self) -> int:
        """Total number of ranks."""
        return sum(self.workers)

    def ranks_of(self, index: int) -> list[int]:
        """Global ranks of the region at ``index`` (contiguous blocks in region order)."""
        start = sum(self.workers[:index])
        return list(range(start, start + self.workers[index]))

    def region_index(self, rank: int) -> int:
        """Index of the region that ``rank`` belongs to."""
        for i in range(len(self.regions)):
            if rank in self.ranks_of(i):
                return i
        raise ValueError(f"rank {rank} outside world of {self.world_size}")

    @property
    def leaders(self) -> list[int]:
        """The first rank of every region."""
        return [self.ranks_of(i)[0] for i in range(len(self.regions))]


@dataclass(frozen=True, slots=True)
class RingTraffic:
    """Traffic and modelled time of one cross-region ring all-reduce.

    Attributes:
        sent_bytes: Bytes each directed link ``(src, dst)`` carries.
        time_s: Modelled duration (sum over steps of the slowest link's ``rtt/2 + chunk/bandwidth``).
    """

    sent_bytes: dict[tuple[str, str], int]
    time_s: float

    @property
    def total_bytes(self) -> int:
        """All bytes that cross regions."""
        return sum(self.sent_bytes.values())


def ring_allreduce_traffic(numel: int, element_bytes: int, regions: tuple[str, ...], config: RegionsConfig) -> RingTraffic:
    """Exact bytes per link and modelled time of a ring all-reduce of ``numel`` elements among ``regions``."""
    r = len(regions)
    if r < 2 or numel == 0:
        return RingTraffic(sent_bytes={}, time_s=0.0)
    chunks = [numel // r + (1 if i < numel % r else 0) for i in range(r)]
    links = [config.link(regions[i], regions[(i + 1) % r]) for i in range(r)]
    sent: dict[tuple[str, str], int] = {(regions[i], regions[(i + 1) % r]): 0 for i in range(r)}
    time_s = 0.0
    for phase_offset in (0, 1):  # reduce-scatter sends chunk (i - s), all-gather chunk (i + 1 - s)
        for s in range(r - 1):
            step_s = 0.0
            for i in range(r):
                nbytes = chunks[(i + phase_offset - s) % r] * element_bytes
                sent[(regions[i], regions[(i + 1) % r])] += nbytes
                step_s = max(step_s, links[i].transfer_s(nbytes))
            time_s += step_s
    return RingTraffic(sent_bytes=sent, time_s=time_s)


@dataclass(slots=True)
class SyncLedger:
    """One rank's synchronisation counters (monotonic).

    Attributes:
        sync_s: Wall time inside synchronisation calls (LAN + WAN, real + injected waits).
        wan_wait_s: Injected waits only (the emulated WAN time not covered by the real transfer).
        cross_region_bytes: Bytes this rank sent across regions (leaders only; 0 elsewhere).
        link_bytes: Per directed link ``"src->dst"``: bytes this rank sent over it.
        cross_region_collectives: Cross-region exchanges this rank took part in.
    """

    sync_s: float = 0.0
    wan_wait_s: float = 0.0
    cross_region_bytes: int = 0
    link_bytes: dict[str, int] = field(default_factory=dict)
    cross_region_collectives: int = 0


@dataclass(slots=True)
class _Pending:
    """A cross-region exchange in flight: the buffer the result lands in and when it may be used."""

    buffer: Any
    work: Any
    ready_at: float


class GeoComm:
    """Hierarchical collectives over regions with an emulated, metered WAN between their leaders.

    Every rank must construct it at the same point (it creates process groups collectively) and call
    its collectives in the same order. Not thread-safe.
    """

    def __init__(self, topology: Topology, config: RegionsConfig, rank: int) -> None:
        import torch.distributed as dist

        self.topology = topology
        self.config = config
        self.rank = rank
        self.region_index = topology.region_index(rank)
        self.region = topology.regions[self.region_index]
        self.region_ranks = topology.ranks_of(self.region_index)
        self.leader = self.region_ranks[0]
        self.is_leader = rank == self.leader
        self.ledger = SyncLedger()
        # NOTE: new_group is collective over the world: every rank creates every group, in order.
        self._region_group = None
        for i in range(len(topology.regions)):
            ranks = topology.ranks_of(i)
            group = dist.new_group(ranks) if len(ranks) > 1 else None
            if i == self.region_index:
                self._region_group = group
        self._leaders_group = dist.new_group(topology.leaders) if len(topology.regions) > 1 else None

    @property
    def cross_region(self) -> bool:
        """True when more than one region takes part (there is WAN traffic)."""
        return self._leaders_group is not None

    def region_sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` in place over the ranks of this rank's region (LAN; counted as sync time)."""
        import torch.distributed as dist

        if self._region_group is None:
            return
        t0 = time.perf_counter()
        dist.all_reduce(tensor, group=self._region_group)
        self.ledger.sync_s += time.perf_counter() - t0

    def start_cross_region_sum(self, region_sum: torch.Tensor) -> _Pending:
        """Begin summing region totals across regions without waiting (leaders send; others just note it).

        Args:
            region_sum: This region's total (identical on all its ranks); it is copied, not changed.
        """
        import torch.distributed as dist

        t0 = time.perf_counter()
        if not (self.is_leader and self.cross_region):
            pending = _Pending(buffer=None, work=None, ready_at=t0)
        else:
            buffer = region_sum.detach().clone()
            work = dist.all_reduce(buffer, group=self._leaders_group, async_op=True)
            traffic = ring_allreduce_traffic(buffer.numel(), buffer.element_size(), self.topology.regions, self.config)
            mine = {k: v for k, v in traffic.sent_bytes.items() if k[0] == self.region}
            for (src, dst), nbytes in mine.items():
                key = f"{src}->{dst}"
                self.ledger.link_bytes[key] = self.ledger.link_bytes.get(key, 0) + nbytes
                self.ledger.cross_region_bytes += nbytes
            self.ledger.cross_region_collectives += 1
            pending = _Pending(buffer=buffer, work=work, ready_at=t0 + traffic.time_s)
        self.ledger.sync_s += time.perf_counter() - t0
        return pending

    def finish_cross_region_sum(self, pending: _Pending, out: torch.Tensor) -> None:
        """Wait for an exchange (real transfer, then the emulated WAN time) and put the global sum in ``out``."""
        import torch.distributed as dist

        t0 = time.perf_counter()
        if pending.work is not None:
            pending.work.wait()
            wait_s = pending.ready_at - time.perf_counter()
            if wait_s > 0:
                time.sleep(wait_s)
                self.ledger.wan_wait_s += wait_s
            out.copy_(pending.buffer)
        if self.cross_region and self._region_group is not None:
            dist.broadcast(out, src=self.leader, group=self._region_group)
        self.ledger.sync_s += time.perf_counter() - t0

    def all_sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` in place over every rank, synchronously (region sum, WAN sum, region broadcast)."""
        self.region_sum_(tensor)
        if self.cross_region:
            self.finish_cross_region_sum(self.start_cross_region_sum(tensor), tensor)


def _flat_grads(params: list[torch.nn.Parameter]) -> torch.Tensor:
    import torch

    return torch.cat([p.grad.reshape(-1) for p in params])


def _apply_(params: list[torch.nn.Parameter], flat: torch.Tensor, alpha: float) -> None:
    """``p += alpha * flat[slice of p]`` for every parameter."""
    offset = 0
    for p in params:
        n = p.numel()
        p.data.add_(flat[offset : offset + n].view_as(p), alpha=alpha)
        offset += n


class _AllReduce:
    """Synchronous SGD: average gradients over all ranks every step."""

    def __init__(self, comm: GeoComm, params: list[torch.nn.Parameter], lr: float) -> None:
        self.comm, self.params, self.lr = comm, params, lr
        self.world = comm.topology.world_size

    def step(self, step: int) -> None:
        grads = _flat_grads(self.params)
        self.comm.all_sum_(grads)
        _apply_(self.params, grads, -self.lr / self.world)

    def finish(self) -> None:
        """Nothing is pending."""


def _make_averager_class() -> type:
    from torch.distributed.algorithms.model_averaging.averagers import ModelAverager

    class HierarchicalPeriodicAverager(ModelAverager):
        """``PeriodicModelAverager``'s schedule, averaging through :class:`GeoComm` (region-weighted, metered).

        PyTorch's own averagers all-reduce over one flat process group, which would bypass the
        emulated WAN; its ``HierarchicalModelAverager`` needs equal-size contiguous subgroups.
        """

        def __init__(self, comm: GeoComm, period: int, world: int) -> None:
            super().__init__(process_group=None)
            self.comm, self.period, self.world, self.warmup_steps = comm, period, world, period - 1
            self.last_averaged_step = -1

        def average_parameters(self, params: list[torch.nn.Parameter]) -> None:
            from torch.nn.utils import parameters_to_vector, vector_to_parameters

            if self.step >= self.warmup_steps and (self.step - self.warmup_steps) % self.period == 0:
                flat = parameters_to_vector(params).detach()
                self.comm.all_sum_(flat)
                vector_to_parameters(flat / self.world, params)
                self.last_averaged_step = self.step
            self.step += 1

    return HierarchicalPeriodicAverager


class _ModelAveraging:
    """Local SGD (region-synchronous) with cross-region model averaging every ``period`` steps."""

    def __init__(self, comm: GeoComm, params: list[torch.nn.Parameter], lr: float, period: int) -> None:
        self.comm, self.params, self.lr = comm, params, lr
        self.region_workers = len(comm.region_ranks)
        self.averager = _make_averager_class()(comm, period, comm.topology.world_size)

    def step(self, step: int) -> None:
        grads = _flat_grads(self.params)
        self.comm.region_sum_(grads)
        _apply_(self.params, grads, -self.lr / self.region_workers)
        self.averager.average_parameters(self.params)

    def finish(self) -> None:
        """Average once more so that every region ends with the same model."""
        if self.averager.last_averaged_step != self.averager.step - 1:
            self.averager.period, self.averager.warmup_steps = 1, 0
            self.averager.average_parameters(self.params)


class _AsgdGa:
    """Asynchronous SGD with gradient accumulation over ``accum`` steps and staleness bound ``staleness`` rounds."""

    def __init__(self, comm: GeoComm, params: list[torch.nn.Parameter], lr: float, accum: int, staleness: int) -> None:
        import torch

        self.comm, self.params, self.lr = comm, params, lr
        self.accum, self.staleness = accum, staleness
        self.world = comm.topology.world_size
        numel = sum(p.numel() for p in params)
        self.acc = torch.zeros(numel, dtype=params[0].dtype)
        self.acc_steps = 0
        self.inflight: list[tuple[Any, torch.Tensor]] = []  # (pending exchange, own contribution)

    def _issue_round(self) -> None:
        own = self.acc.clone()
        self.inflight.append((self.comm.start_cross_region_sum(own), own))
        self.acc.zero_()
        self.acc_steps = 0

    def _apply_oldest(self) -> None:
        import torch

        pending, own = self.inflight.pop(0)
        total = torch.empty_like(own)
        if self.comm.cross_region:
            self.comm.finish_cross_region_sum(pending, total)
        else:
            total.copy_(own)
        _apply_(self.params, total - own, -self.lr / self.world)

    def step(self, step: int) -> None:
        grads = _flat_grads(self.params)
        self.comm.region_sum_(grads)
        _apply_(self.params, grads, -self.lr / self.world)
        self.acc.add_(grads)
        self.acc_steps += 1
        if self.acc_steps == self.accum:
            self._issue_round()
            while len(self.inflight) > self.staleness:
                self._apply_oldest()

    def finish(self) -> None:
        """Flush a partial round and apply every round still in flight."""
        if self.acc_steps:
            self._issue_round()
        while self.inflight:
            self._apply_oldest()


def make_strategy(
    name: str,
    comm: GeoComm,
    params: list[torch.nn.Parameter],
    lr: float,
    *,
    period: int = 8,
    accum: int = 4,
    staleness: int = 1,
) -> Any:
    """Build the strategy object (``step(step)`` after backward, ``finish()`` after the last step)."""
    if name == "allreduce":
        return _AllReduce(comm, params, lr)
    if name == "ma":
        return _ModelAveraging(comm, params, lr, period)
    if name == "asgd-ga":
        return _AsgdGa(comm, params, lr, accum, staleness)
    raise UsageError(f"unknown sync strategy {name!r}", hint=f"choose one of {', '.join(STRATEGIES)}")
