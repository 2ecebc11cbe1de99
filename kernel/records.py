"""The records that cross module boundaries: run inputs (RunSpec) and results (RunRecord and its parts).

Every field carries its unit in its name (``_s``, ``_bytes``, ``_per_s``, ``_usd``); fractions lie in
[0, 1]. Records are frozen dataclasses, serialised with :func:`to_dict` and read back with
:func:`from_dict`; the JSON Schema in ``delibench.reports.schema`` is derived from them.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any, TypeVar

from delibench.errors import SpecError

__all__ = [
    "COMPUTE_KINDS",
    "RESULT_SCHEMA_VERSION",
    "RUN_STATUSES",
    "CacheStats",
    "ComputeSpec",
    "CostEstimate",
    "Diagnosis",
    "EpochMetrics",
    "Issue",
    "LoaderSpec",
    "LoaderStats",
    "MachineInfo",
    "RankMetrics",
    "RunMetrics",
    "RunRecord",
    "RunSpec",
    "StepSample",
    "from_dict",
    "record_fields",
    "to_dict",
]

#: Compute backends a run can use.
COMPUTE_KINDS = ("auto", "cuda", "cpu", "emulated")


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _require(ok: bool, spec: str, field_name: str, problem: str, *, hint: str | None = None) -> None:
    """Raise :class:`SpecError` for ``spec.field_name`` unless ``ok``."""
    if not ok:
        raise SpecError(spec, field_name, problem, hint=hint)


#: Version of the RunRecord JSON document; bump it and add a migration in ``delibench.reports.store``.
RESULT_SCHEMA_VERSION = 1

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class StepSample:
    """One training step, split at the loader boundary.

    Attributes:
        epoch: Epoch index (0-based).
        step: Step index within the epoch (0-based).
        rank: The rank that took the step.
        wait_s: Time blocked in ``next(iterator)`` (plus a blocking host-to-device copy).
        compute_s: Workload step time, including the device synchronisation.
        samples: Samples in the batch.
        start_s: Start of the wait, seconds since the run's loop began (for timelines).
    """

    epoch: int
    step: int
    rank: int
    wait_s: float
    compute_s: float
    samples: int
    start_s: float = 0.0


@dataclass(frozen=True, slots=True)
class LoaderStats:
    """Cumulative, monotonic counters of one loader (one rank); the vocabulary of fsspec caches and DELI.

    Attributes:
        requests_count: Object GETs issued (retries and hedges included).
        bytes_read_remote: Bytes received from storage.
        cache_hits: Samples served from the cache (memory or disk tier).
        cache_misses: Samples that had to be fetched when first needed or prefetched.
        cache_evictions: Samples dropped from the cache to keep its byte budget.
        cache_peak_bytes: Largest cache occupancy seen; never above the budget.
        cache_bytes: Cache occupancy when the stats were taken.
        prefetch_peak_bytes: Largest amount of fetched-but-not-yet-delivered bytes.
        fetch_latency_s_p50: Median time of one GET.
        fetch_latency_s_p95: 95th percentile of GET time.
        fetch_latency_s_p99: 99th percentile of GET time.
        prefetch_lead_mean: Mean number of samples ready ahead of consumption when one was taken.
        retries_count: Retried requests.
        hedges_count: Duplicate (hedged) requests sent for stragglers.
        errors_count: Requests that failed for good.
        skipped_keys: Samples skipped under ``on_error=skip`` (listed, never silent).
        samples_requested: Samples whose batch was requested from the loader's prefetcher (deli:
            by a decode worker); 0 for loaders that do not count it.
        late_samples: Of those, samples not ready when their batch was requested: the ones the
            training side had to wait for (see ``miss_rate``).
        disk_hits: Lookups the disk tier served (deli ``cache_tier=disk``), counted when the
            file is read back: whether the tier paid for itself; 0 without one. They are cache hits,
            but ``cache_hits`` counts delivered samples only, so a look-ahead read from disk and not
            delivered (the stats were taken mid-epoch, or the loader did not know the last epoch)
            counts here and not there.
        disk_peak_bytes: Largest disk-tier occupancy seen; never above ``disk_cache_size`` (the
            tier's hard budget), so a peak at the budget says a larger one could hold more.
        disk_write_errors: Disk-tier writes that failed (e.g. ENOSPC); the first one switches the
            tier off for the rest of the run (training goes on), which explains a tier with few hits.
        disk_corrupt_count: Disk-tier files whose checksum did not match when read back (dropped
            and fetched again, so counted as misses).
        fetch_restarts: Fetch processes of deli's node service that died and were replaced
            (``fetch_processes`` > 1; their work in flight re-sent, counted in ``retries_count``):
            a run that finished despite them says so here; 0 elsewhere.
    """

    requests_count: int = 0
    bytes_read_remote: int = 0
    cache_hits: int = 0
    cache_misses: int = 0
    cache_evictions: int = 0
    cache_peak_bytes: int = 0
    cache_bytes: int = 0
    prefetch_peak_bytes: int = 0
    fetch_latency_s_p50: float | None = None
    fetch_latency_s_p95: float | None = None
    fetch_latency_s_p99: float | None = None
    prefetch_lead_mean: float | None = None
    retries_count: int = 0
    hedges_count: int = 0
    errors_count: int = 0
    skipped_keys: tuple[str, ...] = ()
    samples_requested: int = 0
    late_samples: int = 0
    disk_hits: int = 0
    disk_peak_bytes: int = 0
    disk_write_errors: int = 0
    disk_corrupt_count: int = 0
    fetch_restarts: int = 0

    @property
    def hit_rate(self) -> float | None:
        """Hits over lookups, or None before any lookup."""
        total = self.cache_hits + self.cache_misses
        return self.cache_hits / total if total else None

    @property
    def miss_rate(self) -> float | None:
        """Share of samples not ready when their batch was requested (late / requested), or None
        when the loader does not count them. Unlike ``1 - hit_rate`` it counts prefetched
        samples as ready: it is the DELI paper's miss rate, the samples training waited for."""
        return self.late_samples / self.samples_requested if self.samples_requested else None


# Alias kept for readers who look for the fsspec-style name.
CacheStats = LoaderStats


@dataclass(frozen=True, slots=True)
class LoaderSpec:
    """Which loader and its options (``cache_size_bytes``, ``prefetch_depth``, ``concurrency``, ...).

    Attributes:
        kind: Registry name: ``disk``, ``bucket``, ``deli``, ``fsspec-cache`` or a plugin.
        options: Loader-specific options, validated by the loader's own config class.
        label: Display name in tables (defaults to ``kind``).
    """

    kind: str
    options: dict[str, Any] = field(default_factory=dict)
    label: str | None = None

    def __post_init__(self) -> None:
        _require(isinstance(self.kind, str) and bool(self.kind.strip()), "LoaderSpec", "kind", f"must name a loader, got {self.kind!r}")
        _require(isinstance(self.options, dict), "LoaderSpec", "options", f"must be a mapping, got {type(self.options).__name__}")
        _require(self.label is None or (isinstance(self.label, str) and bool(self.label.strip())), "LoaderSpec", "label",
                 f"must be a non-empty name or None, got {self.label!r}")

    @property
    def display_name(self) -> str:
        """The label, or the kind."""
        return self.label or self.kind


@dataclass(frozen=True, slots=True)
class ComputeSpec:
    """What executes the training step.

    Attributes:
        kind: ``auto`` (CUDA when present, else CPU; resolved when the workload is built), ``cuda``,
            ``cpu`` or ``emulated`` (a fixed time per batch, DLIO-style; needs ``step_time_s``).
        step_time_s: For ``emulated``: seconds per batch.
        profile: For ``emulated``: the named GPU profile the step time came from, if any.
    """

    kind: str = "auto"
    step_time_s: float | None = None
    profile: str | None = None

    def __post_init__(self) -> None:
        _require(self.kind in COMPUTE_KINDS, "ComputeSpec", "kind", f"must be one of {', '.join(COMPUTE_KINDS)}, got {self.kind!r}")
        if self.step_time_s is not None:
            _require(_is_number(self.step_time_s) and self.step_time_s > 0, "ComputeSpec", "step_time_s",
                     f"must be a positive number of seconds, got {self.step_time_s!r}")
        _require(self.kind != "emulated" or self.step_time_s is not None, "ComputeSpec", "step_time_s",
                 "is required for emulated compute", hint="e.g. emulated:120ms or emulated:resnet50-a100")


@dataclass(frozen=True, slots=True)
class RunSpec:
    """Fully resolved inputs of one run; stored in every RunRecord.

    Attributes:
        dataset_url: Dataset root (any fsspec URL), without credentials.
        workload: Workload registry name (``resnet50``, ``mobilenet_v3_small``, ...).
        loader: Loader kind and options.
        compute: Compute backend.
        batch_size: Samples per batch per rank.
        num_workers: DataLoader worker processes per rank (the same for every loader).
        epochs: Epochs to run.
        warmup_steps: Steps at the start of the run excluded from the steady-state fraction.
        warmup_epochs: Whole epochs at the start excluded too (e.g. 1 to measure warm caches only).
        seed: Seed of the sampler order and the model.
        world_size: Ranks.
        max_steps_per_epoch: Stop each epoch after this many steps (a slice), or None for all.
        link_profile: Link-emulation profile in the path, when the testbed's emulator is used.
        storage_options: fsspec options that reach the dataset (endpoint, client options, as
            ``fsspec.filesystem`` takes them); empty: the cloud client's own configuration chain.
            Never written to a record (it may hold credentials): records keep the endpoint only.

    Every field is checked when the spec is made, before any I/O: a bad value raises
    :class:`~delibench.errors.SpecError` naming the field.
    """

    dataset_url: str
    workload: str
    loader: LoaderSpec
    compute: ComputeSpec = field(default_factory=ComputeSpec)
    batch_size: int = 32
    num_workers: int = 2
    epochs: int = 1
    warmup_steps: int = 5
    seed: int = 0
    world_size: int = 1
    warmup_epochs: int = 0
    max_steps_per_epoch: int | None = None
    link_profile: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"secret": True})

    def __post_init__(self) -> None:
        name = "RunSpec"
        _require(isinstance(self.dataset_url, str) and bool(self.dataset_url.strip()), name, "dataset_url",
                 f"must be a URL or path, got {self.dataset_url!r}", hint="e.g. s3://bucket/prefix")
        _require(isinstance(self.workload, str) and bool(self.workload.strip()), name, "workload", f"must name a workload, got {self.workload!r}")
        _require(isinstance(self.loader, LoaderSpec), name, "loader", f"must be a LoaderSpec, got {type(self.loader).__name__}")
        _require(isinstance(self.compute, ComputeSpec), name, "compute", f"must be a ComputeSpec, got {type(self.compute).__name__}")
        for key, least in (("batch_size", 1), ("num_workers", 0), ("epochs", 1), ("warmup_steps", 0), ("world_size", 1), ("warmup_epochs", 0)):
            value = getattr(self, key)
            _require(_is_int(value), name, key, f"must be a whole number, got {value!r}")
            _require(value >= least, name, key, f"must be at least {least}, got {value}" if least else f"must not be negative, got {value}")
        _require(_is_int(self.seed), name, "seed", f"must be a whole number, got {self.seed!r}")
        _require(self.warmup_epochs < self.epochs, name, "warmup_epochs",
                 f"must be less than epochs ({self.epochs}), got {self.warmup_epochs}: no epoch would be measured")
        if self.max_steps_per_epoch is not None:
            _require(_is_int(self.max_steps_per_epoch) and self.max_steps_per_epoch >= 1, name, "max_steps_per_epoch",
                     f"must be at least 1, got {self.max_steps_per_epoch!r}")
        _require(isinstance(self.storage_options, dict), name, "storage_options",
                 f"must be a mapping of fsspec options, got {type(self.storage_options).__name__}")


