"""The benchmark's driver: one lab (a SeaweedFS server, a link emulator per profile), every cell, one JSON document."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from delibench.app.bench.cell import run_cell
from delibench.app.bench.format import format_table
from delibench.app.bench.matrix import BENCH_BUCKET, BenchOptions
from delibench.errors import UsageError

__all__ = ["run_bench"]


def _machine() -> dict[str, Any]:
    import psutil

    return {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "memory_bytes": psutil.virtual_memory().total,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def run_bench(
    options: BenchOptions,
    *,
    out: Path | None = None,
    command: str = "",
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Run every cell of ``options.cells`` and return (and write to ``out``) the JSON document.

    Everything started is stopped before returning, also on error or Ctrl-C.
    """
    if not options.cells:
        raise UsageError("no benchmark cell to run", hint="use build_matrix() or give --profiles/--sizes")
    workdir = options.workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    options = dataclasses.replace(options, workdir=workdir)
    doc: dict[str, Any] = {
        "benchmark": "delibench bench",
        "command": command,
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": _machine(),
        "load_average_start": list(os.getloadavg()),
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(options).items() if k != "cells"},
        "cells": [],
    }
    from delibench.app.lab import Lab

    log(f"starting SeaweedFS in {workdir / 'testbed'}")
    with Lab.start(workdir, profile="local", services=("s3",)) as lab:
        lab.make_bucket(BENCH_BUCKET)
        for cell in options.cells:
            log(f"cell {cell.name} ({cell.regime}): {cell.samples} samples, step {cell.step_time_s * 1000:g} ms "
                f"per batch of {cell.batch_size}, deli cache {cell.cache_fraction:.0%} of the dataset")
            result = run_cell(cell, options, lab, log)
            doc["cells"].append(result.to_json())
            log(format_table(result))
            if out is not None:
                _write(out, doc)
    doc["load_average_end"] = list(os.getloadavg())
    if out is not None:
        _write(out, doc)
    return doc


def _write(path: Path, doc: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(doc, indent=1, default=str))
    tmp.replace(path)
