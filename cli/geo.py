"""``delibench geo``: train across emulated regions (run, compare sync strategies) and plan placements."""

from __future__ import annotations

import os
import sys
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
    regions: Optional[str] = typer.Option(None, "--regions", help=_REGIONS_HELP + " With --plan: default the plan's regions_file."),
    plan: Optional[str] = typer.Option(None, "--plan", help="Run a plan written by 'geo plan --out': its strategy, period, staleness, workers per region, batch and steps."),
    sync: str = typer.Option("allreduce", "--sync", help="allreduce | asgd-ga | ma."),
    period: int = typer.Option(8, "--period", help="ma: average models every H steps. Default 8."),
    accum: int = typer.Option(4, "--accum", help="asgd-ga: accumulate K steps per exchange. Default 4."),
    staleness: int = typer.Option(1, "--staleness", help="asgd-ga: apply an exchange S rounds after sending it. Default 1."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per worker. Default 100 (with --plan: the plan's)."),
    workers_per_region: Optional[str] = typer.Option(None, "--workers-per-region", help="'2' for every region or 'us-east=2,eu-west=1'. Default 1 each."),
    hidden: int = typer.Option(64, "--hidden", help="MLP hidden width (sets bytes per sync). Default 64."),
    lr: float = typer.Option(0.3, "--lr", help="SGD learning rate. Default 0.3."),
    step_time_scale: float = typer.Option(1.0, "--step-time-scale", help="Multiply the regions' step_time_s (0 = no compute padding). Default 1."),
    seed: int = typer.Option(0, "--seed", help="Seed of model, data and held-out set."),
    timeout_s: float = typer.Option(600.0, "--timeout", help="Stop every worker after this many seconds. Default 600."),
    json_out: bool = typer.Option(False, "--json", help="Print the result as JSON on stdout."),
    links: str = typer.Option("auto", "--links", help="auto | namespace | model. namespace: one network namespace per region, kernel tbf rate limit, user-space delay line (root); model: the communication-level model over loopback. auto: namespace where possible."),
    jitter: Optional[str] = typer.Option(None, "--jitter", help="namespace links: uniform jitter on each packet's one-way delay, e.g. 2ms."),
    checkpoint_every: int = typer.Option(10, "--checkpoint-every", help="Checkpoint every N steps; a restart resumes there (0 = never). Default 10."),
    max_restarts: int = typer.Option(3, "--max-restarts", help="torchrun --max-restarts per region. Default 3."),
    min_regions: Optional[int] = typer.Option(None, "--min-regions", help="Elastic: go on with at least this many regions (torchrun --nnodes MIN:...). Default: all that start."),
    max_regions: Optional[int] = typer.Option(None, "--max-regions", help="Elastic: admit up to this many regions, joining later with the printed command (--nnodes ...:MAX)."),
    job_dir: Optional[str] = typer.Option(None, "--job-dir", help="Keep the job's files here (job file, checkpoints, events, logs). Default: a temporary folder."),
    print_commands: bool = typer.Option(False, "--print-commands", help="Print the torchrun command of every region's host (for a multi-machine run) and exit; --hosts sets the addresses."),
    hosts: Optional[str] = typer.Option(None, "--hosts", help="With --print-commands: region=ADDRESS[/IFNAME],... (default: 127.0.0.1/lo)."),
) -> None:
    """Train for real under torchrun (one elastic c10d node group per region, gloo) with the chosen sync strategy.

    Every region is a torchrun agent (--nnodes N:N, --rdzv-backend c10d, the first region hosting
    the rendezvous), bound to its region's address. With --links namespace (the default where this
    runs as root) each region lives in a network namespace and cross-region bytes cross a kernel
    rate limit plus a delay line; --links model keeps the communication-level model (each exchange
    waits rtt/2 + chunk/bandwidth per ring step from the regions file). The result names the mode.
    A killed worker is restarted by torchrun and every worker resumes from the last checkpoint.

    Cross-region traffic crosses an emulated WAN (communication-level: each cross-region exchange
    waits rtt/2 + chunk/bandwidth per ring step from the regions file), and every byte crossing
    regions is counted. Example: delibench geo run --regions geo/example-regions.yaml --sync ma --period 8

    With --plan plan.yaml (from 'geo plan --out') the plan sets the strategy, period, staleness,
    workers per region, per-worker batch and steps; --sync/--period/--accum/--staleness/
    --workers-per-region are then ignored. Example: delibench geo run --plan plan.yaml --steps 200
    """
    if plan is not None:
        config, spec = _planned_spec(plan, regions, steps=steps, hidden=hidden, lr=lr, step_time_scale=step_time_scale, seed=seed)
        sync = spec.strategy
    else:
        if regions is None:
            raise UsageError("--regions is required (or --plan)", hint="e.g. --regions geo/example-regions.yaml")
        config = _load(regions)
        spec = _spec(sync, config, workers_per_region, steps=100 if steps is None else steps, period=period, accum=accum, staleness=staleness, hidden=hidden, lr=lr, step_time_scale=step_time_scale, seed=seed)
    if print_commands:
        _print_commands(config, spec, hosts, job_dir=job_dir, max_restarts=max_restarts, min_regions=min_regions, max_regions=max_regions, checkpoint_every=checkpoint_every)
        return
    from delibench.geo import launch as geo_launch
    from delibench.units import parse_duration

    mode, why = geo_launch.resolve_links(links)
    import signal

    # SIGTERM unwinds like Ctrl-C, so the agents (sessions of their own), their workers and the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    label = "namespaces + tbf + delay line" if mode == "namespace" else "communication-level model" + (f" ({why})" if why else "")
    err_console.print(f"[dim]geo run: {sync} on {spec.topology.world_size} workers in {len(spec.workers)} regions under torchrun; links: {label} ...[/]")
    launched = geo_launch.launch_local(
        config, spec, links=mode, checkpoint_every=checkpoint_every, max_restarts=max_restarts, base_env=dict(os.environ),
        job_dir=job_dir, jitter_s=parse_duration(jitter) if jitter else 0.0, timeout_s=timeout_s, min_regions=min_regions, max_regions=max_regions,
    )  # fmt: skip
    for event in launched.events:
        err_console.print(f"restart: world {event['world_size']} ({', '.join(event['regions'])}), resumed at step {event['resumed_at']} of {event['reached']} reached: lost {event['lost_steps']} steps")
    if json_out:
        print_json(launched.to_dict())
        return
    _print_results([launched.result])
    console.print(f"links: {launched.links}; {launched.result.emulation}")
    if launched.wire_bytes:
        console.print("bytes on the wire (IP, per link): " + ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in launched.wire_bytes.items()))


