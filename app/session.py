"""The run API: one measured run of a loader (``run``) or several loaders interleaved (``compare``).

This is what ``delibench run``, ``compare``, ``demo`` and ``tune`` call; a Python user can call it too::

    from delibench.app.session import run
    record = run(RunSpec(dataset_url="s3://b/imgs", workload="resnet50", loader=LoaderSpec("deli")))

Each rank (torchrun environment, or ``delibench run --nproc N``) builds its own loader and cache;
rank 0 gathers every rank's steps, summarises them, prices the run and writes the RunRecord.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import gc
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from delibench.distributed import (
    DEFAULT_COLLECTIVE_TIMEOUT_S,
    RankInfo,
    abandon_group,
    all_gather_objects,
    check_collective_timeout,
    current_rank_info,
    init_from_env,
    is_collective_timeout,
    shutdown,
)
from delibench.errors import DelibenchError, ExitCode, RuntimeFailure, UsageError
from delibench.manifest import Manifest, read_manifest
from delibench.records import Diagnosis, Issue, LoaderStats, RunRecord, RunSpec, StepSample

__all__ = ["GpuUtilizationSampler", "compare", "diagnose", "merge_loader_stats", "run", "warm_decoder"]

#: Loader options that are really sampler settings: taken out of the options into the LoaderContext.
_ORDER_OPTIONS = ("order", "exchange_fraction")
#: Steps the DS-Analyzer-style diagnosis runs from memory.
DIAGNOSIS_STEPS = 8


class _StoppedBeforeFirstStep(DelibenchError):
    """Ctrl-C (or ``should_stop``) came before any loader finished a step: exit 130, no record."""

    exit_code = ExitCode.INTERRUPTED


@dataclass
class _Prepared:
    """One loader ready to measure: its spec, data, loader and compute."""

    spec: RunSpec
    manifest: Manifest
    loader: Any
    compute: Any
    decoder: Any
    partition_samples: int
    ctx: Any = None


def _device_for(spec: RunSpec, info: RankInfo) -> Any:
    if spec.compute.kind == "cuda":
        return f"cuda:{info.local_rank}"
    return None


def _dataset_url_for(spec: RunSpec) -> str:
    """The disk loader reads its own local copy (``--loader disk=./imgs``); others read the dataset URL."""
    if spec.loader.kind == "disk" and spec.loader.options.get("path"):
        return str(spec.loader.options["path"])
    return spec.dataset_url


def warm_decoder(decoder: Any) -> None:
    """Decode one tiny in-memory JPEG in this process before DataLoader workers fork from it.

    The first decode imports the image libraries (seconds for torchvision's transforms); done in the
    parent, every forked worker inherits them, instead of paying it in each worker of each epoch,
    where it would show up as data wait of whichever loader ran first.
    """
    import io

    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (128, 64, 32)).save(buf, format="JPEG")
    try:
        decoder(buf.getvalue(), 0)
    except Exception:  # noqa: BLE001 - a decoder that rejects the probe will fail loudly on real data
        pass


def _storage_options_for(spec: RunSpec) -> dict[str, Any]:
    """The spec's storage options for the bucket; none for the disk loader's own local copy."""
    return spec.storage_options if _dataset_url_for(spec) == spec.dataset_url else {}


def _prepare(spec: RunSpec, info: RankInfo, manifests: dict[str, Manifest]) -> _Prepared:
    from delibench.loaders import LoaderContext, build_loader
    from delibench.loaders.sampler import rank_sample_count
    from delibench.workloads.models import get_workload

    url = _dataset_url_for(spec)
    storage_options = _storage_options_for(spec)
    if url not in manifests:
        manifests[url] = read_manifest(url, storage_options)
    manifest = manifests[url]
    options = dict(spec.loader.options)
    order = {k: options.pop(k) for k in _ORDER_OPTIONS if k in options}
    if spec.loader.kind == "disk":
        options.pop("path", None)
    workload = get_workload(spec.workload, num_classes=len(manifest.classes))
    decoder = workload.decoder(train=True)
    warm_decoder(decoder)
    ctx = LoaderContext(
        dataset_url=url,
        manifest=manifest,
        decode=decoder,
        batch_size=spec.batch_size,
        num_workers=spec.num_workers,
        seed=spec.seed,
        rank=info.rank,
        world_size=info.world_size,
        local_rank=info.local_rank,
        local_world_size=info.local_world_size,
        node_rank=info.node_rank,
        job_id=info.job_id,
        order=str(order.get("order", "shuffle")),
        exchange_fraction=float(order.get("exchange_fraction", 0.0)),
        epochs=spec.epochs,
        storage_options=storage_options,
    )
    loader = build_loader(dataclasses.replace(spec.loader, options=options), ctx)
    try:
        compute = workload.build(_device_for(spec, info), spec.compute, seed=spec.seed, world_size=info.world_size)
    except BaseException:
        loader.close()
        raise
    return _Prepared(spec, manifest, loader, compute, decoder, rank_sample_count(len(manifest), info.world_size, False), ctx)


class GpuUtilizationSampler:
    """NVML GPU utilisation, sampled every few steps of a CUDA run (outside the timed steps).

    ``torch.cuda.utilization`` needs NVML (the ``nvidia-ml-py`` package); where it is missing or
    the run is not on CUDA, nothing is sampled and the record says ``None`` rather than a guess.
    """

    EVERY_STEPS = 5

    def __init__(self, spec: RunSpec, info: RankInfo) -> None:
        self.device: int | None = info.local_rank if spec.compute.kind == "cuda" else None
        self.values: list[float] = []
        self._steps = 0

    def on_step(self, _step: StepSample) -> None:
        """Take a sample every :attr:`EVERY_STEPS` steps."""
        if self.device is None:
            return
        self._steps += 1
        if self._steps % self.EVERY_STEPS:
            return
        try:
            import torch

            self.values.append(float(torch.cuda.utilization(self.device)) / 100.0)
        except Exception:  # noqa: BLE001 - no NVML: stop trying, report None
            self.device = None

    def mean(self) -> float | None:
        """Mean utilisation in [0, 1], or None when nothing was sampled."""
        return sum(self.values) / len(self.values) if self.values else None


#: LoaderStats fields merged as the worst rank's value (peaks, latency percentiles) instead of summed.
_WORST_RANK_FIELDS = frozenset({
    "cache_peak_bytes", "prefetch_peak_bytes", "disk_peak_bytes", "fetch_latency_s_p50", "fetch_latency_s_p95", "fetch_latency_s_p99",
})


def merge_loader_stats(stats: Sequence[LoaderStats | None]) -> LoaderStats:
    """One LoaderStats for a multi-rank run: counters summed, peaks and percentiles the worst rank's,
    the prefetch lead the ranks' mean, skipped keys concatenated.

    The rule is chosen per field over ``dataclasses.fields`` (summing is the default), so a counter
    added to LoaderStats is merged too instead of reading 0 in every multi-rank record; a new peak
    or percentile must join :data:`_WORST_RANK_FIELDS`.
    """
    present = [s for s in stats if s is not None]
    if not present:
        return LoaderStats()
    if len(present) == 1:
        return present[0]
    merged: dict[str, Any] = {}
    for f in dataclasses.fields(LoaderStats):
        values = [getattr(s, f.name) for s in present]
        known = [v for v in values if v is not None]
        if f.name == "skipped_keys":
            merged[f.name] = tuple(k for keys in values for k in keys)
        elif f.name == "prefetch_lead_mean":
            merged[f.name] = sum(known) / len(known) if known else None
        elif f.name in _WORST_RANK_FIELDS:
            merged[f.name] = max(known) if known else None
        else:
            merged[f.name] = sum(values)
    return LoaderStats(**merged)


def diagnose(prepared: _Prepared, data_wait_fraction: float, info: RankInfo) -> Diagnosis:
    """Tell fetch stall from prep stall (DS-Analyzer): re-run a slice with the bytes already in memory.

    The memory loader uses the same decode pipeline, workers and compute, so whatever wait remains
    is the CPU's (decode + augment); the rest of the measured wait is the fetch stall.
    """
    from delibench.loaders import build_loader
    from delibench.measure import summarize
    from delibench.records import LoaderSpec
    from delibench.workloads.loop import measure_loader

    spec = prepared.spec
    sample_count = min(len(prepared.manifest), spec.batch_size * (DIAGNOSIS_STEPS + 2) * info.world_size)
    # Same data, decode, batching and partition as the measured loader; plain order.
    ctx = dataclasses.replace(prepared.ctx, order="shuffle", exchange_fraction=0.0)
    loader = build_loader(LoaderSpec("memory", {"sample_count": sample_count}), ctx)
    try:
        result = measure_loader(loader, prepared.compute, epochs=1, max_steps_per_epoch=DIAGNOSIS_STEPS + 2, rank=info.rank)
    finally:
        loader.close()
    prep = summarize(result.steps, warmup_steps=min(2, max(len(result.steps) - 1, 0))).data_wait_fraction if result.steps else 0.0
    prep = min(prep, data_wait_fraction)
    fetch = max(0.0, data_wait_fraction - prep)
    if data_wait_fraction < 0.1:
        bound = "accelerator"
        summary = f"the accelerator bounds this run: it waited for data only {data_wait_fraction:.0%} of the time"
    elif fetch >= prep:
        bound = "storage"
        summary = (
            f"the storage link bounds this run: {fetch:.0%} of step time is spent waiting for bytes "
            f"(decode/augment alone would cost {prep:.0%}); more prefetch depth, concurrency or cache helps"
        )
    else:
        bound = "cpu"
        summary = (
            f"the CPU bounds this run: decode/augment alone makes the accelerator wait {prep:.0%} of step time "
            f"(fetching adds {fetch:.0%}); more DataLoader workers or a lighter pipeline helps"
        )
    return Diagnosis(bound=bound, fetch_stall_fraction=fetch, prep_stall_fraction=prep, summary=summary)


def _offset_steps(result: Any, *, first: bool, time_offset_s: float) -> list[StepSample]:
    """Steps of one per-epoch measure call, placed on the loader's own timeline.

    When loaders are interleaved epoch by epoch, each epoch is its own measure call; the setup of a
    later epoch is then added to that epoch's first wait, as a continuous loop would count it.
    """
    steps = list(result.steps)
    if steps and not first:
        s0 = steps[0]
        steps[0] = dataclasses.replace(s0, wait_s=s0.wait_s + result.iterator_setup_s)
    return [dataclasses.replace(s, start_s=s.start_s + time_offset_s) for s in steps]


def _mean_or_none(values: Sequence[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return sum(present) / len(present) if present else None


def effective_warmup_steps(spec: RunSpec, steps: Sequence[StepSample]) -> int:
    """``spec.warmup_steps``, widened to cover the first ``spec.warmup_epochs`` epochs of every rank."""
    if not spec.warmup_epochs:
        return spec.warmup_steps
    per_rank: dict[int, int] = {}
    for s in steps:
        if s.epoch < spec.warmup_epochs:
            per_rank[s.rank] = per_rank.get(s.rank, 0) + 1
    return max(spec.warmup_steps, max(per_rank.values(), default=0))


def _record(
    prepared: _Prepared,
    results: Sequence[Any],
    info: RankInfo,
    *,
    stopped: bool,
    started: _dt.datetime,
    diagnosis: Diagnosis | None,
    price: bool,
    error: str | None = None,
) -> RunRecord:
    """Summarise every rank's loop results into the RunRecord (rank 0); ``error``: the run failed."""
    from delibench import __version__
    from delibench.env import machine_info
    from delibench.measure import check_validity, summarize
    from delibench.reports.store import new_run_id

    spec = prepared.spec
    steps = [s for r in results for s in r["steps"]]
    manifest = prepared.manifest
    stats = [r["stats"] for r in results]
    issues: list[Issue] = []
    if not steps:
        raise UsageError(
            f"loader {spec.loader.display_name!r} delivered no batch",
            hint="check the dataset and that --max-steps and --batch-size fit its size",
        )
    metrics = summarize(
        steps,
        warmup_steps=effective_warmup_steps(spec, steps),
        iterator_setup_s={r["rank"]: r["setup_s"] for r in results},
        time_to_first_batch_s={r["rank"]: r["ttfb_s"] for r in results},
        bytes_per_sample=manifest.mean_sample_bytes,
        world_size=info.world_size,
        loader_stats={r["rank"]: r["stats"] for r in results if r["stats"] is not None},
        gpu_utilization_mean=_mean_or_none([r.get("gpu") for r in results]),
    )
    machine = machine_info(endpoint=_endpoint_of(spec))
    issues.extend(
        check_validity(
            metrics,
            expected_samples_per_epoch=prepared.partition_samples,
            max_steps_per_epoch=spec.max_steps_per_epoch,
            batch_size=spec.batch_size,
            stopped_early=stopped or error is not None,
            loader_kind=spec.loader.kind,
            dataset_bytes=manifest.total_bytes,
            memory_bytes=machine.memory_bytes,
        )
    )
    if error is not None:
        issues.insert(0, Issue("invalid", "failed", f"the run failed: {error}; figures cover the steps measured before it"))
    elif stopped:
        issues.insert(0, Issue("invalid", "interrupted", "the run was stopped before it finished; figures cover the steps measured"))
    record = RunRecord(
        run_id=new_run_id(spec, started),
        created_at=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
        delibench_version=__version__,
        spec=spec,
        machine=machine,
        metrics=metrics,
        loader_stats=merge_loader_stats(stats),
        dataset_sample_count=len(manifest),
        dataset_bytes=manifest.total_bytes,
        dataset_id=manifest.dataset_id,
        status="failed" if error is not None else "interrupted" if stopped else "complete",
        error=error,
        diagnosis=diagnosis,
        issues=tuple(issues),
        timeline=tuple(sorted(steps, key=lambda s: (s.start_s, s.rank))),
    )
    if price:
        from delibench.reports.cost import estimate
        from delibench.reports.prices import default_sheet

        record = dataclasses.replace(record, cost=estimate(record, default_sheet()))
    return record


def _endpoint_of(spec: RunSpec) -> str | None:
    from delibench.storage import endpoint_of, resolve

    loc = resolve(_dataset_url_for(spec), _storage_options_for(spec))
    return endpoint_of(loc) or (None if loc.protocol == "file" else f"{loc.protocol}://")


def _chain(*callbacks: Callable[[StepSample], None] | None) -> Callable[[StepSample], None] | None:
    """One on_step callback calling each given one in turn (None when there is none)."""
    present = [c for c in callbacks if c is not None]
    if not present:
        return None
    if len(present) == 1:
        return present[0]

    def call(step: StepSample) -> None:
        for c in present:
            c(step)

    return call


def _error_line(exc: BaseException) -> str:
    """An error as one line for the record: its message (naming the key that failed), credentials removed."""
    from delibench.storage import redact_text

    if isinstance(exc, DelibenchError):
        text = exc.message
    else:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        text = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    return redact_text(text)


#: gloo's source location before its message ("[/__w/pytorch/.../unbound_buffer.cc:78] "): noise in a one-line error.
_SOURCE_PREFIX = re.compile(r"^\[[^\]]*\]\s*")


def _within(timeout_s: float | None) -> str:
    """How long a collective waits, as the error says it: the flag's value, or the caller's own group's timeout."""
    return f"within {timeout_s:g} s (--collective-timeout)" if timeout_s is not None else "within the process group's timeout"


def _failure_line(exc: BaseException, *, collective: bool, timeout_s: float | None) -> str:
    """:func:`_error_line`, or for a collective that timed out, what that means: a rank did not join it in time.

    Args:
        collective: ``exc`` came out of a collective (the step, the stop vote, the results gather),
            so a timeout in it is the group's, not a storage read's.
        timeout_s: The group's timeout when the session created the group; None when the caller did.
    """
    if not (collective and is_collective_timeout(exc)):
        return _error_line(exc)
    from delibench.storage import redact_text

    first = _SOURCE_PREFIX.sub("", str(exc).strip().splitlines()[0])
    return redact_text(f"a collective timed out: another rank did not join it {_within(timeout_s)} ({type(exc).__name__}: {first})")


def _failed_epoch_steps(steps: Sequence[StepSample], *, first: bool, time_offset_s: float) -> list[StepSample]:
    """Steps an epoch measured before its loader raised, placed as :func:`_offset_steps` places a whole epoch's.

    The loop's result is lost with the exception, so the steps come from its ``on_step`` calls; the
    epoch's iterator setup is then the first step's start (the loop's clock starts just before it).
    """
    out = list(steps)
    if out and not first:
        out[0] = dataclasses.replace(out[0], wait_s=out[0].wait_s + out[0].start_s)
    return [dataclasses.replace(s, start_s=s.start_s + time_offset_s) for s in out]


def _loader_stats_now(loader: Any) -> LoaderStats | None:
    """The loader's counters after it raised (None when it has none or cannot say)."""
    stats_fn = getattr(loader, "stats", None)
    try:
        stats = stats_fn() if callable(stats_fn) else None
    except Exception:  # noqa: BLE001 - a broken loader's counters are a nicety; its error is what matters
        return None
    return stats if isinstance(stats, LoaderStats) else None


def _attach_record_paths(exc: BaseException, paths: Sequence[str]) -> None:
    """Tell the caller (the CLI) where the failed run's records went: ``exc.record_paths``."""
    try:
        exc.record_paths = tuple(paths)  # type: ignore[attr-defined]
    except (AttributeError, TypeError):  # an exception type with __slots__: the record is still written
        pass


#: Seconds rank 0 waits, after another rank failed, for the reports of the ranks that stopped with it
#: (they come at once: a rank blocked in a collective with the failed rank is released when that
#: rank's process ends); only a rank stuck elsewhere or dead makes rank 0 wait this out.
FAILURE_REPORT_TIMEOUT_S = 30.0
#: Seconds rank 0, having failed in its step first, still waits for ranks that failed at the same step.
SIMULTANEOUS_FAILURE_GRACE_S = 2.0

#: Calls of :func:`compare` in this process: names the store keys of each call's failure reports
#: (every rank of a job calls it equally often).
_compare_calls = 0


class _Root(NamedTuple):
    """The first rank to fail (by wall clock) among the failure reports, its error line, and whether a collective timed out on it."""

    rank: int
    error: str
    timed_out: bool = False


def _raised_in_step(exc: BaseException, compute: Any) -> bool:
    """Whether ``exc`` came out of the compute's step, sync or stop vote (its traceback passes through them).

    There the loop has not voted to stop (it votes before each step), so the other ranks may be
    blocked in a collective of that step (DDP's all-reduce) that this rank will never join; a loader
    error comes before the vote, which the loop then pays, and leaves the process group usable.
    """
    codes = set()
    for name in ("step", "sync", "agree_stop"):
        code = getattr(getattr(type(compute), name, None), "__code__", None)
        if code is not None:
            codes.add(code)
    tb = exc.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code in codes:
            return True
        tb = tb.tb_next
    return False


class _FailureReports:
    """The ranks' results after a rank failed in its step, through the job's c10d store, not the group.

    A rank that raised inside its step (a CUDA OOM) leaves the others blocked in a collective of
    that step, DDP's all-reduce, which it will never join; they are released, with gloo's or NCCL's
    "connection closed by peer" error, only when its process ends (aborting or destroying the group
    does not close its connections while the process lives: checked with torch 2.14 and gloo). So
    no rank uses the group again: each writes its results to the store the ranks met through
    (``store.set``) and leaves with a one-line error; rank 0 reads what the others wrote and records
    it. When rank 0 itself failed first, the others are still blocked (until rank 0's process ends),
    so it records what is there without waiting; when another rank failed first, rank 0 waits (at
    most :data:`FAILURE_REPORT_TIMEOUT_S`) for the ranks that stopped with it.

    Args:
        info: This rank.
        call: Number of this :func:`compare` call in the process (names the keys).
    """

    def __init__(self, info: RankInfo, call: int) -> None:
        import torch.distributed as dist
        from torch.distributed import distributed_c10d as c10d

        self.info = info
        self.store: Any = None
        try:
            if dist.is_initialized():
                self.store = dist.PrefixStore(f"delibench/session/{call}/", c10d._get_default_store())
        except Exception:  # noqa: BLE001 - no store: this rank reports only to itself
            self.store = None

    def exchange(self, per_loader: list[dict[str, Any]], error: str, *, timed_out: bool = False) -> tuple[list[Any], _Root, list[int]]:
        """Send this rank's results; on rank 0 collect every rank's.

        Args:
            per_loader: This rank's results, one dict per loader.
            error: This rank's error line.
            timed_out: This rank's failure was a collective that timed out (a rank did not join it).

        Returns:
            ``(gathered, root, missing)``: on rank 0 every rank's per-loader results in rank order
            (None where nothing came), elsewhere only this rank's; the first rank that failed (by
            wall clock) among the reports; the ranks that sent nothing.
        """
        import pickle
        import time

        mine = {"per_loader": per_loader, "error": error, "failed_at": time.time(), "timed_out": timed_out}
        reports = {self.info.rank: mine}
        missing: list[int] = []
        try:
            if self.store is not None:
                self.store.set(f"rank{self.info.rank}", pickle.dumps(mine))
        except Exception:  # noqa: BLE001 - the store is gone (rank 0 hosted it and ended)
            self.store = None
        if self.info.is_main:
            others = [r for r in range(self.info.world_size) if r != self.info.rank]
            present = [r for r in others if self._has(r)]
            # another rank failed first: the ranks blocked with rank 0 report at once. Rank 0 failed
            # first: the others are alive but blocked in the step it left; a short grace still
            # collects those that failed at the same step (e.g. every rank out of memory), so the
            # first to fail is not guessed from who reached this line first.
            wait_s = FAILURE_REPORT_TIMEOUT_S if present else SIMULTANEOUS_FAILURE_GRACE_S
            deadline = time.monotonic() + wait_s
            for r in others:
                # NOTE: polled, not store.wait(timeout): a wait that runs out logs two c10d socket
                # warnings on stderr, beside the run's one-line error.
                while not self._has(r) and time.monotonic() < deadline:
                    time.sleep(0.05)
                report = self._read(r) if self._has(r) else None  # NOTE: get() of an absent key blocks
                if report is None:  # blocked, dead or no store
                    missing.append(r)
                else:
                    reports[r] = report
        first = min(reports.items(), key=lambda kv: kv[1]["failed_at"])
        root = _Root(first[0], first[1]["error"], bool(first[1].get("timed_out")))
        if not self.info.is_main:
            return [per_loader], root, missing
        return [reports[r]["per_loader"] if r in reports else None for r in range(self.info.world_size)], root, missing

    def _has(self, rank: int) -> bool:
        try:
            return self.store is not None and bool(self.store.check([f"rank{rank}"]))
        except Exception:  # noqa: BLE001
            return False

    def _read(self, rank: int) -> dict[str, Any] | None:
        """The report ``rank`` wrote (call only once :meth:`_has` says it is there), None if unreadable."""
        import pickle

        try:
            return pickle.loads(self.store.get(f"rank{rank}"))
        except Exception:  # noqa: BLE001 - the store went away: recorded as missing
            return None


def _missing_line(rank: int, root: _Root | None, me: int, timeout_s: float | None) -> str:
    """Why ``rank`` sent no results: it did not join the collective that timed out, was left blocked
    in the step the recording rank failed in, or is dead or stuck."""
    if root is not None and root.timed_out:
        return f"rank {rank}: did not join a collective {_within(timeout_s)} and sent no results (hung or dead)"
    if root is not None and root.rank == me:
        return f"rank {rank}: no results (left blocked in the step rank {me} failed in)"
    return f"rank {rank}: sent nothing within {FAILURE_REPORT_TIMEOUT_S:g} s (dead or stuck)"


def _hang_headline(root: _Root | None, missing: Sequence[int], timeout_s: float | None) -> str | None:
    """The run's one-line cause when a collective timed out: the ranks that never joined it, then the
    rank that gave up waiting (None when no collective timed out or every rank reported)."""
    if root is None or not root.timed_out or not missing:
        return None
    who = f"rank {missing[0]}" if len(missing) == 1 else "ranks " + ", ".join(str(m) for m in missing)
    them = "it" if len(missing) == 1 else "them"
    return f"{who}: did not join a collective {_within(timeout_s)}, hung or dead; rank {root.rank} timed out waiting for {them}"


def _records_of(
    prepared: Sequence[_Prepared],
    gathered: Sequence[Any],
    info: RankInfo,
    *,
    stopped: bool,
    failure: BaseException | None,
    root: _Root | None,
    missing: Sequence[int],
    started: _dt.datetime,
    with_diagnosis: bool,
    price: bool,
    timeout_s: float | None = None,
) -> list[RunRecord]:
    """One record per loader from every rank's results (``None`` for a rank that sent nothing).

    A failed record's error names the rank that failed first (``root``) before the ranks that
    stopped with it, and the ranks that sent nothing.
    """
    records: list[RunRecord] = []
    for i, p in enumerate(prepared):
        results = [g[i] for g in gathered if g is not None]
        errors = [(r["rank"], r["error"]) for r in results if r.get("error")]
        if root is not None:
            errors.sort(key=lambda e: e[0] != root.rank)  # stable: the first to fail leads
        lines = [f"rank {rk}: {e}" if info.world_size > 1 else e for rk, e in errors]
        lines += [_missing_line(m, root, info.rank, timeout_s) for m in missing]
        if root is not None and not any(rk == root.rank for rk, _ in errors):
            lines.insert(0, f"rank {root.rank}: {root.error}")
        failed = failure is not None or bool(lines)
        diagnosis = None
        if with_diagnosis and not stopped and not failed and results[0]["steps"]:
            from delibench.measure import summarize

            own = results[info.rank]["steps"]
            fraction = summarize(own, warmup_steps=min(effective_warmup_steps(p.spec, own), len(own) - 1)).data_wait_fraction
            diagnosis = diagnose(p, fraction, info)
        if (stopped or failed) and not any(r["steps"] for r in results):
            continue  # stopped before this loader's first step: nothing to report for it
        records.append(
            _record(p, results, info, stopped=stopped or failed, started=started, diagnosis=diagnosis, price=price,
                    error="; ".join(lines) if lines else None)
        )
    return records


def _finish(
    records: list[RunRecord],
    gathered: Sequence[Any],
    info: RankInfo,
    *,
    failure: Exception | None,
    broken: Exception | None,
    root: _Root | None,
    write: bool,
    results_dir: str | None,
    headline: str | None = None,
) -> list[RunRecord]:
    """Write the records (rank 0), then return them or raise what stopped the run.

    One rank: the loader's own exception. Several: a ``RuntimeFailure`` naming the rank that failed
    first (or ``headline``, the cause when it is known better, e.g. a rank that never joined a
    collective). Either carries the written paths in ``record_paths``.
    """
    other = [f"rank {r['rank']}: {r['error']}" for g in gathered if g is not None for r in g if r.get("error")]
    first = headline or (f"rank {root.rank}: {root.error}" if root else other[0] if other else None)
    distributed = info.world_size > 1
    if failure is not None and not records and not distributed:
        raise failure
    if not records:
        if first or failure or broken:
            where = first or f"rank {info.rank}: {_error_line(failure or broken)}"  # type: ignore[arg-type]
            raise RuntimeFailure(f"the run failed on {where}", hint="nothing was measured before it, no result written") from (failure or broken)
        raise _StoppedBeforeFirstStep("the run was stopped before its first step finished: nothing was measured, no result written")
    written: list[str] = []
    if write and info.is_main:
        from delibench.reports.store import ResultStore

        store = ResultStore(results_dir) if results_dir else ResultStore()
        for i, rec in enumerate(records):
            path = store.write(rec)
            written.append(str(path))
            records[i] = dataclasses.replace(rec, steps_path=str(path.with_suffix("")) + ".steps.csv")
    if failure is not None and not distributed:
        _attach_record_paths(failure, written)
        raise failure
    if first or failure or broken:
        where = first or f"rank {info.rank}: {_error_line(failure or broken)}"  # type: ignore[arg-type]
        error = RuntimeFailure(f"the run failed on {where}")
        _attach_record_paths(error, written)
        raise error from (failure or broken)
    return records


def compare(
    specs: Sequence[RunSpec],
    *,
    results_dir: str | None = None,
    on_step: Callable[[str, StepSample], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    write: bool = True,
    interleave: bool = True,
    with_diagnosis: bool = False,
    price: bool = True,
    manifests: dict[str, Manifest] | None = None,
    rank: RankInfo | None = None,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> list[RunRecord]:
    """Measure several loaders on the same data; epochs are interleaved so noise hits all alike.

    Args:
        specs: One RunSpec per loader (same data and workload for a fair comparison).
        results_dir: Where rank 0 writes the RunRecords (``None``: ``.delibench/results``).
        on_step: Called with (loader display name, step) after every step (progress).
        should_stop: Polled between steps; True stops with partial, ``interrupted`` results.
        write: Write the records to the result store.
        interleave: Epoch e of every loader runs before epoch e+1 of any (else one loader after another).
        with_diagnosis: Add the DS-Analyzer-style fetch/prep diagnosis to each record.
        price: Attach a cost estimate from the shipped price sheet.
        manifests: Manifests already read, by dataset URL (saves a GET per URL at start-up).
        rank: This process's place in the job (the CLI reads torchrun's variables); None: from an
            initialised ``torch.distributed`` process group, else a single rank.
        collective_timeout_s: Seconds a rank waits in a collective (DDP's all-reduce, the stop
            vote, the results gather) for the others, when this call creates the process group;
            a rank that does not join in time (hung) then fails the run on the ranks waiting for
            it, and rank 0 writes a ``failed`` record naming it. When the caller created the group,
            its own ``init_process_group(timeout=...)`` governs instead.

    Returns:
        One RunRecord per spec on rank 0; other ranks get the same list (their own copy). A stopped
        run leaves out the loaders that had not finished a step.

    Raises:
        DelibenchError: Exit code 130 when stopped before any loader finished a step.
        Exception: Whatever a loader raised mid-run (a fetch that failed for good, a crashed
            worker), after rank 0 has written a ``failed`` record of the steps measured before it
            (the other loaders' as ``interrupted``); the written paths are in the exception's
            ``record_paths``. A failure on another rank is raised as a ``RuntimeFailure`` naming it.
        UsageError: ``collective_timeout_s`` is not a positive number of seconds.
    """
    check_collective_timeout(collective_timeout_s)
    if not specs:
        raise UsageError("no loader to run", hint="give at least one --loader")
    labels = [s.loader.display_name for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two loaders share a name: {labels}", hint="label them, e.g. --loader deli@small:cache_size=1GiB")
    info = rank or current_rank_info()
    created = init_from_env(info, collective_timeout_s=collective_timeout_s)
    timeout_s = collective_timeout_s if created else None  # None: the caller's group, with its own timeout
    reports: _FailureReports | None = None
    if info.world_size > 1:
        global _compare_calls
        _compare_calls += 1
        reports = _FailureReports(info, _compare_calls)
    started = _dt.datetime.now(_dt.timezone.utc)
    manifests = dict(manifests or {})
    prepared: list[_Prepared] = []
    group_left_mid_collective = False  # then it is not destroyed: gloo may abort there, NCCL block
    try:
        for spec in specs:
            prepared.append(_prepare(spec, info, manifests))
        per_loader: list[dict[str, Any]] = [
            {"steps": [], "setup_s": 0.0, "ttfb_s": 0.0, "offset_s": 0.0, "stats": None, "rank": info.rank, "gpu": None, "error": None}
            for _ in specs
        ]
        gpu = [GpuUtilizationSampler(p.spec, info) for p in prepared]
        stopped = False
        failure: Exception | None = None
        timed_out = False  # the failure was a collective that timed out: a rank did not join it in time
        in_step = False  # the failure came out of a step: the group cannot be used (see _FailureReports)
        from delibench.workloads.loop import measure_loader

        epochs = max(s.epochs for s in specs)
        schedule = (
            [(e, i) for e in range(epochs) for i in range(len(specs))]
            if interleave
            else [(e, i) for i in range(len(specs)) for e in range(epochs)]
        )
        for epoch, i in schedule:
            p, acc = prepared[i], per_loader[i]
            if epoch >= p.spec.epochs:
                continue
            name = labels[i]
            measured: list[StepSample] = []  # the epoch's steps so far, kept if the loader raises
            try:
                result = measure_loader(
                    p.loader,
                    p.compute,
                    epochs=1,
                    start_epoch=epoch,
                    max_steps_per_epoch=p.spec.max_steps_per_epoch,
                    rank=info.rank,
                    on_step=_chain(measured.append, gpu[i].on_step if gpu[i].device is not None else None, (lambda s, _n=name: on_step(_n, s)) if on_step else None),
                    should_stop=should_stop,
                )
            except Exception as exc:  # noqa: BLE001 - re-raised below, once what was measured is recorded
                failure = exc
                in_step = reports is not None and _raised_in_step(exc, p.compute)
                timed_out = in_step and is_collective_timeout(exc)
                acc["gpu"] = gpu[i].mean()
                acc["steps"].extend(_failed_epoch_steps(measured, first=epoch == 0, time_offset_s=acc["offset_s"]))
                if epoch == 0 and measured:
                    acc["setup_s"], acc["ttfb_s"] = measured[0].start_s, measured[0].wait_s
                acc["stats"] = _loader_stats_now(p.loader) or acc["stats"]
                acc["error"] = _failure_line(exc, collective=in_step, timeout_s=timeout_s)
                break
            acc["gpu"] = gpu[i].mean()
            acc["steps"].extend(_offset_steps(result, first=epoch == 0, time_offset_s=acc["offset_s"]))
            acc["offset_s"] += result.wall_s
            if epoch == 0:
                acc["setup_s"], acc["ttfb_s"] = result.iterator_setup_s, result.time_to_first_batch_s
            acc["stats"] = result.loader_stats
            if result.stopped:
                stopped = True
                break
            if interleave and len(specs) > 1:
                # A loader's background work must not run in another loader's measured epochs.
                pause = getattr(p.loader, "pause_background", None)
                if pause is not None:
                    pause()
            # NOTE: collect between measured epochs, in this thread: one loader's garbage is then not
            # collected inside the next loader's timed steps, and dropped s3fs/gcsfs clients are closed
            # here rather than on whichever thread runs an event loop when the collector fires (s3fs
            # then schedules the close on the wrong loop: "Task exception was never retrieved").
            gc.collect()
        root: _Root | None = None
        missing: list[int] = []
        broken: Exception | None = None  # a collective failed under this rank (another rank left the job)
        if reports is None:
            gathered = all_gather_objects(per_loader, info)
        else:
            if failure is None or not in_step:  # the group is usable: every rank joins the gather
                try:
                    gathered = all_gather_objects(per_loader, info)
                except Exception as exc:  # noqa: BLE001 - another rank failed in its step and ended, or hung
                    broken = exc
                    timed_out = is_collective_timeout(exc)
            if in_step or broken is not None:
                group_left_mid_collective = True
                own = next((a["error"] for a in per_loader if a["error"]), None) or _failure_line(broken, collective=True, timeout_s=timeout_s)  # type: ignore[arg-type]
                gathered, root, missing = reports.exchange(per_loader, own, timed_out=timed_out)
                if not info.is_main:
                    # Rank 0 records every rank's report; this rank leaves, which releases any rank still blocked with it.
                    raise RuntimeFailure(f"rank {info.rank} stopped: {own}") from (failure or broken)
        records = _records_of(prepared, gathered, info, stopped=stopped, failure=failure or broken, root=root, missing=missing,
                              started=started, with_diagnosis=with_diagnosis, price=price, timeout_s=timeout_s)
        return _finish(records, gathered, info, failure=failure, broken=broken, root=root, write=write, results_dir=results_dir,
                       headline=_hang_headline(root, missing, timeout_s))
    finally:
        for p in prepared:
            p.loader.close()
        if group_left_mid_collective:
            abandon_group()
        else:
            shutdown(created)


def run(
    spec: RunSpec,
    *,
    results_dir: str | None = None,
    on_step: Callable[[StepSample], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    write: bool = True,
    with_diagnosis: bool = False,
    price: bool = True,
    rank: RankInfo | None = None,
    collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S,
) -> RunRecord:
    """Measure one loader: the same as :func:`compare` with a single spec.

    Args:
        spec: The fully resolved run.
        results_dir: Where rank 0 writes the RunRecord.
        on_step: Called after every step (progress bars, Optuna pruning).
        should_stop: Polled between steps; True ends the run with a partial, ``interrupted`` record.
        write: Write the record to the result store.
        with_diagnosis: Add the fetch/prep stall diagnosis (runs a short slice from memory).
        price: Attach a cost estimate.
        rank: As for :func:`compare`.
        collective_timeout_s: As for :func:`compare`.
    """
    callback = (lambda _name, s: on_step(s)) if on_step else None
    (record,) = compare(
        [spec],
        results_dir=results_dir,
        on_step=callback,
        should_stop=should_stop,
        write=write,
        with_diagnosis=with_diagnosis,
        price=price,
        rank=rank,
        collective_timeout_s=collective_timeout_s,
    )
    return record
