"""``delibench run`` and ``delibench compare``: measure the data wait of loaders on one dataset."""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any, Optional

import typer

from delibench.cli import environment
from delibench.cli.output import console, err_console, print_json
from delibench.cli.progress import StepProgress, StopFlag, stop_on_signals
from delibench.config import load_config, parse_loader_arg
from delibench.distributed import DEFAULT_COLLECTIVE_TIMEOUT_S, check_collective_timeout
from delibench.errors import ExitCode, UsageError
from delibench.records import ComputeSpec, LoaderSpec, RunRecord, RunSpec

__all__ = ["build_specs", "check_writable_output", "register", "report_and_exit_code"]

LOADER_PANEL = "Loader"
WORKLOAD_PANEL = "Workload"
RUN_PANEL = "Run"
OUTPUT_PANEL = "Output"


def _default_workers() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


def build_specs(
    *,
    data: str | None,
    loaders: list[str],
    default_loaders: list[str],
    workload: str | None,
    compute: str | None,
    batch_size: int | None,
    num_workers: int | None,
    epochs: int | None,
    warmup_steps: int | None,
    max_steps: int | None,
    warmup_epochs: int | None = None,
    seed: int | None,
    order: str | None,
    config: Path | None,
    nproc: int,
) -> list[RunSpec]:
    """Merge a config file and command-line flags (flags win) into one RunSpec per loader.

    The values are checked by ``RunSpec`` itself; its errors name fields, which ``main`` words as
    the flags that set them.

    Raises:
        UsageError: No dataset, a bad value, or a bad loader argument.
    """
    from delibench.workloads.compute import parse_compute
    from delibench.workloads.models import get_workload

    doc: dict[str, Any] = load_config(config) if config else {}

    def pick(flag: Any, key: str, default: Any) -> Any:
        return flag if flag is not None else doc.get(key, default)

    url = pick(data, "data", None)
    if not url:
        raise UsageError("no dataset given", hint="use --data s3://bucket/prefix (or a path), or data: in --config")
    wl_name = pick(workload, "workload", "resnet50")
    wl = get_workload(wl_name)
    bs = int(pick(batch_size, "batch_size", wl.default_batch_size))
    if bs < 1:  # NOTE: checked before parse_compute, which divides a profile's time by it
        raise UsageError(f"--batch-size must be at least 1, got {bs}")
    compute_spec: ComputeSpec = parse_compute(str(pick(compute, "compute", "auto")), batch_size=bs, profiles_path=environment.profiles_path())
    loader_specs: list[LoaderSpec]
    if loaders:
        loader_specs = [parse_loader_arg(text) for text in loaders]
    elif "loaders" in doc:
        loader_specs = list(doc["loaders"])
    elif "loader" in doc:
        loader_specs = [doc["loader"]]
    else:
        loader_specs = [parse_loader_arg(text) for text in default_loaders]
    order_value = pick(order, "order", None)
    exchange = doc.get("exchange_fraction")
    if order_value is not None or exchange is not None:
        loader_specs = [
            dataclasses.replace(
                s,
                options={
                    **({"order": order_value} if order_value is not None else {}),
                    **({"exchange_fraction": exchange} if exchange is not None else {}),
                    **s.options,
                },
            )
            for s in loader_specs
        ]
    if nproc < 1:
        raise UsageError(f"--nproc must be at least 1, got {nproc}")
    steps = pick(max_steps, "max_steps_per_epoch", None)
    world = environment.rank().world_size if environment.launched_as_rank() else nproc
    return [
        RunSpec(
            dataset_url=str(url),
            workload=wl_name,
            loader=spec,
            compute=compute_spec,
            batch_size=bs,
            num_workers=int(pick(num_workers, "num_workers", _default_workers())),
            epochs=int(pick(epochs, "epochs", 1)),
            warmup_steps=int(pick(warmup_steps, "warmup_steps", 5)),
            warmup_epochs=int(pick(warmup_epochs, "warmup_epochs", 0)),
            seed=int(pick(seed, "seed", 0)),
            world_size=world,
            max_steps_per_epoch=int(steps) if steps is not None else None,
            link_profile=environment.link_profile(),
            storage_options=environment.storage_options_for(str(url)),
        )
        for spec in loader_specs
    ]


