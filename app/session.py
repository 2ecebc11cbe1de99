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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from delibench.distributed import RankInfo, all_gather_objects, current_rank_info, init_from_env, shutdown
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


def merge_loader_stats(stats: Sequence[LoaderStats | None]) -> LoaderStats:
    """One LoaderStats for a multi-rank run: counters summed, peaks and percentiles the worst rank's."""
    present = [s for s in stats if s is not None]
    if not present:
        return LoaderStats()
    if len(present) == 1:
        return present[0]

    def worst(name: str) -> float | None:
        values = [getattr(s, name) for s in present if getattr(s, name) is not None]
        return max(values) if values else None

    leads = [s.prefetch_lead_mean for s in present if s.prefetch_lead_mean is not None]
    return LoaderStats(
        requests_count=sum(s.requests_count for s in present),
        bytes_read_remote=sum(s.bytes_read_remote for s in present),
        cache_hits=sum(s.cache_hits for s in present),
        cache_misses=sum(s.cache_misses for s in present),
        cache_evictions=sum(s.cache_evictions for s in present),
        cache_peak_bytes=max(s.cache_peak_bytes for s in present),
        cache_bytes=sum(s.cache_bytes for s in present),
        prefetch_peak_bytes=max(s.prefetch_peak_bytes for s in present),
        fetch_latency_s_p50=worst("fetch_latency_s_p50"),
        fetch_latency_s_p95=worst("fetch_latency_s_p95"),
        fetch_latency_s_p99=worst("fetch_latency_s_p99"),
        prefetch_lead_mean=sum(leads) / len(leads) if leads else None,
        retries_count=sum(s.retries_count for s in present),
        hedges_count=sum(s.hedges_count for s in present),
        errors_count=sum(s.errors_count for s in present),
        skipped_keys=tuple(k for s in present for k in s.skipped_keys),
    )


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

    Returns:
        One RunRecord per spec on rank 0; other ranks get the same list (their own copy). A stopped
        run leaves out the loaders that had not finished a step.

    Raises:
        DelibenchError: Exit code 130 when stopped before any loader finished a step.
        Exception: Whatever a loader raised mid-run (a fetch that failed for good, a crashed
            worker), after rank 0 has written a ``failed`` record of the steps measured before it
            (the other loaders' as ``interrupted``); the written paths are in the exception's
            ``record_paths``. A failure on another rank is raised as a ``RuntimeFailure`` naming it.
    """
    if not specs:
        raise UsageError("no loader to run", hint="give at least one --loader")
    labels = [s.loader.display_name for s in specs]
    if len(set(labels)) != len(labels):
        raise UsageError(f"two loaders share a name: {labels}", hint="label them, e.g. --loader deli@small:cache_size=1GiB")
    info = rank or current_rank_info()
    created = init_from_env(info)
    started = _dt.datetime.now(_dt.timezone.utc)
    manifests = dict(manifests or {})
    prepared: list[_Prepared] = []
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
                acc["gpu"] = gpu[i].mean()
                acc["steps"].extend(_failed_epoch_steps(measured, first=epoch == 0, time_offset_s=acc["offset_s"]))
                if epoch == 0 and measured:
                    acc["setup_s"], acc["ttfb_s"] = measured[0].start_s, measured[0].wait_s
                acc["stats"] = _loader_stats_now(p.loader) or acc["stats"]
                acc["error"] = _error_line(exc)
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
        diagnoses: list[Diagnosis | None] = [None] * len(specs)
        gathered = all_gather_objects(per_loader, info)
        records: list[RunRecord] = []
        for i, p in enumerate(prepared):
            results = [g[i] for g in gathered]
            errors = [f"rank {r['rank']}: {r['error']}" if info.world_size > 1 else r["error"] for r in results if r.get("error")]
            failed = failure is not None or any(errors)
            if with_diagnosis and not stopped and not failed and results[0]["steps"]:
                from delibench.measure import summarize

                own = results[info.rank]["steps"]
                fraction = summarize(own, warmup_steps=min(effective_warmup_steps(p.spec, own), len(own) - 1)).data_wait_fraction
                diagnoses[i] = diagnose(p, fraction, info)
            if (stopped or failed) and not any(r["steps"] for r in results):
                continue  # stopped before this loader's first step: nothing to report for it
            records.append(
                _record(p, results, info, stopped=stopped or failed, started=started, diagnosis=diagnoses[i], price=price,
                        error="; ".join(errors) if errors else None)
            )
        if failure is not None and not records:
            raise failure
        other = [f"rank {r['rank']}: {r['error']}" for g in gathered for r in g if r.get("error")]
        if not records:
            if other:
                raise RuntimeFailure(f"the run failed on {other[0]}", hint="nothing was measured before it, no result written")
            raise _StoppedBeforeFirstStep(
                "the run was stopped before its first step finished: nothing was measured, no result written"
            )
        written: list[str] = []
        if write and info.is_main:
            from delibench.reports.store import ResultStore

            store = ResultStore(results_dir) if results_dir else ResultStore()
            for i, rec in enumerate(records):
                path = store.write(rec)
                written.append(str(path))
                records[i] = dataclasses.replace(rec, steps_path=str(path.with_suffix("")) + ".steps.csv")
        if failure is not None:
            _attach_record_paths(failure, written)
            raise failure
        if other:
            error = RuntimeFailure(f"the run failed on {other[0]}")
            _attach_record_paths(error, written)
            raise error
        return records
    finally:
        for p in prepared:
            p.loader.close()
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
    )
    return record
