"""The loader benchmark: every loader against the physical bound of its environment, matrix of regimes.

``delibench bench`` and ``benchmarks/bench.py`` call :func:`run_bench`. For each cell of a matrix
(link profile x sample size, with an emulated accelerator rate and a cache budget) it starts
nothing new per loader: one SeaweedFS server, one link-emulator process per profile (detached, so
the emulator's CPU work never takes the measured process's GIL), one generated dataset per size.
It then measures, in the same run:

* **probes** — the object store's raw-fetch ceiling (many concurrent GETs from delibench's
  lightest client, presigned URLs on one aiohttp pool, direct and through the link, with the CPU
  the store and the emulator burn per object), the
  accelerator rate (batch / step time), the link's bandwidth (from the profile) and the best miss
  rate a cache of the budget can reach (:class:`delibench.tuning.simulator.CacheSimulator`,
  Belady and LRU over the same sampler orders);
* **loaders** — disk, bucket, deli, fsspec-cache, the installed peers (s3torchconnector,
  webdataset) and the memory loader (the same decode pipeline with the bytes already in RAM: the
  CPU decode/augment rate with the same workers, DS-Analyzer style), epochs interleaved through
  :func:`delibench.app.session.compare` so that machine noise hits all alike; CPU seconds per sample
  (main process + DataLoader workers) are attributed to each loader step by step.

The **physical bound** of an epoch is ``min(accelerator rate, CPU rate, link bandwidth / mean
sample size / miss rate, store ceiling / miss rate, no-fetch pipeline rate)``. The CPU rate is
``cores / (CPU per sample of the pipeline + miss rate x CPU per object of the co-located store and
emulator)``: on a testbed the store shares the cores with decoding, and counting it keeps
efficiency figures honest. The pipeline's CPU per sample is the steady-state CPU of the no-fetch
loaders (memory, disk; warm-up steps left out), and their measured rate in the epoch is the last
term (DS-Analyzer's prep rate: no loader that also fetches can beat the same pipeline fed from
RAM). The client's own CPU per GET is not in the bound: it is the loader's overhead, which the
benchmark exists to show.
A loader's efficiency is its throughput over the bound for the same epochs and sample counts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import RuntimeFailure, UsageError
from delibench.records import RunRecord, StepSample

__all__ = [
    "BENCH_BUCKET",
    "SIZES",
    "BenchOptions",
    "Bound",
    "Cell",
    "CellResult",
    "CpuMeter",
    "LoaderFigures",
    "build_matrix",
    "compute_bound",
    "fetch_term_rate",
    "wait_reduction_at_bound",
    "format_table",
    "loader_figures",
    "raw_fetch_ceiling",
    "run_bench",
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
_SLICED = ("bucket", "s3torchconnector", "fsspec-cache")


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
        naive_steps: Steps per epoch for the one-GET-at-a-time loaders (``_SLICED``); None = full.
        workload: Workload whose decode/augment pipeline every loader runs.
        deli_options: Extra deli options (``cache_size`` comes from the cell unless given).
        probe_s: Duration of each raw-fetch probe.
        seed: Sampler and data seed.
    """

    workdir: Path = Path(".delibench/bench")
    cells: tuple[Cell, ...] = ()
    loaders: tuple[str, ...] = ("disk", "bucket", "deli", "fsspec-cache", "s3torchconnector", "webdataset")
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


# -- CPU and memory accounting -----------------------------------------------------------------


class CpuMeter:
    """CPU seconds of this process, its DataLoader workers (live and reaped) and named outside processes.

    ``os.times()`` adds a child's CPU once it has been reaped; live children are read with psutil,
    so a snapshot counts every worker exactly once, whether its epoch has ended or not.

    Args:
        external: Name -> pid of processes to account separately (the store, the link emulator);
            they are excluded from the workers even when they are our children.
    """

    def __init__(self, external: dict[str, int] | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.external = dict(external or {})
        self._ext = {}
        for name, pid in self.external.items():
            try:
                self._ext[name] = psutil.Process(pid)
            except psutil.Error:
                continue

    def _cpu(self, proc: Any) -> float:
        try:
            t = proc.cpu_times()
            return float(t.user + t.system)
        except self._psutil.Error:
            return 0.0

    def snapshot(self) -> dict[str, float]:
        """CPU seconds so far: ``main``, ``workers`` and one entry per external process."""
        t = os.times()
        external_pids = set(self.external.values())
        live = 0.0
        for child in self._me.children(recursive=True):
            if child.pid not in external_pids:
                live += self._cpu(child)
        out = {"main": t.user + t.system, "workers": t.children_user + t.children_system + live}
        for name, proc in self._ext.items():
            out[name] = self._cpu(proc)
        # Reaped children of the external ones never count as workers.
        return out

    def rss_bytes(self) -> int:
        """Resident memory of this process plus the private (USS) memory of its workers.

        Forked workers share the parent's pages; counting their USS counts each page once.
        """
        total = self._me.memory_info().rss
        external_pids = set(self.external.values())
        for child in self._me.children(recursive=True):
            if child.pid in external_pids:
                continue
            try:
                total += child.memory_full_info().uss
            except self._psutil.Error:
                continue
        return int(total)


def _delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in b}


