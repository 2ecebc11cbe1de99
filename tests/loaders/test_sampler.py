"""Sampler orders: DistributedSampler equality, locality partitions and exchange, next use, quality."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import DistributedSampler

from delibench.errors import UsageError
from delibench.loaders.sampler import epoch_order, next_use, rank_sample_count, shuffle_quality


@settings(max_examples=60, deadline=None)
@given(
    n=st.integers(1, 200),
    epoch=st.integers(0, 5),
    seed=st.integers(0, 2**31),
    world=st.integers(1, 5),
    drop_last=st.booleans(),
)
def test_shuffle_equals_distributed_sampler(n: int, epoch: int, seed: int, world: int, drop_last: bool) -> None:
    if drop_last and n < world:
        return  # DistributedSampler gives ranks nothing; nothing to compare
    for rank in range(world):
        sampler = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        assert epoch_order(n, epoch, seed, rank, world, drop_last=drop_last) == list(sampler)


@pytest.mark.parametrize("n,world", [(100, 2), (101, 4), (7, 3)])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5])
def test_locality_is_an_exact_partition_every_epoch(n: int, world: int, fraction: float) -> None:
    for epoch in range(4):
        orders = [epoch_order(n, epoch, 3, r, world, "locality", fraction, drop_last=True) for r in range(world)]
        flat = [i for o in orders for i in o]
        assert len(flat) == len(set(flat)) == rank_sample_count(n, world, True) * world
        padded = [epoch_order(n, epoch, 3, r, world, "locality", fraction) for r in range(world)]
        assert set().union(*map(set, padded)) == set(range(n))
        assert all(len(o) == rank_sample_count(n, world) for o in padded)


def test_locality_keeps_rank_sets_and_reshuffles_within() -> None:
    a = epoch_order(1000, 0, 1, 0, 4, "locality")
    b = epoch_order(1000, 1, 1, 0, 4, "locality")
    assert set(a) == set(b) and a != b


def test_exchange_fraction_moves_that_share_deterministically() -> None:
    a = set(epoch_order(1000, 0, 1, 0, 2, "locality", 0.2))
    b = set(epoch_order(1000, 1, 1, 0, 2, "locality", 0.2))
    moved = 1 - len(a & b) / len(a)
    assert 0.2 <= moved <= 0.45  # 20 % leave per epoch relative to the home set; two draws overlap
    assert epoch_order(1000, 1, 1, 0, 2, "locality", 0.2) == epoch_order(1000, 1, 1, 0, 2, "locality", 0.2)


def test_next_use_positions() -> None:
    assert next_use([5, 2, 9], offset=10) == {5: 10, 2: 11, 9: 12}
    assert next_use([1, 1, 2]) == {1: 0, 2: 2}


def test_shuffle_quality_separates_orders() -> None:
    shuffle = shuffle_quality(400, 0, 4, "shuffle", epochs=3)
    stable = shuffle_quality(400, 0, 4, "locality", 0.0, epochs=3)
    mixed = shuffle_quality(400, 0, 4, "locality", 0.25, epochs=3)
    assert shuffle.rank_change_fraction == pytest.approx(0.75, abs=0.08)
    assert stable.rank_change_fraction == 0.0 and stable.rank_coverage_fraction == pytest.approx(0.25)
    assert 0.15 < mixed.rank_change_fraction < 0.5
    assert stable.rank_coverage_fraction < mixed.rank_coverage_fraction < shuffle.rank_coverage_fraction


@pytest.mark.parametrize(
    "kwargs", [dict(n=0), dict(rank=2, world_size=2), dict(order="random"), dict(exchange_fraction=1.5), dict(epoch=-1)]
)
def test_bad_arguments_are_usage_errors(kwargs: dict) -> None:
    args = dict(n=10, epoch=0, seed=0, rank=0, world_size=2)
    args.update(kwargs)
    with pytest.raises(UsageError):
        epoch_order(**args)
