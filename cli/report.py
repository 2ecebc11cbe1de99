"""``delibench report``: price stored results and export them as a table, HTML, Markdown, CSV or JSON."""

from __future__ import annotations

from pathlib import Path

import typer

from delibench.errors import UsageError

__all__ = ["register", "report_cmd"]

_HELP = """Summarise result files: a table on stdout, or exports with figures and dollars.

RESULTS are <run_id>.json files, JSON lists written by --json, or directories (searched recursively). Costs are recomputed with the shipped, dated list-price sheet (or --prices) for the chosen --instance and --egress. A corrupt, invalid or newer-version result file stops the command with exit 2 and names the file.

\b
Examples:
  delibench report .delibench/results
  delibench report .delibench/results --html report.html --md report.md
  delibench report run1.json run2.json --instance p4d.24xlarge --csv -
  delibench report results/ --json > all.json
  delibench report results/ --prices my.yaml --study study.json --html t.html
"""


def report_cmd(
    results: list[Path] = typer.Argument(..., help="Result files (<run_id>.json) or directories.", show_default=False),
    html: str | None = typer.Option(None, "--html", help="Write a self-contained HTML report (figures inline) to FILE, or '-' for stdout.", metavar="FILE", rich_help_panel="Output"),
    md: str | None = typer.Option(None, "--md", help="Write a Markdown summary to FILE, or '-' for stdout.", metavar="FILE", rich_help_panel="Output"),
    csv: str | None = typer.Option(None, "--csv", help="Write one CSV row per run (every schema column) to FILE, or '-' for stdout.", metavar="FILE", rich_help_panel="Output"),
    json_out: bool = typer.Option(False, "--json", help="Print the runs, with cost estimates, as one JSON list on stdout.", rich_help_panel="Output"),
    prices: list[Path] | None = typer.Option(None, "--prices", help="YAML price sheet merged over the shipped one (by key; yours win). Repeatable.", metavar="FILE", rich_help_panel="Cost"),
    instance: str | None = typer.Option(None, "--instance", help="VM to price, e.g. p4d.24xlarge, a2-highgpu-1g, Standard_ND96asr_v4. Default: the sheet's 1-GPU VM of the dataset's cloud.", rich_help_panel="Cost"),
    egress: str = typer.Option("cross-region", "--egress", help="Where the bucket is: same-region, cross-region or internet. Default: cross-region.", rich_help_panel="Cost"),
    epochs: int | None = typer.Option(None, "--project-epochs", min=1, help="Also project the cost of a training of N full epochs (HTML).", metavar="N", rich_help_panel="Cost"),
    study: Path | None = typer.Option(None, "--study", help="Tuning study export (delibench.study/1 JSON) to plot history and Pareto front.", metavar="FILE", rich_help_panel="Output"),
    title: str = typer.Option("delibench report", "--title", help="Title of the HTML/Markdown report.", rich_help_panel="Output"),
) -> None:
    from delibench.cli.output import console, err_console
    from delibench.reports import build_report
    from delibench.reports.tables import to_rich

    if json_out and "-" in (html, md, csv):
        raise UsageError("--json prints to stdout; write the '-' export to a file instead")
    report = build_report(
        results,
        html=html,
        md=md,
        csv=csv,
        json="-" if json_out else None,
        study=study,
        prices=list(prices) if prices else None,
        instance=instance,
        egress_class=egress,
        project_epochs=epochs,
        title=title,
    )
    if "-" not in report.written.values():
        # Nothing went to stdout: show the table there (results on stdout, notes on stderr).
        compact = console.width < 160
        console.print(to_rich(report.table, compact=compact, caption=False))
        if compact:  # the error column does not fit: each failed run's reason on a line of its own
            for row in report.table.rows:
                if row.get("error"):
                    console.print(f"{row['loader']} {row['status']}: {row['error']}", soft_wrap=True, highlight=False, markup=False)
        # The summary stays on one line (soft wrap) so scripts can grep it, hyperfine style.
        console.print(report.summary, soft_wrap=True, highlight=False, markup=False)
    for kind, where in report.written.items():
        if where != "-":
            err_console.print(f"[dim]wrote {kind}: {where}[/]", highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``report`` to the root app."""
    app.command("report", help=_HELP, no_args_is_help=True)(report_cmd)