# -- probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchCeiling:
    """Raw-fetch probe result.

    Attributes:
        endpoint: ``direct`` or ``link``.
        objects_per_s: GETs completed per second with ``threads`` in flight.
        bytes_per_s: Bytes per second.
        threads: GETs in flight.
        requests: GETs done.
        cpu_s_per_object: CPU seconds per object burnt by each outside process (store, link) and
            by the probe's own client.
    """

    endpoint: str
    objects_per_s: float
    bytes_per_s: float
    threads: int
    requests: int
    cpu_s_per_object: dict[str, float]


def raw_fetch_ceiling(
    endpoint_url: str,
    bucket: str,
    keys: Sequence[str],
    *,
    label: str,
    duration_s: float = 2.0,
    threads: int = 64,
    meter: CpuMeter | None = None,
) -> FetchCeiling:
    """GET ``keys`` (cycling) with ``threads`` requests in flight for ``duration_s``: the store's ceiling.

    Uses the lightest client delibench has (presigned URLs on one aiohttp pool, see
    :mod:`delibench.loaders.s3http`: a third of botocore's CPU per object), so the ceiling is
    the store's and not the probe's own client's. Connections are opened before the clock starts.
    """
    import fsspec.asyn
    import s3fs

    from delibench.loaders.s3http import LeanS3Reader

    fs = s3fs.S3FileSystem(
        endpoint_url=endpoint_url,
        key=os.environ.get("AWS_ACCESS_KEY_ID", "bench"),
        secret=os.environ.get("AWS_SECRET_ACCESS_KEY", "bench-secret"),
        client_kwargs={"region_name": os.environ.get("AWS_REGION", "us-east-1")},
        skip_instance_cache=True,
    )
    reader = LeanS3Reader(fs, pool_size=threads)
    paths = [f"{bucket}/{k}" for k in keys]
    counter = {"n": 0, "bytes": 0}
    clock: dict[str, Any] = {}

    async def probe() -> None:
        import asyncio

        try:
            await asyncio.gather(*(reader.get(paths[i % len(paths)]) for i in range(threads)))  # warm
            clock["before"] = meter.snapshot() if meter else {}
            clock["start"] = time.perf_counter()
            deadline = clock["start"] + duration_s

            async def worker(offset: int) -> None:
                i = offset
                while time.perf_counter() < deadline:
                    body = await reader.get(paths[i % len(paths)])
                    i += threads
                    counter["n"] += 1
                    counter["bytes"] += len(body)

            await asyncio.gather(*(worker(t) for t in range(threads)))
            clock["elapsed"] = time.perf_counter() - clock["start"]
            clock["after"] = meter.snapshot() if meter else {}
        finally:
            await reader.close()

    try:
        fsspec.asyn.sync(fs.loop, probe)
    finally:
        from delibench.storage import close_filesystem

        close_filesystem(fs)
    n = max(counter["n"], 1)
    cpu = {k: v / n for k, v in _delta(clock["before"], clock["after"]).items() if k != "workers"}
    elapsed = clock["elapsed"]
    return FetchCeiling(label, counter["n"] / elapsed, counter["bytes"] / elapsed, threads, counter["n"], cpu)


