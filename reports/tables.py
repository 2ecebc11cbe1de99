"""The summary table model (one row per run) and its renderings: rich, Markdown, CSV and JSON; plus the summary sentence."""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from delibench.records import CostEstimate, RunRecord
from delibench.reports.schema import csv_columns, csv_row
from delibench.units import format_bytes, format_duration

__all__ = [
    "COLUMNS",
    "COMPACT_KEYS",
    "Column",
    "OPTIONAL_KEYS",
    "SummaryTable",
    "format_fraction",
    "format_usd",
    "records_csv",
    "run_label",
    "run_status",
    "summary_sentence",
    "summary_table",
    "to_csv",
    "to_json",
    "to_markdown",
    "to_rich",
    "wait_s_per_epoch",
    "wait_time_reduction",
]


def format_fraction(value: float | None) -> str:
    """``0.043``-style: two decimals, three below 0.1 so small waits stay visible."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.3f}" if value < 0.1 else f"{value:.2f}"


def format_usd(value: float | None) -> str:
    """``$0.31``; small amounts keep two significant digits (``$0.0021``)."""
    if value is None:
        return "-"
    if value == 0:
        return "$0"
    if abs(value) >= 1:
        return f"${value:,.2f}"
    return f"${value:.{max(2, 1 - math.floor(math.log10(abs(value))))}f}"


def _fmt_option(key: str, value: Any) -> str:
    short = key.removesuffix("_bytes").removesuffix("_size").removesuffix("_depth")
    if key.endswith("_bytes") and isinstance(value, int):
        return f"{short}={format_bytes(value).replace(' ', '').replace('.0', '')}"
    return f"{short}={value}"


def run_label(record: RunRecord) -> str:
    """Display name of a run: the loader's label, or ``kind(option=value, ...)`` (hyperfine's command names)."""
    loader = record.spec.loader
    if loader.label:
        return loader.label
    if not loader.options:
        return loader.kind
    opts = ", ".join(_fmt_option(k, v) for k, v in sorted(loader.options.items()))
    return f"{loader.kind}({opts})"


@dataclass(frozen=True, slots=True)
class Column:
    """One column: the row key, a header for people and how to show a value.

    Attributes:
        key: Row dict key (a field name with its unit suffix).
        title: Header text.
        fmt: Renders a raw value for people (rich and Markdown); CSV and JSON keep raw values.
        numeric: Right-align in tables.
    """

    key: str
    title: str
    fmt: Callable[[Any], str] = str
    numeric: bool = True


def _num(fmt: str) -> Callable[[Any], str]:
    return lambda v: "-" if v is None else format(v, fmt)


COLUMNS: tuple[Column, ...] = (
    Column("loader", "loader", numeric=False),
    Column("data_wait_fraction", "data wait", format_fraction),
    Column("slowest_rank_wait_fraction", "slowest\nrank wait", format_fraction),
    Column("wait_time_reduction", "wait cut", lambda v: "-" if v is None else f"{v:.1%}"),
    Column("accelerator_utilization", "accel. util.", format_fraction),
    Column("throughput_samples_per_s", "samples/s", _num(",.0f")),
    Column("epoch_time_s_mean", "epoch time", lambda v: "-" if v is None else format_duration(v)),
    Column("wait_s_p90", "wait p90", lambda v: "-" if v is None else format_duration(v)),
    Column("slowest_rank_wait_s_p90", "slowest\nrank p90", lambda v: "-" if v is None else format_duration(v)),
    Column("time_to_first_batch_s", "first batch", lambda v: "-" if v is None else format_duration(v)),
    Column("requests_count", "GETs", _num(",d")),
    Column("bytes_read_remote", "remote bytes", lambda v: "-" if v is None else format_bytes(v)),
    Column("cache_hit_rate", "hits", format_fraction),
    Column("miss_rate", "late", format_fraction),
    Column("disk_hits", "disk hits", _num(",d")),
    Column("disk_peak_bytes", "disk peak", lambda v: "-" if v is None else format_bytes(v)),
    Column("disk_write_errors", "disk write\nerrors", _num(",d")),
    Column("usd_per_epoch", "$/epoch", format_usd),
    Column("idle_accelerator_usd", "idle $ (run)", format_usd),
    Column("status", "status", numeric=False),
    Column("error", "error", lambda v: "" if v is None else str(v), numeric=False),
)

#: Columns a table shows only when some run has a value for them: the slowest rank's wait per aligned
#: step exists only for runs of more than one rank, the error only for failed runs, the disk tier's
#: hits and peak only for runs that had one (its write errors only when one failed to write).
OPTIONAL_KEYS = ("slowest_rank_wait_fraction", "slowest_rank_wait_s_p90", "error", "disk_hits", "disk_peak_bytes", "disk_write_errors")


@dataclass(frozen=True, slots=True)
class SummaryTable:
    """One row per run, raw values keyed by :data:`COLUMNS` keys, and the summary sentence.

    Attributes:
        columns: The columns, in display order.
        rows: Raw values (numbers stay numbers) per run.
        summary: The hyperfine-style sentence comparing the runs.
    """

    columns: tuple[Column, ...]
    rows: tuple[dict[str, Any], ...]
    summary: str


def wait_s_per_epoch(record: RunRecord) -> float | None:
    """Seconds the accelerator waited for data in one epoch: the mean over epochs of the bottleneck rank's wait.

    Every step of an epoch counts (what a training job pays for), but whole warm-up epochs
    (``--warmup-epochs``) are left out when later epochs exist. None when the record has no
    per-epoch figures.
    """
    rows = [e for e in record.metrics.epochs if e.rank == record.metrics.bottleneck_rank] or list(record.metrics.epochs)
    warm = [e for e in rows if e.epoch >= record.spec.warmup_epochs]
    rows = warm or rows
    if not rows:
        return None
    return sum(e.wait_s for e in rows) / len(rows)


def wait_time_reduction(record: RunRecord, baseline: RunRecord) -> float | None:
    """Wait time removed per epoch against ``baseline``: 1 - record's wait seconds per epoch / the baseline's.

    The DELI paper's figure (85.6-93.5 % against reading the bucket directly). Negative when
    ``record`` waited longer; None when either has no per-epoch figures or the baseline never waited.
    """
    mine, theirs = wait_s_per_epoch(record), wait_s_per_epoch(baseline)
    if mine is None or theirs is None or theirs <= 0:
        return None
    return 1.0 - mine / theirs


def _baseline(records: Sequence[RunRecord]) -> RunRecord | None:
    """The run others are measured against: the raw ``bucket`` run when there is one, else the one that waited most."""
    if len(records) < 2:
        return None
    bucket = next((r for r in records if r.spec.loader.kind == "bucket"), None)
    return bucket if bucket is not None else max(records, key=lambda r: r.metrics.data_wait_fraction)


def run_status(record: RunRecord) -> str:
    """What the table's status column says: ``failed`` / ``interrupted`` (the run did not finish; a
    failed record's ``error`` says why), else ``invalid`` when a validity check failed, else ``complete``."""
    if record.status != "complete":
        return record.status
    return "complete" if record.valid else "invalid"


