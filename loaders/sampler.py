"""Per-epoch sample orders for every rank: the DistributedSampler shuffle and a cache-friendly locality order.

Orders are pure functions of ``(n, epoch, seed, rank, world_size, ...)``, so a loader can look
ahead (prefetch the rest of this epoch, plan evictions with the next one) and a simulator can
replay them without any I/O.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from delibench.errors import UsageError

__all__ = [
    "ORDERS",
    "ShuffleQuality",
    "epoch_order",
    "next_use",
    "rank_sample_count",
    "shuffle_quality",
]

#: Names accepted by ``epoch_order(order=...)``.
ORDERS = ("shuffle", "locality")


def rank_sample_count(n: int, world_size: int, drop_last: bool = False) -> int:
    """Samples each rank gets per epoch, exactly as ``DistributedSampler.num_samples``."""
    if drop_last and n % world_size != 0:
        return math.ceil((n - world_size) / world_size)
    return math.ceil(n / world_size)


def _validate(n: int, epoch: int, rank: int, world_size: int, order: str, exchange_fraction: float) -> None:
    if n < 1:
        raise UsageError(f"an order needs at least one sample, got n={n}")
    if epoch < 0:
        raise UsageError(f"epoch must not be negative, got {epoch}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise UsageError(f"rank {rank} is outside world size {world_size}")
    if order not in ORDERS:
        raise UsageError(f"unknown order {order!r}", hint="use 'shuffle' or 'locality'")
    if not 0.0 <= exchange_fraction <= 1.0:
        raise UsageError(f"exchange fraction must lie in [0, 1], got {exchange_fraction}")


def _fit(indices: list[int], num_samples: int) -> list[int]:
    """Pad (by repeating from the start, like DistributedSampler) or truncate to ``num_samples``."""
    if len(indices) >= num_samples:
        return indices[:num_samples]
    pad = num_samples - len(indices)
    return indices + (indices * math.ceil(pad / len(indices)))[:pad]


def _shuffle_order(n: int, epoch: int, seed: int, rank: int, world_size: int, drop_last: bool) -> list[int]:
    import torch  # NOTE: torch's generator is what makes the order identical to DistributedSampler's.

    g = torch.Generator()
    g.manual_seed(seed + epoch)
    indices: list[int] = torch.randperm(n, generator=g).tolist()
    num_samples = rank_sample_count(n, world_size, drop_last)
    indices = _fit(indices, num_samples * world_size)
    return indices[rank::world_size]


def _locality_partition(n: int, epoch: int, seed: int, world_size: int, exchange_fraction: float) -> list[np.ndarray]:
    """Every rank's sample set for ``epoch``: a seed-fixed base partition with a per-epoch exchange.

    The exchange is drawn fresh each epoch relative to the base partition (not accumulated), so
    each rank's set never drifts further than ``exchange_fraction`` from its home set; the ranks
    still partition ``range(n)`` exactly.
    """
    base_perm = np.random.default_rng([seed, 0x10CA1]).permutation(n)
    parts = [base_perm[r::world_size].copy() for r in range(world_size)]
    if world_size == 1 or exchange_fraction <= 0.0:
        return parts
    k = int(round(exchange_fraction * min(len(p) for p in parts)))
    if k == 0:
        return parts
    rng = np.random.default_rng([seed, epoch, 0xE8C4])
    shift = int(rng.integers(1, world_size))
    picks = [rng.choice(len(p), size=k, replace=False) for p in parts]
    outgoing = [parts[r][picks[r]].copy() for r in range(world_size)]
    for r in range(world_size):
        # Rank r receives what rank (r - shift) gives away; sizes stay equal, the partition exact.
        parts[r][picks[r]] = outgoing[(r - shift) % world_size]
    return parts


def _locality_order(
    n: int, epoch: int, seed: int, rank: int, world_size: int, exchange_fraction: float, drop_last: bool
) -> list[int]:
    part = _locality_partition(n, epoch, seed, world_size, exchange_fraction)[rank]
    order = np.random.default_rng([seed, epoch, rank, 0x5B0F]).permutation(part).tolist()
    return _fit(order, rank_sample_count(n, world_size, drop_last))


def epoch_order(
    n: int,
    epoch: int,
    seed: int,
    rank: int,
    world_size: int,
    order: str = "shuffle",
    exchange_fraction: float = 0.0,
    drop_last: bool = False,
) -> list[int]:
    """The manifest indices rank ``rank`` visits in ``epoch``, in visiting order.

    Args:
        n: Samples in the dataset.
        epoch: Epoch number (0-based).
        seed: Seed shared by all ranks.
        rank: This rank.
        world_size: Ranks in all.
        order: ``shuffle``: exactly ``torch.utils.data.DistributedSampler(shuffle=True)``'s order
            for ``(seed, epoch, rank, world_size, drop_last)``, including its padding (when ``n``
            is not a multiple of ``world_size`` and ``drop_last`` is false, the first samples of
            the permutation are repeated so every rank gets the same count). ``locality``: each
            rank keeps a stable, seed-fixed share of the dataset across epochs (so a per-rank cache
            keeps hitting), visited in a fresh random order every epoch, with ``exchange_fraction``
            of each share swapped with another rank each epoch; padding/truncation as ``shuffle``.
        exchange_fraction: ``locality`` only: share of each rank's samples handed to another rank
            this epoch (0 = fully stable sets, 1 = everything moves).
        drop_last: Truncate instead of padding to equal per-rank counts (as DistributedSampler).

    Returns:
        ``rank_sample_count(n, world_size, drop_last)`` indices in ``range(n)``.

    Raises:
        UsageError: Bad arguments.
    """
    _validate(n, epoch, rank, world_size, order, exchange_fraction)
    if order == "shuffle":
        return _shuffle_order(n, epoch, seed, rank, world_size, drop_last)
    return _locality_order(n, epoch, seed, rank, world_size, exchange_fraction, drop_last)


def next_use(order: Sequence[int], offset: int = 0) -> dict[int, int]:
    """Map each sample to the position of its first use in ``order`` (plus ``offset``).

    Belady eviction needs "when is this sample needed next": pass the next epoch's order and an
    offset that places it on a global clock (e.g. ``offset = (epoch + 1) * len(order)``). Samples
    absent from the map are not needed in that epoch (treat as never).
    """
    uses: dict[int, int] = {}
    for pos, idx in enumerate(order):
        uses.setdefault(int(idx), offset + pos)
    return uses


@dataclass(frozen=True, slots=True)
class ShuffleQuality:
    """How much randomness an order keeps; reported beside the cache hit rate it buys.

    Attributes:
        rank_change_fraction: Mean over epochs 1..E-1 of the fraction of samples whose rank differs
            from the previous epoch. ``shuffle`` gives about ``1 - 1/world_size``; ``locality``
            up to ``2 * exchange_fraction`` (each epoch's exchange is drawn afresh from the home
            partition, so a sample can leave and another return); 0 means every rank sees the
            same subset forever.
        rank_coverage_fraction: Mean over ranks of the share of the whole dataset a rank has seen
            after E epochs (1.0 = each rank eventually sees every sample; ``1/world_size`` = fixed
            shares). Low coverage means each rank's model replica trains on a narrower subset.
        epochs: E, the number of epochs compared.
    """

    rank_change_fraction: float
    rank_coverage_fraction: float
    epochs: int


def shuffle_quality(
    n: int,
    seed: int,
    world_size: int,
    order: str = "shuffle",
    exchange_fraction: float = 0.0,
    epochs: int = 3,
) -> ShuffleQuality:
    """Measure the cross-rank mixing of an order over ``epochs`` epochs (see :class:`ShuffleQuality`)."""
    if epochs < 2:
        raise UsageError(f"shuffle quality needs at least 2 epochs, got {epochs}")
    owners = []
    seen = [set() for _ in range(world_size)]
    for epoch in range(epochs):
        owner = np.full(n, -1)
        for rank in range(world_size):
            idx = epoch_order(n, epoch, seed, rank, world_size, order, exchange_fraction, drop_last=True)
            owner[idx] = rank
            seen[rank].update(idx)
        owners.append(owner)
    changes = []
    for prev, cur in zip(owners, owners[1:]):
        both = (prev >= 0) & (cur >= 0)
        changes.append(float(np.mean(prev[both] != cur[both])) if both.any() else 0.0)
    coverage = float(np.mean([len(s) / n for s in seen]))
    return ShuffleQuality(float(np.mean(changes)), coverage, epochs)