# -- the bound ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """The physical bound of one epoch, with every input.

    Attributes:
        epoch: Epoch index.
        miss_rate: Best miss rate a cache of the budget can reach in this epoch (simulated).
        accelerator_per_s: Batch / step time.
        cpu_per_s: Cores / (pipeline CPU per sample + miss rate x store/emulator CPU per object),
            the pipeline's CPU per sample being the no-fetch loaders' steady-state CPU.
        link_per_s: Link bandwidth / mean sample bytes / miss rate.
        store_per_s: Raw-fetch ceiling (direct) / miss rate.
        samples_per_s: The minimum of the terms.
        binds: Which term is the minimum.
        pipeline_per_s: Measured rate of the same decode pipeline with no fetch at all (the memory
            and disk loaders, DS-Analyzer's prep rate) in this epoch: a loader that also fetches
            cannot beat it. Below the accelerator it holds what CPU time alone does not show (the
            hand-over to the workers, their scheduling, the jitter of the last batch).
        fill_s: Time before the first byte of an epoch can arrive: the round trips of a new
            connection and of the first request (the rates above are steady-state rates).
        drain_s: Time after the epoch's last byte has arrived that no loader can avoid: that
            sample's decode and the last step. Fill and drain are added to the fetch terms of an
            epoch measured whole (:func:`fetch_term_rate`); with epochs of 10 batches they are
            several per cent of a bandwidth-bound epoch.
    """

    epoch: int
    miss_rate: float
    accelerator_per_s: float
    cpu_per_s: float
    link_per_s: float
    store_per_s: float
    samples_per_s: float
    binds: str
    pipeline_per_s: float = math.inf
    fill_s: float = 0.0
    drain_s: float = 0.0


def compute_bound(
    *,
    epoch: int,
    miss_rate: float,
    accelerator_per_s: float,
    cores: float,
    pipeline_cpu_s_per_sample: float | None,
    testbed_cpu_s_per_object: float,
    link_bytes_per_s: float,
    mean_sample_bytes: float,
    store_objects_per_s: float,
    pipeline_per_s: float = math.inf,
    fill_s: float = 0.0,
    drain_s: float = 0.0,
) -> Bound:
    """``min(accelerator, CPU, link bandwidth / size / miss, store ceiling / miss, no-fetch pipeline)`` for one epoch.

    A zero bandwidth (an unshaped link) or a zero miss rate leaves that term unbounded. ``fill_s``
    and ``drain_s`` are kept for :func:`fetch_term_rate` (see :class:`Bound`).
    """

    def per_miss(rate: float) -> float:
        if rate <= 0:
            return math.inf
        return math.inf if miss_rate <= 0 else rate / miss_rate

    cpu_cost = (pipeline_cpu_s_per_sample or 0.0) + miss_rate * testbed_cpu_s_per_object
    terms = {
        "accelerator": accelerator_per_s,
        "cpu": cores / cpu_cost if cpu_cost > 0 else math.inf,
        "link": per_miss(link_bytes_per_s / mean_sample_bytes if link_bytes_per_s > 0 else 0.0),
        "store": per_miss(store_objects_per_s),
        "pipeline": pipeline_per_s,
    }
    binds = min(terms, key=lambda k: terms[k])
    return Bound(epoch, miss_rate, terms["accelerator"], terms["cpu"], terms["link"], terms["store"], terms[binds], binds,
                 pipeline_per_s, fill_s, drain_s)


# -- per-loader figures ------------------------------------------------------------------------


@dataclass(frozen=True)
class LoaderFigures:
    """What the benchmark reports for one loader in one cell (warm-up steps excluded).

    Attributes:
        loader: Display name.
        samples: Samples counted.
        samples_per_epoch: Counted samples of each epoch.
        throughput_per_s: Samples / (wait + compute) of the counted steps.
        epoch_throughput_per_s: The same per epoch.
        wait_fraction: Σ wait / Σ (wait + compute).
        wait_s_per_sample: Σ wait / samples (what the accelerator waits per sample delivered).
        bound_per_s: The physical bound for the same epochs and sample counts.
        efficiency: Throughput / bound.
        wait_reduction_vs_bucket: 1 - wait per sample / the bucket loader's.
        fetch_stall_removed: Share of the bucket loader's *fetch* stall removed: 1 - (wait per
            sample - the no-fetch pipeline's) / (the bucket loader's - the no-fetch pipeline's).
            Where the CPU binds, the accelerator waits even for data already in RAM (the prep
            stall); no loader can remove that part, so this is what a loader is answerable for.
        cpu_s_per_sample: CPU seconds per sample of the main process and of the workers.
        requests: GETs issued.
        sliced: Epochs were cut to ``naive_steps`` steps.
        warmup_samples: Samples of the warm-up steps (all in epoch 0; else 0).
        warmup_s: Their wait + compute time, time to the first batch included.
    """

    loader: str
    samples: int
    samples_per_epoch: tuple[int, ...]
    throughput_per_s: float
    epoch_throughput_per_s: tuple[float, ...]
    wait_fraction: float
    wait_s_per_sample: float
    bound_per_s: float = 0.0
    efficiency: float = 0.0
    wait_reduction_vs_bucket: float | None = None
    fetch_stall_removed: float | None = None
    cpu_s_per_sample: dict[str, float] = field(default_factory=dict)
    requests: int = 0
    sliced: bool = False
    warmup_samples: int = 0
    warmup_s: float = 0.0


def loader_figures(name: str, steps: Sequence[StepSample], warmup_steps: int) -> LoaderFigures:
    """Throughput and wait of one loader's timeline, its first ``warmup_steps`` steps left out."""
    steps = list(steps)
    counted = steps[warmup_steps:]
    if not counted:
        raise RuntimeFailure(f"loader {name!r} measured no step after the warm-up")
    warmup = steps[:warmup_steps]
    in_epoch0 = bool(warmup) and all(s.epoch == 0 for s in warmup) and counted[0].epoch == 0
    epochs = sorted({s.epoch for s in counted})
    per_epoch_n, per_epoch_rate = [], []
    for e in epochs:
        es = [s for s in counted if s.epoch == e]
        n = sum(s.samples for s in es)
        t = sum(s.wait_s + s.compute_s for s in es)
        per_epoch_n.append(n)
        per_epoch_rate.append(n / t if t > 0 else math.inf)
    wait = sum(s.wait_s for s in counted)
    total = sum(s.wait_s + s.compute_s for s in counted)
    n = sum(per_epoch_n)
    return LoaderFigures(
        loader=name,
        samples=n,
        samples_per_epoch=tuple(per_epoch_n),
        throughput_per_s=n / total if total > 0 else math.inf,
        epoch_throughput_per_s=tuple(per_epoch_rate),
        wait_fraction=wait / total if total > 0 else 0.0,
        wait_s_per_sample=wait / n if n else 0.0,
        warmup_samples=sum(s.samples for s in warmup) if in_epoch0 else 0,
        warmup_s=sum(s.wait_s + s.compute_s for s in warmup) if in_epoch0 else 0.0,
    )


def fetch_term_rate(
    bound: Bound, counted: int, *, warmup_samples: int = 0, warmup_s: float = 0.0, whole_epoch: bool = True
) -> float:
    """The epoch's bound for ``counted`` samples measured after a warm-up of ``warmup_s``.

    The fetch terms (link, store) are steady-state rates; an epoch also needs ``fill_s`` before its
    first byte and ``drain_s`` after its last one (when the counted steps reach the epoch's end:
    ``whole_epoch``). The link and the store could already work during the warm-up (a loader that
    looks ahead does), so they only have to carry what the warm-up did not:
    ``counted / (fill + (warmup + counted) / term + drain - warmup_s)``. This is the most any
    loader could reach in the counted window; one that fetched nothing during its warm-up scores
    lower.
    """
    rate = min(bound.accelerator_per_s, bound.cpu_per_s, bound.pipeline_per_s)
    fixed_s = bound.fill_s + (bound.drain_s if whole_epoch else 0.0)
    for term in (bound.link_per_s, bound.store_per_s):
        if math.isfinite(term) and term > 0:
            need_s = fixed_s + (warmup_samples + counted) / term - warmup_s
            rate = min(rate, counted / need_s if need_s > 0 else math.inf)
    return rate


def _bound_for(fig: LoaderFigures, bounds: Sequence[Bound]) -> float:
    """Samples / Σ (epoch samples / epoch bound): the bound weighted by this loader's sample counts.

    Epoch 0 is credited with the link time of the warm-up steps; every epoch's fetch terms carry
    its fill and, when measured to its end, its drain (see :func:`fetch_term_rate`).
    """
    t = 0.0
    for i, n in enumerate(fig.samples_per_epoch):
        b = bounds[min(i, len(bounds) - 1)]
        head = i == 0 and fig.warmup_s > 0
        rate = fetch_term_rate(b, n, warmup_samples=fig.warmup_samples if head else 0,
                               warmup_s=fig.warmup_s if head else 0.0, whole_epoch=not fig.sliced)
        t += n / rate
    return fig.samples / t if t > 0 else math.inf


@dataclass
class CellResult:
    """Everything measured in one cell (JSON-ready through :meth:`to_json`)."""

    cell: Cell
    dataset_url: str
    mean_sample_bytes: float
    dataset_bytes: int
    cache_size_bytes: int
    ceilings: list[FetchCeiling]
    decode_per_core_per_s: float
    pipeline_cpu_s_per_sample: float | None
    testbed_cpu_s_per_object: float
    bounds: list[Bound]
    figures: list[LoaderFigures]
    memory: dict[str, Any]
    records: list[RunRecord]
    notes: list[str]
    load_average: tuple[float, float, float]
    wall_s: float

    def figure(self, loader: str) -> LoaderFigures | None:
        """The figures of ``loader`` (display name), if it ran."""
        return next((f for f in self.figures if f.loader == loader), None)

    def to_json(self) -> dict[str, Any]:
        """The cell as plain JSON types (RunRecords through :func:`delibench.records.to_dict`)."""
        from delibench.records import to_dict

        def clean(obj: Any) -> Any:
            if isinstance(obj, float) and not math.isfinite(obj):
                return None
            if isinstance(obj, dict):
                return {k: clean(v) for k, v in obj.items()}
            if isinstance(obj, (list, tuple)):
                return [clean(v) for v in obj]
            return obj

        out = {
            "cell": dataclasses.asdict(self.cell) | {"name": self.cell.name},
            "dataset_url": self.dataset_url,
            "mean_sample_bytes": self.mean_sample_bytes,
            "dataset_bytes": self.dataset_bytes,
            "cache_size_bytes": self.cache_size_bytes,
            "ceilings": [dataclasses.asdict(c) for c in self.ceilings],
            "decode_per_core_per_s": self.decode_per_core_per_s,
            "pipeline_cpu_s_per_sample": self.pipeline_cpu_s_per_sample,
            "testbed_cpu_s_per_object": self.testbed_cpu_s_per_object,
            "bounds": [dataclasses.asdict(b) for b in self.bounds],
            "figures": [dataclasses.asdict(f) for f in self.figures],
            "memory": self.memory,
            "notes": self.notes,
            "load_average": list(self.load_average),
            "wall_s": self.wall_s,
        }
        out = clean(out)
        out["records"] = [to_dict(r) for r in self.records]
        return out


# -- the testbed of the benchmark --------------------------------------------------------------


class _BenchBed:
    """One SeaweedFS server and one detached link-emulator process per link profile."""

    def __init__(self, workdir: Path) -> None:
        from delibench.testbed.testbed import Testbed

        self.workdir = workdir
        self.tb = Testbed.start(workdir / "testbed", profile="local", services=("s3",), detached=True)
        self.direct_url = self.tb.s3_direct_url or ""
        self.store_pid = next((p.pid for p in self.tb.state.processes if "weed" in p.name or "s3" in p.name), None)
        self._links: dict[str, tuple[subprocess.Popen[bytes], str]] = {}

    def link(self, profile: Any) -> tuple[str, int]:
        """Endpoint and pid of the emulator for ``profile`` (started on first use)."""
        import socket

        from delibench.testbed.servers import free_ports

        if profile.name not in self._links:
            port = free_ports(1)[0]
            upstream = self.direct_url.split("//", 1)[1]
            log = open(self.workdir / f"link-{profile.name.replace('+', '_')}.log", "wb")  # noqa: SIM115 - owned by the process
            proc = subprocess.Popen(
                [sys.executable, "-m", "delibench.testbed.link", "--upstream", upstream,
                 "--profile-json", json.dumps(dataclasses.asdict(profile)), "--listen-port", str(port)],
                stdout=log, stderr=subprocess.STDOUT,
            )
            deadline = time.monotonic() + 30
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
                    break
                except OSError:
                    if proc.poll() is not None or time.monotonic() > deadline:
                        proc.kill()
                        raise RuntimeFailure(f"link emulator for {profile.name!r} did not start (see {log.name})") from None
                    time.sleep(0.1)
            self._links[profile.name] = (proc, f"http://127.0.0.1:{port}")
        proc, url = self._links[profile.name]
        return url, proc.pid

    def stop(self) -> None:
        """Stop the emulators and the server."""
        for proc, _ in self._links.values():
            proc.terminate()
        for proc, _ in self._links.values():
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        self._links.clear()
        self.tb.stop()


def _env_set(values: dict[str, str]) -> dict[str, str | None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    return old


def _env_restore(old: dict[str, str | None]) -> None:
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


def _dataset(bed: _BenchBed, workdir: Path, cell: Cell, seed: int, log: Callable[[str], None]) -> tuple[Path, str, Any]:
    """Generate (once per size and count) and push (once per server) the cell's dataset."""
    from delibench.loaders.publish import push
    from delibench.manifest import MANIFEST_NAME, read_manifest
    from delibench.workloads.datagen import make_dataset

    tag = f"{cell.size}-{cell.samples}"
    local = workdir / "data" / tag
    if not (local / MANIFEST_NAME).exists():
        log(f"  generating {cell.samples} ~{SIZES[cell.size] / 1000:g} KB JPEGs in {local}")
        make_dataset(local, samples=cell.samples, mean_bytes=SIZES[cell.size], layout="both",
                     shard_samples=max(16, cell.samples // 8), seed=seed, overwrite=True)
    url = f"s3://{BENCH_BUCKET}/{tag}"
    old = _env_set({"AWS_ENDPOINT_URL": bed.direct_url})
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        try:
            manifest = read_manifest(url)
        except Exception:  # noqa: BLE001 - not pushed yet to this server
            log(f"  uploading {tag} to {url}")
            manifest = push(local, url)
    finally:
        _env_restore(old)
    return local, url, manifest


def _best_miss_rates(manifest: Any, cache_bytes: int, epochs: int, seed: int, deli_misses: Sequence[float]) -> list[float]:
    """Per epoch: the lowest miss rate of Belady, LRU (simulated on the same orders) and deli's own."""
    from delibench.tuning.simulator import CacheSimulator

    sim = CacheSimulator([s.size_bytes for s in manifest.samples], epochs=epochs, seed=seed)
    rates = []
    for e in range(epochs):
        best = min(1.0 - sim.run(cache_bytes, policy).epoch_hit_rates[e] for policy in ("belady", "lru"))
        if e < len(deli_misses):
            best = min(best, deli_misses[e])
        rates.append(best)
    return rates


def _installed(kind: str) -> bool:
    from delibench.plugins import loaders

    try:
        loaders.get(kind)
        return True
    except Exception:  # noqa: BLE001 - an optional peer that does not import
        return False


def _run_cell(cell: Cell, options: BenchOptions, bed: _BenchBed, log: Callable[[str], None]) -> CellResult:
    from delibench.records import ComputeSpec, LoaderSpec, RunSpec
    from delibench.app.session import compare, warm_decoder
    from delibench.testbed.profiles import with_overrides
    from delibench.workloads.loop import probe_decode_rate
    from delibench.workloads.models import get_workload

    started = time.perf_counter()
    notes: list[str] = []
    local, url, manifest = _dataset(bed, options.workdir, cell, options.seed, log)
    profile = with_overrides(cell.profile, bandwidth=cell.bandwidth)
    link_url, link_pid = bed.link(profile)
    external = {"link": link_pid}
    if bed.store_pid:
        external["store"] = bed.store_pid
    meter = CpuMeter(external)
    keys = [s.key for s in manifest.samples]
    bucket = BENCH_BUCKET
    prefix = url.split("/", 3)[3]
    full_keys = [f"{prefix}/{k}" for k in keys]

    # Probes: the store's ceiling direct and through the link, the decode rate of one core.
    log(f"  probing the store ({options.probe_s:g} s direct, {options.probe_s:g} s through the link)")
    ceilings = [
        raw_fetch_ceiling(bed.direct_url, bucket, full_keys, label="direct", duration_s=options.probe_s, meter=meter),
        raw_fetch_ceiling(link_url, bucket, full_keys, label="link", duration_s=options.probe_s, threads=128, meter=meter),
    ]
    direct = ceilings[0]
    testbed_cpu = sum(direct.cpu_s_per_object.get(k, 0.0) for k in ("store",)) + ceilings[1].cpu_s_per_object.get("link", 0.0)
    decoder = get_workload(options.workload).decoder(train=True)
    warm_decoder(decoder)
    items = [((local / s.key).read_bytes(), s.label) for s in manifest.samples[:32]]
    decode_rate = probe_decode_rate(decoder, items, min_time_s=0.5).samples_per_s

    cache_bytes = int(cell.cache_fraction * manifest.total_bytes)
    kinds = []
    for kind in options.loaders:
        if kind in ("s3torchconnector", "webdataset") and not _installed(kind):
            notes.append(f"{kind} is not installed: skipped (pip install 'delibench[peers]')")
            continue
        kinds.append(kind)
    if "memory" not in kinds:
        kinds.append("memory")

    def spec(kind: str) -> RunSpec:
        opts: dict[str, Any] = {}
        if kind == "disk":
            opts = {"path": str(local)}
        elif kind == "deli":
            opts = {"cache_size": cache_bytes, **options.deli_options}
        return RunSpec(
            dataset_url=url,
            workload=options.workload,
            loader=LoaderSpec(kind, opts),
            compute=ComputeSpec("emulated", cell.step_time_s),
            batch_size=cell.batch_size,
            num_workers=options.num_workers,
            epochs=options.epochs,
            warmup_steps=options.warmup_steps,
            seed=options.seed,
            max_steps_per_epoch=options.naive_steps if kind in _SLICED else None,
            link_profile=profile.name,
        )

    env = {"AWS_ENDPOINT_URL": link_url, "DELIBENCH_LINK_PROFILE": profile.name}
    env.setdefault("AWS_ACCESS_KEY_ID", os.environ.get("AWS_ACCESS_KEY_ID", "bench"))
    env.setdefault("AWS_SECRET_ACCESS_KEY", os.environ.get("AWS_SECRET_ACCESS_KEY", "bench-secret"))
    env.setdefault("AWS_REGION", os.environ.get("AWS_REGION", "us-east-1"))
    old = _env_set(env)
    try:
        import s3fs

        s3fs.S3FileSystem.clear_instance_cache()
        # Memory: deli alone first, so its peak is not mixed with the other loaders' buffers.
        memory = _memory_run(spec("deli"), meter, cache_bytes, manifest, options, log)
        s3fs.S3FileSystem.clear_instance_cache()
        cpu_by_loader: dict[str, dict[str, float]] = {}
        steps_seen: dict[str, int] = {}
        last = {"name": None, "snap": meter.snapshot(), "t": time.perf_counter()}

        def on_step(name: str, step: StepSample) -> None:
            snap = meter.snapshot()
            steps_seen[name] = steps_seen.get(name, 0) + 1
            # NOTE: only the steps the throughput counts: the warm-up holds one-off work (the
            # memory loader's load, worker start-up) that would otherwise inflate CPU per sample.
            if steps_seen[name] > options.warmup_steps:
                acc = cpu_by_loader.setdefault(name, {"samples": 0.0})
                for k, v in _delta(last["snap"], snap).items():  # type: ignore[arg-type]
                    acc[k] = acc.get(k, 0.0) + v
                acc["samples"] += step.samples
            last["snap"] = snap

        log(f"  measuring {', '.join(kinds)} ({options.epochs} epochs, interleaved)")
        records = compare([spec(k) for k in kinds], write=False, on_step=on_step, price=False)
        s3fs.S3FileSystem.clear_instance_cache()
    finally:
        _env_restore(old)

    figures = []
    for rec in records:
        fig = loader_figures(rec.spec.loader.display_name, rec.timeline, options.warmup_steps)
        cpu = cpu_by_loader.get(fig.loader, {})
        n = cpu.get("samples", 0.0) or 1.0
        fig = dataclasses.replace(
            fig,
            cpu_s_per_sample={k: v / n for k, v in cpu.items() if k != "samples"},
            requests=rec.loader_stats.requests_count,
            sliced=rec.spec.max_steps_per_epoch is not None,
        )
        figures.append(fig)
    by_name = {f.loader: f for f in figures}
    deli_rec = next((r for r in records if r.spec.loader.kind == "deli"), None)
    deli_misses: list[float] = []
    if deli_rec is not None:
        st = deli_rec.loader_stats
        n0 = len(manifest)
        extra = max(0, st.cache_misses - n0)
        deli_misses = [1.0] + [extra / (n0 * (options.epochs - 1))] * (options.epochs - 1) if options.epochs > 1 else [1.0]
    misses = _best_miss_rates(manifest, cache_bytes, options.epochs, options.seed, deli_misses)
    mem_fig = by_name.get("memory")
    no_fetch = [f for f in (by_name.get("disk"), mem_fig) if f is not None]
    # Steady-state CPU per sample of the pipeline with no fetch (disk reads local files in the
    # workers; memory hands bytes over as deli does): the cheaper one.
    costs = [
        f.cpu_s_per_sample.get("main", 0.0) + f.cpu_s_per_sample.get("workers", 0.0)
        for f in no_fetch
        if f.cpu_s_per_sample
    ]
    steady_cpu = min(costs) if costs else None
    cores = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    bounds = []
    for e, m in enumerate(misses):
        rates = [f.epoch_throughput_per_s[e] for f in no_fetch if e < len(f.epoch_throughput_per_s)]
        epoch_cpu = steady_cpu
        if epoch_cpu is not None and rates:
            # The pipeline cannot have burnt more than every core for the whole epoch: at its measured
            # rate that caps its CPU per sample (the process-tree CPU readings carry ~10 % error).
            epoch_cpu = min(epoch_cpu, cores / max(rates))
        bounds.append(compute_bound(
            epoch=e,
            miss_rate=m,
            accelerator_per_s=cell.accelerator_samples_per_s,
            cores=cores,
            pipeline_cpu_s_per_sample=epoch_cpu,
            testbed_cpu_s_per_object=testbed_cpu,
            link_bytes_per_s=profile.bandwidth_bytes_per_s,
            mean_sample_bytes=manifest.mean_sample_bytes,
            store_objects_per_s=direct.objects_per_s,
            pipeline_per_s=max(rates) if rates else math.inf,
            # The first byte needs a new connection's round trips in epoch 0 (after a pause, one
            # round trip); after the last byte, that sample's decode and the last step remain.
            fill_s=profile.rtt_s * ((profile.connect_rtts + 1) if e == 0 else 1),
            drain_s=cell.step_time_s + (epoch_cpu or 0.0),
        ))
    bucket_fig = by_name.get("bucket")
    prep_wait = min((f.wait_s_per_sample for f in no_fetch), default=0.0)
    # The no-fetch loaders read no bucket: their bound has no link, store or fetch-CPU term.
    local_bounds = [
        compute_bound(epoch=b.epoch, miss_rate=0.0, accelerator_per_s=b.accelerator_per_s, cores=cores,
                      pipeline_cpu_s_per_sample=steady_cpu, testbed_cpu_s_per_object=0.0, link_bytes_per_s=0.0,
                      mean_sample_bytes=manifest.mean_sample_bytes, store_objects_per_s=0.0,
                      pipeline_per_s=b.pipeline_per_s)
        for b in bounds
    ]
    final = []
    for fig in figures:
        bound = _bound_for(fig, local_bounds if fig in no_fetch else bounds)
        reduction = stall_removed = None
        if bucket_fig is not None and bucket_fig.wait_s_per_sample > 0:
            reduction = 1.0 - fig.wait_s_per_sample / bucket_fig.wait_s_per_sample
            stall = bucket_fig.wait_s_per_sample - prep_wait
            if stall > 0:
                stall_removed = 1.0 - max(0.0, fig.wait_s_per_sample - prep_wait) / stall
        final.append(dataclasses.replace(fig, bound_per_s=bound, efficiency=fig.throughput_per_s / bound if bound else 0.0,
                                         wait_reduction_vs_bucket=reduction, fetch_stall_removed=stall_removed))
    if any(f.sliced for f in final):
        notes.append(
            f"{', '.join(f.loader for f in final if f.sliced)} ran {options.naive_steps} steps per epoch (one GET at a time "
            "per worker: uniform epochs); fsspec-cache's second epoch then finds only that slice cached"
        )
    return CellResult(
        cell=cell,
        dataset_url=url,
        mean_sample_bytes=manifest.mean_sample_bytes,
        dataset_bytes=manifest.total_bytes,
        cache_size_bytes=cache_bytes,
        ceilings=ceilings,
        decode_per_core_per_s=decode_rate,
        pipeline_cpu_s_per_sample=steady_cpu,
        testbed_cpu_s_per_object=testbed_cpu,
        bounds=bounds,
        figures=final,
        memory=memory,
        records=records,
        notes=notes,
        load_average=os.getloadavg(),
        wall_s=time.perf_counter() - started,
    )


#: Fixed memory allowed on top of the cache budget: the process as it was before the loader was
#: built (interpreter, torch, decoder), plus per DataLoader worker and a floor for buffers.
WORKER_ALLOWANCE_BYTES = 384 * 2**20
FIXED_FLOOR_BYTES = 128 * 2**20


def _memory_run(spec: Any, meter: CpuMeter, cache_bytes: int, manifest: Any, options: BenchOptions,
                log: Callable[[str], None]) -> dict[str, Any]:
    """Run deli alone and sample the RSS of main + workers: peak vs cache budget + fixed overhead."""
    import gc

    from delibench.app.session import compare

    gc.collect()
    baseline = meter.rss_bytes()
    peak = {"rss": baseline, "t": 0.0}

    def on_step(_name: str, _step: StepSample) -> None:
        now = time.perf_counter()
        if now - peak["t"] >= 0.2:
            peak["t"] = now
            peak["rss"] = max(peak["rss"], meter.rss_bytes())

    log("  memory: deli alone, sampling RSS (main + worker USS)")
    (rec,) = compare([spec], write=False, on_step=on_step, price=False)
    peak["rss"] = max(peak["rss"], meter.rss_bytes())
    prefetch_window = options.deli_options.get("prefetch_depth", 256) * max(s.size_bytes for s in manifest.samples)
    allowance = baseline + options.num_workers * WORKER_ALLOWANCE_BYTES + FIXED_FLOOR_BYTES + prefetch_window
    gc.collect()
    return {
        "baseline_rss_bytes": baseline,
        "peak_rss_bytes": peak["rss"],
        "cache_size_bytes": cache_bytes,
        "cache_peak_bytes": rec.loader_stats.cache_peak_bytes,
        "prefetch_peak_bytes": rec.loader_stats.prefetch_peak_bytes,
        "fixed_overhead_allowed_bytes": allowance,
        "within_budget": peak["rss"] <= cache_bytes + allowance,
        "rule": "peak RSS (main + worker USS) <= cache_size + baseline RSS + workers x "
        f"{WORKER_ALLOWANCE_BYTES // 2**20} MiB + {FIXED_FLOOR_BYTES // 2**20} MiB + prefetch_depth x largest sample",
    }


# -- driver and table -------------------------------------------------------------------------


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_bench(
    options: BenchOptions,
    *,
    out: Path | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every cell of ``options.cells`` and return (and write to ``out``) the JSON document.

    Everything started is stopped before returning, also on error or Ctrl-C.
    """
    if not options.cells:
        raise UsageError("no benchmark cell to run", hint="use build_matrix() or give --profiles/--sizes")
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    options = dataclasses.replace(options, workdir=workdir)
    doc: dict[str, Any] = {
        "benchmark": "delibench bench",
        "command": command,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "load_average_start": list(os.getloadavg()),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items() if k != "cells"},
        "cells": [],
    }
    log(f"starting SeaweedFS in {workdir / 'testbed'}")
    bed = _BenchBed(workdir)
    old_env = _env_set({k: v for k, v in bed.tb.env.items() if k != "AWS_ENDPOINT_URL"})
    try:
        bed.tb.make_bucket(BENCH_BUCKET)
        for cell in options.cells:
            log(f"cell {cell.name} ({cell.regime}): {cell.samples} samples, step {cell.step_time_s * 1000:g} ms "
                f"per batch of {cell.batch_size}, deli cache {cell.cache_fraction:.0%} of the dataset")
            result = _run_cell(cell, options, bed, log)
            doc["cells"].append(result.to_json())
            log(format_table(result))
            if out is not None:
                _write(out, doc)
    finally:
        _env_restore(old_env)
        bed.stop()
    doc["load_average_end"] = list(os.getloadavg())
    if out is not None:
        _write(out, doc)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)


_PEERS = ("fsspec-cache", "s3torchconnector", "webdataset")


def wait_reduction_at_bound(fig: dict[str, Any], bucket: dict[str, Any] | None) -> float | None:
    """The wait reduction vs ``bucket`` that a loader running exactly at ``fig``'s bound would reach.

    Why: where the link binds, the accelerator waits even at the bound (the bytes of each miss
    must cross the link), so "remove 97 % of the wait" can be out of reach for any loader; this
    says how much is reachable. At the bound a sample costs ``1 / bound`` of which the step's
    compute (``1 / throughput - wait``) is not waiting.
    """
    if bucket is None or not bucket.get("wait_s_per_sample") or not fig.get("bound_per_s"):
        return None
    rate = fig["throughput_per_s"]
    if not rate or not math.isfinite(rate) or not math.isfinite(fig["bound_per_s"]):
        return None
    compute_s = max(0.0, 1.0 / rate - fig["wait_s_per_sample"])
    wait_at_bound = max(0.0, 1.0 / fig["bound_per_s"] - compute_s)
    return 1.0 - wait_at_bound / bucket["wait_s_per_sample"]


def format_table(result: CellResult | dict[str, Any]) -> str:
    """A plain-text table of one cell: throughput, wait, efficiency, reduction, ratio vs best peer."""
    data = result.to_json() if isinstance(result, CellResult) else result
    figs = data["figures"]
    by = {f["loader"]: f for f in figs}
    peer_rates = [by[p]["throughput_per_s"] for p in _PEERS if p in by]
    best_peer = max(peer_rates) if peer_rates else None
    cell = data["cell"]
    bounds = data["bounds"]
    lines = [
        f"{cell['name']} [{cell['regime']}]  bound per epoch: "
        + ", ".join(f"e{b['epoch']} {b['samples_per_s']:.0f}/s ({b['binds']}, miss {b['miss_rate']:.2f})" for b in bounds),
        f"  accel {bounds[0]['accelerator_per_s']:.0f}/s  cpu {bounds[0]['cpu_per_s']:.0f}/s  "
        f"link {_num(bounds[0]['link_per_s'])}/s  store {_num(bounds[0]['store_per_s'])}/s (cold)  "
        f"no-fetch pipeline " + "/".join(_num(b.get("pipeline_per_s")) for b in bounds) + "/s  "
        f"ceilings: " + ", ".join(f"{c['endpoint']} {c['objects_per_s']:.0f} obj/s" for c in data["ceilings"])
        + f"  load {data['load_average'][0]:.1f}",
        f"  per epoch, on top of the fetch terms: fill {bounds[0].get('fill_s', 0.0):.2f} s before the first byte "
        f"(later epochs {bounds[-1].get('fill_s', 0.0):.2f} s), drain {bounds[0].get('drain_s', 0.0):.2f} s after the last",
        f"  {'loader':18s} {'samples/s':>9s} {'wait':>6s} {'eff':>6s} {'wait-red':>8s} {'red@bound':>9s} {'stall-red':>9s} "
        f"{'vs peer':>7s} {'cpu ms/smp':>10s} {'GETs':>6s}",
    ]
    bucket = by.get("bucket")
    for f in figs:
        red = f["wait_reduction_vs_bucket"]
        reachable = wait_reduction_at_bound(f, bucket)
        stall = f.get("fetch_stall_removed")
        ratio = f["throughput_per_s"] / best_peer if best_peer else None
        cpu = sum((f["cpu_s_per_sample"] or {}).get(k, 0.0) for k in ("main", "workers")) * 1000
        lines.append(
            f"  {f['loader'] + ('*' if f['sliced'] else ''):18s} {f['throughput_per_s']:9.1f} {f['wait_fraction']:6.1%} "
            f"{f['efficiency']:6.1%} {('' if red is None else f'{red:.1%}'):>8s} "
            f"{('' if reachable is None else f'{reachable:.1%}'):>9s} {('' if stall is None else f'{stall:.1%}'):>9s} "
            f"{('' if ratio is None else f'{ratio:.2f}x'):>7s} "
            f"{cpu:10.2f} {f['requests']:6d}"
        )
    mem = data.get("memory") or {}
    if mem:
        lines.append(
            f"  memory (deli alone): peak {mem['peak_rss_bytes'] / 2**20:.0f} MiB, baseline {mem['baseline_rss_bytes'] / 2**20:.0f} MiB, "
            f"cache {mem['cache_size_bytes'] / 2**20:.0f} MiB (peak used {mem['cache_peak_bytes'] / 2**20:.0f}), "
            f"allowed {(mem['cache_size_bytes'] + mem['fixed_overhead_allowed_bytes']) / 2**20:.0f} MiB: "
            + ("within" if mem["within_budget"] else "OVER")
        )
    for note in data.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def _num(x: float | None) -> str:
    return "inf" if x is None or not math.isfinite(x) else f"{x:.0f}"