@dataclass(frozen=True, slots=True)
class EpochMetrics:
    """Figures of one epoch on one rank (every step of the epoch, warm-up included).

    Attributes:
        epoch: Epoch index (0-based).
        rank: The rank.
        steps: Steps taken in the epoch.
        samples: Samples delivered in the epoch.
        wall_s: Σ (wait + compute) of the epoch's steps.
        wait_s: Σ wait of the epoch's steps.
        compute_s: Σ compute of the epoch's steps.
        data_wait_fraction: Σ wait / Σ (wait + compute) over the epoch's measured steps.
        throughput_samples_per_s: Samples delivered per second of the epoch.
    """

    epoch: int
    rank: int
    steps: int
    samples: int
    wall_s: float
    wait_s: float
    compute_s: float
    data_wait_fraction: float
    throughput_samples_per_s: float


@dataclass(frozen=True, slots=True)
class RankMetrics:
    """Steady-state figures of one rank, with its loader's counters.

    Attributes:
        rank: The rank.
        data_wait_fraction: Σ wait / Σ (wait + compute) over the rank's measured steps.
        wait_s: Σ wait over the rank's measured steps.
        compute_s: Σ compute over the rank's measured steps.
        iterator_setup_s: Time from asking for the first epoch's iterator to having it.
        time_to_first_batch_s: Time from the first ``next()`` to the first batch on the device.
        loader_stats: The rank's loader counters.
        slowest_steps: Measured steps (aligned by epoch and step) in which this rank waited longest
            for data of all ranks, so gated the synchronous step (ties go to the lowest rank).
    """

    rank: int
    data_wait_fraction: float
    wait_s: float
    compute_s: float
    iterator_setup_s: float
    time_to_first_batch_s: float
    loader_stats: LoaderStats = field(default_factory=LoaderStats)
    slowest_steps: int = 0


