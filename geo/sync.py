"""Cross-region communication: region topology, a hierarchical communicator behind an emulated WAN.

The sync strategies themselves (model averaging, asynchronous SGD with gradient accumulation,
DiLoCo) are public optimizer wrappers in :mod:`delibench.geo.strategies`; this module is what they
talk through.

WAN emulation (communication level; no root, no kernel shaping). Every rank belongs to a region;
the first rank of each region is its *leader*. A collective over all ranks runs hierarchically and
for real with ``torch.distributed`` (gloo):

1. sum inside the region (``all_reduce`` on the region's group; LAN, not shaped, not counted),
2. sum across regions (``all_reduce`` on the leaders' group, or a PyTorch compression hook on
   that group) -- this is the only traffic that crosses regions,
3. broadcast the result from the leader inside the region (LAN).

Step 2 is modelled as a bandwidth-optimal **ring all-reduce** among the R active leaders (in
regions-file order; leader i sends to leader i+1 mod R): the n elements are cut into R chunks
(``n // R`` or ``n // R + 1`` elements), then R-1 reduce-scatter steps and R-1 all-gather steps each
send one chunk over every ring link at once. Bytes crossing regions are counted exactly from that
schedule (in total ``2 (R-1) n * element_size`` per collective; each directed link's share is kept
for egress pricing). The result of step 2 is released no earlier than
``issue time + sum over the 2(R-1) steps of max over ring links (rtt/2 + chunk_bytes/bandwidth)``
-- for two regions this is exactly ``rtt + bytes/bandwidth`` -- the wait being injected after the
real collective finishes. The time spent waiting (real + injected) is the rank's sync time.

Point-to-point messages (the asynchronous strategy's updates) are metered per directed link and
delivered no earlier than ``departure + rtt/2 + bytes/bandwidth``, where a link sends one message at
a time (departure = when the link is free). Without a regions config (``config=None``) nothing is
delayed and bytes are still counted: that is the mode for real multi-host runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable
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
    "ring_allreduce_traffic",
]

#: How the WAN is emulated; stored in every result.
EMULATION = (
    "communication-level: hierarchical all-reduce, cross-region ring modelled as rtt/2 + chunk/bandwidth per step, "
    "point-to-point updates as rtt/2 + bytes/bandwidth per message, injected wait"
)

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


def ring_allreduce_traffic(numel: int, element_bytes: int, regions: tuple[str, ...], config: RegionsConfig | None) -> RingTraffic:
    """Exact bytes per link and modelled time of a ring all-reduce of ``numel`` elements among ``regions``.

    With ``config=None`` (no emulated WAN) the time is 0 and the bytes are still counted.
    """
    r = len(regions)
    if r < 2 or numel == 0:
        return RingTraffic(sent_bytes={}, time_s=0.0)
    chunks = [numel // r + (1 if i < numel % r else 0) for i in range(r)]
    links = [config.link(regions[i], regions[(i + 1) % r]) if config is not None else None for i in range(r)]
    sent: dict[tuple[str, str], int] = {(regions[i], regions[(i + 1) % r]): 0 for i in range(r)}
    time_s = 0.0
    for phase_offset in (0, 1):  # reduce-scatter sends chunk (i - s), all-gather chunk (i + 1 - s)
        for s in range(r - 1):
            step_s = 0.0
            for i in range(r):
                nbytes = chunks[(i + phase_offset - s) % r] * element_bytes
                sent[(regions[i], regions[(i + 1) % r])] += nbytes
                link = links[i]
                step_s = max(step_s, link.transfer_s(nbytes) if link is not None else 0.0)
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
    its collectives in the same order. Collectives are not thread-safe; the point-to-point exchange
    of :class:`~delibench.geo.strategies.AsyncGradientAccumulation` runs its threads on process
    groups of its own.

    Args:
        topology: Which rank lives in which region (contiguous blocks of ranks, regions in order).
        config: The regions file whose links set the emulated WAN; ``None``: no emulation (bytes
            are still counted), for runs whose regions are really apart.
        rank: This process's global rank (``torch.distributed.get_rank()`` when omitted).
    """

    def __init__(self, topology: Topology, config: RegionsConfig | None = None, rank: int | None = None) -> None:
        import torch.distributed as dist

        if rank is None:
            rank = dist.get_rank()
        if dist.is_initialized() and dist.get_world_size() != topology.world_size:
            raise UsageError(f"topology has {topology.world_size} ranks, the process group {dist.get_world_size()}")
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
        # One-rank regions get a group too (for the user's DDP), but no collective runs on it.
        self._region_pg: Any = None
        for i in range(len(topology.regions)):
            group = dist.new_group(topology.ranks_of(i))
            if i == self.region_index:
                self._region_pg = group
        self._region_group = self._region_pg if len(self.region_ranks) > 1 else None
        self._leaders_group = dist.new_group(topology.leaders) if len(topology.regions) > 1 else None

    @classmethod
    def from_regions(cls, region_of_rank: list[str] | tuple[str, ...], config: RegionsConfig | None = None) -> GeoComm:
        """Build the communicator from the region name of every rank, in rank order (collective).

        ``["us-east", "us-east", "eu-west"]``: ranks 0-1 in us-east, rank 2 in eu-west. A region's
        ranks must be contiguous (as torchrun numbers one node group after another).
        """
        names: list[str] = []
        counts: list[int] = []
        for name in region_of_rank:
            if names and names[-1] == name:
                counts[-1] += 1
            elif name in names:
                raise UsageError(f"region {name!r}: its ranks must be contiguous", hint="number ranks region by region")
            else:
                names.append(name)
                counts.append(1)
        return cls(Topology(regions=tuple(names), workers=tuple(counts)), config)

    @classmethod
    def per_rank(cls, config: RegionsConfig | None = None) -> GeoComm:
        """Every rank a region of its own (named ``rank0``, ``rank1``, ...; collective)."""
        import torch.distributed as dist

        return cls.from_regions([f"rank{r}" for r in range(dist.get_world_size())], config)

    @property
    def cross_region(self) -> bool:
        """True when more than one region takes part (there is WAN traffic)."""
        return self._leaders_group is not None

    @property
    def region_group(self) -> Any:
        """This rank's region's process group: give it to DDP (``DDP(model, process_group=comm.region_group)``)."""
        return self._region_pg

    @property
    def leaders_group(self) -> Any:
        """The process group of the regions' leaders (``None`` for a single region)."""
        return self._leaders_group

    @property
    def region_share(self) -> float:
        """This rank's region's share of all workers (its weight when every worker's batch is equal)."""
        return len(self.region_ranks) / self.topology.world_size

    def region_sum_(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` in place over the ranks of this rank's region (LAN; counted as sync time)."""
        import torch.distributed as dist

        if self._region_group is None:
            return
        t0 = time.perf_counter()
        dist.all_reduce(tensor, group=self._region_group)
        self.ledger.sync_s += time.perf_counter() - t0

    def region_broadcast_(self, tensor: torch.Tensor) -> None:
        """Broadcast ``tensor`` from the region's leader to its other ranks (LAN; counted as sync time)."""
        import torch.distributed as dist

        if self._region_group is None:
            return
        t0 = time.perf_counter()
        dist.broadcast(tensor, src=self.leader, group=self._region_group)
        self.ledger.sync_s += time.perf_counter() - t0

    def meter_ring_(self, numel: int, element_bytes: int) -> float:
        """Count one cross-region ring all-reduce of ``numel`` elements sent by this leader; returns its modelled time."""
        traffic = ring_allreduce_traffic(numel, element_bytes, self.topology.regions, self.config)
        for (src, dst), nbytes in traffic.sent_bytes.items():
            if src == self.region:
                self.meter_link_(dst, nbytes)
        self.ledger.cross_region_collectives += 1
        return traffic.time_s

    def meter_link_(self, dst: str, nbytes: int) -> None:
        """Count ``nbytes`` sent from this region to region ``dst``."""
        key = f"{self.region}->{dst}"
        self.ledger.link_bytes[key] = self.ledger.link_bytes.get(key, 0) + nbytes
        self.ledger.cross_region_bytes += nbytes

    def wait_until_(self, ready_at: float) -> None:
        """Sleep until ``ready_at`` (``time.perf_counter``): the emulated WAN time not covered by the real transfer."""
        wait_s = ready_at - time.perf_counter()
        if wait_s > 0:
            time.sleep(wait_s)
            self.ledger.wan_wait_s += wait_s

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
            pending = _Pending(buffer=buffer, work=work, ready_at=t0 + self.meter_ring_(buffer.numel(), buffer.element_size()))
        self.ledger.sync_s += time.perf_counter() - t0
        return pending

    def finish_cross_region_sum(self, pending: _Pending, out: torch.Tensor) -> None:
        """Wait for an exchange (real transfer, then the emulated WAN time) and put the global sum in ``out``."""
        t0 = time.perf_counter()
        if pending.work is not None:
            pending.work.wait()
            self.wait_until_(pending.ready_at)
            out.copy_(pending.buffer)
        self.ledger.sync_s += time.perf_counter() - t0
        if self.cross_region:
            self.region_broadcast_(out)

    def all_sum_(self, tensor: torch.Tensor, reducer: Callable[[torch.Tensor, Any], list[tuple[int, int]]] | None = None) -> None:
        """Sum ``tensor`` in place over every rank, synchronously (region sum, WAN sum, region broadcast).

        Args:
            tensor: This rank's contribution; holds the sum over all ranks afterwards.
            reducer: Does the cross-region step instead of a plain ``all_reduce``:
                ``reducer(tensor, leaders_group)`` sums ``tensor`` in place over the leaders and returns
                ``[(elements, bytes per element)]``, one pair per all-reduce it put on the wire (each
                metered as a ring all-reduce; their modelled times add up).
        """
        self.region_sum_(tensor)
        if not self.cross_region:
            return
        if reducer is None:
            self.finish_cross_region_sum(self.start_cross_region_sum(tensor), tensor)
            return
        t0 = time.perf_counter()
        if self.is_leader:
            modelled_s = sum(self.meter_ring_(numel, element_bytes) for numel, element_bytes in reducer(tensor, self._leaders_group))
            self.wait_until_(t0 + modelled_s)
        self.ledger.sync_s += time.perf_counter() - t0
        self.region_broadcast_(tensor)
