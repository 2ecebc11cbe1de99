"""Scale model: GETs, bytes, hit rate and dollars of a job of N nodes x G GPUs, predicted by replaying sampler orders.

A prediction, not a measurement. For a dataset of ``samples`` objects of ``sample_bytes`` each and a
cache of ``cache_size`` bytes *per node*, it replays the exact per-rank orders of every epoch
(:func:`delibench.loaders.sampler.epoch_order`, the ``DistributedSampler`` shuffle or the
locality order) through the loader's own cache (:class:`~delibench.loaders.cache.ByteBudgetCache`,
Belady by default, told the next epoch's order as the DELI loader is) for two cache scopes:

* **rank scope** (today's ``deli``): each of the G ranks of a node has its own cache of
  ``cache_size / G`` bytes, so the node's memory budget is the same in both scopes. This is the
  :class:`~delibench.tuning.simulator.CacheSimulator` itself, run on the node's ranks.
* **node scope** (one cache per node shared by its ranks, DELI's and the node service's design):
  one cache of ``cache_size`` replays the union of the node's ranks' orders, interleaved sample by
  sample as ranks in lockstep request them; a sample any local rank fetched is a hit for the others.
  :func:`replay_node_cache` replays each rank's prefetch window as the node service holds it
  (``ScaleJob.window`` samples ahead of the rank's next batch of ``ScaleJob.batch_size``; by
  default the service's own window for deli's default ``prefetch_depth``,
  :func:`delibench.loaders.node.service_window`). The windows hold samples beside the cache, so
  the node keeps about (ranks - 1) x batch size more hits per epoch than the cache alone
  (``window=0``): 4 x 500 samples, batch 32, 30 % cache: 0.220 vs 0.200; the service measured 0.210.
  Rank scope has no shared window (a rank's own window only looks its own samples up early), so
  its replay is the cache alone.

Every miss is one GET of ``sample_bytes`` from the bucket (deli never fetches a sample twice
while it is cached), priced with :func:`delibench.reports.cost.request_usd` and
:func:`~delibench.reports.cost.transfer_usd` at the price sheet's GET and egress prices.

**Scaling.** The replay is exact for the nodes it simulates: the full dataset, the full world size,
the real orders of the ranks of nodes ``0 .. simulate_nodes - 1``. The other nodes are not
replayed: their slices of every epoch's permutation are identically distributed (each is a
uniformly random 1/N of a uniform permutation; with ``locality`` each node keeps a fixed random
1/N of the dataset), so the totals are the simulated nodes' counts times ``nodes / simulate_nodes``.
The cost is ``epochs x samples x simulate_nodes / nodes`` cache operations plus one permutation of
the dataset per rank and epoch, which keeps 64 x 8 GPUs on ImageNet's 1.28 M samples to seconds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from delibench.errors import UsageError
from delibench.loaders.sampler import ORDERS, epoch_order, rank_sample_count
from delibench.tuning.simulator import CacheSimulator

__all__ = ["SCOPES", "ScaleCell", "ScaleJob", "ScalePrediction", "default_window", "predict_scale", "replay_node_cache"]

#: Cache scopes compared.
SCOPES = ("rank", "node")


@dataclass(frozen=True, slots=True)
class ScaleJob:
    """The job whose data traffic is predicted.

    Attributes:
        nodes: VMs.
        gpus_per_node: Ranks per VM (one per GPU).
        samples: Objects in the dataset.
        sample_bytes: Bytes of each object (a uniform size; the mean of a real dataset).
        cache_size: Cache bytes per node (rank scope: ``cache_size // gpus_per_node`` per rank).
        epochs: Epochs of training.
        seed: Sampler seed.
        eviction: Cache eviction policy (``belady``, ``lru``, ``fifo``).
        simulate_nodes: Nodes whose ranks are replayed exactly (see the module's scaling note).
        exchange_fraction: ``locality`` order: share of each rank's samples exchanged per epoch.
        batch_size: Samples per batch per rank (the loader's default, 32): node scope hands a
            batch out (and offers it to the cache) at once.
        window: Node scope: samples each rank looks up ahead of its next batch (0: the cache
            alone). None: the node service's window for deli's default options,
            ``service_window(DeliOptions(), batch_size)`` (256 for batches up to 128).
    """

    nodes: int
    gpus_per_node: int
    samples: int
    sample_bytes: int
    cache_size: int
    epochs: int = 3
    seed: int = 0
    eviction: str = "belady"
    simulate_nodes: int = 1
    exchange_fraction: float = 0.0
    batch_size: int = 32
    window: int | None = None

    def __post_init__(self) -> None:
        for name in ("nodes", "gpus_per_node", "samples", "epochs", "simulate_nodes", "batch_size"):
            if getattr(self, name) < 1:
                raise UsageError(f"{name.replace('_', '-')} must be at least 1, got {getattr(self, name)}")
        if self.sample_bytes < 0 or self.cache_size < 0:
            raise UsageError("sample bytes and cache size must not be negative")
        if self.simulate_nodes > self.nodes:
            raise UsageError(f"cannot simulate {self.simulate_nodes} nodes of {self.nodes}")
        if self.samples < self.world_size:
            raise UsageError(f"{self.samples} samples cannot feed {self.world_size} ranks", hint="give at least one sample per rank")
        if self.window is None:
            object.__setattr__(self, "window", default_window(self.batch_size))
        elif self.window < 0:
            raise UsageError(f"window must not be negative, got {self.window}", hint="0 replays the cache alone")

    @property
    def world_size(self) -> int:
        """Ranks in all."""
        return self.nodes * self.gpus_per_node

    @property
    def dataset_bytes(self) -> int:
        """Bytes of the whole dataset."""
        return self.samples * self.sample_bytes

    def node_ranks(self, node: int) -> list[int]:
        """The global ranks of ``node`` (torchrun's numbering: node-major)."""
        return list(range(node * self.gpus_per_node, (node + 1) * self.gpus_per_node))


@dataclass(frozen=True, slots=True)
class ScaleCell:
    """Predicted traffic of one (cache scope, order) over the whole job.

    Attributes:
        scope: ``rank`` or ``node``.
        order: ``shuffle`` or ``locality``.
        gets: GETs over all epochs, all nodes (one per miss).
        gets_per_epoch: GETs of each epoch, all nodes.
        bytes_from_bucket: Bytes read from the bucket over all epochs.
        hit_rate: Hits over lookups, all epochs (epoch 0 is cold).
        steady_hit_rate: Hit rate of epochs >= 1 (epoch 0's when there is one epoch).
        request_usd: Dollars of the GETs.
        egress_usd: Dollars of moving the bytes out of the bucket's region.
        total_usd: request_usd + egress_usd.
    """

    scope: str
    order: str
    gets: int
    gets_per_epoch: tuple[int, ...]
    bytes_from_bucket: int
    hit_rate: float
    steady_hit_rate: float
    request_usd: float
    egress_usd: float

    @property
    def total_usd(self) -> float:
        """Requests plus egress."""
        return self.request_usd + self.egress_usd

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping (with ``total_usd``)."""
        return {**asdict(self), "gets_per_epoch": list(self.gets_per_epoch), "total_usd": self.total_usd}


@dataclass(frozen=True, slots=True)
class ScalePrediction:
    """The model's answer: one cell per (scope, order), and what it assumed.

    Attributes:
        job: The job.
        cells: Rank and node scope for each order.
        get_usd_per_1000: GET price used.
        egress_usd_per_gb: Egress price used (per billed GB, 2^30 bytes).
        price_label: Where the prices come from (``sheet:provider:egress class``).
        scale_factor: ``nodes / simulate_nodes``: what the simulated nodes' counts were multiplied by.
    """

    job: ScaleJob
    cells: tuple[ScaleCell, ...]
    get_usd_per_1000: float
    egress_usd_per_gb: float
    price_label: str
    scale_factor: float

    def cell(self, scope: str, order: str) -> ScaleCell:
        """The cell of ``scope`` and ``order``."""
        for c in self.cells:
            if c.scope == scope and c.order == order:
                return c
        raise KeyError((scope, order))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready mapping, labelled as a prediction."""
        return {
            "kind": "prediction",
            "job": {**asdict(self.job), "world_size": self.job.world_size, "dataset_bytes": self.job.dataset_bytes},
            "scale_factor": self.scale_factor,
            "prices": {"get_usd_per_1000": self.get_usd_per_1000, "egress_usd_per_gb": self.egress_usd_per_gb, "label": self.price_label},
            "cells": [c.to_dict() for c in self.cells],
        }


def default_window(batch_size: int, prefetch_depth: int | None = None) -> int:
    """The node service's window for deli's options with ``prefetch_depth`` (None: its default) and
    ``batch_size`` (:func:`delibench.loaders.node.service_window`, the service's own rule)."""
    from delibench.loaders.deli import DeliOptions
    from delibench.loaders.node import service_window

    return service_window(DeliOptions(prefetch_depth=prefetch_depth), batch_size)


def replay_node_cache(
    orders_by_rank: Sequence[Sequence[Sequence[int]]],
    sample_bytes: int | Sequence[int],
    cache_size: int,
    eviction: str = "belady",
    *,
    window: int = 0,
    batch_size: int = 1,
) -> tuple[list[int], list[int]]:
    """Replay one node's ranks through one shared cache, with each rank's prefetch window.

    The node service's accounting, step for step (``loaders/node/service.py``): a **hit** is a lookup that
    needs no GET. Each local rank looks a sample up when it enters the rank's window, the
    ``window`` samples ahead of the rank's next batch (never past the end of an epoch: the next
    epoch's walk starts when the last batch of this one is handed out). A looked-up sample is held
    outside the cache's budget until its batch is handed out, and found there by every rank
    (**any** sample the node holds, cached or in a window, is a hit); a cached sample found by a
    lookup is told its *following* use (the one being looked up is settled), so Belady may evict
    it from the budget while the window still holds it. When a batch is handed out its samples
    not cached are offered to the cache with their next use (Belady may refuse them). The clock is
    the node's ranks in lockstep: position ``p`` of local rank ``i`` in epoch ``e`` is
    ``(e * L + p) * W + i``, the service's own.

    ``window=0, batch_size=1`` is a cache and nothing else (a sample looked up when consumed):
    the plain Belady replay of the interleaved union. A window holds up to ``window`` samples per
    rank beside the cache, which a user's node does hold (the service's arena has room for them),
    so the hit rate a user sees is the windowed one.

    Args:
        orders_by_rank: ``[rank][epoch] -> indices``, with one epoch more than replayed (the next
            epoch's order, which Belady is told, as the loader knows it). Every rank's epoch has
            the same length (DistributedSampler pads or drops to make it so).
        sample_bytes: Bytes of every sample: one size for all, or a size per sample index.
        cache_size: The node cache's byte budget.
        eviction: Eviction policy.
        window: Samples each rank looks up ahead of its next batch (the service's depth,
            ``NodeService.depth``: ``max(prefetch_depth, 2 * batch_size)``); 0: none.
        batch_size: Samples handed out (and offered to the cache) together.

    Returns:
        (misses per epoch, lookups per epoch) of the replayed epochs.
    """
    from delibench.loaders.cache import make_policy

    if window < 0 or batch_size < 1:
        raise UsageError(f"window must be >= 0 and batch size >= 1, got {window} and {batch_size}")
    ranks = len(orders_by_rank)
    epochs = len(orders_by_rank[0]) - 1
    length = len(orders_by_rank[0][0])
    size_of = (lambda _k: sample_bytes) if isinstance(sample_bytes, int) else sample_bytes.__getitem__
    # next use of each (rank, global position) on the lockstep clock, over every given epoch
    nexts = [[None] * ((epochs + 1) * length) for _ in range(ranks)]  # type: list[list[float | None]]
    seen: dict[int, int] = {}
    for q in range((epochs + 1) * length - 1, -1, -1):
        e, p = divmod(q, length)
        for i in range(ranks - 1, -1, -1):
            key = orders_by_rank[i][e][p]
            nexts[i][q] = seen.get(key)
            seen[key] = q * ranks + i
    policy = make_policy(eviction)
    cached: set[int] = set()
    refs: dict[int, int] = {}
    used = 0
    misses = [0] * epochs
    lookups = [0] * epochs

    def key_at(i: int, q: int) -> int:
        return orders_by_rank[i][q // length][q % length]

    def when(i: int, q: int) -> float:
        nxt = nexts[i][q]
        return math.inf if nxt is None else float(nxt)

    def look(i: int, q: int) -> None:
        key = key_at(i, q)
        lookups[q // length] += 1
        if key in cached:
            policy.touch(key, when(i, q))
        elif not refs.get(key):
            misses[q // length] += 1
        refs[key] = refs.get(key, 0) + 1

    def admit(key: int, use: float) -> None:
        nonlocal used
        size = size_of(key)
        if size > cache_size:
            return
        while used + size > cache_size:
            victim, victim_use = policy.victim()
            if not policy.admits(use, victim_use):
                return
            policy.remove(victim)
            cached.discard(victim)
            used -= size_of(victim)
        cached.add(key)
        policy.add(key, use)
        used += size

    def hand(i: int, q: int) -> None:
        key = key_at(i, q)
        refs[key] -= 1
        if key not in cached:
            admit(key, when(i, q))
        if not refs[key]:
            del refs[key]

    looked = [0] * ranks  # next global position each rank looks up
    total = epochs * length
    batches = -(-length // batch_size)
    for e in range(epochs):
        for b in range(batches):
            lo, hi = e * length + b * batch_size, e * length + min(length, (b + 1) * batch_size)
            for i in range(ranks):
                # the walk has looked up at least this batch (the service waits for it), then the window
                end = min(max(lo + window, hi), (e + 1) * length)
                while looked[i] < end:
                    look(i, looked[i])
                    looked[i] += 1
                for q in range(lo, hi):
                    hand(i, q)
                end = min(hi + window, (e + 1) * length) if hi < (e + 1) * length else min(hi + window, total)
                while looked[i] < end:
                    look(i, looked[i])
                    looked[i] += 1
    return misses, lookups


def _prices(provider: str, egress_class: str, sheet: Any | None) -> tuple[float, float, str]:
    from delibench.reports.prices import default_sheet

    sheet = sheet or default_sheet()
    get = sheet.object_store(provider).get_usd_per_1000
    egress = sheet.egress_price(provider, egress_class).usd_per_gb
    return get, egress, f"{sheet.id}:{provider}:{egress_class}"


def predict_scale(
    job: ScaleJob,
    *,
    orders: Sequence[str] = ORDERS,
    scopes: Sequence[str] = SCOPES,
    provider: str = "aws",
    egress_class: str = "cross-region",
    sheet: Any | None = None,
) -> ScalePrediction:
    """Predict GETs, bytes, hit rate and dollars of ``job`` for each cache scope and order.

    Raises:
        UsageError: Unknown order, scope, provider or egress class.
    """
    from delibench.reports.cost import request_usd, transfer_usd

    for o in orders:
        if o not in ORDERS:
            raise UsageError(f"unknown order {o!r}", hint=f"use one of {', '.join(ORDERS)}")
    for s in scopes:
        if s not in SCOPES:
            raise UsageError(f"unknown cache scope {s!r}", hint=f"use one of {', '.join(SCOPES)}")
    get_price, egress_price, label = _prices(provider, egress_class, sheet)
    factor = job.nodes / job.simulate_nodes
    world = job.world_size
    sizes = [job.sample_bytes] * job.samples
    cells: list[ScaleCell] = []
    for order in orders:
        sim_ranks = [r for n in range(job.simulate_nodes) for r in job.node_ranks(n)]
        per_epoch: dict[str, list[int]] = {}
        lookups: dict[str, list[int]] = {}
        if "rank" in scopes:
            sim = CacheSimulator(sizes, epochs=job.epochs, seed=job.seed, world_size=world, order=order,
                                 exchange_fraction=job.exchange_fraction, ranks=sim_ranks)
            res = sim.run(job.cache_size // job.gpus_per_node, job.eviction)
            n_lookups = [len(sim_ranks) * rank_sample_count(job.samples, world)] * job.epochs
            per_epoch["rank"] = [round(n * (1.0 - rate)) for n, rate in zip(n_lookups, res.epoch_hit_rates)]
            lookups["rank"] = n_lookups
        if "node" in scopes:
            misses = [0] * job.epochs
            looks = [0] * job.epochs
            for node in range(job.simulate_nodes):
                node_orders = [
                    [epoch_order(job.samples, e, job.seed, r, world, order, job.exchange_fraction) for e in range(job.epochs + 1)]
                    for r in job.node_ranks(node)
                ]
                m, n = replay_node_cache(node_orders, job.sample_bytes, job.cache_size, job.eviction,
                                         window=int(job.window or 0), batch_size=job.batch_size)
                misses = [a + b for a, b in zip(misses, m)]
                looks = [a + b for a, b in zip(looks, n)]
            per_epoch["node"] = misses
            lookups["node"] = looks
        for scope in scopes:
            gets_epoch = tuple(round(g * factor) for g in per_epoch[scope])
            gets = sum(gets_epoch)
            total_lookups = sum(lookups[scope])
            steady = [1.0 - g / n for g, n in zip(per_epoch[scope][1:], lookups[scope][1:]) if n] or [
                1.0 - per_epoch[scope][0] / lookups[scope][0]
            ]
            nbytes = gets * job.sample_bytes
            cells.append(
                ScaleCell(
                    scope=scope,
                    order=order,
                    gets=gets,
                    gets_per_epoch=gets_epoch,
                    bytes_from_bucket=nbytes,
                    hit_rate=1.0 - sum(per_epoch[scope]) / total_lookups if total_lookups else 0.0,
                    steady_hit_rate=sum(steady) / len(steady),
                    request_usd=request_usd(gets, get_price),
                    egress_usd=transfer_usd(nbytes, egress_price),
                )
            )
    return ScalePrediction(job, tuple(cells), get_price, egress_price, label, factor)
