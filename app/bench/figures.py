"""Per-loader figures of one cell: throughput and wait from a loader's timeline, then scored against the bound."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from delibench.app.bench.bound import Bound, bound_for
from delibench.errors import RuntimeFailure
from delibench.records import StepSample

__all__ = ["NO_FETCH", "LoaderFigures", "loader_figures", "no_fetch_figures", "pipeline_cpu_s_per_sample", "score_figures"]

#: Loaders that run the same decode pipeline without fetching from the bucket (DS-Analyzer's prep rate).
NO_FETCH = ("disk", "memory")


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


def no_fetch_figures(figures: Sequence[LoaderFigures]) -> list[LoaderFigures]:
    """The figures of the :data:`NO_FETCH` loaders that ran, in that order."""
    by_name = {f.loader: f for f in figures}
    return [by_name[name] for name in NO_FETCH if name in by_name]


def pipeline_cpu_s_per_sample(figures: Sequence[LoaderFigures]) -> float | None:
    """Steady-state CPU per sample of the pipeline with no fetch: the cheaper no-fetch loader's (None: not metered).

    disk reads local files in the workers; memory hands bytes over as deli does.
    """
    costs = [
        f.cpu_s_per_sample.get("main", 0.0) + f.cpu_s_per_sample.get("workers", 0.0)
        for f in no_fetch_figures(figures)
        if f.cpu_s_per_sample
    ]
    return min(costs) if costs else None


def score_figures(figures: Sequence[LoaderFigures], bounds: Sequence[Bound], local_bounds: Sequence[Bound]) -> list[LoaderFigures]:
    """Each loader's bound, efficiency, wait reduction vs the bucket loader and fetch stall removed.

    The no-fetch loaders are held to ``local_bounds`` (no link, store or fetch-CPU term), the others
    to ``bounds``.
    """
    no_fetch = no_fetch_figures(figures)
    bucket_fig = next((f for f in figures if f.loader == "bucket"), None)
    prep_wait = min((f.wait_s_per_sample for f in no_fetch), default=0.0)
    final = []
    for fig in figures:
        bound = bound_for(fig.samples_per_epoch, local_bounds if fig in no_fetch else bounds,
                          warmup_samples=fig.warmup_samples, warmup_s=fig.warmup_s, whole_epochs=not fig.sliced)
        reduction = stall_removed = None
        if bucket_fig is not None and bucket_fig.wait_s_per_sample > 0:
            reduction = 1.0 - fig.wait_s_per_sample / bucket_fig.wait_s_per_sample
            stall = bucket_fig.wait_s_per_sample - prep_wait
            if stall > 0:
                stall_removed = 1.0 - max(0.0, fig.wait_s_per_sample - prep_wait) / stall
        final.append(dataclasses.replace(fig, bound_per_s=bound, efficiency=fig.throughput_per_s / bound if bound else 0.0,
                                         wait_reduction_vs_bucket=reduction, fetch_stall_removed=stall_removed))
    return final
