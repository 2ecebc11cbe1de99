"""Report figures (matplotlib, Agg canvas, no pyplot state); only ``delibench.reports`` imports this module.

Each ``plot_*`` function returns a ``matplotlib.figure.Figure`` or ``None`` when the records hold no
data for it (e.g. no timeline, no cache), so a report shows only figures that say something.
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from delibench.records import CostEstimate, RunRecord
from delibench.reports.study import StudyExport, pareto_front
from delibench.reports.tables import run_label

__all__ = [
    "figure_png",
    "plot_cache",
    "plot_cost_breakdown",
    "plot_pareto",
    "plot_throughput",
    "plot_tuning_history",
    "plot_wait_fraction",
    "plot_wait_timeline",
]

_PALETTE = ("#4C72B0", "#DD8452", "#55A868", "#C44E52", "#8172B3", "#937860", "#DA8BC3", "#8C8C8C")


def _figure(width: float = 7.0, height: float = 3.6) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _colors(records: Sequence[RunRecord]) -> list[str]:
    return [_PALETTE[i % len(_PALETTE)] for i in range(len(records))]


def figure_png(fig: Figure) -> bytes:
    """Render a figure to PNG bytes."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")  # long rotated labels must not be clipped
    return buf.getvalue()


def _bars(ax: Any, labels: list[str], values: list[float], colors: list[str], fmt: str) -> None:
    bars = ax.bar(range(len(values)), values, color=colors)
    ax.set_xticks(range(len(labels)), labels, rotation=15 if max(map(len, labels)) > 12 else 0, ha="right" if max(map(len, labels)) > 12 else "center")
    ax.bar_label(bars, labels=[format(v, fmt) for v in values], padding=2, fontsize=8)
    ax.margins(y=0.15)
    ax.grid(axis="y", alpha=0.3)


def plot_wait_fraction(records: Sequence[RunRecord]) -> Figure | None:
    """Bar per run: steady-state data-wait fraction (lower is better)."""
    if not records:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _bars(ax, [run_label(r) for r in records], [r.metrics.data_wait_fraction for r in records], _colors(records), ".3f")
    ax.set_ylabel("data-wait fraction of step time")
    ax.set_ylim(0, max(1e-3, max(r.metrics.data_wait_fraction for r in records)) * 1.2)
    ax.set_title("Data wait per loader (lower is better)")
    return fig


def plot_throughput(records: Sequence[RunRecord]) -> Figure | None:
    """Bar per run: steady-state samples per second (higher is better)."""
    if not records:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    _bars(ax, [run_label(r) for r in records], [r.metrics.throughput_samples_per_s for r in records], _colors(records), ",.0f")
    ax.set_ylabel("samples / s")
    ax.set_title("Training throughput per loader (higher is better)")
    return fig


def plot_wait_timeline(records: Sequence[RunRecord]) -> Figure | None:
    """Per-step wait (ms) over the run, one line per run; warm-up steps shaded; epoch starts marked."""
    with_steps = [(r, c) for r, c in zip(records, _colors(records)) if r.timeline]
    if not with_steps:
        return None
    fig = _figure(7.5, 3.8)
    ax = fig.add_subplot()
    for record, color in with_steps:
        steps = sorted((s for s in record.timeline if s.rank == record.metrics.bottleneck_rank), key=lambda s: (s.epoch, s.step))
        steps = steps or sorted(record.timeline, key=lambda s: (s.epoch, s.step))
        ax.plot(range(len(steps)), [s.wait_s * 1000 for s in steps], color=color, lw=1.1, label=run_label(record))
    first = with_steps[0][0]
    if first.spec.warmup_steps:
        ax.axvspan(0, first.spec.warmup_steps, color="#999999", alpha=0.15, label="warm-up (excluded)")
    ax.set_xlabel("step (all epochs, bottleneck rank)")
    ax.set_ylabel("wait before step (ms)")
    ax.set_title("Per-step data wait")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper right")
    return fig


def _cache_budget_bytes(record: RunRecord) -> int | None:
    """The run's configured cache budget (``cache_size`` option: bytes or ``"1GiB"``), if any."""
    from delibench.errors import UsageError
    from delibench.units import parse_bytes

    value = record.spec.loader.options.get("cache_size", record.spec.loader.options.get("cache_size_bytes"))
    if value is None:
        return None
    try:
        return parse_bytes(value)
    except UsageError:
        return None


