"""Running one cell of the benchmark: dataset, probes, the loaders interleaved, memory, then figures against the bound."""

from __future__ import annotations

import dataclasses
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from delibench.app.bench.bound import Bound, epoch_bounds, no_fetch_bounds
from delibench.app.bench.figures import LoaderFigures, loader_figures, no_fetch_figures, pipeline_cpu_s_per_sample, score_figures
from delibench.app.bench.matrix import (
    BENCH_BUCKET,
    PEER_KINDS,
    PEER_VARIANTS,
    SIZES,
    SLICED,
    BenchOptions,
    Cell,
    expand_loaders,
    loader_of,
)
from delibench.app.bench.probes import CpuMeter, FetchCeiling, best_miss_rates, cpu_delta, deli_miss_rates, raw_fetch_ceiling
from delibench.records import RunRecord, StepSample

if TYPE_CHECKING:
    from delibench.app.lab import Lab, LabDataset

__all__ = ["FIXED_FLOOR_BYTES", "WORKER_ALLOWANCE_BYTES", "CellResult", "run_cell"]


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


def _dataset(lab: Lab, cell: Cell, seed: int, log: Callable[[str], None]) -> LabDataset:
    """Generate (once per size and count) and push (once per server) the cell's dataset."""
    tag = f"{cell.size}-{cell.samples}"
    return lab.dataset(
        lab.workdir / "data" / tag, f"s3://{BENCH_BUCKET}/{tag}", samples=cell.samples, reuse=True,
        log=lambda line: log(f"  {line}"), mean_bytes=SIZES[cell.size], layout="both",
        shard_samples=max(16, cell.samples // 8), seed=seed, overwrite=True,
    )


def _installed(kind: str) -> bool:
    return _install_error(kind) is None


def _install_error(kind: str) -> str | None:
    """Why loader ``kind`` cannot be built here (its registry message), or None."""
    from delibench.plugins import loaders

    try:
        loaders.get(kind)
        return None
    except Exception as exc:  # noqa: BLE001 - an optional peer that does not import
        return str(exc) or type(exc).__name__



def run_cell(cell: Cell, options: BenchOptions, lab: Lab, log: Callable[[str], None]) -> CellResult:
    """Measure one cell on ``lab`` (its server; a link emulator per profile, started on first use)."""
    from delibench.records import ComputeSpec, RunSpec
    from delibench.app.session import compare, warm_decoder
    from delibench.testbed.profiles import with_overrides
    from delibench.workloads.loop import probe_decode_rate
    from delibench.workloads.models import get_workload

    started = time.perf_counter()
    notes: list[str] = []
    data = _dataset(lab, cell, options.seed, log)
    local, url, manifest = data.local, data.url, data.manifest
    profile = with_overrides(cell.profile, bandwidth=cell.bandwidth)
    link = lab.link(profile)
    direct_route = lab.route(direct=True)
    external = {"link": link.pid} if link.pid else {}
    store_pid = lab.server_pid()
    if store_pid:
        external["store"] = store_pid
    meter = CpuMeter(external)
    keys = [s.key for s in manifest.samples]
    prefix = url.split("/", 3)[3]
    full_keys = [f"{prefix}/{k}" for k in keys]

    # Probes: the store's ceiling direct and through the link, the decode rate of one core.
    log(f"  probing the store ({options.probe_s:g} s direct, {options.probe_s:g} s through the link)")
    ceilings = [
        raw_fetch_ceiling(direct_route.storage_options, BENCH_BUCKET, full_keys, label="direct", duration_s=options.probe_s,
                          meter=meter),
        raw_fetch_ceiling(link.storage_options, BENCH_BUCKET, full_keys, label="link", duration_s=options.probe_s, threads=128,
                          meter=meter),
    ]
    direct = ceilings[0]
    testbed_cpu = direct.cpu_s_per_object.get("store", 0.0) + ceilings[1].cpu_s_per_object.get("link", 0.0)
    decoder = get_workload(options.workload).decoder(train=True)
    warm_decoder(decoder)
    items = [((local / s.key).read_bytes(), s.label) for s in manifest.samples[:32]]
    decode_rate = probe_decode_rate(decoder, items, min_time_s=0.5).samples_per_s

    cache_bytes = int(cell.cache_fraction * manifest.total_bytes)
    kinds = []
    for kind in expand_loaders(options.loaders):
        base = PEER_VARIANTS[kind].kind if kind in PEER_VARIANTS else kind
        if base in PEER_KINDS and not _installed(base):
            notes.append(f"{kind} cannot run here: {_install_error(base)}")
            continue
        kinds.append(kind)
    converted = {"litdata", "mosaic-streaming"} & {PEER_VARIANTS[k].kind if k in PEER_VARIANTS else k for k in kinds}
    if converted:
        from delibench.loaders.peers import convert_for_peers

        log(f"  writing the {' and '.join(sorted(converted))} copies of the same images")
        convert_for_peers(manifest, local, url, direct_route.storage_options, log=lambda line: log(f"    {line}"),
                          formats=tuple(f for f, k in (("litdata", "litdata"), ("mds", "mosaic-streaming")) if k in converted))
    if "memory" not in kinds:
        kinds.append("memory")

    def spec(name: str) -> RunSpec:
        loader = loader_of(name, cache_bytes=cache_bytes, deli_options=options.deli_options, local=local)
        kind = loader.kind
        return link.spec(
            url,
            workload=options.workload,
            loader=loader,
            compute=ComputeSpec("emulated", cell.step_time_s),
            batch_size=cell.batch_size,
            num_workers=options.num_workers,
            epochs=options.epochs,
            warmup_steps=options.warmup_steps,
            seed=options.seed,
            max_steps_per_epoch=options.naive_steps if kind in SLICED else None,
            storage_options=_storage_options_for(kind, link.storage_options),
        )

    # Memory: deli alone first, so its peak is not mixed with the other loaders' buffers.
    memory = _memory_run(spec("deli"), meter, cache_bytes, manifest, options, log)
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
            for k, v in cpu_delta(last["snap"], snap).items():  # type: ignore[arg-type]
                acc[k] = acc.get(k, 0.0) + v
            acc["samples"] += step.samples
        last["snap"] = snap

    log(f"  measuring {', '.join(kinds)} ({options.epochs} epochs, interleaved)")
    records = compare([spec(k) for k in kinds], write=False, on_step=on_step, price=False)

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
    deli_rec = next((r for r in records if r.spec.loader.kind == "deli"), None)
    deli_misses = [] if deli_rec is None else deli_miss_rates(deli_rec.loader_stats.cache_misses, len(manifest), options.epochs)
    misses = best_miss_rates([s.size_bytes for s in manifest.samples], cache_bytes, options.epochs, options.seed, deli_misses)
    steady_cpu = pipeline_cpu_s_per_sample(figures)
    cores = float(len(os.sched_getaffinity(0))) if hasattr(os, "sched_getaffinity") else float(os.cpu_count() or 1)
    bounds = epoch_bounds(
        miss_rates=misses,
        accelerator_per_s=cell.accelerator_samples_per_s,
        cores=cores,
        pipeline_cpu_s_per_sample=steady_cpu,
        pipeline_epoch_rates=[f.epoch_throughput_per_s for f in no_fetch_figures(figures)],
        testbed_cpu_s_per_object=testbed_cpu,
        link_bytes_per_s=profile.bandwidth_bytes_per_s,
        mean_sample_bytes=manifest.mean_sample_bytes,
        store_objects_per_s=direct.objects_per_s,
        rtt_s=profile.rtt_s,
        connect_rtts=profile.connect_rtts,
        step_time_s=cell.step_time_s,
    )
    local_bounds = no_fetch_bounds(bounds, cores=cores, pipeline_cpu_s_per_sample=steady_cpu,
                                   mean_sample_bytes=manifest.mean_sample_bytes)
    final = score_figures(figures, bounds, local_bounds)
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


def _storage_options_for(kind: str, storage_options: dict[str, Any]) -> dict[str, Any]:
    """The route's storage options, unsigned for s3torchconnector.

    s3torchconnector takes no credentials as data, only from its own chain (environment, profile,
    instance role), and the bench passes none through the environment. The testbed serves unsigned
    requests; skipping the signature only saves the peer CPU, so it cannot favour deli.
    """
    return {**storage_options, "anon": True} if kind.startswith("s3torchconnector") else storage_options


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
