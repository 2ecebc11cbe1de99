"""``delibench scale``: predicted GETs, bytes, hit rate and dollars of an N-node x G-GPU job, rank vs node cache scope."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from delibench.cli.output import console, print_json
from delibench.errors import UsageError

__all__ = ["register"]

SCALE_HELP = """Predict the bucket traffic of a big job before running it: N nodes x G GPUs, rank- vs node-scope cache, shuffle vs locality order.

A PREDICTION from the cache simulator, not a measurement: the exact sampler orders of every rank
and epoch are replayed through deli's own cache (Belady with the next epoch's order by default)
for a dataset of --samples objects of --sample-bytes each and --cache-size of cache per node:

  * rank scope (deli today): each GPU's rank has its own cache of cache-size / gpus-per-node;
  * node scope: one cache per node shared by its ranks (a sample one local rank fetched is a hit
    for the others), replayed as deli's node service runs it: each rank looks its samples up a
    window ahead of its next batch (--prefetch-depth, at least two batches of --batch-size), and
    what the windows hold is a hit for every local rank too.

It prints GETs per epoch, bytes from the bucket, hit rate and the request + egress dollars (price
sheet) for each scope and order (--order shuffle: DistributedSampler; locality: each rank keeps its
share of the dataset across epochs). The ranks of --simulate-nodes nodes are replayed exactly with
the full dataset and world size; the totals are scaled by nodes / simulate-nodes (every node's share
of a uniform permutation is identically distributed).

Examples:

  delibench scale --nodes 64 --gpus-per-node 8 --samples 1281167 --sample-bytes 110KB --cache-size 64GiB --epochs 3

  delibench scale --nodes 1 --gpus-per-node 2 --samples 1600 --sample-bytes 110KB --cache-size 1GiB --epochs 3 --json

  delibench scale --nodes 8 --gpus-per-node 8 --samples 1281167 --sample-bytes 110KB --cache-size 16GiB --egress internet --provider gcp