def _steps_total(spec: RunSpec, samples: int) -> int:
    per_rank = math.ceil(samples / max(spec.world_size, 1))
    per_epoch = math.ceil(per_rank / spec.batch_size)
    if spec.max_steps_per_epoch:
        per_epoch = min(per_epoch, spec.max_steps_per_epoch)
    return per_epoch * spec.epochs


def report_and_exit_code(
    records: list[RunRecord],
    *,
    as_json: bool,
    html: Path | None,
    min_au: float | None,
    interrupted: bool,
    json_list: bool | None = None,
) -> int:
    """Print the summary (table + sentence, or JSON), write the HTML report, and pick the exit code.

    Args:
        json_list: With ``as_json``, print a JSON list (True) or the one record as an object
            (False); None: a list when there is more than one record. The shape follows the
            command line, not how many loaders finished, so scripts can rely on it.
    """
    from delibench.app.outcome import below_min_au, exit_code_for_records
    from delibench.reports.tables import summary_table, to_rich

    if as_json:
        as_list = len(records) > 1 if json_list is None else json_list
        print_json(records if as_list else records[0])
    else:
        table = summary_table(records, [r.cost for r in records])
        console.print(to_rich(table, compact=console.width < 140))
        for r in records:
            if r.diagnosis:
                console.print(f"[dim]{r.spec.loader.display_name}:[/] {r.diagnosis.summary}", highlight=False)
            for issue in r.issues:
                if issue.severity != "info":
                    colour = "red" if issue.severity == "invalid" else "yellow"
                    err_console.print(f"[{colour}]{issue.severity}[/] {r.spec.loader.display_name}: {issue.message}", highlight=False)
    paths = [r.steps_path.removesuffix(".steps.csv") + ".json" for r in records if r.steps_path]
    if paths:
        err_console.print(f"results: {', '.join(paths)}", highlight=False)
    if html:
        from delibench.reports.build import build_report

        build_report(records, html=html)
        err_console.print(f"report: {html}", highlight=False)
    code = exit_code_for_records(records, interrupted=interrupted, min_au=min_au)
    failing = below_min_au(records, min_au)
    if code == ExitCode.THRESHOLD_NOT_MET:
        names = ", ".join(f"{r.spec.loader.display_name} ({r.metrics.accelerator_utilization:.1%})" for r in failing)
        err_console.print(f"[red]accelerator utilisation below {min_au:.0%}:[/] {names}", highlight=False)
    return int(code)


