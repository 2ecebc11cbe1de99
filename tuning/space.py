"""The tuning search space of the DELI loader: cache size, prefetch depth, concurrency, eviction (and workers).

Every dimension is discrete and ordinal on a log2 scale, so the tuner, the exhaustive grid of
``benchmarks/tune_vs_grid.py`` and the model-guided start all draw from exactly the same set of
configurations. Optuna sees integer exponents (ordered, so TPE can exploit neighbourhoods); people
and ``best.yaml`` see bytes and counts.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from delibench.errors import UsageError
from delibench.records import LoaderSpec
from delibench.units import format_bytes, parse_bytes

__all__ = [
    "EVICTION_POLICIES",
    "SearchSpace",
    "TuneConfig",
    "iec_size",
]

#: Eviction policies of ``ByteBudgetCache`` the tuner may pick.
EVICTION_POLICIES: tuple[str, ...] = ("lru", "belady")

# Names of the Optuna parameters (exponents and choices, not bytes).
_P_CACHE = "cache_level"
_P_DEPTH = "prefetch_depth_log2"
_P_CONC = "concurrency_log2"
_P_EVICT = "eviction"
_P_WORKERS = "num_workers"


def iec_size(n: int) -> str | int:
    """``268435456 -> "256MiB"`` when the size is an exact IEC multiple, else the byte count."""
    for unit, factor in (("GiB", 1024**3), ("MiB", 1024**2), ("KiB", 1024)):
        if n and n % factor == 0:
            return f"{n // factor}{unit}"
    return n


@dataclass(frozen=True, slots=True)
class TuneConfig:
    """One point of the search space: the DELI loader's knobs (plus, optionally, DataLoader workers).

    Attributes:
        cache_size_bytes: Byte budget of the loader's cache; 0 means no cache (prefetch only).
        prefetch_depth: Samples fetched ahead of consumption.
        concurrency: GET requests in flight at once.
        eviction: Cache eviction policy, one of :data:`EVICTION_POLICIES`.
        num_workers: DataLoader workers per rank, or None to keep the run's own setting.
    """

    cache_size_bytes: int
    prefetch_depth: int
    concurrency: int
    eviction: str = "lru"
    num_workers: int | None = None

    def __post_init__(self) -> None:
        if self.cache_size_bytes < 0:
            raise UsageError(f"cache size must not be negative, got {self.cache_size_bytes}")
        if self.prefetch_depth < 1:
            raise UsageError(f"prefetch depth must be at least 1, got {self.prefetch_depth}")
        if self.concurrency < 1:
            raise UsageError(f"concurrency must be at least 1, got {self.concurrency}")
        if self.eviction not in EVICTION_POLICIES:
            raise UsageError(f"unknown eviction policy {self.eviction!r}", hint=f"use one of: {', '.join(EVICTION_POLICIES)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise UsageError(f"num_workers must not be negative, got {self.num_workers}")

    @property
    def label(self) -> str:
        """Short display form, e.g. ``deli(cache=256.0 MiB, depth=32, conc=16, belady)``."""
        cache = format_bytes(self.cache_size_bytes) if self.cache_size_bytes else "none"
        workers = f", workers={self.num_workers}" if self.num_workers is not None else ""
        return f"deli(cache={cache}, depth={self.prefetch_depth}, conc={self.concurrency}, {self.eviction}{workers})"

    def loader_options(self) -> dict[str, Any]:
        """The DELI loader's options (``LoaderSpec.options``, ``DeliOptions`` names) for this point."""
        return {
            "cache_size": self.cache_size_bytes,
            "prefetch_depth": self.prefetch_depth,
            "concurrency": self.concurrency,
            "eviction": self.eviction,
        }

    def to_loader_spec(self, label: str | None = None) -> LoaderSpec:
        """A ``LoaderSpec(kind="deli", ...)`` that ``delibench.app.session.run`` accepts."""
        return LoaderSpec(kind="deli", options=self.loader_options(), label=label)

    def to_yaml_loader(self) -> dict[str, Any]:
        """The ``loader:`` mapping of ``best.yaml`` (human sizes, ``delibench run --config`` format)."""
        doc: dict[str, Any] = {
            "kind": "deli",
            "cache_size": iec_size(self.cache_size_bytes),
            "prefetch_depth": self.prefetch_depth,
            "concurrency": self.concurrency,
            "eviction": self.eviction,
        }
        return doc

    def as_dict(self) -> dict[str, Any]:
        """Plain values (bytes and counts) for JSON exports."""
        return {
            "cache_size_bytes": self.cache_size_bytes,
            "prefetch_depth": self.prefetch_depth,
            "concurrency": self.concurrency,
            "eviction": self.eviction,
            "num_workers": self.num_workers,
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> TuneConfig:
        """Read a ``loader:`` mapping (``cache_size`` may be ``"256MiB"``) or an :meth:`as_dict` dict.

        Raises:
            UsageError: Missing or unknown keys, a kind other than ``deli``, or bad values.
        """
        data = dict(data)
        kind = data.pop("kind", "deli")
        if kind != "deli":
            raise UsageError(f"a tuned loader config must have kind 'deli', got {kind!r}")
        if "cache_size" in data and "cache_size_bytes" in data:
            raise UsageError("give either cache_size or cache_size_bytes, not both")
        cache = data.pop("cache_size", data.pop("cache_size_bytes", None))
        known = {"prefetch_depth", "concurrency", "eviction", "num_workers"}
        unknown = set(data) - known
        if unknown:
            raise UsageError(f"unknown loader key(s) {sorted(unknown)}", hint=f"known: cache_size, {', '.join(sorted(known))}")
        missing = [k for k in ("prefetch_depth", "concurrency") if k not in data] + (["cache_size"] if cache is None else [])
        if missing:
            raise UsageError(f"loader config lacks {', '.join(missing)}")
        try:
            return cls(
                cache_size_bytes=parse_bytes(cache if isinstance(cache, (str, int)) else int(cache)),
                prefetch_depth=int(data["prefetch_depth"]),
                concurrency=int(data["concurrency"]),
                eviction=str(data.get("eviction", "lru")),
                num_workers=None if data.get("num_workers") is None else int(data["num_workers"]),
            )
        except (TypeError, ValueError) as exc:
            raise UsageError(f"bad loader config value: {exc}") from exc


def _pow2_floor(n: float) -> int:
    return 1 << max(0, int(math.floor(math.log2(max(n, 1)))))


@dataclass(frozen=True)
class SearchSpace:
    """The discrete, log-scaled space the tuner searches.

    The cache sizes are ``0`` plus ``cache_levels`` sizes halving down from ``cache_max_bytes``
    (the memory budget, or the smallest power of two that holds the whole dataset when that is
    smaller: a cache larger than the dataset buys nothing). Depth and concurrency are powers of two.

    Attributes:
        mem_budget_bytes: Hard upper bound of the cache (``--mem-budget``).
        dataset_bytes: Bytes in the dataset (per the manifest), to cap the cache; None = no cap.
        cache_levels: Non-zero cache sizes to try.
        prefetch_depths: Allowed prefetch depths (powers of two, ascending).
        concurrencies: Allowed request concurrencies (powers of two, ascending).
        evictions: Allowed eviction policies.
        num_workers_choices: DataLoader worker counts to try, or ``()`` to leave workers alone.
    """

    mem_budget_bytes: int
    dataset_bytes: int | None = None
    cache_levels: int = 6
    prefetch_depths: tuple[int, ...] = (2, 4, 8, 16, 32, 64, 128, 256)
    concurrencies: tuple[int, ...] = (1, 2, 4, 8, 16, 32, 64)
    evictions: tuple[str, ...] = EVICTION_POLICIES
    num_workers_choices: tuple[int, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.mem_budget_bytes < 1:
            raise UsageError(f"memory budget must be positive, got {self.mem_budget_bytes} bytes", hint="e.g. --mem-budget 8GiB")
        if self.dataset_bytes is not None and self.dataset_bytes < 1:
            raise UsageError(f"dataset size must be positive, got {self.dataset_bytes}")
        if not 0 <= self.cache_levels <= 20:
            raise UsageError(f"cache levels must lie in [0, 20], got {self.cache_levels}")
        for name, values in (("prefetch depths", self.prefetch_depths), ("concurrencies", self.concurrencies)):
            if not values:
                raise UsageError(f"{name}: give at least one value")
            if any(v < 1 or v & (v - 1) for v in values) or list(values) != sorted(set(values)):
                raise UsageError(f"{name} must be ascending distinct powers of two, got {list(values)}")
            exps = [v.bit_length() - 1 for v in values]
            if exps != list(range(exps[0], exps[-1] + 1)):
                raise UsageError(f"{name} must be consecutive powers of two, got {list(values)}")
        if not self.evictions or any(e not in EVICTION_POLICIES for e in self.evictions):
            raise UsageError(f"evictions must be a non-empty subset of {list(EVICTION_POLICIES)}, got {list(self.evictions)}")
        if any(w < 0 for w in self.num_workers_choices):
            raise UsageError(f"worker counts must not be negative, got {list(self.num_workers_choices)}")

    # ----------------------------------------------------------------- the cache axis
    @property
    def cache_max_bytes(self) -> int:
        """The largest cache tried: the budget, or the power of two that holds the dataset if smaller."""
        if self.dataset_bytes is None:
            return self.mem_budget_bytes
        fits = 1 << max(0, math.ceil(math.log2(self.dataset_bytes)))
        return min(self.mem_budget_bytes, fits)

    @property
    def cache_sizes(self) -> tuple[int, ...]:
        """All cache sizes of the space, ascending, starting with 0."""
        top = self.cache_max_bytes
        sizes = {top >> k for k in range(self.cache_levels)} - {0}
        return (0, *sorted(sizes))

    def cache_size_for_level(self, level: int) -> int:
        """Bytes of cache level ``level`` (0 = no cache)."""
        sizes = self.cache_sizes
        if not 0 <= level < len(sizes):
            raise UsageError(f"cache level {level} outside [0, {len(sizes) - 1}]")
        return sizes[level]

    # ----------------------------------------------------------------- Optuna side
    def suggest(self, trial: Any) -> TuneConfig:
        """Draw a configuration from an Optuna trial (``optuna.Trial``)."""
        level = trial.suggest_int(_P_CACHE, 0, len(self.cache_sizes) - 1)
        d = self._exp_range(self.prefetch_depths)
        c = self._exp_range(self.concurrencies)
        depth_exp = trial.suggest_int(_P_DEPTH, d[0], d[1])
        conc_exp = trial.suggest_int(_P_CONC, c[0], c[1])
        eviction = trial.suggest_categorical(_P_EVICT, list(self.evictions))
        workers = trial.suggest_categorical(_P_WORKERS, list(self.num_workers_choices)) if self.num_workers_choices else None
        return TuneConfig(
            cache_size_bytes=self.cache_size_for_level(level),
            prefetch_depth=1 << depth_exp,
            concurrency=1 << conc_exp,
            eviction=eviction,
            num_workers=workers,
        )

    def to_params(self, config: TuneConfig) -> dict[str, Any]:
        """The Optuna parameters of ``config`` (for ``enqueue_trial``); it is first snapped onto the space."""
        config = self.snap(config)
        params: dict[str, Any] = {
            _P_CACHE: self.cache_sizes.index(config.cache_size_bytes),
            _P_DEPTH: config.prefetch_depth.bit_length() - 1,
            _P_CONC: config.concurrency.bit_length() - 1,
            _P_EVICT: config.eviction,
        }
        if self.num_workers_choices:
            params[_P_WORKERS] = config.num_workers
        return params

    def from_params(self, params: Mapping[str, Any]) -> TuneConfig:
        """The configuration of a finished trial's ``params``."""
        return TuneConfig(
            cache_size_bytes=self.cache_size_for_level(int(params[_P_CACHE])),
            prefetch_depth=1 << int(params[_P_DEPTH]),
            concurrency=1 << int(params[_P_CONC]),
            eviction=str(params[_P_EVICT]),
            num_workers=params.get(_P_WORKERS) if self.num_workers_choices else None,
        )

    def snap(self, config: TuneConfig) -> TuneConfig:
        """The nearest point of the space (log distance per axis) to an arbitrary configuration."""

        def nearest(values: tuple[int, ...], v: int) -> int:
            return min(values, key=lambda x: (abs(math.log2(x + 1) - math.log2(v + 1)), x))

        workers = config.num_workers
        if self.num_workers_choices:
            workers = nearest(self.num_workers_choices, workers if workers is not None else self.num_workers_choices[0])
        else:
            workers = None
        return replace(
            config,
            cache_size_bytes=nearest(self.cache_sizes, config.cache_size_bytes),
            prefetch_depth=nearest(self.prefetch_depths, config.prefetch_depth),
            concurrency=nearest(self.concurrencies, config.concurrency),
            eviction=config.eviction if config.eviction in self.evictions else self.evictions[0],
            num_workers=workers,
        )

    def grid(self) -> Iterator[TuneConfig]:
        """Every distinct configuration of the space (eviction is moot without a cache: LRU only)."""
        workers: tuple[int | None, ...] = self.num_workers_choices or (None,)
        for cache, depth, conc, eviction, w in itertools.product(
            self.cache_sizes, self.prefetch_depths, self.concurrencies, self.evictions, workers
        ):
            if cache == 0 and eviction != self.evictions[0]:
                continue
            yield TuneConfig(cache, depth, conc, eviction, w)

    def size(self) -> int:
        """Number of distinct configurations."""
        return sum(1 for _ in self.grid())

    def describe(self) -> dict[str, Any]:
        """The space as plain values (stored as a study attribute, so ``tune show`` can decode params)."""
        return {
            "mem_budget_bytes": self.mem_budget_bytes,
            "dataset_bytes": self.dataset_bytes,
            "cache_levels": self.cache_levels,
            "prefetch_depths": list(self.prefetch_depths),
            "concurrencies": list(self.concurrencies),
            "evictions": list(self.evictions),
            "num_workers_choices": list(self.num_workers_choices),
        }

    @classmethod
    def from_description(cls, data: Mapping[str, Any]) -> SearchSpace:
        """Inverse of :meth:`describe`."""
        return cls(
            mem_budget_bytes=int(data["mem_budget_bytes"]),
            dataset_bytes=None if data.get("dataset_bytes") is None else int(data["dataset_bytes"]),
            cache_levels=int(data["cache_levels"]),
            prefetch_depths=tuple(int(v) for v in data["prefetch_depths"]),
            concurrencies=tuple(int(v) for v in data["concurrencies"]),
            evictions=tuple(str(v) for v in data["evictions"]),
            num_workers_choices=tuple(int(v) for v in data.get("num_workers_choices", ())),
        )

    @staticmethod
    def _exp_range(values: tuple[int, ...]) -> tuple[int, int]:
        return values[0].bit_length() - 1, values[-1].bit_length() - 1

    @staticmethod
    def powers_of_two(low: int, high: int) -> tuple[int, ...]:
        """``(low, 2*low, ..., high)`` with both ends rounded down to powers of two."""
        lo, hi = _pow2_floor(low), _pow2_floor(high)
        if lo > hi:
            raise UsageError(f"empty range [{low}, {high}]")
        out = []
        v = lo
        while v <= hi:
            out.append(v)
            v <<= 1
        return tuple(out)
