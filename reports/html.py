"""One self-contained HTML report: inline CSS, figures as inline base64 PNGs, no scripts, no network."""

from __future__ import annotations

import base64
import datetime as _dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from delibench.records import CostEstimate, RunRecord, to_dict
from delibench.reports.prices import PriceSheet
from delibench.reports.tables import SummaryTable, run_label

__all__ = ["Figure", "render_html"]

_CSS = """
:root { --fg:#1d232a; --muted:#5b6670; --line:#d9dee3; --bg:#ffffff; --accent:#2f6db3; --warn:#b26a00; --bad:#b3261e; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--fg); background: var(--bg);
       max-width: 1100px; margin: 0 auto; padding: 24px; }
h1 { font-size: 22px; margin: 0 0 4px; } h2 { font-size: 17px; margin: 28px 0 8px; border-bottom: 1px solid var(--line); padding-bottom: 4px; }
.meta { color: var(--muted); font-size: 12px; }
.summary { font-size: 16px; background: #f3f7fb; border-left: 4px solid var(--accent); padding: 10px 14px; margin: 16px 0; }
table { border-collapse: collapse; width: 100%; font-size: 13px; margin: 6px 0; }
th, td { border-bottom: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: #f6f8fa; } td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 12px 0 20px; } figure img { max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 12px; }
.sev-invalid { color: var(--bad); font-weight: 600; } .sev-warning { color: var(--warn); font-weight: 600; } .sev-info { color: var(--muted); }
details { margin: 6px 0; } summary { cursor: pointer; } pre { background: #f6f8fa; padding: 8px; overflow-x: auto; font-size: 12px; }
"""


@dataclass(frozen=True, slots=True)
class Figure:
    """A rendered figure for the report.

    Attributes:
        title: Heading above the image.
        png: PNG bytes (embedded as a ``data:`` URI).
        caption: What to read from it.
        slug: Anchor and ``data-figure`` name.
    """

    title: str
    png: bytes
    caption: str
    slug: str