"""


def _print(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from delibench.reports.tables import format_usd
    from delibench.units import format_bytes

    job = doc["job"]
    console.print(
        f"[bold]PREDICTION[/] (cache simulator, not measured): {job['nodes']} nodes x {job['gpus_per_node']} GPUs "
        f"= {job['world_size']} ranks; {job['samples']:,} samples x {format_bytes(job['sample_bytes'])} "
        f"= {format_bytes(job['dataset_bytes'])}; cache {format_bytes(job['cache_size'])} per node "
        f"(rank scope: {format_bytes(job['cache_size'] // job['gpus_per_node'])} per rank); "
        f"{job['epochs']} epochs, eviction {job['eviction']}; batch {job['batch_size']} per rank, "
        f"node-scope window {job['window']} samples per rank",
        highlight=False,
    )
    t = Table(title="bucket traffic", title_justify="left")
    for col in ("order", "scope", "GETs per epoch", "GETs", "from bucket", "hits", "hits e>=1"):
        wraps = col == "GETs per epoch"
        t.add_column(col, justify="left" if col in ("order", "scope") else "right", no_wrap=not wraps, min_width=9 if wraps else None)
    d = Table(title="dollars (requests + egress)", title_justify="left")
    for col in ("order", "scope", "GET $", "egress $", "total $"):
        d.add_column(col, justify="left" if col in ("order", "scope") else "right", no_wrap=True)
    for c in doc["cells"]:
        t.add_row(
            c["order"],
            c["scope"],
            " ".join(f"{g:,}" for g in c["gets_per_epoch"]),
            f"{c['gets']:,}",
            format_bytes(c["bytes_from_bucket"]),
            f"{c['hit_rate']:.1%}",
            f"{c['steady_hit_rate']:.1%}",
        )
        d.add_row(c["order"], c["scope"], format_usd(c["request_usd"]), format_usd(c["egress_usd"]), format_usd(c["total_usd"]))
    console.print(t)
    console.print(d)
    p = doc["prices"]
    sim = max(1, round(job["nodes"] / doc["scale_factor"]))
    console.print(
        f"[dim]prices ({p['label']}): GET ${p['get_usd_per_1000']}/1000, egress ${p['egress_usd_per_gb']}/GB; "
        f"{sim} of {job['nodes']} node(s) replayed exactly, totals x{doc['scale_factor']:g}[/]",
        highlight=False,
    )


def scale_cmd(
    nodes: int = typer.Option(..., "--nodes", help="VMs in the job, e.g. 64."),
    gpus_per_node: int = typer.Option(..., "--gpus-per-node", help="GPUs (ranks) per VM, e.g. 8."),
    samples: int = typer.Option(..., "--samples", help="Objects in the dataset, e.g. 1281167 (ImageNet-1k train)."),
    sample_bytes: str = typer.Option(..., "--sample-bytes", help="Mean bytes per object, e.g. 110KB."),
    cache_size: str = typer.Option(..., "--cache-size", help="Cache memory per node, e.g. 64GiB (rank scope splits it among the node's GPUs)."),
    epochs: int = typer.Option(3, "--epochs", "-e", help="Epochs, e.g. 3."),
    order: Optional[list[str]] = typer.Option(None, "--order", help="shuffle | locality (repeatable). Default: both."),
    eviction: str = typer.Option("belady", "--eviction", help="Cache eviction: belady (deli's default), lru or fifo."),
    exchange_fraction: float = typer.Option(0.0, "--exchange-fraction", help="locality order: share of each rank's samples swapped per epoch, e.g. 0.1."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", help="Samples per batch per rank (deli's default 32), e.g. 256."),
    prefetch_depth: Optional[int] = typer.Option(None, "--prefetch-depth", help="deli's prefetch_depth: node scope's window per rank is at least two batches. Default: deli's (256)."),
    simulate_nodes: int = typer.Option(1, "--simulate-nodes", help="Nodes replayed exactly (totals scale by nodes / this), e.g. 2."),
    provider: str = typer.Option("aws", "--provider", help="Cloud whose GET and egress prices apply: aws or gcp."),
    egress: str = typer.Option("cross-region", "--egress", help="Where the bucket is from the VMs: same-region | cross-region | internet."),
    prices: Optional[list[Path]] = typer.Option(None, "--prices", help="YAML price sheet merged over the shipped one, e.g. --prices my-prices.yaml. Repeatable.", metavar="FILE"),
    seed: int = typer.Option(0, "--seed", help="Sampler seed, e.g. 1."),
    as_json: bool = typer.Option(False, "--json", help="Print the prediction as one JSON document on stdout, nothing else."),
) -> None:
    from delibench.reports.build import resolve_sheet
    from delibench.tuning.scale import ScaleJob, default_window, predict_scale
    from delibench.units import parse_bytes

    sizes: dict[str, int] = {}
    for flag, text in (("--sample-bytes", sample_bytes), ("--cache-size", cache_size)):
        try:
            sizes[flag] = parse_bytes(text)
        except UsageError as exc:
            raise UsageError(f"{flag} {text!r}: {exc.message}", hint="e.g. 110KB or 64GiB") from exc
    if batch_size < 1 or (prefetch_depth is not None and prefetch_depth < 1):
        raise UsageError(f"--batch-size and --prefetch-depth must be at least 1, got {batch_size} and {prefetch_depth}")
    if not 0.0 <= exchange_fraction <= 1.0:
        raise UsageError(f"--exchange-fraction must lie in [0, 1], got {exchange_fraction:g}")
    job = ScaleJob(
        nodes=nodes,
        gpus_per_node=gpus_per_node,
        samples=samples,
        sample_bytes=sizes["--sample-bytes"],
        cache_size=sizes["--cache-size"],
        epochs=epochs,
        seed=seed,
        eviction=eviction,
        simulate_nodes=simulate_nodes,
        exchange_fraction=exchange_fraction,
        batch_size=batch_size,
        window=default_window(batch_size, prefetch_depth),
    )
    sheet = resolve_sheet(list(prices) if prices else None)
    prediction = predict_scale(job, orders=tuple(order) if order else ("shuffle", "locality"), provider=provider, egress_class=egress, sheet=sheet)
    doc = prediction.to_dict()
    if as_json:
        print_json(doc)
    else:
        _print(doc)


def register(app: typer.Typer) -> None:
    """Add ``scale`` to the root app."""
    app.command("scale", help=SCALE_HELP, no_args_is_help=True)(scale_cmd)
