"""``build_report``: records + prices (+ a tuning study) -> HTML, Markdown, CSV and JSON exports in one call."""

from __future__ import annotations

import dataclasses
import json as _json
import os
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from delibench.errors import UsageError
from delibench.records import CostEstimate, RunRecord, to_dict
from delibench.reports.cost import Projection, Savings, estimate, project, savings
from delibench.reports.prices import PriceSheet, default_sheet, load_sheet
from delibench.reports.study import StudyExport, load_study, parse_study
from delibench.reports.tables import SummaryTable, format_usd, records_csv, run_label, summary_table, to_markdown

__all__ = ["Report", "build_report", "resolve_records", "resolve_sheet"]

PathLike = str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class Report:
    """What :func:`build_report` computed and wrote.

    Attributes:
        records: The runs, each with ``cost`` set from the price sheet used.
        costs: The estimates, in record order.
        table: The summary table model.
        summary: The one-sentence comparison.
        savings: Best loader vs the raw ``bucket`` loader, when both are present.
        sheet: The prices used.
        written: ``{"html"|"md"|"csv"|"json": path or "-"}`` for every export written.
    """

    records: tuple[RunRecord, ...]
    costs: tuple[CostEstimate, ...]
    table: SummaryTable
    summary: str
    savings: Savings | None
    sheet: PriceSheet
    written: Mapping[str, str]


def resolve_sheet(prices: PriceSheet | PathLike | Sequence[PathLike] | None) -> PriceSheet:
    """The shipped sheet, a given sheet, or the shipped sheet with user files merged over it."""
    if prices is None:
        return default_sheet()
    if isinstance(prices, PriceSheet):
        return prices
    if isinstance(prices, (str, os.PathLike)):
        return load_sheet(prices)
    return load_sheet(*prices)


def resolve_records(records: Iterable[RunRecord | PathLike]) -> list[RunRecord]:
    """Records as given; paths (files or directories) are read through the store (validated, migrated)."""
    from delibench.reports.store import load_records

    out: list[RunRecord] = []
    for item in records:
        out.extend([item] if isinstance(item, RunRecord) else load_records([item]))
    if not out:
        raise UsageError("no runs to report on", hint="pass result files or directories")
    return out


def _study(study: StudyExport | Mapping[str, Any] | PathLike | None) -> StudyExport | None:
    if study is None or isinstance(study, StudyExport):
        return study
    if isinstance(study, Mapping):
        return parse_study(study)
    return load_study(study)


def _figures(records: Sequence[RunRecord], costs: Sequence[CostEstimate], study: StudyExport | None) -> list[Any]:
    from delibench.reports import plots
    from delibench.reports.html import Figure

    specs = [
        ("wait-fraction", "Data-wait fraction per loader", "Share of step time the accelerator waited for the next batch (steady state).", lambda: plots.plot_wait_fraction(records)),
        ("wait-timeline", "Per-step wait timeline", "Wait before each step; spikes are fetch stalls, a flat floor near zero means the loader keeps up.", lambda: plots.plot_wait_timeline(records)),
        ("throughput", "Throughput per loader", "Samples per second in the steady state.", lambda: plots.plot_throughput(records)),
        ("cache", "Cache", "Hit rate over all lookups and peak occupancy against the byte budget (dashed).", lambda: plots.plot_cache(records)),
        ("cost", "Cost breakdown per epoch", "Instance time split into busy and idle (waiting for data), plus GET requests and egress.", lambda: plots.plot_cost_breakdown(records, costs)),
    ]
    if study is not None:
        specs += [
            ("tuning-history", "Tuning history", f"{study.objective_names[0]} per trial and the best so far.", lambda: plots.plot_tuning_history(study)),
            ("pareto", "Pareto front", "Trials no other trial beats on every objective.", lambda: plots.plot_pareto(study)),
        ]
    out = []
    for slug, title, caption, make in specs:
        fig = make()
        if fig is not None:
            out.append(Figure(title, plots.figure_png(fig), caption, slug))
    return out


def _hours(hours: float) -> str:
    from delibench.units import format_duration

    return f"{hours:,.1f} h" if hours >= 1 else format_duration(hours * 3600)


def _projection_html(records: Sequence[RunRecord], projections: Sequence[Projection | None]) -> str:
    from html import escape

    rows = "".join(
        f"<tr><td>{escape(run_label(r))}</td><td class=num>{p.epochs}</td><td class=num>{p.dataset_samples:,}</td>"
        f"<td class=num>{_hours(p.hours)}</td><td class=num>{format_usd(p.total_usd)}</td><td class=num>{format_usd(p.idle_accelerator_usd)}</td></tr>"
        for r, p in zip(records, projections)
        if p is not None
    )
    return (
        "<table><thead><tr><th>run</th><th class=num>epochs</th><th class=num>samples/epoch</th><th class=num>time</th>"
        f"<th class=num>total</th><th class=num>idle accel.</th></tr></thead><tbody>{rows}</tbody></table>"
        "<p class=meta>At the measured steady-state throughput and GETs/bytes per sample.</p>"
    )