def _table(rows: Sequence[Sequence[str]], header: Sequence[str], numeric: Sequence[bool] | None = None) -> str:
    numeric = numeric or [False] * len(header)
    head = "".join(f'<th class="{"num" if n else ""}">{escape(h)}</th>' for h, n in zip(header, numeric))
    body = "".join(
        "<tr>" + "".join(f'<td class="{"num" if n else ""}">{escape(str(c))}</td>' for c, n in zip(row, numeric)) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _flatten(data: Any, prefix: str = "") -> list[tuple[str, str]]:
    if isinstance(data, dict):
        out: list[tuple[str, str]] = []
        for k, v in data.items():
            if isinstance(v, dict) and v and k != "options":
                out.extend(_flatten(v, f"{prefix}{k}."))
            else:
                out.append((f"{prefix}{k}", json.dumps(v) if isinstance(v, (dict, list)) else ("" if v is None else str(v))))
        return out
    return [(prefix.rstrip("."), str(data))]


def _issues(records: Sequence[RunRecord]) -> str:
    rows = []
    for r in records:
        for issue in r.issues:
            detail = ""
            if issue.expected or issue.actual:
                detail = f" (expected {issue.expected or '-'}, got {issue.actual or '-'})"
            rows.append(
                f'<tr><td>{escape(run_label(r))}</td><td class="sev-{escape(issue.severity)}">{escape(issue.severity)}</td>'
                f"<td><code>{escape(issue.code)}</code></td><td>{escape(issue.message + detail)}</td></tr>"
            )
    if not rows:
        return "<p>No issues: every run read its full data and passed its validity checks.</p>"
    return "<table><thead><tr><th>run</th><th>severity</th><th>code</th><th>message</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"


def _environment(records: Sequence[RunRecord]) -> str:
    machines: dict[str, Any] = {}
    for r in records:
        machines.setdefault(json.dumps(to_dict(r.machine), sort_keys=True), r.machine)
    parts = []
    for machine in machines.values():
        data = to_dict(machine)
        data["memory"] = f"{machine.memory_bytes / 2**30:.1f} GiB"
        parts.append(_table([(k, "" if v is None else str(v)) for k, v in data.items()], ["field", "value"]))
    return "".join(parts)


def _specs(records: Sequence[RunRecord]) -> str:
    out = []
    for r in records:
        rows = _flatten(to_dict(r.spec))
        rows += [("dataset_sample_count", str(r.dataset_sample_count)), ("dataset_bytes", str(r.dataset_bytes)), ("status", r.status), ("created_at", r.created_at)]
        out.append(
            f"<details><summary><b>{escape(run_label(r))}</b> <span class=meta>{escape(r.run_id)}</span></summary>"
            + _table(rows, ["field", "value"])
            + "</details>"
        )
    return "".join(out)


def _costs(records: Sequence[RunRecord], costs: Sequence[CostEstimate | None], sheet: PriceSheet | None) -> str:
    from delibench.reports.tables import format_usd

    rows = [
        (run_label(r), c.price_sheet_id, format_usd(c.instance_usd_per_hour), format_usd(c.compute_usd), format_usd(c.requests_usd), format_usd(c.egress_usd), format_usd(c.total_usd), format_usd(c.idle_accelerator_usd), format_usd(c.usd_per_epoch))
        for r, c in zip(records, costs)
        if c is not None
    ]
    if not rows:
        return "<p>No cost estimate.</p>"
    html = _table(rows, ["run", "prices", "$/hour", "compute", "requests", "egress", "total (run)", "idle accel.", "per epoch"], [False, False] + [True] * 7)
    if sheet is not None:
        html += f"<p class=meta>Price sheet <b>{escape(sheet.id)}</b> dated {escape(sheet.retrieved_on)}: {escape(sheet.note)} Files: {escape(', '.join(sheet.sources))}.</p>"
    return html


def render_html(
    records: Sequence[RunRecord],
    costs: Sequence[CostEstimate | None],
    table: SummaryTable,
    figures: Sequence[Figure],
    *,
    sheet: PriceSheet | None = None,
    title: str = "delibench report",
    extra_sections: Sequence[tuple[str, str]] = (),
) -> str:
    """The report page as one HTML string.

    Args:
        records: The runs.
        costs: Their cost estimates (same order).
        table: The summary table model.
        figures: Rendered figures, in display order.
        sheet: The prices used (named in the cost section).
        title: Page title.
        extra_sections: ``(heading, html)`` pairs appended before the environment (already escaped).
    """
    from delibench import __version__

    numeric = [c.numeric for c in table.columns]
    summary_rows = [[c.fmt(row.get(c.key)) for c in table.columns] for row in table.rows]
    figs = "".join(
        f'<figure id="{escape(f.slug)}"><h3>{escape(f.title)}</h3>'
        f'<img data-figure="{escape(f.slug)}" alt="{escape(f.title)}" src="data:image/png;base64,{base64.b64encode(f.png).decode("ascii")}">'
        f"<figcaption>{escape(f.caption)}</figcaption></figure>"
        for f in figures
    )
    extra = "".join(f"<h2>{escape(h)}</h2>{body}" for h, body in extra_sections)
    generated = _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=en><head><meta charset=utf-8>"
        '<meta name=viewport content="width=device-width, initial-scale=1">'
        f"<title>{escape(title)}</title><style>{_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1><div class=meta>{len(records)} run(s) &middot; generated {generated} by delibench {escape(__version__)}</div>"
        f'<p class=summary id="summary">{escape(table.summary)}</p>'
        f"<h2>Results</h2>{_table(summary_rows, [c.title.replace(chr(10), ' ') for c in table.columns], numeric)}"
        "<p class=meta>Data wait = time blocked waiting for the next batch over step time, warm-up steps excluded; "
        "accelerator utilisation = 1 - data wait.</p>"
        f"<h2>Issues</h2>{_issues(records)}"
        f"<h2>Figures</h2>{figs or '<p>No figures.</p>'}"
        f"<h2>Cost</h2>{_costs(records, costs, sheet)}"
        f"{extra}"
        f"<h2>Environment</h2>{_environment(records)}"
        f"<h2>Run specifications</h2>{_specs(records)}"
        "</body></html>\n"
    )
