"""``delibench data``: make a synthetic dataset, push it to a bucket, index your own, show a manifest."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import typer

from delibench.cli import environment
from delibench.cli.output import console, err_console, print_json
from delibench.errors import UsageError
from delibench.units import format_bytes, format_duration, parse_bytes

__all__ = ["data_app", "register"]

data_app = typer.Typer(
    name="data",
    help=(
        "Datasets: generate synthetic JPEGs, upload them with a manifest, index your own ImageFolder tree or tar shards.\n\n"
        "Example: delibench data make ./imgs --samples 20000 && delibench data push ./imgs s3://my-bucket/imgs"
    ),
    no_args_is_help=True,
)

_JSON_HELP = "Print the result as one JSON document on stdout (no progress bar)."


@contextmanager
def _progress_bar(description: str, total: int | None, *, enabled: bool, show_bytes: bool = False) -> Iterator[Callable[..., None] | None]:
    """A rich progress bar on stderr, or ``None`` when stderr is not a terminal or JSON was asked for."""
    if not (enabled and err_console.is_terminal):
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    columns: list[Any] = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn()]
    if show_bytes:
        columns.append(TextColumn("{task.fields[data]}"))
    columns.append(TimeRemainingColumn())
    with Progress(*columns, console=err_console, transient=True) as progress:
        task = progress.add_task(description, total=total, data="")

        def update(done: int, total_now: int, bytes_done: int | None = None) -> None:
            fields = {"data": format_bytes(bytes_done)} if bytes_done is not None else {}
            progress.update(task, completed=done, total=total_now, **fields)

        yield update


def _parse_size(text: str | None, flag: str) -> int | None:
    if text is None:
        return None
    try:
        return parse_bytes(text)
    except UsageError as exc:
        raise UsageError(f"{flag}: {exc.message}", hint=exc.hint) from exc


def _parse_shape(text: str | None) -> tuple[int, int] | None:
    if text is None:
        return None
    match = re.fullmatch(r"\s*(\d+)\s*[xX]\s*(\d+)\s*", text)
    if not match:
        raise UsageError(f"--image-size: not HEIGHTxWIDTH: {text!r}", hint="e.g. --image-size 224x224")
    return int(match[1]), int(match[2])


@data_app.command("make")
def make_cmd(
    out_dir: Path = typer.Argument(..., help="Directory to create (must be new or empty, or hold a dataset with --force).", file_okay=False),
    samples: int = typer.Option(1000, "--samples", "-n", help="Number of images."),
    classes: int = typer.Option(10, "--classes", "-c", help="Number of classes (folders class_000 ...)."),
    preset: str = typer.Option("imagenet", "--preset", help="imagenet (variable shapes, ~110 KB), cifar (32x32 RGB) or mnist (28x28 grey)."),
    mean_size: str = typer.Option(None, "--mean-size", help="Target mean file size, e.g. 10KB, 110KB, 1MB (default: the preset's)."),
    size_sigma: float = typer.Option(0.5, "--size-sigma", help="Spread of the log-normal size distribution (0 = all the same size)."),
    image_size: str = typer.Option(None, "--image-size", help="Fixed HEIGHTxWIDTH instead of the preset's shape, e.g. 224x224."),
    layout: str = typer.Option("files", "--layout", help="files (class_000/000123.jpg), shards (WebDataset tars) or both."),
    shard_samples: int = typer.Option(1000, "--shard-samples", help="Samples per tar shard."),
    seed: int = typer.Option(0, "--seed", help="Same seed and options give byte-identical files."),
    workers: int = typer.Option(None, "--workers", help="Generator processes (default: one per CPU for large datasets)."),
    force: bool = typer.Option(False, "--force", help="Replace a dataset already in OUT_DIR."),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Generate a synthetic image-classification dataset of real JPEG files, with its manifest.

    Each class has its own colour and stripe pattern; sizes follow a log-normal distribution
    around --mean-size. Deterministic: the same options and seed give the same bytes.

    Example: delibench data make ./imgs --samples 20000 --classes 100 --mean-size 110KB --layout both
    """
    from delibench.workloads.datagen import make_dataset

    mean_bytes = _parse_size(mean_size, "--mean-size")
    shape = _parse_shape(image_size)
    start = time.perf_counter()
    with _progress_bar("generating", samples, enabled=not as_json) as update:
        manifest = make_dataset(
            out_dir,
            samples=samples,
            classes=classes,
            preset=preset,
            image_size=shape,
            mean_bytes=mean_bytes,
            size_sigma=size_sigma,
            layout=layout,
            shard_samples=shard_samples,
            seed=seed,
            workers=workers,
            overwrite=force,
            progress=update,
        )
    elapsed = time.perf_counter() - start
    result = {
        "path": str(out_dir.expanduser().resolve()),
        "samples": len(manifest),
        "classes": len(manifest.classes),
        "layout": layout,
        "shards": len(manifest.shards),
        "total_bytes": manifest.total_bytes,
        "mean_sample_bytes": round(manifest.mean_sample_bytes, 1),
        "seed": seed,
        "dataset_id": manifest.dataset_id,
        "elapsed_s": round(elapsed, 3),
        "samples_per_s": round(len(manifest) / elapsed, 1) if elapsed > 0 else None,
    }
    if as_json:
        print_json(result)
        return
    console.print(
        f"made {len(manifest)} images in {len(manifest.classes)} classes at {result['path']}: "
        f"{format_bytes(manifest.total_bytes)}, mean {format_bytes(manifest.mean_sample_bytes)}"
        + (f", {len(manifest.shards)} shards" if manifest.shards else "")
        + f" in {format_duration(elapsed)} ({result['samples_per_s']} images/s)",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("push")
def push_cmd(
    src: Path = typer.Argument(..., help="Local dataset directory (from 'data make', or any ImageFolder tree)."),
    url: str = typer.Argument(..., help="Destination: s3://bucket/prefix, gs://bucket/prefix, file:///dir or memory://name."),
    concurrency: int = typer.Option(16, "--concurrency", "-j", help="Uploads in flight."),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Upload a local dataset and write its manifest at the destination, last.

    A missing bucket is created. The endpoint comes from AWS_ENDPOINT_URL (S3-compatible stores)
    or STORAGE_EMULATOR_HOST (GCS emulator). Every object is checked by one listing before the
    manifest is written, so a dataset with a manifest is complete. Exit code 1 when the store
    cannot be reached or an upload fails; 2 for a bad source or URL.

    Example: delibench data push ./imgs s3://my-bucket/imgs --concurrency 32
    """
    from delibench.loaders.publish import push

    start = time.perf_counter()
    with _progress_bar("uploading", None, enabled=not as_json, show_bytes=True) as update:
        manifest = push(src, url, concurrency=concurrency, progress=update, storage_options=environment.storage_options_for(url))
    elapsed = time.perf_counter() - start
    _report_transfer("pushed", url, manifest, elapsed, as_json)


@data_app.command("index")
def index_cmd(
    url: str = typer.Argument(..., help="Root of an ImageFolder tree (<root>/<class>/<image>.jpg), of tar shards (*.tar), or of both holding the same samples (any fsspec URL or path)."),
    concurrency: int = typer.Option(16, "--concurrency", "-j", help="Reads in flight."),
    as_json: bool = typer.Option(False, "--json", help=_JSON_HELP),
) -> None:
    """Build the manifest of your own data by listing it once, and write it there.

    An ImageFolder tree: every image is read once to checksum it; class numbers follow the sorted
    folder names, as in torchvision's ImageFolder. Tar shards: only their headers are read, for each
    member's offset. Both (the same samples as files and as shards, as `data make --layout both`
    writes them): the manifest lists the files and each sample's shard and offset, so deli can read
    either way; files and shards that disagree are refused with the first difference.

    Example: delibench data index s3://my-bucket/my-images
    """
    from delibench.loaders.publish import index

    start = time.perf_counter()
    with _progress_bar("indexing", None, enabled=not as_json, show_bytes=True) as update:
        manifest = index(url, concurrency=concurrency, progress=update, storage_options=environment.storage_options_for(url))
    elapsed = time.perf_counter() - start
    _report_transfer("indexed", url, manifest, elapsed, as_json)


def _report_transfer(verb: str, url: str, manifest: Any, elapsed: float, as_json: bool) -> None:
    from delibench.storage import redact

    objects = len(manifest) + len(manifest.shards)
    total = manifest.total_bytes + sum(s.size_bytes for s in manifest.shards)
    result = {
        "url": redact(url),
        "samples": len(manifest),
        "classes": len(manifest.classes),
        "shards": len(manifest.shards),
        "total_bytes": total,
        "dataset_id": manifest.dataset_id,
        "elapsed_s": round(elapsed, 3),
        "objects_per_s": round(objects / elapsed, 1) if elapsed > 0 else None,
        "bytes_per_s": round(total / elapsed, 1) if elapsed > 0 else None,
    }
    if as_json:
        print_json(result)
        return
    console.print(
        f"{verb} {len(manifest)} samples ({len(manifest.classes)} classes"
        + (f", {len(manifest.shards)} shards" if manifest.shards else "")
        + f", {format_bytes(total)}) at {result['url']} in {format_duration(elapsed)}: "
        f"{result['objects_per_s']} objects/s, {format_bytes(result['bytes_per_s'] or 0)}/s",
        highlight=False,
        soft_wrap=True,
    )


@data_app.command("info")
def info_cmd(
    url: str = typer.Argument(..., help="Dataset root holding a delibench manifest (any fsspec URL or path)."),
    as_json: bool = typer.Option(False, "--json", help="Print the summary as JSON on stdout."),
) -> None:
    """Summarise a dataset from its manifest: samples, classes, sizes, shards, origin.

    Example: delibench data info s3://my-bucket/imgs --json
    """
    from delibench.loaders.publish import info

    summary = info(url, storage_options=environment.storage_options_for(url))
    if as_json:
        print_json(summary)
        return
    from rich.table import Table

    table = Table(title=f"dataset {summary.url}", show_header=False, title_justify="left")
    table.add_column("field", style="bold")
    table.add_column("value")
    rows = [
        ("dataset id", summary.dataset_id),
        ("source", summary.source),
        ("samples", f"{summary.samples:,}"),
        ("classes", f"{summary.classes:,}"),
        ("total size", format_bytes(summary.total_bytes)),
        ("sample size", f"mean {format_bytes(summary.mean_sample_bytes)}, min {format_bytes(summary.min_sample_bytes)}, "
                        f"max {format_bytes(summary.max_sample_bytes)}"),
        ("shards", f"{summary.shards} ({format_bytes(summary.shard_bytes)})" if summary.shards else "none"),
        ("image size", f"{summary.image_size[0]}x{summary.image_size[1]}" if summary.image_size else "variable"),
        ("seed", "-" if summary.seed is None else str(summary.seed)),
        ("created", summary.created_at),
    ]
    for name, value in rows:
        table.add_row(name, value)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``data`` command group to the root app."""
    app.add_typer(data_app, name="data")