def _print_commands(
    config: Any, spec: Any, hosts_text: Optional[str], *, job_dir: Optional[str], max_restarts: int, min_regions: Optional[int], max_regions: Optional[int], checkpoint_every: int
) -> None:
    """The exact torchrun command of every region's host (and, with --job-dir, the job file they read)."""
    from delibench.geo.launch import format_commands, region_commands, write_job
    from delibench.geo.links import RegionHost

    hosts = {name: RegionHost(region=name, address="127.0.0.1", ifname="lo") for name, _ in spec.workers}
    for part in (hosts_text or "").split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        if not sep or name.strip() not in hosts:
            raise UsageError(f"bad --hosts entry {part!r}", hint="use region=ADDRESS[/IFNAME] for a region with workers")
        address, _, ifname = value.strip().partition("/")
        hosts[name.strip()] = RegionHost(region=name.strip(), address=address, ifname=ifname or "eth0")
    run_id = "geo-" + __import__("uuid").uuid4().hex[:8]
    folder = job_dir or "JOB_DIR"
    if job_dir:
        write_job(job_dir, config, spec, checkpoint_every=checkpoint_every, links="real")
        err_console.print(f"[dim]job file written: {job_dir}/job.pkl (real network: no WAN emulation, bytes counted)[/]")
    console.print(f"# {folder}/job.pkl ('geo run --print-commands --job-dir {folder}' writes it) at the same path on every host, the folder shared for restarts; run each line on its region's host", markup=False, highlight=False)
    n = len(spec.workers)
    nnodes = f"{min(n, min_regions or n)}:{max(n, max_regions or n)}"
    console.print(format_commands(region_commands(spec, hosts, job_dir=folder, run_id=run_id, nnodes=nnodes, max_restarts=max_restarts)), markup=False, highlight=False, soft_wrap=True)