def _multi_rank(record: RunRecord) -> bool:
    return record.spec.world_size > 1 or len(record.metrics.ranks) > 1


def _disk_tier(record: RunRecord) -> bool:
    """Whether the run had a disk cache tier: asked for (deli ``cache_tier=disk``), or one left a
    trace in the counters (a plugin loader's). Asked for counts even with no trace, so that a tier
    that never served anything shows ``0`` hits instead of vanishing from the table."""
    s = record.loader_stats
    asked = record.spec.loader.options.get("cache_tier") == "disk"
    return asked or bool(s.disk_hits or s.disk_peak_bytes or s.disk_write_errors or s.disk_corrupt_count)


def _row(record: RunRecord, cost: CostEstimate | None, baseline: RunRecord | None = None) -> dict[str, Any]:
    m, s = record.metrics, record.loader_stats
    multi = _multi_rank(record)
    disk = _disk_tier(record)
    return {
        "loader": run_label(record),
        "run_id": record.run_id,
        "data_wait_fraction": m.data_wait_fraction,
        # NOTE: the job's data wait under synchronous data parallelism: at each aligned step every
        # rank waits for the slowest one (RunMetrics.slowest_rank_wait_*); one rank has no such figure.
        "slowest_rank_wait_fraction": m.slowest_rank_wait_fraction if multi else None,
        "wait_s_per_epoch": wait_s_per_epoch(record),
        "wait_time_reduction": wait_time_reduction(record, baseline) if baseline is not None and baseline is not record else None,
        "accelerator_utilization": m.accelerator_utilization,
        "throughput_samples_per_s": m.throughput_samples_per_s,
        "epoch_time_s_mean": m.epoch_time_s_mean,
        "wait_s_p90": m.wait_s_p90,
        "slowest_rank_wait_s_p90": m.slowest_rank_wait_s_p90 if multi else None,
        "time_to_first_batch_s": m.time_to_first_batch_s,
        "requests_count": s.requests_count,
        "bytes_read_remote": s.bytes_read_remote,
        "cache_hit_rate": s.hit_rate,
        "miss_rate": s.miss_rate,  # samples not ready when their batch was requested (LoaderStats.miss_rate)
        # NOTE: None (not 0) without a disk tier, so the columns appear only when a run had one.
        "disk_hits": s.disk_hits if disk else None,
        "disk_peak_bytes": s.disk_peak_bytes if disk else None,
        "disk_write_errors": s.disk_write_errors if disk and s.disk_write_errors else None,
        "usd_per_epoch": cost.usd_per_epoch if cost else None,
        "idle_accelerator_usd": cost.idle_accelerator_usd if cost else None,
        "status": run_status(record),
        "error": record.error,
    }


