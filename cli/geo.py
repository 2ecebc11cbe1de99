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
    plan: Optional[str] = typer.Option(None, "--plan", help="Run a plan written by 'geo plan --out': its strategy, period, staleness, workers per region, batch, steps and data placement (which region reads each shard; copy-mode shards are copied first)."),
    task: Optional[str] = typer.Option(None, "--task", help="mlp (synthetic samples, fast) | cnn-jpeg (a small CNN on JPEG images each region reads from its data_url through deli). Default mlp (cnn-jpeg with --testbed)."),
    val_url: Optional[str] = typer.Option(None, "--val-url", help="cnn-jpeg: the held-out split (a dataset with a delibench manifest) rank 0 evaluates on."),
    testbed: bool = typer.Option(False, "--testbed", help="cnn-jpeg on this machine, no cloud account: one local bucket per region behind its link profile (same-region / cross-region), class-skewed shards and a held-out split generated."),
    samples_per_region: int = typer.Option(400, "--samples-per-region", help="--testbed: images in each region's shard. Default 400."),
    sync: str = typer.Option("allreduce", "--sync", help="allreduce | asgd-ga | ma | diloco."),
    period: int = typer.Option(8, "--period", help="ma/diloco: average models every H steps. Default 8."),
    accum: int = typer.Option(4, "--accum", help="asgd-ga: accumulate K steps per exchange. Default 4."),
    staleness: int = typer.Option(1, "--staleness", help="asgd-ga: apply an exchange S rounds after sending it. Default 1."),
    steps: Optional[int] = typer.Option(None, "--steps", help="Training steps per worker. Default 100 (with --plan: the plan's)."),
    workers_per_region: Optional[str] = typer.Option(None, "--workers-per-region", help="'2' for every region or 'us-east=2,eu-west=1'. Default 1 each."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", help="Samples per worker per step. Default 32 (cnn-jpeg 16; with --plan: the plan's)."),
    hidden: Optional[int] = typer.Option(None, "--hidden", help="mlp: hidden width (sets bytes per sync). Default 64 (with --plan: sized to the plan's model bytes)."),
    lr: Optional[float] = typer.Option(None, "--lr", help="SGD learning rate. Default 0.3 (cnn-jpeg 0.1)."),
    eval_every: int = typer.Option(0, "--eval-every", help="Rank 0 evaluates on the held-out set every N steps (0: at the end only)."),
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
    job_dir: Optional[str] = typer.Option(None, "--job-dir", help="Keep the job's files here (job file, checkpoints, events, logs; --testbed: its data). Default: a temporary folder."),
    print_commands: bool = typer.Option(False, "--print-commands", help="Print the torchrun command of every region's host (for a multi-machine run) and exit; --hosts sets the addresses."),
    hosts: Optional[str] = typer.Option(None, "--hosts", help="With --print-commands: region=ADDRESS[/IFNAME],... (default: 127.0.0.1/lo)."),
) -> None:
    """Train for real under torchrun (one elastic c10d node group per region, gloo) with the chosen sync strategy.

    Every region is a torchrun agent (--nnodes N:N, --rdzv-backend c10d, the first region hosting
    the rendezvous), bound to its region's address. With --links namespace (the default where this
    runs as root) each region lives in a network namespace and cross-region bytes cross a kernel
    rate limit plus a delay line; --links model keeps the communication-level model (each exchange
    waits rtt/2 + chunk/bandwidth per ring step from the regions file). The result names the mode.
    A killed worker is restarted by torchrun and every worker resumes from the last checkpoint
    (cnn-jpeg: with its loaders' positions). Every byte crossing regions is counted and priced.
    Example: delibench geo run --regions geo/example-regions.yaml --sync ma --period 8

    --task cnn-jpeg trains a small CNN on JPEG images: each region's workers read the region's
    data_url (from the regions file) through deli, with storage options from the environment as
    'delibench run' does; --val-url is the held-out split. --testbed needs no cloud account: it
    starts a local bucket per region behind its link profile, generates class-skewed shards and a
    held-out split, and trains on them. Example:
    delibench geo run --regions geo/example-regions.yaml --testbed --sync ma --period 4 --steps 40 --step-time-scale 0.1

    With --plan plan.yaml (from 'geo plan --out') the plan sets the strategy, period, staleness,
    workers per region, per-worker batch, steps and (cnn-jpeg) the data placement: which region
    reads each region's shard, streamed or first copied into the reader's bucket (bytes and egress
    counted); --sync/--period/--accum/--staleness/--workers-per-region are then ignored. The end
    prints predicted vs measured time and cost. Example:
    delibench geo run --plan plan.yaml --task cnn-jpeg --testbed --steps 200
    """
    import contextlib

    from delibench.geo.task import TASKS

    plan_doc = None
    if plan is not None:
        from delibench.geo.plan_io import plan_reading

        plan_doc, config = _load_plan(plan, regions)
        workers = tuple(plan_doc.placement.workers.items())
        reading = plan_reading(plan_doc)
        if steps is not None and steps < 1:
            raise UsageError(f"--steps must be >= 1, got {steps}")
    else:
        if regions is None:
            raise UsageError("--regions is required (or --plan)", hint="e.g. --regions geo/example-regions.yaml")
        from delibench.geo.train import parse_workers

        config = _load(regions)
        workers = parse_workers(workers_per_region, config)
        reading = {name: (name, "local") for name, _ in workers}
    task = task or ("cnn-jpeg" if testbed else "mlp")
    if task not in TASKS:
        raise UsageError(f"unknown --task {task!r}", hint=f"choose one of {', '.join(TASKS)}")
    if task == "mlp" and (testbed or val_url):
        raise UsageError(f"{'--testbed' if testbed else '--val-url'} is for --task cnn-jpeg (the mlp task makes its own samples)")
    if testbed and (val_url or print_commands):
        raise UsageError(f"--testbed makes its own data on this machine: leave out {'--val-url' if val_url else '--print-commands'}")
    if samples_per_region < 1:
        raise UsageError(f"--samples-per-region must be >= 1, got {samples_per_region}")
    cnn = task == "cnn-jpeg"
    run: dict[str, Any] = {"task": task, "lr": lr if lr is not None else (0.1 if cnn else 0.3), "step_time_scale": step_time_scale, "seed": seed, "eval_every": eval_every, "hidden": hidden}
    if plan_doc is None:
        run.update(strategy=sync, workers=workers, steps=100 if steps is None else steps, period=period, accum=accum, staleness=staleness)
        run["batch_size"] = batch_size or (16 if cnn else 32)
        run["hidden"] = hidden or 64
    else:
        run["batch_size"] = batch_size
    import signal

    # SIGTERM unwinds like Ctrl-C, so the agents (sessions of their own), their workers, the testbed and the namespaces are removed.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    with contextlib.ExitStack() as stack:
        copies: tuple[Any, ...] = ()
        if cnn:
            copies = _cnn_data(stack, config, reading, run, testbed=testbed, val_url=val_url, job_dir=job_dir, samples_per_region=samples_per_region, seed=seed)
        spec = _run_spec(config, plan_doc, steps, run)
        if print_commands:
            _print_commands(config, spec, hosts, job_dir=job_dir, max_restarts=max_restarts, min_regions=min_regions, max_regions=max_regions, checkpoint_every=checkpoint_every)
            return
        from delibench.geo import launch as geo_launch
        from delibench.units import parse_duration

        mode, why = geo_launch.resolve_links(links)
        label = "namespaces + tbf + delay line" if mode == "namespace" else "communication-level model" + (f" ({why})" if why else "")
        err_console.print(f"[dim]geo run: {spec.strategy} ({task}) on {spec.topology.world_size} workers in {len(spec.workers)} regions under torchrun; links: {label} ...[/]")
        launched = geo_launch.launch_local(
            config, spec, links=mode, checkpoint_every=checkpoint_every, max_restarts=max_restarts, base_env=dict(os.environ), job_dir=job_dir,
            jitter_s=parse_duration(jitter) if jitter else 0.0, timeout_s=timeout_s, min_regions=min_regions, max_regions=max_regions,
            copied={f"{c.home}->{c.reader}": c.nbytes for c in copies},
        )  # fmt: skip
    for event in launched.events:
        err_console.print(f"restart: world {event['world_size']} ({', '.join(event['regions'])}), resumed at step {event['resumed_at']} of {event['reached']} reached: lost {event['lost_steps']} steps")
    rows = None
    if plan_doc is not None:
        from delibench.geo.plan_io import plan_vs_measured

        rows = plan_vs_measured(plan_doc, launched.result, copy_s=sum(c.seconds for c in copies))
    if json_out:
        doc = launched.to_dict()
        doc["copies"] = [{"shard": c.shard, "home": c.home, "reader": c.reader, "url": c.url, "bytes": c.nbytes, "seconds": c.seconds} for c in copies]
        if rows is not None:
            doc["plan_vs_measured"] = {name: {"predicted": p, "measured": m} for name, p, m in rows}
        print_json(doc)
        return
    _print_results([launched.result])
    console.print(f"links: {launched.links}; {launched.result.emulation}")
    if launched.wire_bytes:
        console.print("bytes on the wire (IP, per link): " + ", ".join(f"{k} {_fmt_bytes(v)}" for k, v in launched.wire_bytes.items()))
    for c in copies:
        console.print(f"copied {c.shard} from {c.home} into {c.reader}'s bucket before the run: {_fmt_bytes(c.nbytes)} in {c.seconds:.2f} s")
    if rows is not None and plan_doc is not None:
        _print_plan_vs_measured(plan_doc, rows, launched.result)


def _load_plan(plan_path: str, regions: Optional[str]) -> tuple[Any, Any]:
    """Load and check a plan file and its regions file."""
    from delibench.geo.plan_io import check_plan_regions, load_plan, regions_digest

    plan = load_plan(plan_path)
    path = regions or plan.regions_file
    if not path:
        raise UsageError(f"{plan_path}: the plan names no regions file", hint="pass --regions")
    if not Path(path).exists() and not Path(path).is_absolute() and (Path(plan_path).parent / path).exists():
        path = str(Path(plan_path).parent / path)
    config = _load(path)
    check_plan_regions(plan, config, digest=regions_digest(path), source=plan_path)
    return plan, config


def _run_spec(config: Any, plan: Any, steps: Optional[int], run: dict[str, Any]) -> Any:
    """The GeoRunSpec: from the plan (its settings, then the run's) or from the flags."""
    if plan is not None:
        from delibench.geo.plan_io import plan_to_run_settings

        return plan_to_run_settings(plan, steps=steps, **run)
    from delibench.geo.train import GeoRunSpec

    return GeoRunSpec(**run)


def _cnn_data(
    stack: Any, config: Any, reading: dict[str, tuple[str, str]], run: dict[str, Any], *, testbed: bool, val_url: Optional[str], job_dir: Optional[str], samples_per_region: int, seed: int
) -> tuple[Any, ...]:
    """Fill ``run`` with the cnn-jpeg data (testbed buckets, or the regions' data_url buckets); copy the plan's copy-mode shards first; the copies made."""
    from delibench.geo.task import check_sources

    if testbed:
        import tempfile

        from delibench.app.geo_lab import GeoLab

        work = Path(job_dir, "testbed") if job_dir else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="delibench-geo-testbed-")))
        names = [r.name for r in config.regions if r.name in reading or any(reader == r.name for reader, _ in reading.values())]
        err_console.print(f"[dim]geo run --testbed: generating {samples_per_region} images per region and starting a bucket per region ({', '.join(names)}) behind same-region/cross-region links ...[/]")
        lab = stack.enter_context(GeoLab.start(work, names, samples_per_region=samples_per_region, seed=seed))
        data = lab.sources(reading, copy_up_front=True)
        copies = tuple(lab.copies)
        val, val_options = lab.shards.held_out, None
    else:
        from delibench.app.geo_lab import bucket_sources
        from delibench.cli import environment

        if not val_url:
            raise UsageError("--task cnn-jpeg needs a held-out split (--val-url URL)", hint="a dataset with a delibench manifest; or use --testbed, which makes one")
        options = {r.name: environment.storage_options_for(r.data_url) for r in config.regions if r.data_url}
        val, val_options = val_url, environment.storage_options_for(val_url)
        check_sources([], val, val_options)
        data, copies = bucket_sources(config, reading, options)
    check_sources(data, val, val_options)
    run.update(data=data, val_url=val, val_storage_options=val_options)
    return copies


