"""``delibench geo``: train across emulated regions (run, compare sync strategies) and plan placements."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from delibench.cli.output import console, err_console, print_json
from delibench.errors import UsageError

__all__ = ["geo_app", "register"]

geo_app = typer.Typer(
    name="geo",
    help=(
        "Geo-distributed training: real multi-process training across regions over an emulated WAN, "
        "sync strategies side by side, and a cost/time placement planner.\n\n"
        "Example: delibench geo compare --regions geo/example-regions.yaml --steps 60"
    ),
    no_args_is_help=True,
)

_REGIONS_HELP = "Regions YAML file (accelerators, prices, shards, links). See geo/example-regions.yaml."


def _example_path() -> str:
    return str(Path(__file__).resolve().parent.parent / "geo" / "example-regions.yaml")


def _load(regions: str) -> Any:
    from delibench.geo.regions import load_regions

    return load_regions(regions)


def _spec(strategy: str, config: Any, workers: Optional[str], **kw: Any) -> Any:
    from delibench.geo.train import GeoRunSpec, parse_workers

    return GeoRunSpec(strategy=strategy, workers=parse_workers(workers, config), **kw)


def _fmt_bytes(n: float) -> str:
    from delibench.units import format_bytes

    return format_bytes(n)


@geo_app.command("run")
def run_cmd(
    regions: str = typer.Option(..., "--regions", help=_REGIONS_HELP),
    sync: str = typer.Option("allreduce", "--sync", help="allreduce | asgd-ga | ma."),
    period: int = typer.Option(8, "--period", help="ma: average models every H steps. Default 8."),
    accum: int = typer.Option(4, "--accum", help="asgd-ga: accumulate K steps per exchange. Default 4."),
    staleness: int = typer.Option(1, "--staleness", help="asgd-ga: apply an exchange S rounds after sending it. Default 1."),
    steps: int = typer.Option(100, "--steps", help="Training steps per worker. Default 100."),
    workers_per_region: Optional[str] = typer.Option(None, "--workers-per-region", help="'2' for every region or 'us-east=2,eu-west=1'. Default 1 each."),
    hidden: int = typer.Option(64, "--hidden", help="MLP hidden width (sets bytes per sync). Default 64."),
    lr: float = typer.Option(0.3, "--lr", help="SGD learning rate. Default 0.3."),
    step_time_scale: float = typer.Option(1.0, "--step-time-scale", help="Multiply the regions' step_time_s (0 = no compute padding). Default 1."),
    seed: int = typer.Option(0, "--seed", help="Seed of model, data and held-out set."),
    timeout_s: float = typer.Option(600.0, "--timeout", help="Stop every worker after this many seconds. Default 600."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
) -> None:
    """Train for real with one process per worker (gloo) and the chosen sync strategy across regions.

    Cross-region traffic crosses an emulated WAN (communication-level: each cross-region exchange
    waits rtt/2 + chunk/bandwidth per ring step from the regions file), and every byte crossing
    regions is counted. Example: delibench geo run --regions geo/example-regions.yaml --sync ma --period 8
    """
    from delibench.geo.train import run_geo

    config = _load(regions)
    spec = _spec(sync, config, workers_per_region, steps=steps, period=period, accum=accum, staleness=staleness, hidden=hidden, lr=lr, step_time_scale=step_time_scale, seed=seed)
    err_console.print(f"[dim]geo run: {sync} on {spec.topology.world_size} workers in {len(spec.workers)} regions ...[/]")
    result = run_geo(config, spec, timeout_s=timeout_s)
    if json_out:
        print_json(result.to_dict())
        return
    _print_results([result])


def _print_results(results: list[Any]) -> None:
    from rich.table import Table

    base = next((r for r in results if r.strategy == "allreduce"), None)
    table = Table(title="geo: sync strategies (communication-level WAN emulation)")
    for col in ("strategy", "wall", "speed-up", "sync", "cross-region", "bytes vs allreduce", "cost USD", "cost vs allreduce", "val acc", "acc diff", "val loss"):
        table.add_column(col, justify="left" if col == "strategy" else "right")
    for r in results:
        label = r.strategy + {"ma": f" H={r.spec['period']}", "asgd-ga": f" K={r.spec['accum']} S={r.spec['staleness']}"}.get(r.strategy, "")
        row = [label, f"{r.wall_s:.2f} s"]
        row.append(f"{base.wall_s / r.wall_s:.2f}x" if base else "-")
        row.append(f"{r.sync_s_mean:.2f} s")
        row.append(_fmt_bytes(r.cross_region_bytes))
        row.append(f"{r.cross_region_bytes / base.cross_region_bytes:.3f}" if base and base.cross_region_bytes else "-")
        row.append(f"{r.total_usd:.5f}")
        row.append(f"{r.total_usd / base.total_usd:.3f}" if base and base.total_usd else "-")
        row.append(f"{r.val_accuracy:.3f}")
        row.append(f"{r.val_accuracy - base.val_accuracy:+.3f}" if base else "-")
        row.append(f"{r.val_loss:.3f}")
        table.add_row(*row)
    console.print(table)


def _parse_strategies(text: str) -> list[str]:
    from delibench.geo.sync import STRATEGIES

    names = [s.strip() for s in text.split(",") if s.strip()]
    for name in names:
        if name not in STRATEGIES:
            raise UsageError(f"unknown sync strategy {name!r}", hint=f"choose from {', '.join(STRATEGIES)}")
    if not names:
        raise UsageError("--strategies is empty")
    return names


@geo_app.command("compare")
def compare_cmd(
    regions: str = typer.Option(..., "--regions", help=_REGIONS_HELP),
    strategies: str = typer.Option("allreduce,asgd-ga,ma", "--strategies", help="Comma-separated; allreduce is the baseline."),
    period: int = typer.Option(8, "--period", help="ma: H. Default 8."),
    accum: int = typer.Option(4, "--accum", help="asgd-ga: K. Default 4."),
    staleness: int = typer.Option(1, "--staleness", help="asgd-ga: S. Default 1."),
    steps: int = typer.Option(100, "--steps", help="Training steps per worker. Default 100."),
    workers_per_region: Optional[str] = typer.Option(None, "--workers-per-region", help="'2' or 'us-east=2,eu-west=1'. Default 1 each."),
    hidden: int = typer.Option(64, "--hidden", help="MLP hidden width. Default 64."),
    lr: float = typer.Option(0.3, "--lr", help="SGD learning rate. Default 0.3."),
    step_time_scale: float = typer.Option(1.0, "--step-time-scale", help="Multiply the regions' step_time_s. Default 1."),
    seed: int = typer.Option(0, "--seed", help="Seed."),
    timeout_s: float = typer.Option(600.0, "--timeout", help="Per-strategy timeout in seconds. Default 600."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON list of results on stdout."),
) -> None:
    """Run several sync strategies on the same regions, data and seed; print speed-up, bytes, cost and accuracy vs allreduce.

    Example: delibench geo compare --regions geo/example-regions.yaml --strategies allreduce,ma --period 4
    """
    from delibench.geo.train import run_geo

    config = _load(regions)
    names = _parse_strategies(strategies)
    specs = [_spec(n, config, workers_per_region, steps=steps, period=period, accum=accum, staleness=staleness, hidden=hidden, lr=lr, step_time_scale=step_time_scale, seed=seed) for n in names]
    results = []
    for spec in specs:
        err_console.print(f"[dim]geo compare: running {spec.strategy} ...[/]")
        results.append(run_geo(config, spec, timeout_s=timeout_s))
    if json_out:
        print_json([r.to_dict() for r in results])
        return
    _print_results(results)


def _parse_budget(text: str) -> float:
    raw = text.strip().upper().removesuffix("USD").removeprefix("$").strip()
    try:
        value = float(raw)
    except ValueError:
        raise UsageError(f"not a budget: {text!r}", hint="use e.g. 500USD or 500") from None
    if value <= 0:
        raise UsageError(f"budget must be > 0: {text!r}")
    return value


@geo_app.command("plan")
def plan_cmd(
    regions: str = typer.Option(..., "--regions", help=_REGIONS_HELP),
    workload: str = typer.Option("resnet50", "--workload", help="resnet50 | bert-base | mlp (sizes the data per step and the model sync)."),
    deadline: Optional[str] = typer.Option(None, "--deadline", help="Finish within this time, e.g. 10h, 90min."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Spend at most this, e.g. 500USD."),
    objective: str = typer.Option("cost", "--objective", help="cost (default) or time."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over all shards. Default 1."),
    sync_period: Optional[int] = typer.Option(None, "--sync-period", help="Global steps between cross-region syncs (workload default 8)."),
    json_out: bool = typer.Option(False, "--json", help="Print both placements as JSON on stdout."),
) -> None:
    """Choose workers per region and which region reads each shard (a MILP, PuLP/CBC), vs the naive placement.

    Naive = every accelerator of the cheapest region, pulling all data across regions; both are
    priced with the same model. Example: delibench geo plan --regions geo/example-regions.yaml --workload resnet50 --deadline 10h
    """
    from delibench.geo.planner import get_workload, naive_placement, plan_placement
    from delibench.units import parse_duration

    config = _load(regions)
    deadline_s = parse_duration(deadline) if deadline else None
    if deadline_s is not None and deadline_s <= 0:
        raise UsageError("--deadline must be > 0")
    budget_usd = _parse_budget(budget) if budget else None
    if sync_period is not None and sync_period < 1:
        raise UsageError("--sync-period must be >= 1")
    if epochs < 1:
        raise UsageError("--epochs must be >= 1")
    wl = get_workload(workload, epochs=epochs, sync_period=sync_period)
    best = plan_placement(config, wl, objective=objective, deadline_s=deadline_s, budget_usd=budget_usd)
    naive = naive_placement(config, wl, deadline_s=deadline_s)
    if json_out:
        print_json([_placement_dict(p) for p in (best, naive)])
        return
    from rich.table import Table

    from delibench.units import format_duration

    table = Table(title=f"geo plan: {wl.name}, {epochs} epoch(s), objective={objective}")
    for col in ("placement", "workers", "shards read", "time", "compute USD", "egress USD", "total USD", "cross-region reads", "sync bytes"):
        table.add_column(col)
    for p in (best, naive):
        by_region: dict[str, list[str]] = {}
        for shard, region in p.shards.items():
            by_region.setdefault(region, []).append(shard)
        table.add_row(
            p.label + ("" if p.meets_deadline else " (misses deadline)"),
            ", ".join(f"{r}={n}" for r, n in p.workers.items()),
            "; ".join(f"{r}: {','.join(s)}" for r, s in by_region.items()),
            format_duration(p.time_s),
            f"{p.compute_usd:.2f}",
            f"{p.egress_usd:.2f}",
            f"{p.total_usd:.2f}",
            _fmt_bytes(p.read_bytes),
            _fmt_bytes(p.sync_bytes),
        )
    console.print(table)
    if naive.total_usd > 0:
        console.print(
            f"optimal placement: ${best.total_usd:.2f} in {format_duration(best.time_s)} vs naive ${naive.total_usd:.2f} in "
            f"{format_duration(naive.time_s)} ({(1 - best.total_usd / naive.total_usd) * 100:.1f}% cheaper, "
            f"{naive.time_s / best.time_s if best.time_s else float('inf'):.2f}x the speed)"
        )


def _placement_dict(p: Any) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(p)
    d["total_usd"] = p.total_usd
    d.pop("notes")
    return d


def register(app: typer.Typer) -> None:
    """Attach ``delibench geo`` to the root app."""
    app.add_typer(geo_app, name="geo")