def summary_sentence(records: Sequence[RunRecord], costs: Sequence[CostEstimate | None] | None = None) -> str:
    """One sentence for people, hyperfine style.

    "deli waited 93.5% less time per epoch than bucket (1.20 s vs 18.4 s) and 0.04 of step time vs
    0.61 for bucket: 14x less data wait, $0.31/epoch vs $0.47/epoch". The headline figure is the wait
    *time* removed per epoch (:func:`wait_time_reduction`, what the DELI paper reports); the ratio of
    wait fractions follows it. The baseline is the raw ``bucket`` run when there is one, else the
    run that waited most; the winner is the run that waited least among the others.
    """
    if not records:
        return "no runs to summarise"
    costs = list(costs) if costs is not None else [r.cost for r in records]
    pairs = list(zip(records, costs))
    if len(pairs) == 1:
        r, c = pairs[0]
        money = f", {format_usd(c.usd_per_epoch)}/epoch" if c else ""
        return (
            f"{run_label(r)} waited {format_fraction(r.metrics.data_wait_fraction)} of step time "
            f"(accelerator utilisation {format_fraction(r.metrics.accelerator_utilization)}){money}"
        )
    baseline = next((p for p in pairs if p[0].spec.loader.kind == "bucket"), None)
    if baseline is None:
        baseline = max(pairs, key=lambda p: p[0].metrics.data_wait_fraction)
    others = [p for p in pairs if p is not baseline]
    # NOTE: ``disk`` reads a local copy: it is the bound a remote loader aims for, not a contender,
    # so the sentence names the best remote loader and quotes the disk figure after it.
    remote = [p for p in others if p[0].spec.loader.kind != "disk"] or others
    best = min(remote, key=lambda p: p[0].metrics.data_wait_fraction)
    disk = next((p for p in others if p[0].spec.loader.kind == "disk" and p is not best), None)
    bw, ww = best[0].metrics.data_wait_fraction, baseline[0].metrics.data_wait_fraction
    if bw <= 0:
        ratio = "no measurable data wait"
    elif ww >= bw:
        ratio = f"{ww / bw:.1f}x less data wait"
    else:
        ratio = f"{bw / ww:.1f}x MORE data wait"
    removed = wait_time_reduction(best[0], baseline[0])
    headline = ""
    if removed is not None:
        per_epoch = f"({format_duration(wait_s_per_epoch(best[0]) or 0.0)} vs {format_duration(wait_s_per_epoch(baseline[0]) or 0.0)})"
        amount = f"{removed:.1%} less" if removed >= 0 else f"{-removed:.1%} MORE"
        headline = f"{amount} time per epoch than {run_label(baseline[0])} {per_epoch} and "
    text = (
        f"{run_label(best[0])} waited {headline}{format_fraction(bw)} of step time vs {format_fraction(ww)} "
        f"for {run_label(baseline[0])}: {ratio}"
    )
    if best[1] and baseline[1]:
        text += f", {format_usd(best[1].usd_per_epoch)}/epoch vs {format_usd(baseline[1].usd_per_epoch)}/epoch"
    if disk is not None:
        text += f" (local-disk bound: {format_fraction(disk[0].metrics.data_wait_fraction)})"
    return text