@dataclass(frozen=True, slots=True)
class RunMetrics:
    """The summary of a run (steady state: warm-up steps excluded, unless named ``whole_run``).

    Attributes:
        data_wait_fraction: Σ wait / Σ (wait + compute) over measured steps of the bottleneck rank.
        accelerator_utilization: 1 - data_wait_fraction (MLPerf Storage's AU).
        data_wait_fraction_whole_run: The same over every step, warm-up included.
        time_to_first_batch_s: First ``next()`` to the first batch (bottleneck rank).
        iterator_setup_s: Setup of the first epoch's iterator (bottleneck rank).
        epoch_time_s_mean: Mean wall time of one epoch.
        throughput_samples_per_s: Samples per second over the measured steps, all ranks together.
        throughput_bytes_per_s: Bytes per second over the measured steps (manifest mean size).
        wait_s_p50: Median wait of one measured step.
        wait_s_p90: 90th percentile of the wait of one measured step.
        wait_s_p99: 99th percentile of the wait of one measured step.
        compute_s_mean: Mean compute time of one measured step.
        total_samples: Samples delivered over the run, all ranks, warm-up included.
        wall_s: Wall time of the measured loop (longest rank).
        bottleneck_rank: Rank with the largest total wait (it gates a synchronous step).
        measured_steps: Steps in the steady-state window.
        gpu_utilization_mean: NVML utilisation, on CUDA only.
        epochs: Per-epoch figures of every rank.
        ranks: Per-rank steady-state figures.
        slowest_rank_wait_s: Σ over the measured steps (aligned across ranks by epoch and step) of
            the largest wait of any rank at that step: in synchronous data-parallel training every
            rank waits for the slowest one, so this is the job's data wait (equals the one rank's
            wait on a single rank).
        slowest_rank_wait_fraction: slowest_rank_wait_s / Σ over the same steps of the longest
            wait + compute of any rank.
        slowest_rank_wait_s_p90: 90th percentile of the per-step slowest-rank wait.
        aligned_steps: Measured steps present on every rank (the steps the slowest-rank figures cover).
    """

    data_wait_fraction: float
    accelerator_utilization: float
    data_wait_fraction_whole_run: float
    time_to_first_batch_s: float
    iterator_setup_s: float
    epoch_time_s_mean: float
    throughput_samples_per_s: float
    throughput_bytes_per_s: float
    wait_s_p50: float
    wait_s_p90: float
    wait_s_p99: float
    compute_s_mean: float
    measured_steps: int
    total_samples: int
    wall_s: float
    bottleneck_rank: int = 0
    gpu_utilization_mean: float | None = None
    epochs: tuple[EpochMetrics, ...] = ()
    ranks: tuple[RankMetrics, ...] = ()
    slowest_rank_wait_s: float = 0.0
    slowest_rank_wait_fraction: float = 0.0
    slowest_rank_wait_s_p90: float = 0.0
    aligned_steps: int = 0


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """What bounds the run (DS-Analyzer style): accelerator, CPU (decode/augment) or storage.

    Attributes:
        bound: ``accelerator``, ``cpu`` or ``storage``.
        fetch_stall_fraction: Share of step time lost to fetching bytes.
        prep_stall_fraction: Share of step time lost to decode/augment (measured from memory).
        summary: One sentence for people.
    """

    bound: str
    fetch_stall_fraction: float
    prep_stall_fraction: float
    summary: str


