"""The benchmark's matrix: cells (link profile x sample size, accelerator rate, cache budget) and the regimes they exercise."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.records import LoaderSpec

__all__ = [
    "DELI_VARIANTS",
    "loader_of",
    "BENCH_BUCKET",
    "PEER_VARIANTS",
    "SIZES",
    "SLICED",
    "BenchOptions",
    "Cell",
    "PeerVariant",
    "build_matrix",
    "expand_loaders",
    "peer_family",
]

#: Bucket of the benchmark's datasets in the embedded S3 server.
BENCH_BUCKET = "delibench-bench"

#: Named sample sizes (mean JPEG bytes) of the matrix.
SIZES: dict[str, int] = {"small": 10_000, "imagenet": 110_000, "large": 1_000_000}

#: Per-size defaults: samples, emulated step time (batch of 32) and deli cache budget (share of
#: the dataset). Chosen so each cell runs in about a minute or two on 2 cores and so that, with the
#: default profile, the three cells land in the three regimes (see ``_DIAGONAL``).
_SIZE_DEFAULTS: dict[str, tuple[int, float, float]] = {
    "small": (768, 0.10, 1.0),
    "imagenet": (512, 0.04, 1.0),
    "large": (320, 0.25, 0.25),
}

#: The default matrix: one cell per regime (profile, size, bandwidth override). The bandwidth
#: cell narrows the cross-continent link to 25 MB/s: at its own 50 MB/s, decoding 1 MB JPEGs on
#: 2 cores (~85/s) binds before the link does once a quarter of the samples are cached.
_DIAGONAL: tuple[tuple[str, str, str, str | None], ...] = (
    ("latency", "cross-continent", "small", None),
    ("bandwidth", "cross-continent", "large", "25MB"),
    ("cpu", "same-region", "imagenet", None),
)

#: Loaders whose workers fetch one sample at a time: their epochs are uniform, so a slice of
#: ``naive_steps`` steps per epoch measures them (full epochs would take minutes at 150 ms RTT).
SLICED = ("bucket", "s3torchconnector", "fsspec-cache")


@dataclass(frozen=True)
class PeerVariant:
    """One configuration of a peer in the bench.

    Attributes:
        kind: Registered loader name.
        options: Its options.
        family: The project it belongs to (one row group of the peer table).
        how: The configuration in words, and where the guidance comes from.
    """

    kind: str
    options: dict[str, Any]
    family: str
    how: str


#: Every peer as it is commonly run and as its own documentation recommends for this data
#: (``--loaders peers`` runs them all; each name is also accepted alone). Same decode pipeline and
#: ``--num-workers`` worker processes for all but ``s3torchconnector@8w``, whose 8 workers share
#: the same cores (what its users raise to hide the per-object round trip).
PEER_VARIANTS: dict[str, PeerVariant] = {
    "s3torchconnector": PeerVariant("s3torchconnector", {}, "s3torchconnector",
                                    "S3MapDataset, one GET per sample per worker (README: DistributedSampler + DataLoader)"),
    "s3torchconnector@8w": PeerVariant("s3torchconnector", {"workers": 8}, "s3torchconnector",
                                       "S3MapDataset with 8 DataLoader workers on the same cores"),
    "s3torchconnector-shards": PeerVariant("s3torchconnector-shards", {}, "s3torchconnector",
                                           "S3IterableDataset over tar shards, enable_sharding, webdataset tar expander"),
    "webdataset@plain": PeerVariant("webdataset", {"shuffle": 0}, "webdataset", "WebDataset(urls): shards in order"),
    "webdataset": PeerVariant("webdataset", {}, "webdataset",
                              "shardshuffle, split_by_node/split_by_worker, .shuffle(1000) (webdataset docs)"),
    "litdata-raw": PeerVariant("litdata-raw", {}, "litdata", "StreamingRawDataset over the raw objects (README option 1)"),
    "litdata": PeerVariant("litdata", {}, "litdata",
                           "optimize() chunks + StreamingDataset(shuffle) + StreamingDataLoader (README option 2)"),
    "mosaic-streaming": PeerVariant("mosaic-streaming", {}, "mosaic-streaming",
                                    "MDSWriter shards + StreamingDataset(remote, local, shuffle, batch_size)"),
}

#: delibench's own loader reading the same images from the dataset's tar shards (the bench writes
#: every dataset as objects and as WebDataset shards, ``layout="both"``): each sample a ranged GET
#: of its shard (``members``), or whole shards fetched and sliced (``shards``). Options added to deli's.
DELI_VARIANTS: dict[str, dict[str, Any]] = {
    "deli-members": {"source": "members"},
    "deli-shards": {"source": "shards"},
}


def loader_of(name: str, *, cache_bytes: int, deli_options: dict[str, Any], local: Path) -> LoaderSpec:
    """The LoaderSpec a bench loader name stands for: a peer variant, a deli variant or a registered kind.

    deli and its variants get the cell's cache budget and the bench's deli options; ``disk`` reads
    the local copy at ``local``.
    """
    kind, label = name, None
    opts: dict[str, Any] = {}
    if name in PEER_VARIANTS:
        kind, opts = PEER_VARIANTS[name].kind, dict(PEER_VARIANTS[name].options)
        label = name if name != kind else None
    elif name in DELI_VARIANTS:
        kind, label = "deli", name
    if kind == "disk":
        opts = {"path": str(local)}
    elif kind == "deli":
        opts = {"cache_size": cache_bytes, **deli_options, **DELI_VARIANTS.get(name, {})}
    return LoaderSpec(kind, opts, label=label)


#: Loaders that are peers (compared in the peer table), by registered kind.
PEER_KINDS = frozenset({"fsspec-cache", *(v.kind for v in PEER_VARIANTS.values())})


def peer_family(name: str) -> str | None:
    """The peer project a loader's display name belongs to, or None for delibench's own loaders."""
    if name in PEER_VARIANTS:
        return PEER_VARIANTS[name].family
    kind = name.split("@", 1)[0]
    if kind not in PEER_KINDS:
        return None
    return next((v.family for v in PEER_VARIANTS.values() if v.kind == kind), kind)


def expand_loaders(names: Sequence[str]) -> list[str]:
    """``peers`` -> every name of :data:`PEER_VARIANTS`; other names unchanged (duplicates dropped)."""
    out: list[str] = []
    for name in names:
        for n in (PEER_VARIANTS if name == "peers" else [name]):
            if n not in out:
                out.append(n)
    return out


@dataclass(frozen=True)
class Cell:
    """One point of the matrix.

    Attributes:
        regime: What the cell is meant to exercise (``latency``, ``bandwidth``, ``cpu`` or ``custom``).
        profile: Link profile name.
        size: Key of :data:`SIZES`.
        samples: Samples in the dataset.
        step_time_s: Emulated accelerator time per batch.
        cache_fraction: deli's cache budget as a share of the dataset's bytes.
        batch_size: Samples per batch.
        bandwidth: Aggregate bandwidth override of the profile (``"10MB"``), or None.
    """

    regime: str
    profile: str
    size: str
    samples: int
    step_time_s: float
    cache_fraction: float
    batch_size: int = 32
    bandwidth: str | None = None

    @property
    def name(self) -> str:
        """``profile/size`` (plus the bandwidth override)."""
        bw = f"@{self.bandwidth}" if self.bandwidth else ""
        return f"{self.profile}{bw}/{self.size}"

    @property
    def accelerator_samples_per_s(self) -> float:
        """Samples/s the emulated accelerator consumes when never starved."""
        return self.batch_size / self.step_time_s


@dataclass(frozen=True)
class BenchOptions:
    """What :func:`run_bench` runs.

    Attributes:
        workdir: Datasets, testbed and scratch files (datasets are reused between runs).
        cells: The matrix (see :func:`build_matrix`).
        loaders: Loader kinds to compare (peers not installed are skipped with a note).
        epochs: Epochs per loader (epoch 2 shows what the caches keep).
        num_workers: DataLoader workers for every loader.
        warmup_steps: Steps at the start of each loader's run left out of every figure.
        naive_steps: Steps per epoch for the one-GET-at-a-time loaders (:data:`SLICED`); None = full.
        workload: Workload whose decode/augment pipeline every loader runs.
        deli_options: Extra deli options (``cache_size`` comes from the cell unless given).
        probe_s: Duration of each raw-fetch probe.
        seed: Sampler and data seed.
    """

    workdir: Path = Path(".delibench/bench")
    cells: tuple[Cell, ...] = ()
    loaders: tuple[str, ...] = ("disk", "bucket", "deli", "deli-members", "deli-shards", "fsspec-cache", "s3torchconnector", "webdataset")
    epochs: int = 2
    num_workers: int = 2
    warmup_steps: int = 3
    naive_steps: int | None = 6
    workload: str = "resnet50"
    deli_options: dict[str, Any] = field(
        default_factory=lambda: {"prefetch_depth": 512, "concurrency": 64}
    )
    probe_s: float = 2.0
    seed: int = 0


def build_matrix(
    profiles: Sequence[str] | None = None,
    sizes: Sequence[str] | None = None,
    *,
    quick: bool = False,
    step_time_s: float | None = None,
    cache_fraction: float | None = None,
    bandwidth: str | None = None,
) -> tuple[Cell, ...]:
    """The cells to run: the three-regime diagonal by default, else the product profiles x sizes.

    Args:
        profiles: Link profiles; None with ``sizes`` None = the default diagonal.
        sizes: Keys of :data:`SIZES`.
        quick: Quarter the sample counts (a smoke run of a few minutes).
        step_time_s: Override every cell's accelerator step time.
        cache_fraction: Override every cell's deli cache budget (share of the dataset).
        bandwidth: Override every cell's aggregate link bandwidth (``"10MB"``).

    Raises:
        UsageError: Unknown profile or size, or out-of-range overrides.
    """
    from delibench.testbed.profiles import get_profile

    for s in sizes or ():
        if s not in SIZES:
            raise UsageError(f"unknown sample size {s!r}", hint=f"use one of: {', '.join(SIZES)}")
    for p in profiles or ():
        get_profile(p)
    if step_time_s is not None and not step_time_s > 0:
        raise UsageError(f"step time must be positive, got {step_time_s}")
    if cache_fraction is not None and not 0 <= cache_fraction <= 1:
        raise UsageError(f"cache fraction must lie in [0, 1], got {cache_fraction}")
    if profiles is None and sizes is None:
        triples = list(_DIAGONAL)
    else:
        triples = [("custom", p, s, None) for p in (profiles or ["cross-region"]) for s in (sizes or ["imagenet"])]
    cells = []
    for regime, profile, size, cell_bandwidth in triples:
        samples, step, frac = _SIZE_DEFAULTS[size]
        if quick:
            samples = max(128, samples // 4)
        cells.append(
            Cell(
                regime=regime,
                profile=get_profile(profile).name,
                size=size,
                samples=samples,
                step_time_s=step_time_s if step_time_s is not None else step,
                cache_fraction=cache_fraction if cache_fraction is not None else frac,
                bandwidth=bandwidth if bandwidth is not None else cell_bandwidth,
            )
        )
    return tuple(cells)