def summary_table(records: Sequence[RunRecord], costs: Sequence[CostEstimate | None] | None = None) -> SummaryTable:
    """Build the table model; ``costs`` default to each record's stored ``cost``."""
    costs = list(costs) if costs is not None else [r.cost for r in records]
    if len(costs) != len(records):
        raise ValueError("records and costs must have the same length")
    baseline = _baseline(records)
    rows = tuple(_row(r, c, baseline) for r, c in zip(records, costs))
    columns = tuple(c for c in COLUMNS if c.key not in OPTIONAL_KEYS or any(row.get(c.key) is not None for row in rows))
    return SummaryTable(columns, rows, summary_sentence(records, costs))


#: Columns that fit an 80-column terminal (the slowest rank's and the disk hits only where the table
#: has them; a failed run's error does not fit: the commands print it below the table).
COMPACT_KEYS = (
    "loader", "data_wait_fraction", "slowest_rank_wait_fraction", "throughput_samples_per_s", "wait_s_p90",
    "requests_count", "cache_hit_rate", "disk_hits", "usd_per_epoch", "status",
)


def to_rich(table: SummaryTable, *, compact: bool = False, caption: bool = True) -> Any:
    """A ``rich.table.Table``; ``compact`` keeps :data:`COMPACT_KEYS` only; ``caption`` adds the summary sentence.

    The table has the slowest rank's columns only when a run had more than one rank, the disk
    tier's only when a run had one, and the error column only when a run failed (:data:`OPTIONAL_KEYS`).
    """
    from rich.table import Table

    keys = COMPACT_KEYS
    if compact and any(row.get("wait_time_reduction") is not None for row in table.rows):
        # NOTE: a comparison's headline figure (wait time removed per epoch) takes the p90's place:
        # both do not fit 80 columns, and the full table keeps the p90.
        keys = tuple("wait_time_reduction" if k == "wait_s_p90" else k for k in COMPACT_KEYS)
    columns = [c for c in table.columns if not compact or c.key in keys]
    if compact and all(row.get("status") == "complete" for row in table.rows):
        columns = [c for c in columns if c.key != "status"]  # only worth the width when something is off
    out = Table(title="delibench results", caption=table.summary if caption else None, caption_justify="left")
    for col in columns:
        widest = max((len(col.fmt(row.get(col.key))) for row in table.rows), default=0)
        # NOTE: a figure or status never folds (its width is the column's minimum); a compact table
        # puts the words of a header wider than its figures on lines of their own instead.
        title = col.title.replace(" ", "\n") if compact and len(col.title) > widest else col.title
        least = None if col.key == "error" else min(widest, 16) if col.key == "loader" else widest
        out.add_column(title, justify="right" if col.numeric else "left", min_width=least, overflow="fold")
    for row in table.rows:
        out.add_row(*(col.fmt(row.get(col.key)) for col in columns))
    return out


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def to_markdown(table: SummaryTable) -> str:
    """A GitHub Markdown table followed by the summary sentence."""
    lines = [
        "| " + " | ".join(_md_escape(c.title) for c in table.columns) + " |",
        "|" + "|".join("---:" if c.numeric else ":---" for c in table.columns) + "|",
    ]
    for row in table.rows:
        lines.append("| " + " | ".join(_md_escape(c.fmt(row.get(c.key))) for c in table.columns) + " |")
    return "\n".join(lines) + f"\n\n{table.summary}\n"


def to_csv(table: SummaryTable) -> str:
    """The table's raw values as CSV (header = column keys, plus ``run_id``)."""
    buf = io.StringIO()
    keys = ["run_id"] + [c.key for c in table.columns]
    writer = csv.DictWriter(buf, fieldnames=keys, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in table.rows:
        writer.writerow({k: ("" if row.get(k) is None else row.get(k)) for k in keys})
    return buf.getvalue()


def to_json(table: SummaryTable) -> str:
    """``{"summary": ..., "rows": [...]}`` with raw values (``null`` where unknown)."""
    return json.dumps({"summary": table.summary, "rows": list(table.rows)}, indent=2) + "\n"


def records_csv(records: Sequence[RunRecord]) -> str:
    """One row per run with every schema column (:func:`delibench.reports.schema.csv_columns`)."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(csv_columns()), lineterminator="\n")
    writer.writeheader()
    for record in records:
        writer.writerow(csv_row(record))
    return buf.getvalue()