def check_writable_output(path: Path, flag: str) -> None:
    """Refuse an output file whose directory is missing or not writable, before anything runs.

    Finding out only when the report is written would throw away a whole benchmark.

    Raises:
        UsageError: ``path`` is a directory, its parent is not an existing writable directory, or
            the file exists and cannot be overwritten.
    """
    if str(path) == "-":
        return
    target = path.expanduser()
    parent = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise UsageError(f"{flag} {str(path)!r} is a directory", hint="give a file name, e.g. report.html")
    if not parent.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: directory {str(parent)!r} does not exist", hint="create it first or choose another path")
    if not os.access(parent, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise UsageError(f"{flag} {str(path)!r} is not writable", hint="choose a path in a directory you can write to")


def _check_creatable_dir(path: Path, flag: str) -> None:
    """Refuse a directory that cannot be created or written (its nearest existing ancestor decides)."""
    probe = path.expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise UsageError(f"{flag} {str(path)!r}: {str(probe)!r} is not a directory", hint="choose another directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {str(path)!r}: {str(probe)!r} is not writable", hint="choose a directory you can write to")


def _execute(specs: list[RunSpec], *, results_dir: Path | None, as_json: bool, progress: bool, diagnose: bool, html: Path | None, min_au: float | None, interleave: bool, dry_run: bool, json_list: bool | None = None, collective_timeout_s: float = DEFAULT_COLLECTIVE_TIMEOUT_S) -> int:
    from delibench.app.session import compare
    from delibench.manifest import read_manifest

    info = environment.rank()
    manifest = read_manifest(specs[0].dataset_url, specs[0].storage_options)
    if dry_run:
        from delibench.env import memory_bytes
        from delibench.units import format_bytes

        print_json({"specs": specs, "dataset_samples": len(manifest), "dataset_bytes": manifest.total_bytes})
        err_console.print(
            f"dataset: {len(manifest)} samples, {format_bytes(manifest.total_bytes)}; host RAM {format_bytes(memory_bytes())}",
            highlight=False,
        )
        return int(ExitCode.OK)
    flag = StopFlag()
    totals = {s.loader.display_name: _steps_total(s, len(manifest)) for s in specs}
    try:
        with stop_on_signals(flag), StepProgress(totals, enabled=progress and not as_json and info.is_main) as bar:
            records = compare(
                specs,
                results_dir=str(results_dir) if results_dir else None,
                on_step=bar.callback(),
                should_stop=flag,
                interleave=interleave,
                with_diagnosis=diagnose,
                manifests={specs[0].dataset_url: manifest},
                rank=info,
                collective_timeout_s=collective_timeout_s,
            )
    except Exception as exc:
        # A run that failed mid-way still wrote what it measured (status "failed"): say where, then
        # let the one-line error and exit 1 follow as for any error.
        written = getattr(exc, "record_paths", ())
        if written and info.is_main:
            err_console.print(f"results (failed run, steps measured before the error): {', '.join(written)}", highlight=False)
        raise
    if not info.is_main:
        return int(ExitCode.OK)
    interrupted = flag() or any(r.status == "interrupted" for r in records)
    return report_and_exit_code(records, as_json=as_json, html=html, min_au=min_au, interrupted=interrupted, json_list=json_list)


#: Help of ``--collective-timeout``; no word longer than a narrow help column (Rich cuts those off).
COLLECTIVE_TIMEOUT_HELP = (
    "Seconds a rank waits for the others in a collective (DDP's all-reduce, the per-step stop vote). A hung rank "
    "(a stuck loader or GPU) then fails the run after about this long: exit 1, and rank 0 records the steps measured, "
    "marked failed. It also bounds how far apart the ranks may start, so keep it well above their start-up time. "
    "torch's own defaults are 30 min (gloo) and 10 min (NCCL); with NCCL, torch's watchdog enforces "
    "the timeout and ends the process (see the README; not tested here, no GPU). A Python script that creates the "
    "process group itself keeps the timeout it gave there."
)


def _command(default_loaders: list[str], interleave_default: bool, *, auto_html: bool = False, json_always_list: bool = False):  # noqa: ANN202 - typer signature
    json_help = (
        "Print the result records as JSON on stdout, nothing else: always a list, even for one loader."
        if json_always_list
        else "Print the result as JSON on stdout, nothing else: one record object for one loader, a list for several."
    )

    def command(
        ctx: typer.Context,
        data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset root with a delibench manifest: s3://bucket/prefix, gs://..., or a path.", rich_help_panel=WORKLOAD_PANEL),
        loader: list[str] = typer.Option([], "--loader", "-l", help="Loader to measure, repeatable: bucket | deli[:cache_size=2GiB,prefetch_depth=256,concurrency=32,eviction=lru|belady,order=locality] | disk=./local/copy | fsspec-cache | a plugin. Label with @: deli@big:cache_size=8GiB.", rich_help_panel=LOADER_PANEL),
        workload: Optional[str] = typer.Option(None, "--workload", "-w", help="resnet50 | resnet18 | mobilenet_v3_small | mnist-cnn | cifar-resnet50. Default: resnet50.", rich_help_panel=WORKLOAD_PANEL),
        compute: Optional[str] = typer.Option(None, "--compute", help="auto | cuda | cpu | emulated:120ms | emulated:<gpu profile, e.g. resnet50-a100>. Default: auto (CUDA when present).", rich_help_panel=WORKLOAD_PANEL),
        batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Samples per batch per rank. Default: the workload's.", rich_help_panel=WORKLOAD_PANEL),
        num_workers: Optional[int] = typer.Option(None, "--num-workers", help="DataLoader worker processes per rank, the same for every loader. Default: CPU count (max 8).", rich_help_panel=LOADER_PANEL),
        epochs: Optional[int] = typer.Option(None, "--epochs", "-e", help="Epochs per loader. Default: 1.", rich_help_panel=RUN_PANEL),
        warmup_steps: Optional[int] = typer.Option(None, "--warmup-steps", help="Steps left out of the steady-state fraction. Default: 5.", rich_help_panel=RUN_PANEL),
        warmup_epochs: Optional[int] = typer.Option(None, "--warmup-epochs", help="Whole epochs left out of the steady-state fraction (1 = measure warm caches only). Default: 0.", rich_help_panel=RUN_PANEL),
        max_steps: Optional[int] = typer.Option(None, "--max-steps", help="Stop each epoch after this many steps. Default: the whole epoch.", rich_help_panel=RUN_PANEL),
        seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the sample order and the model. Default: 0.", rich_help_panel=RUN_PANEL),
        order: Optional[str] = typer.Option(None, "--order", help="shuffle (DistributedSampler order) or locality (stable per-rank sets, better cache reuse). Default: shuffle.", rich_help_panel=LOADER_PANEL),
        nproc: int = typer.Option(1, "--nproc", help="Ranks to launch on this machine (torch.distributed: gloo on CPU, nccl on GPU). Default: 1.", rich_help_panel=RUN_PANEL),
        collective_timeout: float = typer.Option(DEFAULT_COLLECTIVE_TIMEOUT_S, "--collective-timeout", metavar="SECONDS", help=COLLECTIVE_TIMEOUT_HELP, rich_help_panel=RUN_PANEL),
        config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML run config (e.g. from 'delibench tune --export'); flags override it.", rich_help_panel=RUN_PANEL),
        diagnose: bool = typer.Option(True, "--diagnose/--no-diagnose", help="Tell fetch stall from CPU stall by re-running a slice from memory. Default: on.", rich_help_panel=RUN_PANEL),
        interleave: bool = typer.Option(interleave_default, "--interleave/--sequential", help="Run epoch e of every loader before epoch e+1 of any, so noise hits all alike.", rich_help_panel=RUN_PANEL),
        results_dir: Optional[Path] = typer.Option(None, "--results-dir", help="Where result JSON files go. Default: .delibench/results.", rich_help_panel=OUTPUT_PANEL),
        html: Optional[Path] = typer.Option(None, "--html", help="Write a self-contained HTML report here." + (" Default: report-<time>.html in the results directory." if auto_html else ""), rich_help_panel=OUTPUT_PANEL),
        as_json: bool = typer.Option(False, "--json", help=json_help, rich_help_panel=OUTPUT_PANEL),
        progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress on stderr (off when not a terminal).", rich_help_panel=OUTPUT_PANEL),
        min_au: Optional[float] = typer.Option(None, "--min-au", help="Exit 4 when a loader's accelerator utilisation is below this (MLPerf Storage's pass mark is 0.9).", rich_help_panel=OUTPUT_PANEL),
        dry_run: bool = typer.Option(False, "--dry-run", help="Print the resolved run specs and dataset size, run nothing.", rich_help_panel=OUTPUT_PANEL),
    ) -> None:
        specs = build_specs(
            data=data,
            loaders=loader,
            default_loaders=default_loaders,
            workload=workload,
            compute=compute,
            batch_size=batch_size,
            num_workers=num_workers,
            epochs=epochs,
            warmup_steps=warmup_steps,
            warmup_epochs=warmup_epochs,
            max_steps=max_steps,
            seed=seed,
            order=order,
            config=config,
            nproc=nproc,
        )
        check_collective_timeout(collective_timeout, name="--collective-timeout")
        if min_au is not None and not 0.0 <= min_au <= 1.0:
            raise UsageError(f"--min-au is a fraction between 0 and 1, got {min_au:g}", hint="e.g. --min-au 0.9 (MLPerf Storage's pass mark)")
        if not dry_run:
            # NOTE: checked before the run (and before launching ranks), not when the report is written.
            if html is not None:
                check_writable_output(html, "--html")
            elif auto_html:
                _check_creatable_dir(results_dir or Path(".delibench/results"), "--results-dir")
        if nproc > 1 and not environment.launched_as_rank() and not dry_run:
            from delibench.cli.launch import launch_local

            # NOTE: the flags were checked above, so bad input fails once here, not once per rank.
            raise typer.Exit(launch_local(nproc, _rank_argv(ctx)))
        if html is None and auto_html and not dry_run:
            import time

            html = (results_dir or Path(".delibench/results")) / f"report-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.html"
        json_list = True if json_always_list else len(specs) > 1
        code = _execute(specs, results_dir=results_dir, as_json=as_json, progress=progress, diagnose=diagnose, html=html, min_au=min_au, interleave=interleave, dry_run=dry_run, json_list=json_list,
                        collective_timeout_s=collective_timeout)
        raise typer.Exit(code)

    return command


def _rank_argv(ctx: typer.Context) -> list[str]:
    """The command line of each rank: this command's parsed options, without ``--nproc``.

    Rebuilt from the parsed values rather than ``sys.argv``, which is not this command's when the
    CLI runs through ``main(argv)`` (tests, notebooks); ranks read their place from the environment.
    """
    args = [str(ctx.info_name)]
    for param in ctx.command.params:
        opts = list(getattr(param, "opts", None) or [])
        if param.name in (None, "nproc") or not opts or not opts[0].startswith("-"):
            continue
        value = ctx.params.get(param.name)
        if value is None or (isinstance(value, (list, tuple)) and not value):
            continue
        name = max(opts, key=len)
        if getattr(param, "is_flag", False):
            secondary = list(getattr(param, "secondary_opts", None) or [])
            if value:
                args.append(name)
            elif secondary:
                args.append(max(secondary, key=len))
            continue
        for item in value if getattr(param, "multiple", False) else [value]:
            args += [name, str(item)]
    return args


RUN_HELP = """Measure the data-wait fraction of a training loop fed by one loader (or several).

The fraction is the share of step time the accelerator spends blocked waiting for the next batch,
over the steady-state steps (warm-up excluded); accelerator utilisation (AU) is one minus it.

Examples:

  delibench run --data s3://my-bucket/imgs --loader deli:cache_size=8GiB --workload resnet50

  delibench run --data ./imgs --loader bucket --compute emulated:resnet50-a100 --epochs 2 --json

  torchrun --nproc-per-node 8 -m delibench run --data s3://my-bucket/imgs --loader deli
"""

COMPARE_HELP = """Measure several loaders on the same data, epochs interleaved, and print how much wait each removes.

Default loaders: bucket (one GET per sample), deli (cached prefetch) and fsspec-cache; add the
local copy with --loader disk=./imgs.

Example:

  delibench compare --data s3://my-bucket/imgs --loader bucket --loader deli --loader disk=./imgs --compute emulated:100ms --epochs 2 --html report.html
"""


def register(app: typer.Typer) -> None:
    """Add ``run`` and ``compare`` to the root app."""
    app.command("run", help=RUN_HELP, no_args_is_help=True)(_command(["deli"], True))
    app.command("compare", help=COMPARE_HELP, no_args_is_help=True)(_command(["bucket", "deli", "fsspec-cache"], True, auto_html=True, json_always_list=True))