@dataclass(frozen=True, slots=True)
class Issue:
    """Something a reader of the result must know (mlpstorage's Issue).

    Attributes:
        severity: ``info``, ``warning`` or ``invalid`` (the result must not be trusted).
        code: Stable short identifier, e.g. ``partial-read``, ``cold-cache``.
        message: One sentence, with the cure where there is one.
    """

    severity: str
    code: str
    message: str
    expected: str | None = None
    actual: str | None = None


@dataclass(frozen=True, slots=True)
class MachineInfo:
    """Environment fingerprint recorded with each result; never contains secrets.

    Attributes:
        hostname: The host's name.
        platform: OS and kernel (``platform.platform()``).
        python_version: Python version.
        cpu_count: CPUs this process may use.
        memory_bytes: Host RAM.
        torch_version: torch version, when torch was loaded.
        accelerator: ``cuda`` or ``none``.
        accelerator_name: The GPU's name, on CUDA.
        delibench_version: delibench version that measured.
        endpoint: Storage endpoint (URL without credentials), when not the cloud default.
    """

    hostname: str
    platform: str
    python_version: str
    cpu_count: int
    memory_bytes: int
    torch_version: str | None = None
    accelerator: str = "none"
    accelerator_name: str | None = None
    delibench_version: str = ""
    endpoint: str | None = None


