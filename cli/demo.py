"""``delibench demo``: the whole story locally, with no cloud account."""

from __future__ import annotations

from pathlib import Path

import typer

from delibench.cli.output import err_console
from delibench.cli.progress import StepProgress, StopFlag, stop_on_signals

__all__ = ["register"]

HELP = """Run everything locally: an embedded S3 bucket behind an emulated WAN link, four loaders, one table.

Starts SeaweedFS (a real S3 server) on loopback behind the link emulator, generates an
ImageNet-like JPEG dataset, uploads it, and measures the data-wait fraction of the disk, raw
bucket, DELI cached-prefetch and fsspec-cache loaders on an emulated accelerator. Prints the
table, writes JSON results and an HTML report, and stops everything it started.

Example:

  delibench demo

  delibench demo --profile cross-continent --samples 1000 --epochs 3
"""


def demo(
    workdir: Path = typer.Option(Path(".delibench/demo"), "--dir", help="Working directory for data, results and the report."),
    profile: str = typer.Option("cross-region", "--profile", help="Link profile: local, same-region, cross-region, cross-continent."),
    samples: int = typer.Option(640, "--samples", help="Images in the synthetic dataset."),
    epochs: int = typer.Option(2, "--epochs", help="Epochs per loader."),
    batch_size: int = typer.Option(32, "--batch-size", help="Samples per batch."),
    step_time: str = typer.Option("500ms", "--step-time", help="Emulated accelerator time per batch."),
    num_workers: int = typer.Option(2, "--num-workers", help="DataLoader workers for every loader."),
    as_json: bool = typer.Option(False, "--json", help="Print the result records as JSON on stdout."),
    progress: bool = typer.Option(True, "--progress/--no-progress", help="Live progress on stderr."),
) -> None:
    from delibench.cli.run import report_and_exit_code
    from delibench.app.demo import DemoOptions, run_demo
    from delibench.errors import UsageError
    from delibench.testbed.profiles import get_profile
    from delibench.units import parse_duration

    get_profile(profile)
    if samples < batch_size * 4:
        raise UsageError(f"--samples {samples} is too few for batches of {batch_size}", hint=f"use at least {batch_size * 4}")
    if epochs < 1 or batch_size < 1 or num_workers < 0:
        raise UsageError("--epochs and --batch-size must be at least 1, --num-workers at least 0")
    options = DemoOptions(
        workdir=workdir,
        profile=profile,
        samples=samples,
        epochs=epochs,
        batch_size=batch_size,
        step_time_s=parse_duration(step_time),
        num_workers=num_workers,
    )
    steps = -(-samples // batch_size) * epochs
    flag = StopFlag()
    with stop_on_signals(flag), StepProgress(dict.fromkeys(options.loaders, steps), enabled=progress and not as_json) as bar:
        result = run_demo(
            options,
            log=lambda line: err_console.print(f"[cyan]demo:[/] {line}", highlight=False),
            on_step=bar.callback(),
            should_stop=flag,
        )
    code = report_and_exit_code(result.records, as_json=as_json, html=None, min_au=None, interrupted=flag())
    if result.report_path:
        err_console.print(f"report: {result.report_path}", highlight=False)
    raise typer.Exit(code)


def register(app: typer.Typer) -> None:
    """Add ``demo`` to the root app."""
    app.command("demo", help=HELP)(demo)
