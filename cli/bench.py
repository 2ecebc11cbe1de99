"""``delibench bench``: every loader against the physical bound, in the latency-, bandwidth- and CPU-bound regimes."""

from __future__ import annotations

import shlex
import sys
import time
from pathlib import Path

import typer

from delibench.cli.output import console, err_console, print_json

__all__ = ["bench", "register"]

HELP = """Benchmark the loaders against the physical bound of each environment (about 10 minutes on 2 cores).

For each cell (link profile x sample size, with an emulated accelerator and a cache budget) it
probes the object store's raw-fetch ceiling, the decode rate and the link, measures disk, bucket,
deli, fsspec-cache and the installed peers interleaved, and prints throughput, data-wait fraction,
efficiency against min(accelerator, CPU, bandwidth/size/miss rate, store ceiling/miss rate, the
no-fetch pipeline's rate; each epoch's fetch terms also carry the round trips before its first byte
and the last sample's decode and step after its last byte), the wait removed relative to the
bucket loader, the share of its fetch
stall removed (wait beyond what the pipeline waits with the data in RAM) and the ratio to the best
peer. Writes one JSON file.

Example:

  delibench bench                                   # the three regimes (latency, bandwidth, CPU)

  delibench bench --quick --sizes small --profiles cross-region --out bench.json

  delibench bench --show benchmarks/results/bench-default.json   # reprint a saved result
"""


def _split(values: list[str] | None) -> list[str] | None:
    if not values:
        return None
    return [v.strip() for item in values for v in item.split(",") if v.strip()]


def bench(
    profiles: list[str] = typer.Option(None, "--profiles", help="Link profiles (repeatable or comma-separated); with --sizes, their product."),
    sizes: list[str] = typer.Option(None, "--sizes", help="Sample sizes: small (~10 KB), imagenet (~110 KB), large (~1 MB)."),
    quick: bool = typer.Option(False, "--quick", help="A quarter of the samples: a smoke run."),
    loaders: str = typer.Option("disk,bucket,deli,fsspec-cache,s3torchconnector,webdataset", "--loaders", help="Loaders to compare."),
    step_time: str = typer.Option(None, "--step-time", help="Override the emulated accelerator time per batch of 32 (e.g. 50ms)."),
    cache_fraction: float = typer.Option(None, "--cache-fraction", help="deli's cache budget as a share of the dataset (0-1)."),
    bandwidth: str = typer.Option(None, "--bandwidth", help="Override the link's aggregate bandwidth (e.g. 10MB)."),
    epochs: int = typer.Option(2, "--epochs", help="Epochs per loader."),
    num_workers: int = typer.Option(2, "--num-workers", help="DataLoader workers for every loader."),
    workdir: Path = typer.Option(Path(".delibench/bench"), "--dir", help="Datasets and testbed (datasets are reused)."),
    out: Path = typer.Option(None, "--out", help="JSON result file (default: <dir>/bench-<time>.json)."),
    as_json: bool = typer.Option(False, "--json", help="Print the JSON document on stdout."),
    show: Path = typer.Option(None, "--show", help="Print the tables of a saved result file instead of running.", metavar="FILE"),
) -> None:
    from delibench.errors import UsageError
    from delibench.units import parse_duration
    from delibench.app.bench import BenchOptions, build_matrix, run_bench

    if show is not None:
        _show(show)
        return

    if epochs < 1 or num_workers < 0:
        raise UsageError("--epochs must be at least 1 and --num-workers at least 0")
    cells = build_matrix(
        _split(profiles),
        _split(sizes),
        quick=quick,
        step_time_s=parse_duration(step_time) if step_time else None,
        cache_fraction=cache_fraction,
        bandwidth=bandwidth,
    )
    kinds = tuple(_split([loaders]) or ())
    if not kinds:
        raise UsageError("--loaders is empty", hint="e.g. --loaders bucket,deli")
    options = BenchOptions(workdir=workdir, cells=cells, loaders=kinds, epochs=epochs, num_workers=num_workers)
    target = out or workdir / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    command = "delibench " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    doc = run_bench(options, out=target, command=command, log=lambda line: err_console.print(line, markup=False, highlight=False, soft_wrap=True))
    err_console.print(f"results: {target}", markup=False)
    if as_json:
        print_json(doc)
    else:
        console.print(f"{len(doc['cells'])} cell(s) measured; JSON in {target}", markup=False)


def _show(path: Path) -> None:
    """Print the tables of a saved ``delibench bench`` JSON file."""
    from delibench.errors import UsageError
    from delibench.reports.store import read_json_file
    from delibench.app.bench import format_table

    doc = read_json_file(path, "bench result")
    cells = doc.get("cells") if isinstance(doc, dict) else None
    if not isinstance(cells, list) or not cells:
        raise UsageError(f"{path} is not a delibench bench result (no cells)", hint="write one with: delibench bench --out FILE")
    console.print(f"{doc.get('command', '')}  ({doc.get('created_at', '?')})", markup=False)
    for cell in cells:
        console.print(format_table(cell), markup=False, highlight=False, soft_wrap=True)


def register(app: typer.Typer) -> None:
    """Add ``delibench bench``."""
    app.command("bench", help=HELP)(bench)