def plot_cache(records: Sequence[RunRecord]) -> Figure | None:
    """For runs with a cache: hit rate, and peak occupancy against the configured budget."""
    cached = [(r, c) for r, c in zip(records, _colors(records)) if r.loader_stats.cache_hits + r.loader_stats.cache_misses > 0]
    if not cached:
        return None
    fig = _figure(7.5, 3.4)
    ax1, ax2 = fig.subplots(1, 2)
    labels = [run_label(r) for r, _ in cached]
    colors = [c for _, c in cached]
    _bars(ax1, labels, [r.loader_stats.hit_rate or 0.0 for r, _ in cached], colors, ".2f")
    ax1.set_ylim(0, 1.15)
    ax1.set_title("Cache hit rate")
    peak = [r.loader_stats.cache_peak_bytes / 2**20 for r, _ in cached]
    _bars(ax2, labels, peak, colors, ",.1f")
    budgets = [_cache_budget_bytes(r) for r, _ in cached]
    for i, budget in enumerate(budgets):
        if isinstance(budget, (int, float)) and budget > 0:
            ax2.hlines(budget / 2**20, i - 0.4, i + 0.4, colors="black", linestyles="--", label="budget" if i == 0 else None)
    if any(isinstance(b, (int, float)) and b > 0 for b in budgets):
        ax2.legend(fontsize=8)
    ax2.set_ylabel("MiB")
    ax2.set_title("Peak cache occupancy")
    return fig


def plot_cost_breakdown(records: Sequence[RunRecord], costs: Sequence[CostEstimate | None]) -> Figure | None:
    """Stacked bars of dollars per epoch: accelerator busy, accelerator idle (waiting), requests, egress."""
    pairs = [(r, c) for r, c in zip(records, costs) if c is not None and c.total_usd > 0]
    if not pairs:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    x = range(len(pairs))
    scale = [c.usd_per_epoch / c.total_usd for _, c in pairs]  # run dollars -> dollars per full epoch
    idle = [c.idle_accelerator_usd * k for (_, c), k in zip(pairs, scale)]
    busy = [(c.compute_usd - c.idle_accelerator_usd) * k for (_, c), k in zip(pairs, scale)]
    requests = [c.requests_usd * k for (_, c), k in zip(pairs, scale)]
    egress = [c.egress_usd * k for (_, c), k in zip(pairs, scale)]
    bottom = [0.0] * len(pairs)
    for values, label, color, hatch in (
        (busy, "accelerator busy", "#4C72B0", None),
        (idle, "accelerator idle (data wait)", "#C44E52", "//"),
        (requests, "GET requests", "#DD8452", None),
        (egress, "egress", "#55A868", None),
    ):
        ax.bar(x, values, bottom=bottom, label=label, color=color, hatch=hatch, edgecolor="white")
        bottom = [b + v for b, v in zip(bottom, values)]
    labels = [run_label(r) for r, _ in pairs]
    ax.set_xticks(list(x), labels, rotation=15 if max(map(len, labels)) > 12 else 0)
    ax.set_ylabel("USD per epoch")
    ax.set_title(f"Cost per epoch ({pairs[0][1].price_sheet_id})", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def plot_tuning_history(study: StudyExport) -> Figure | None:
    """First objective per trial, with the best-so-far line."""
    done = study.completed
    if not done:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    xs = [t.number for t in done]
    ys = [t.values[0] for t in done if t.values is not None]
    ax.scatter(xs, ys, s=18, color="#4C72B0", label="trial")
    better = min if study.directions[0] == "minimize" else max
    best: list[float] = []
    for y in ys:
        best.append(y if not best else better(best[-1], y))
    ax.step(xs, best, where="post", color="#C44E52", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(study.objective_names[0])
    ax.set_title(f"Tuning history: {study.study_name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig


def plot_pareto(study: StudyExport) -> Figure | None:
    """First two objectives of every completed trial, the Pareto front joined (needs two objectives)."""
    if len(study.objective_names) < 2 or not study.completed:
        return None
    fig = _figure()
    ax = fig.add_subplot()
    pts = [t.values for t in study.completed if t.values is not None]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=18, color="#8C8C8C", label="trial")
    front = sorted((t.values for t in pareto_front(study) if t.values is not None), key=lambda v: v[0])
    ax.plot([p[0] for p in front], [p[1] for p in front], "o-", color="#C44E52", label="Pareto front")
    ax.set_xlabel(f"{study.objective_names[0]} ({study.directions[0]})")
    ax.set_ylabel(f"{study.objective_names[1]} ({study.directions[1]})")
    ax.set_title("Pareto front")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