@geo_app.command("worker", hidden=True)
def worker_cmd(
    region: str = typer.Option(..., "--region", help="This node group's region."),
    job_dir: str = typer.Option(..., "--job-dir", help="The job folder (job.pkl, checkpoints)."),
) -> None:
    """One torchrun worker of 'geo run' (started by the region's torchrun agent, not by hand)."""
    import faulthandler
    import signal
    import traceback

    from delibench.geo.train import WorkerPlace, run_worker

    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 <pid>`: every thread's stack into the agent's log

    env = os.environ
    place = WorkerPlace(
        rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]), local_rank=int(env.get("LOCAL_RANK", 0)),
        group_rank=int(env.get("GROUP_RANK", 0)), restart_count=int(env.get("TORCHELASTIC_RESTART_COUNT", 0)),
    )  # fmt: skip
    print(f"geo worker {region}: rank {place.rank}/{place.world_size} restart {place.restart_count} store {env.get('MASTER_ADDR')}:{env.get('MASTER_PORT')} agent-store {env.get('TORCHELASTIC_USE_AGENT_STORE')}", file=sys.stderr, flush=True)
    code = 0
    try:
        run_worker(job_dir, region, place)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # NOTE: skip interpreter teardown: a gloo worker under torchrun aborts there now and then
    # (PyTorch 2.14, see tests/geo/test_strategies_readme.py), which torchrun would take for a failure.
    os._exit(code)


def _planned_spec(plan_path: str, regions: Optional[str], *, steps: Optional[int], **run: Any) -> tuple[Any, Any]:
    """Load and check a plan file and its regions file; the GeoRunSpec that runs it."""
    from delibench.geo.plan_io import check_plan_regions, load_plan, plan_to_run_settings, regions_digest

    plan = load_plan(plan_path)
    path = regions or plan.regions_file
    if not path:
        raise UsageError(f"{plan_path}: the plan names no regions file", hint="pass --regions")
    if not Path(path).exists() and not Path(path).is_absolute() and (Path(plan_path).parent / path).exists():
        path = str(Path(plan_path).parent / path)
    config = _load(path)
    check_plan_regions(plan, config, digest=regions_digest(path), source=plan_path)
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    return config, plan_to_run_settings(plan, steps=steps, **run)


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
    sync: str = typer.Option("ma", "--sync", help="Cross-region sync of the plan: allreduce | ma | asgd-ga. Default ma."),
    sync_period: int = typer.Option(8, "--sync-period", help="Steps per sync round: H for ma, K for asgd-ga (allreduce: 1). Default 8."),
    staleness: int = typer.Option(1, "--staleness", help="asgd-ga: rounds an exchange may lag (0 = no overlap). Default 1."),
    out: Optional[str] = typer.Option(None, "--out", help="Write the plan (versioned YAML) here, for 'geo run --plan'."),
    json_out: bool = typer.Option(False, "--json", help="Print the plan document (plan and baselines) as JSON on stdout."),
) -> None:
    """Choose workers per region, which region reads each shard and whether it streams or copies it, vs two baselines.

    One time/cost model prices the plan and the baselines: single-region DDP (every shard copied
    once to one region, the cheapest such job) and synchronous DDP on the plan's own regions.
    Accelerators are billed as the regions file says (rented wall time, or busy seconds), sync bytes
    per link and direction at the sender's price. The model predicts time and dollars for the same
    samples processed, not accuracy. Example:
    delibench geo plan --regions geo/example-regions.yaml --epochs 90 --sync ma --sync-period 64 --deadline 45min --out plan.yaml
    """
    from delibench.geo.plan_io import GeoPlan, plan_to_dict, regions_digest, write_plan
    from delibench.geo.planner import SyncChoice, baselines, get_workload, plan_placement
    from delibench.units import parse_duration

    config = _load(regions)
    deadline_s = parse_duration(deadline) if deadline else None
    if deadline_s is not None and deadline_s <= 0:
        raise UsageError("--deadline must be > 0")
    budget_usd = _parse_budget(budget) if budget else None
    if sync_period < 1:
        raise UsageError("--sync-period must be >= 1")
    if staleness < 0:
        raise UsageError("--staleness must be >= 0")
    if epochs < 1:
        raise UsageError("--epochs must be >= 1")
    wl = get_workload(workload, epochs=epochs)
    choice = SyncChoice(sync, sync_period, staleness)
    best = plan_placement(config, wl, sync=choice, objective=objective, deadline_s=deadline_s, budget_usd=budget_usd)
    bases = baselines(config, wl, best, deadline_s=deadline_s)
    plan = GeoPlan(best, wl, objective, deadline_s, budget_usd, regions_file=regions, regions_sha256=regions_digest(regions), baselines=tuple(bases))
    if out:
        write_plan(out, plan, config)
        err_console.print(f"[dim]plan written to {out}; run it with: delibench geo run --plan {out}[/]")
    if json_out:
        print_json(plan_to_dict(plan, config))
        return
    _print_plan(plan, epochs, objective)


def _print_plan(plan: Any, epochs: int, objective: str) -> None:
    from rich.table import Table

    from delibench.units import format_duration

    best = plan.placement
    table = Table(title=f"geo plan: {plan.workload.name}, {epochs} epoch(s), objective={objective}")
    for col in ("placement", "workers", "reads (copy/stream across regions)", "time (of it sync)", "USD: compute+data+sync = total"):
        table.add_column(col)
    for p in (best, *plan.baselines):
        reads: dict[str, list[str]] = {}
        for d in p.data:
            reads.setdefault(d.reader, []).append(d.shard + ("" if d.mode == "local" else f" ({d.mode})"))
        sync_label = p.sync.strategy + ("" if p.sync.strategy == "allreduce" else f" {'H' if p.sync.strategy == 'ma' else 'K'}={p.sync.period}")
        table.add_row(
            f"{p.label}, {sync_label if len(p.workers) > 1 else 'one region'}" + ("" if p.meets_deadline else " (misses deadline)"),
            ", ".join(f"{r}={n}" for r, n in p.workers.items()),
            "; ".join(f"{r}: {', '.join(s)}" for r, s in reads.items()),
            f"{format_duration(p.time_s)} ({format_duration(p.sync_time_s)})",
            f"{p.compute_usd:.2f}+{p.data_egress_usd + p.storage_usd:.2f}+{p.sync_egress_usd:.2f} = {p.total_usd:.2f}",
        )
    console.print(table)
    for base in plan.baselines:
        cost = f"{(best.total_usd / base.total_usd - 1) * 100:+.1f}% cost" if base.total_usd else "-"
        speed = f"{base.time_s / best.time_s:.2f}x the speed" if best.time_s else "-"
        console.print(f"plan vs {base.label}: ${best.total_usd:.2f} in {format_duration(best.time_s)} vs ${base.total_usd:.2f} in {format_duration(base.time_s)} ({cost}, {speed})")


def register(app: typer.Typer) -> None:
    """Attach ``delibench geo`` to the root app."""
    app.add_typer(geo_app, name="geo")
