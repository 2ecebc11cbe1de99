"""The loader benchmark: every loader against the physical bound of its environment, matrix of regimes.

``delibench bench`` and ``benchmarks/bench.py`` call :func:`run_bench`. For each cell of a matrix
(link profile x sample size, with an emulated accelerator rate and a cache budget) it starts
nothing new per loader: one SeaweedFS server, one link-emulator process per profile (detached, so
the emulator's CPU work never takes the measured process's GIL), one generated dataset per size.
It then measures, in the same run:

* **probes** — the object store's raw-fetch ceiling (many concurrent GETs from delibench's
  lightest client, presigned URLs on one aiohttp pool, direct and through the link, with the CPU
  the store and the emulator burn per object), the
  accelerator rate (batch / step time), the link's bandwidth (from the profile) and the best miss
  rate a cache of the budget can reach (:class:`delibench.tuning.simulator.CacheSimulator`,
  Belady and LRU over the same sampler orders);
* **loaders** — disk, bucket, deli, fsspec-cache, the installed peers (s3torchconnector,
  webdataset) and the memory loader (the same decode pipeline with the bytes already in RAM: the
  CPU decode/augment rate with the same workers, DS-Analyzer style), epochs interleaved through
  :func:`delibench.app.session.compare` so that machine noise hits all alike; CPU seconds per sample
  (main process + DataLoader workers) are attributed to each loader step by step.

The **physical bound** of an epoch is ``min(accelerator rate, CPU rate, link bandwidth / mean
sample size / miss rate, store ceiling / miss rate, no-fetch pipeline rate)``. The CPU rate is
``cores / (CPU per sample of the pipeline + miss rate x CPU per object of the co-located store and
emulator)``: on a testbed the store shares the cores with decoding, and counting it keeps
efficiency figures honest. The pipeline's CPU per sample is the steady-state CPU of the no-fetch
loaders (memory, disk; warm-up steps left out), and their measured rate in the epoch is the last
term (DS-Analyzer's prep rate: no loader that also fetches can beat the same pipeline fed from
RAM). The client's own CPU per GET is not in the bound: it is the loader's overhead, which the
benchmark exists to show.
A loader's efficiency is its throughput over the bound for the same epochs and sample counts.

The modules, one job each: :mod:`~delibench.app.bench.matrix` (cells and regimes),
:mod:`~delibench.app.bench.probes` (CPU meter, store ceiling, best miss rates),
:mod:`~delibench.app.bench.bound` (the bound, a pure function of measured inputs),
:mod:`~delibench.app.bench.figures` (per-loader figures scored against it),
:mod:`~delibench.app.bench.cell` (running one cell), :mod:`~delibench.app.bench.driver` (every cell,
one JSON document) and :mod:`~delibench.app.bench.format` (the tables). The testbed, datasets and
storage options come from :class:`delibench.app.lab.Lab`.
"""

from __future__ import annotations

from delibench.app.bench.bound import (
    Bound,
    bound_for,
    compute_bound,
    epoch_bounds,
    fetch_term_rate,
    no_fetch_bounds,
    wait_reduction_at_bound,
)
from delibench.app.bench.cell import FIXED_FLOOR_BYTES, WORKER_ALLOWANCE_BYTES, CellResult, run_cell
from delibench.app.bench.driver import run_bench
from delibench.app.bench.figures import LoaderFigures, loader_figures, score_figures
from delibench.app.bench.format import format_table
from delibench.app.bench.matrix import BENCH_BUCKET, SIZES, BenchOptions, Cell, build_matrix
from delibench.app.bench.probes import CpuMeter, FetchCeiling, best_miss_rates, raw_fetch_ceiling

__all__ = [
    "BENCH_BUCKET",
    "FIXED_FLOOR_BYTES",
    "SIZES",
    "WORKER_ALLOWANCE_BYTES",
    "BenchOptions",
    "Bound",
    "Cell",
    "CellResult",
    "CpuMeter",
    "FetchCeiling",
    "LoaderFigures",
    "best_miss_rates",
    "bound_for",
    "build_matrix",
    "compute_bound",
    "epoch_bounds",
    "fetch_term_rate",
    "format_table",
    "loader_figures",
    "no_fetch_bounds",
    "raw_fetch_ceiling",
    "run_bench",
    "run_cell",
    "score_figures",
    "wait_reduction_at_bound",
]