def _emit(target: PathLike, text: str, stdout: TextIO) -> str:
    if str(target) == "-":
        stdout.write(text)
        stdout.flush()
        return "-"
    path = Path(target)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{path}: cannot write report: {exc.strerror or exc}") from None
    return str(path)


def build_report(
    records: Iterable[RunRecord | PathLike],
    *,
    html: PathLike | None = None,
    md: PathLike | None = None,
    csv: PathLike | None = None,
    json: PathLike | None = None,
    study: StudyExport | Mapping[str, Any] | PathLike | None = None,
    prices: PriceSheet | PathLike | Sequence[PathLike] | None = None,
    instance: str | None = None,
    egress_class: str = "cross-region",
    project_epochs: int | None = None,
    title: str = "delibench report",
    stdout: TextIO | None = None,
) -> Report:
    """Price the runs and write the requested exports (``-`` writes one of them to stdout).

    Args:
        records: RunRecords, or result files/directories to read.
        html: Self-contained HTML file (figures inline, no network needed).
        md: Markdown: summary table + sentence.
        csv: One row per run, every schema column (``metrics.data_wait_fraction`` ...), costs included.
        json: A JSON list of the RunRecords with their cost estimates (validates against the schema).
        study: A tuning study export (file, dict or StudyExport) for the tuning-history and Pareto plots.
        prices: A PriceSheet, or user YAML file(s) merged over the shipped sheet; default: shipped sheet.
        instance: VM to price (``p4d.24xlarge``); default: the sheet's one-accelerator VM for the dataset's cloud.
        egress_class: ``same-region``, ``cross-region`` (default) or ``internet``.
        project_epochs: Also project a training of this many full epochs (HTML section).
        title: Report title.
        stdout: Stream for ``-`` (default ``sys.stdout``).

    Returns:
        The :class:`Report` (records with costs, table, summary, savings, written paths).

    Raises:
        UsageError: Bad result file, price sheet, study, instance, or more than one export to ``-``.
    """
    outputs = {k: v for k, v in {"html": html, "md": md, "csv": csv, "json": json}.items() if v is not None}
    to_stdout = [k for k, v in outputs.items() if str(v) == "-"]
    if len(to_stdout) > 1:
        raise UsageError(f"only one export can go to stdout ('-'); got {', '.join(to_stdout)}", hint="write the others to files")
    runs = resolve_records(records)
    sheet = resolve_sheet(prices)
    study_export = _study(study)
    costs = [estimate(r, sheet, instance=instance, egress_class=egress_class) for r in runs]
    runs = [dataclasses.replace(r, cost=c) for r, c in zip(runs, costs)]
    table = summary_table(runs, costs)
    stream = stdout or sys.stdout
    written: dict[str, str] = {}
    if md is not None:
        text = f"# {title}\n\n" + to_markdown(table)
        issues = [f"- **{run_label(r)}** {i.severity} `{i.code}`: {i.message}" for r in runs for i in r.issues]
        if issues:
            text += "\n## Issues\n\n" + "\n".join(issues) + "\n"
        text += f"\nPrices: {costs[0].price_sheet_id} (list prices dated {sheet.retrieved_on}; they change).\n"
        written["md"] = _emit(md, text, stream)
    if csv is not None:
        written["csv"] = _emit(csv, records_csv(runs), stream)
    if json is not None:
        written["json"] = _emit(json, _json.dumps([to_dict(r) for r in runs], indent=2) + "\n", stream)
    if html is not None:
        from delibench.reports.html import render_html

        extra: list[tuple[str, str]] = []
        if project_epochs:
            projections = [
                project(r, project_epochs, sheet=sheet, instance=instance, egress_class=egress_class)
                if r.metrics.throughput_samples_per_s > 0 and r.metrics.total_samples > 0 and r.dataset_sample_count > 0
                else None
                for r in runs
            ]
            extra.append((f"Projection: {project_epochs} epochs", _projection_html(runs, projections)))
        page = render_html(runs, costs, table, _figures(runs, costs, study_export), sheet=sheet, title=title, extra_sections=extra)
        written["html"] = _emit(html, page, stream)
    return Report(tuple(runs), tuple(costs), table, table.summary, savings(runs, costs), sheet, written)
