"""``delibench list``: what this installation can run (loaders, workloads, link and GPU profiles)."""

from __future__ import annotations

import typer

from delibench.cli import environment
from delibench.cli.output import console, print_json

__all__ = ["register"]

list_app = typer.Typer(
    help="List the loaders, workloads, link profiles and GPU profiles this installation knows.\n\nExample: delibench list loaders --json",
    no_args_is_help=True,
)


def _registry_rows(registry: object) -> list[dict[str, object]]:
    rows = []
    for name in registry.names():  # type: ignore[attr-defined]
        target = registry.paths()[name]  # type: ignore[attr-defined]
        path = target if isinstance(target, str) else f"{getattr(target, '__module__', '?')}:{getattr(target, '__qualname__', type(target).__name__)}"
        rows.append({"name": name, "target": path, "available": registry.importable(name)})  # type: ignore[attr-defined]
    return rows


def _show(rows: list[dict[str, object]], as_json: bool, title: str) -> None:
    if as_json:
        print_json(rows)
        return
    from rich.table import Table

    table = Table(title=title)
    for key in rows[0] if rows else ():
        table.add_column(key)
    for row in rows:
        table.add_row(*(str(v) for v in row.values()))
    console.print(table)


@list_app.command("loaders")
def list_loaders(as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")) -> None:
    """Loaders by name, where they come from, and whether they import here (peers need the [peers] extra)."""
    from delibench.plugins import loaders

    _show(_registry_rows(loaders), as_json, "loaders")


@list_app.command("workloads")
def list_workloads(as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")) -> None:
    """Reference workloads (torchvision models, weights=None) and their default batch sizes."""
    from delibench.plugins import workloads
    from delibench.workloads.models import get_workload

    rows = []
    for name in workloads.names():
        wl = get_workload(name)
        rows.append({"name": name, "arch": wl.arch, "input": f"{wl.channels}x{wl.image_size}x{wl.image_size}", "default_batch_size": wl.default_batch_size})
    _show(rows, as_json, "workloads")


@list_app.command("profiles")
def list_profiles(as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")) -> None:
    """Link profiles of the testbed's emulator, with the figures they stand for and their source."""
    from delibench.testbed.profiles import PROFILES

    rows = [
        {
            "name": p.name,
            "rtt_ms": round(p.rtt_s * 1000, 1),
            "bandwidth_MB_per_s": round(p.bandwidth_bytes_per_s / 1e6, 1) if p.bandwidth_bytes_per_s else None,
            "source": p.source,
        }
        for p in PROFILES.values()
    ]
    _show(rows, as_json, "link profiles")


@list_app.command("gpus")
def list_gpus(as_json: bool = typer.Option(False, "--json", help="JSON on stdout.")) -> None:
    """GPU step-time profiles usable as --compute emulated:<name> (shipped and calibrated)."""
    from delibench.workloads.compute import load_profiles

    rows = [
        {"name": name, "step_time_s": round(p.step_time_s(), 4), "source": getattr(p, "source", "")}
        for name, p in sorted(load_profiles(environment.profiles_path()).items())
    ]
    _show(rows, as_json, "GPU profiles")


def register(app: typer.Typer) -> None:
    """Add ``list`` to the root app."""
    app.add_typer(list_app, name="list")
