"""The search space: levels, conversion to loader options and Optuna params, validation."""

from __future__ import annotations

import optuna
import pytest

from delibench.errors import UsageError
from delibench.records import LoaderSpec
from delibench.tuning.space import SearchSpace, TuneConfig, iec_size

MiB = 1024**2


def test_cache_sizes_are_zero_plus_halvings_of_the_budget() -> None:
    space = SearchSpace(mem_budget_bytes=256 * MiB, cache_levels=4)
    assert space.cache_sizes == (0, 32 * MiB, 64 * MiB, 128 * MiB, 256 * MiB)


def test_cache_is_capped_at_the_dataset() -> None:
    # A 3 MB dataset: nothing above 4 MiB (the power of two that holds it) is worth trying.
    space = SearchSpace(mem_budget_bytes=8 * 1024 * MiB, dataset_bytes=3_000_000, cache_levels=3)
    assert space.cache_sizes == (0, 1 * MiB, 2 * MiB, 4 * MiB)
    assert max(space.cache_sizes) >= 3_000_000


def test_grid_size_and_eviction_without_cache() -> None:
    space = SearchSpace(mem_budget_bytes=64 * MiB, cache_levels=2, prefetch_depths=(4, 8), concurrencies=(1, 2, 4))
    grid = list(space.grid())
    # (2 cache sizes x 2 evictions + 1 no-cache) x 2 depths x 3 concurrencies
    assert len(grid) == (2 * 2 + 1) * 2 * 3 == space.size()
    assert all(c.eviction == "lru" for c in grid if c.cache_size_bytes == 0)
    assert len(set(grid)) == len(grid)


def test_params_round_trip_for_every_grid_point() -> None:
    space = SearchSpace(mem_budget_bytes=64 * MiB, cache_levels=3, num_workers_choices=(0, 2))
    for config in space.grid():
        assert space.from_params(space.to_params(config)) == config


def test_suggest_draws_points_of_the_space() -> None:
    space = SearchSpace(mem_budget_bytes=64 * MiB, cache_levels=3)
    grid = set(space.grid()) | {TuneConfig(0, d, c, "belady") for d in space.prefetch_depths for c in space.concurrencies}
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(30):
        trial = study.ask()
        assert space.suggest(trial) in grid
        study.tell(trial, 0.0)


def test_snap_moves_to_the_nearest_point() -> None:
    space = SearchSpace(mem_budget_bytes=64 * MiB, cache_levels=3)
    snapped = space.snap(TuneConfig(cache_size_bytes=30 * MiB, prefetch_depth=5, concurrency=100, eviction="belady"))
    assert snapped == TuneConfig(32 * MiB, 4, 64, "belady")


def test_loader_spec_and_yaml_forms() -> None:
    config = TuneConfig(cache_size_bytes=256 * MiB, prefetch_depth=32, concurrency=16, eviction="belady")
    spec = config.to_loader_spec()
    assert isinstance(spec, LoaderSpec) and spec.kind == "deli"
    assert spec.options == {"cache_size": 256 * MiB, "prefetch_depth": 32, "concurrency": 16, "eviction": "belady"}
    loader = config.to_yaml_loader()
    assert loader["cache_size"] == "256MiB"
    assert TuneConfig.from_mapping(loader) == config
    assert iec_size(1000) == 1000


def test_loader_options_are_accepted_by_the_deli_loader() -> None:
    from delibench.loaders.deli import DeliOptions
    from delibench.loaders.pipeline import parse_options

    config = TuneConfig(cache_size_bytes=64 * MiB, prefetch_depth=8, concurrency=4, eviction="belady")
    options = parse_options(DeliOptions, "deli", config.loader_options())
    assert options.cache_size_bytes == 64 * MiB and options.eviction == "belady"
    assert options.prefetch_depth == 8 and options.concurrency == 4


@pytest.mark.parametrize(
    "mapping",
    [
        {"kind": "bucket", "cache_size": 0, "prefetch_depth": 1, "concurrency": 1},
        {"cache_size": "1GiB", "prefetch_depth": 4},
        {"cache_size": "1GiB", "prefetch_depth": 4, "concurrency": 2, "colour": "red"},
        {"cache_size": "lots", "prefetch_depth": 4, "concurrency": 2},
        {"cache_size": "1GiB", "prefetch_depth": 0, "concurrency": 2},
        {"cache_size": "1GiB", "prefetch_depth": 4, "concurrency": 2, "eviction": "fifo"},
    ],
)
def test_bad_loader_mappings_are_usage_errors(mapping: dict) -> None:
    with pytest.raises(UsageError):
        TuneConfig.from_mapping(mapping)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mem_budget_bytes": 0},
        {"mem_budget_bytes": MiB, "prefetch_depths": (3, 6)},
        {"mem_budget_bytes": MiB, "concurrencies": (1, 4)},
        {"mem_budget_bytes": MiB, "evictions": ("mru",)},
    ],
)
def test_bad_spaces_are_usage_errors(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        SearchSpace(**kwargs)
