"""The data-wait arithmetic: per-step samples in, a :class:`~delibench.records.RunMetrics` and validity issues out.

Pure functions with no clock and no torch, so every figure a report prints can be unit-tested
with hand-made :class:`~delibench.records.StepSample` s. The definitions follow shared/STYLE.md §5.3
(gcsfs's data-wait harness, DLIO/MLPerf Storage):

* ``data_wait_fraction = Σ wait_s / Σ (wait_s + compute_s)`` over the *steady-state window*: each
  rank's steps after its first ``warmup_steps`` steps (counted from the start of the run, not of each
  epoch). The first step of a rank is always treated as warm-up, because its wait *is* the time to
  first batch, which is reported on its own.
* The run's figure is the **bottleneck rank**'s: the rank with the largest total (steady) wait gates
  a synchronous data-parallel step.
* Beside it, the **slowest rank per step**: at each step (aligned across ranks by epoch and step)
  the largest wait of any rank, since DDP's all-reduce makes every rank wait for the latest batch
  (``slowest_rank_wait_s``, ``slowest_rank_wait_fraction``, and per rank ``slowest_steps``).
* ``accelerator_utilization = 1 - data_wait_fraction`` (MLPerf Storage's AU).
* The whole-run fraction (every step, warm-up included) is kept beside it, labelled as such.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from delibench.records import EpochMetrics, Issue, LoaderStats, RankMetrics, RunMetrics, StepSample
from delibench.units import format_bytes

__all__ = [
    "MIN_MEASURED_STEPS",
    "WindowTotals",
    "check_validity",
    "percentile",
    "summarize",
    "wait_fraction",
]

#: Fewer steady-state steps than this make a run ``invalid`` (too-few-steps).
MIN_MEASURED_STEPS = 3


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) with linear interpolation (numpy's default); 0.0 for no values."""
    if not values:
        return 0.0
    if not 0 <= q <= 100:
        raise ValueError(f"percentile must lie in [0, 100], got {q}")
    ordered = sorted(values)
    pos = (len(ordered) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def wait_fraction(wait_s: float, compute_s: float) -> float:
    """``wait / (wait + compute)``, 0.0 when both are zero."""
    total = wait_s + compute_s
    return wait_s / total if total > 0 else 0.0


@dataclass(frozen=True, slots=True)
class WindowTotals:
    """Sums over a set of steps."""

    steps: int
    samples: int
    wait_s: float
    compute_s: float

    @classmethod
    def of(cls, steps: Iterable[StepSample]) -> WindowTotals:
        """Totals of ``steps``."""
        n = samples = 0
        wait = compute = 0.0
        for s in steps:
            n += 1
            samples += s.samples
            wait += s.wait_s
            compute += s.compute_s
        return cls(n, samples, wait, compute)

    @property
    def wall_s(self) -> float:
        """Σ (wait + compute)."""
        return self.wait_s + self.compute_s

    @property
    def fraction(self) -> float:
        """Data-wait fraction of the window."""
        return wait_fraction(self.wait_s, self.compute_s)


def _per_rank(value: float | Mapping[int, float] | None, rank: int) -> float:
    if value is None:
        return 0.0
    if isinstance(value, Mapping):
        return float(value.get(rank, 0.0))
    return float(value)


def summarize(
    steps: Sequence[StepSample],
    *,
    warmup_steps: int,
    iterator_setup_s: float | Mapping[int, float] = 0.0,
    time_to_first_batch_s: float | Mapping[int, float] = 0.0,
    bytes_per_sample: float = 0.0,
    world_size: int | None = None,
    loader_stats: LoaderStats | Mapping[int, LoaderStats] | None = None,
    gpu_utilization_mean: float | None = None,
) -> RunMetrics:
    """Summarise the steps of one run (one or many ranks) into :class:`RunMetrics`.

    Args:
        steps: Every rank's steps, in the order each rank took them (ranks may be interleaved).
        warmup_steps: Steps at the start of each rank's run left out of the steady-state window
            (at least the first step is always left out: its wait is the time to first batch).
        iterator_setup_s: Setup time of the first epoch's iterator: one value, or one per rank.
        time_to_first_batch_s: Time from the first ``next()`` to the first batch: one value or per rank.
        bytes_per_sample: Mean sample size (manifest), for the bytes/s throughput.
        world_size: Ranks expected; ranks with no step still get a (zero) entry.
        loader_stats: Loader counters: one (rank 0) or one per rank.
        gpu_utilization_mean: NVML utilisation, when measured.

    Returns:
        The run's metrics; figures are those of the bottleneck rank unless said otherwise.

    Raises:
        ValueError: ``warmup_steps`` is negative or ``steps`` is empty.
    """
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if not steps:
        raise ValueError("no steps were measured")
    by_rank: dict[int, list[StepSample]] = {}
    for s in steps:
        by_rank.setdefault(s.rank, []).append(s)
    for r in range(world_size or 0):
        by_rank.setdefault(r, [])
    drop = max(warmup_steps, 1)

    rank_metrics: list[RankMetrics] = []
    steady: dict[int, WindowTotals] = {}
    whole: dict[int, WindowTotals] = {}
    steady_waits: list[float] = []
    steady_computes: list[float] = []
    epoch_metrics: list[EpochMetrics] = []
    wall_by_rank: dict[int, float] = {}
    for rank in sorted(by_rank):
        rs = by_rank[rank]
        window = rs[drop:]
        steady[rank] = WindowTotals.of(window)
        whole[rank] = WindowTotals.of(rs)
        steady_waits.extend(s.wait_s for s in window)
        steady_computes.extend(s.compute_s for s in window)
        wall_by_rank[rank] = max((s.start_s + s.wait_s + s.compute_s for s in rs), default=0.0)
        if isinstance(loader_stats, Mapping):
            stats = loader_stats.get(rank, LoaderStats())
        else:
            stats = loader_stats if (loader_stats is not None and rank == 0) else LoaderStats()
        rank_metrics.append(
            RankMetrics(
                rank=rank,
                data_wait_fraction=steady[rank].fraction,
                wait_s=steady[rank].wait_s,
                compute_s=steady[rank].compute_s,
                iterator_setup_s=_per_rank(iterator_setup_s, rank),
                time_to_first_batch_s=_per_rank(time_to_first_batch_s, rank),
                loader_stats=stats,
            )
        )
        epochs: dict[int, list[StepSample]] = {}
        for s in rs:
            epochs.setdefault(s.epoch, []).append(s)
        for epoch in sorted(epochs):
            t = WindowTotals.of(epochs[epoch])
            epoch_metrics.append(
                EpochMetrics(
                    epoch=epoch,
                    rank=rank,
                    steps=t.steps,
                    samples=t.samples,
                    wall_s=t.wall_s,
                    wait_s=t.wait_s,
                    compute_s=t.compute_s,
                    data_wait_fraction=t.fraction,
                    throughput_samples_per_s=t.samples / t.wall_s if t.wall_s > 0 else 0.0,
                )
            )

    measured_ranks = [r for r in steady if whole[r].steps]
    has_window = all(steady[r].steps for r in measured_ranks)
    pick = steady if has_window else whole
    # Bottleneck: the largest total wait; ties go to the lowest rank.
    bottleneck = max(measured_ranks, key=lambda r: (pick[r].wait_s, -r))
    window_time = max(pick[r].wall_s for r in measured_ranks)
    window_samples = sum(pick[r].samples for r in measured_ranks)
    throughput = window_samples / window_time if window_time > 0 else 0.0

    epoch_walls: dict[int, float] = {}
    for e in epoch_metrics:
        epoch_walls[e.epoch] = max(epoch_walls.get(e.epoch, 0.0), e.wall_s)
    waits = steady_waits if has_window else [s.wait_s for s in steps]
    computes = steady_computes if has_window else [s.compute_s for s in steps]
    fraction = pick[bottleneck].fraction
    slowest = _slowest_rank_per_step({r: (by_rank[r][drop:] if has_window else by_rank[r]) for r in measured_ranks})
    if slowest.counts:
        rank_metrics = [replace(m, slowest_steps=slowest.counts.get(m.rank, 0)) for m in rank_metrics]
    return RunMetrics(
        data_wait_fraction=fraction,
        accelerator_utilization=1.0 - fraction,
        data_wait_fraction_whole_run=whole[bottleneck].fraction,
        time_to_first_batch_s=max(_per_rank(time_to_first_batch_s, r) for r in by_rank),
        iterator_setup_s=max(_per_rank(iterator_setup_s, r) for r in by_rank),
        epoch_time_s_mean=sum(epoch_walls.values()) / len(epoch_walls) if epoch_walls else 0.0,
        throughput_samples_per_s=throughput,
        throughput_bytes_per_s=throughput * bytes_per_sample,
        wait_s_p50=percentile(waits, 50),
        wait_s_p90=percentile(waits, 90),
        wait_s_p99=percentile(waits, 99),
        compute_s_mean=sum(computes) / len(computes) if computes else 0.0,
        measured_steps=min(steady[r].steps for r in measured_ranks),
        total_samples=sum(whole[r].samples for r in measured_ranks),
        wall_s=max(wall_by_rank.values()),
        bottleneck_rank=bottleneck,
        gpu_utilization_mean=gpu_utilization_mean,
        epochs=tuple(epoch_metrics),
        ranks=tuple(rank_metrics),
        slowest_rank_wait_s=sum(slowest.waits),
        slowest_rank_wait_fraction=wait_fraction(sum(slowest.waits), sum(slowest.walls) - sum(slowest.waits)),
        slowest_rank_wait_s_p90=percentile(slowest.waits, 90),
        aligned_steps=len(slowest.waits),
    )


@dataclass(frozen=True, slots=True)
class _Slowest:
    waits: list[float]
    walls: list[float]
    counts: dict[int, int]


def _slowest_rank_per_step(windows: Mapping[int, Sequence[StepSample]]) -> _Slowest:
    """Per step present on every rank (matched by epoch and step): the largest wait of any rank,
    the longest wait + compute, and how often each rank was the one waiting longest.

    In synchronous data parallelism (DDP's all-reduce) a step ends for all ranks when the slowest
    has its batch, so a fast rank's "compute" includes waiting in the collective for a rank that
    is still blocked on data: the per-rank figures miss that, the per-step maximum does not.
    """
    keyed = {r: {(s.epoch, s.step): s for s in steps} for r, steps in windows.items()}
    if not keyed:
        return _Slowest([], [], {})
    common = set.intersection(*(set(k) for k in keyed.values()))
    waits: list[float] = []
    walls: list[float] = []
    counts: dict[int, int] = {}
    for key in sorted(common):
        at = [(keyed[r][key], r) for r in sorted(keyed)]
        step, rank = max(at, key=lambda x: (x[0].wait_s, -x[1]))
        waits.append(step.wait_s)
        walls.append(max(s.wait_s + s.compute_s for s, _ in at))
        counts[rank] = counts.get(rank, 0) + 1
    return _Slowest(waits, walls, counts)


def check_validity(
    metrics: RunMetrics,
    *,
    expected_samples_per_epoch: int | Mapping[int, int] | None = None,
    max_steps_per_epoch: int | None = None,
    batch_size: int | None = None,
    stopped_early: bool = False,
    min_measured_steps: int = MIN_MEASURED_STEPS,
    cold_cache_ratio: float = 1.5,
    loader_kind: str | None = None,
    dataset_bytes: int | None = None,
    memory_bytes: int | None = None,
) -> list[Issue]:
    """The issues a reader of ``metrics`` must know, most severe first.

    Args:
        metrics: From :func:`summarize`.
        expected_samples_per_epoch: Samples in one rank's partition of an epoch (one value or per
            rank); enables the full-read check.
        max_steps_per_epoch: The run sliced each epoch to this many steps (expected samples are
            then ``min(partition, steps * batch_size)``).
        batch_size: Samples per batch, with ``max_steps_per_epoch``.
        stopped_early: The run was interrupted or pruned: the last epoch of each rank may be short.
        min_measured_steps: Fewer steady-state steps make the run invalid.
        cold_cache_ratio: Warn when epoch 1 takes this many times longer per sample than later ones.
        loader_kind: The loader's registry name (``disk`` enables the page-cache check).
        dataset_bytes: Dataset size (manifest).
        memory_bytes: Host RAM.

    Returns:
        ``invalid`` issues (the result must not be trusted) before ``warning`` and ``info`` ones.
    """
    issues: list[Issue] = []
    if expected_samples_per_epoch is not None:
        last_epoch = {r.rank: max((e.epoch for e in metrics.epochs if e.rank == r.rank), default=-1) for r in metrics.ranks}
        for e in metrics.epochs:
            expected = _expected(expected_samples_per_epoch, e.rank, max_steps_per_epoch, batch_size)
            if expected is None or (stopped_early and e.epoch == last_epoch.get(e.rank)):
                continue
            if e.samples < expected:
                issues.append(
                    Issue(
                        "invalid",
                        "partial-read",
                        f"epoch {e.epoch} on rank {e.rank} delivered {e.samples} of {expected} samples: "
                        "the loader skipped data, so its throughput must not be published",
                        expected=str(expected),
                        actual=str(e.samples),
                    )
                )
            elif e.samples > expected:
                issues.append(
                    Issue(
                        "warning",
                        "over-read",
                        f"epoch {e.epoch} on rank {e.rank} delivered {e.samples} samples, more than its partition of {expected}",
                        expected=str(expected),
                        actual=str(e.samples),
                    )
                )
    if metrics.measured_steps < min_measured_steps:
        issues.append(
            Issue(
                "invalid",
                "too-few-steps",
                f"only {metrics.measured_steps} step(s) after warm-up (need {min_measured_steps}): "
                "run more steps or epochs, or lower --warmup-steps",
                expected=f">= {min_measured_steps}",
                actual=str(metrics.measured_steps),
            )
        )
    cold = _cold_cache(metrics, cold_cache_ratio)
    if cold is not None:
        issues.append(cold)
    if loader_kind == "disk" and dataset_bytes and memory_bytes and dataset_bytes < memory_bytes:
        issues.append(
            Issue(
                "warning",
                "page-cache",
                f"the dataset ({format_bytes(dataset_bytes)}) fits in host RAM ({format_bytes(memory_bytes)}): "
                "after epoch 1 the disk loader reads from the page cache, not the disk; "
                "use a dataset larger than RAM (MLPerf Storage asks for 5x) or drop caches between epochs",
                expected=f"dataset > {memory_bytes} bytes",
                actual=str(dataset_bytes),
            )
        )
    if stopped_early:
        issues.append(Issue("info", "stopped-early", f"the run was stopped early; figures cover the {metrics.total_samples} samples measured"))
    order = {"invalid": 0, "warning": 1, "info": 2}
    return sorted(issues, key=lambda i: order.get(i.severity, 3))


def _expected(expected: int | Mapping[int, int], rank: int, max_steps: int | None, batch_size: int | None) -> int | None:
    value = expected.get(rank) if isinstance(expected, Mapping) else expected
    if value is None:
        return None
    if max_steps is not None and batch_size is not None:
        value = min(value, max_steps * batch_size)
    return int(value)


def _cold_cache(metrics: RunMetrics, ratio: float) -> Issue | None:
    rank = metrics.bottleneck_rank
    epochs = sorted((e for e in metrics.epochs if e.rank == rank and e.samples > 0), key=lambda e: e.epoch)
    if len(epochs) < 2:
        return None
    per_sample = [e.wall_s / e.samples for e in epochs]
    later = sorted(per_sample[1:])
    typical = later[len(later) // 2] if len(later) % 2 else (later[len(later) // 2 - 1] + later[len(later) // 2]) / 2
    if typical > 0 and per_sample[0] > ratio * typical:
        return Issue(
            "warning",
            "cold-cache",
            f"epoch {epochs[0].epoch} took {per_sample[0] / typical:.1f}x longer per sample than later epochs "
            "(cold caches or connection setup): use --warmup-epochs 1 or compare epoch >= 2",
            expected=f"<= {ratio}x",
            actual=f"{per_sample[0] / typical:.2f}x",
        )
    return None