@dataclass(frozen=True, slots=True)
class CostEstimate:
    """Dollars for the measured run and per epoch, from a dated price sheet.

    Attributes:
        price_sheet_id: Which price sheet (and its date) priced the run.
        instance_usd_per_hour: Hourly price of the VM the run was priced on.
        compute_usd: VM time of the measured run x hourly price.
        requests_usd: Object-store requests x request price.
        egress_usd: Remote bytes x egress price.
        total_usd: compute + requests + egress.
        idle_accelerator_usd: Data-wait fraction x VM cost: what the accelerators cost while waiting.
        usd_per_epoch: The total scaled to one full epoch of the dataset.
    """

    price_sheet_id: str
    instance_usd_per_hour: float
    compute_usd: float
    requests_usd: float
    egress_usd: float
    total_usd: float
    idle_accelerator_usd: float
    usd_per_epoch: float


#: ``RunRecord.status`` values: finished; stopped by the user (Ctrl-C, pruning); stopped by an error.
RUN_STATUSES = ("complete", "interrupted", "failed")


@dataclass(frozen=True, slots=True)
class RunRecord:
    """The single result unit of one run of one loader: inputs, environment and figures.

    Attributes:
        run_id: ``<UTC yyyymmddThhmmssZ>-<8 hex of the spec>``.
        dataset_sample_count: Samples in the dataset (per the manifest).
        dataset_bytes: Bytes in the dataset.
        status: ``complete``; ``interrupted`` (Ctrl-C or ``should_stop``: the figures cover the steps
            measured); or ``failed`` (the loader raised mid-run, e.g. a fetch that failed for good:
            the figures cover the steps measured before it, and ``error`` says why). One of
            :data:`RUN_STATUSES`; only ``complete`` records can be valid.
        error: For a ``failed`` run, the error that stopped it, in one line with credentials
            removed (it names the key that failed); None otherwise.
        steps_path: Sidecar CSV with the per-step timeline, when written.
        timeline: Per-step samples (kept in the record when small; else only in the sidecar).
    """

    run_id: str
    created_at: str
    delibench_version: str
    spec: RunSpec
    machine: MachineInfo
    metrics: RunMetrics
    loader_stats: LoaderStats
    dataset_sample_count: int
    dataset_bytes: int
    dataset_id: str = ""
    status: str = "complete"
    error: str | None = None
    diagnosis: Diagnosis | None = None
    cost: CostEstimate | None = None
    issues: tuple[Issue, ...] = ()
    steps_path: str | None = None
    timeline: tuple[StepSample, ...] = ()
    schema_version: int = RESULT_SCHEMA_VERSION

    @property
    def valid(self) -> bool:
        """False when any issue is ``invalid``."""
        return not any(i.severity == "invalid" for i in self.issues)


def record_fields(cls_or_obj: Any) -> tuple[dataclasses.Field[Any], ...]:
    """The fields of a record that are written out (not those marked ``metadata={"secret": True}``)."""
    return tuple(f for f in dataclasses.fields(cls_or_obj) if not f.metadata.get("secret"))


def to_dict(obj: Any) -> Any:
    """Serialise a record (recursively) into JSON-ready dicts, lists and scalars; secret fields are left out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in record_fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {str(k): to_dict(v) for k, v in obj.items()}
    return obj


def _convert(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return _convert(args[0], value) if len(args) == 1 else value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value)
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v) for v in value)
        return tuple(_convert(a, v) for a, v in zip(args, value))
    if origin is list:
        (arg,) = typing.get_args(tp)
        return [_convert(arg, v) for v in value]
    if tp is float and isinstance(value, int):
        return float(value)
    return value


def from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Build record ``cls`` from :func:`to_dict` output; unknown keys are rejected.

    Raises:
        TypeError: Missing or unknown fields.
    """
    if not isinstance(data, dict):
        raise TypeError(f"{cls.__name__}: expected an object, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = set(data) - names
    if unknown:
        raise TypeError(f"{cls.__name__}: unknown field(s) {sorted(unknown)}")
    kwargs = {k: _convert(hints[k], v) for k, v in data.items()}
    return cls(**kwargs)