def _print_plan_vs_measured(plan: Any, rows: list[tuple[str, float, float]], result: Any) -> None:
    from rich.table import Table

    from delibench.units import format_duration

    table = Table(title="geo run --plan: predicted (geo plan's model) vs measured")
    for col in ("figure", "predicted", "measured", "measured / predicted"):
        table.add_column(col, justify="left" if col == "figure" else "right")
    for name, predicted, measured in rows:
        if name in ("time_s", "copy_s"):
            shown = (format_duration(predicted), format_duration(measured))
        elif name.endswith("_usd"):
            shown = (f"{predicted:.6f}", f"{measured:.6f}")
        elif name.endswith("bytes") or name.endswith("_across"):
            shown = (_fmt_bytes(predicted), _fmt_bytes(measured))
        else:
            shown = (f"{predicted:.0f}", f"{measured:.0f}")
        table.add_row(name, *shown, f"{measured / predicted:.2f}" if predicted else "-")
    console.print(table)
    time_p, time_m = rows[0][1], rows[0][2]
    cost_p, cost_m = rows[-1][1], rows[-1][2]
    console.print(f"predicted {format_duration(time_p)} and ${cost_p:.6f}; measured {format_duration(time_m)} and ${cost_m:.6f}")
    if plan.deadline_s is not None:
        console.print(f"deadline {format_duration(plan.deadline_s)}: {'met' if time_m <= plan.deadline_s else 'missed'}")
    model_bytes = result.param_count * 4
    if model_bytes != plan.workload.model_bytes:
        console.print(f"note: the plan's model is {_fmt_bytes(plan.workload.model_bytes)}, this run's {_fmt_bytes(model_bytes)} (the {result.spec['task']} model); sync bytes scale with it", markup=False)


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

    from delibench.errors import DelibenchError
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
    except DelibenchError as exc:  # a user-facing failure (e.g. no usable checkpoint): one line, no traceback
        print(f"geo worker {region} rank {place.rank}: error: {exc}", file=sys.stderr, flush=True)
        code = int(exc.exit_code)
    except BaseException:
        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    # NOTE: skip interpreter teardown: a gloo worker under torchrun aborts there now and then
    # (PyTorch 2.14, see tests/geo/test_strategies_readme.py), which torchrun would take for a failure.
    os._exit(code)


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
    workload: str = typer.Option("resnet50", "--workload", help="resnet50 | bert-base | mlp | cnn-jpeg (sizes the data per step and the model sync; cnn-jpeg: geo run --task cnn-jpeg)."),
    deadline: Optional[str] = typer.Option(None, "--deadline", help="Finish within this time, e.g. 10h, 90min."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Spend at most this, e.g. 500USD."),
    objective: str = typer.Option("cost", "--objective", help="cost (default) or time."),
    epochs: int = typer.Option(1, "--epochs", help="Passes over all shards. Default 1."),
    sync: str = typer.Option("ma", "--sync", help="Cross-region sync of the plan: allreduce | ma | asgd-ga. Default ma."),
    sync_period: int = typer.Option(8, "--sync-period", help="Steps per sync round: H for ma, K for asgd-ga (allreduce: 1). Default 8."),
    staleness: int = typer.Option(1, "--staleness", help="asgd-ga: rounds an exchange may lag (0 = no overlap). Default 1."),
    reader_cache: str = typer.Option("256MiB", "--reader-cache", help="deli cache of each worker reading a streamed shard: a shard whose samples fit crosses once, not every epoch (0 = no cache). Default 256MiB (geo run's)."),
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
    from dataclasses import replace

    from delibench.units import parse_bytes

    wl = replace(get_workload(workload, epochs=epochs), reader_cache_bytes=parse_bytes(reader_cache))
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
