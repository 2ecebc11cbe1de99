"""The benchmark's probes: CPU accounting of the process tree and outside processes, the store's raw-fetch ceiling, the best miss rates."""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["CpuMeter", "FetchCeiling", "best_miss_rates", "cpu_delta", "deli_miss_rates", "raw_fetch_ceiling"]


class CpuMeter:
    """CPU seconds of this process, its DataLoader workers (live and reaped) and named outside processes.

    ``os.times()`` adds a child's CPU once it has been reaped; live children are read with psutil,
    so a snapshot counts every worker exactly once, whether its epoch has ended or not.

    Args:
        external: Name -> pid of processes to account separately (the store, the link emulator);
            they are excluded from the workers even when they are our children.
    """

    def __init__(self, external: dict[str, int] | None = None) -> None:
        import psutil

        self._psutil = psutil
        self._me = psutil.Process()
        self.external = dict(external or {})
        self._ext = {}
        for name, pid in self.external.items():
            try:
                self._ext[name] = psutil.Process(pid)
            except psutil.Error:
                continue

    def _cpu(self, proc: Any) -> float:
        try:
            t = proc.cpu_times()
            return float(t.user + t.system)
        except self._psutil.Error:
            return 0.0

    def snapshot(self) -> dict[str, float]:
        """CPU seconds so far: ``main``, ``workers`` and one entry per external process."""
        t = os.times()
        external_pids = set(self.external.values())
        live = 0.0
        for child in self._me.children(recursive=True):
            if child.pid not in external_pids:
                live += self._cpu(child)
        out = {"main": t.user + t.system, "workers": t.children_user + t.children_system + live}
        for name, proc in self._ext.items():
            out[name] = self._cpu(proc)
        # Reaped children of the external ones never count as workers.
        return out

    def rss_bytes(self) -> int:
        """Resident memory of this process plus the private (USS) memory of its workers.

        Forked workers share the parent's pages; counting their USS counts each page once.
        """
        total = self._me.memory_info().rss
        external_pids = set(self.external.values())
        for child in self._me.children(recursive=True):
            if child.pid in external_pids:
                continue
            try:
                total += child.memory_full_info().uss
            except self._psutil.Error:
                continue
        return int(total)


def cpu_delta(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    return {k: b.get(k, 0.0) - a.get(k, 0.0) for k in b}


# -- probes -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class FetchCeiling:
    """Raw-fetch probe result.

    Attributes:
        endpoint: ``direct`` or ``link``.
        objects_per_s: GETs completed per second with ``threads`` in flight.
        bytes_per_s: Bytes per second.
        threads: GETs in flight.
        requests: GETs done.
        cpu_s_per_object: CPU seconds per object burnt by each outside process (store, link) and
            by the probe's own client.
    """

    endpoint: str
    objects_per_s: float
    bytes_per_s: float
    threads: int
    requests: int
    cpu_s_per_object: dict[str, float]


def raw_fetch_ceiling(
    storage_options: dict[str, Any],
    bucket: str,
    keys: Sequence[str],
    *,
    label: str,
    duration_s: float = 2.0,
    threads: int = 64,
    meter: CpuMeter | None = None,
) -> FetchCeiling:
    """GET ``keys`` (cycling) with ``threads`` requests in flight for ``duration_s``: the store's ceiling.

    Uses the lightest client delibench has (presigned URLs on one aiohttp pool, see
    :mod:`delibench.loaders.s3http`: a third of botocore's CPU per object), so the ceiling is
    the store's and not the probe's own client's. Connections are opened before the clock starts.
    ``storage_options`` are s3fs's (endpoint, keys, region), e.g. a lab route's.
    """
    import fsspec.asyn
    import s3fs

    from delibench.loaders.s3http import LeanS3Reader

    fs = s3fs.S3FileSystem(**storage_options, skip_instance_cache=True)
    reader = LeanS3Reader(fs, pool_size=threads)
    paths = [f"{bucket}/{k}" for k in keys]
    counter = {"n": 0, "bytes": 0}
    clock: dict[str, Any] = {}

    async def probe() -> None:
        import asyncio

        try:
            await asyncio.gather(*(reader.get(paths[i % len(paths)]) for i in range(threads)))  # warm
            clock["before"] = meter.snapshot() if meter else {}
            clock["start"] = time.perf_counter()
            deadline = clock["start"] + duration_s

            async def worker(offset: int) -> None:
                i = offset
                while time.perf_counter() < deadline:
                    body = await reader.get(paths[i % len(paths)])
                    i += threads
                    counter["n"] += 1
                    counter["bytes"] += len(body)

            await asyncio.gather(*(worker(t) for t in range(threads)))
            clock["elapsed"] = time.perf_counter() - clock["start"]
            clock["after"] = meter.snapshot() if meter else {}
        finally:
            await reader.close()

    try:
        fsspec.asyn.sync(fs.loop, probe)
    finally:
        from delibench.storage import close_filesystem

        close_filesystem(fs)
    n = max(counter["n"], 1)
    cpu = {k: v / n for k, v in cpu_delta(clock["before"], clock["after"]).items() if k != "workers"}
    elapsed = clock["elapsed"]
    return FetchCeiling(label, counter["n"] / elapsed, counter["bytes"] / elapsed, threads, counter["n"], cpu)


def best_miss_rates(sizes: Sequence[int], cache_bytes: int, epochs: int, seed: int, deli_misses: Sequence[float]) -> list[float]:
    """Per epoch: the lowest miss rate of Belady, LRU (simulated on the same orders) and deli's own.

    Args:
        sizes: Bytes of each sample, in manifest order.
        cache_bytes: The cache budget.
        epochs: Epochs run.
        seed: The sampler's seed (the simulator replays the same orders).
        deli_misses: deli's measured miss rate per epoch (see :func:`deli_miss_rates`), may be empty.
    """
    from delibench.tuning.simulator import CacheSimulator

    sim = CacheSimulator(list(sizes), epochs=epochs, seed=seed)
    rates = []
    for e in range(epochs):
        best = min(1.0 - sim.run(cache_bytes, policy).epoch_hit_rates[e] for policy in ("belady", "lru"))
        if e < len(deli_misses):
            best = min(best, deli_misses[e])
        rates.append(best)
    return rates


def deli_miss_rates(cache_misses: int, samples: int, epochs: int) -> list[float]:
    """deli's miss rate per epoch from its run's total misses: every sample misses in epoch 0, the rest spread evenly."""
    if epochs <= 1:
        return [1.0]
    extra = max(0, cache_misses - samples)
    return [1.0] + [extra / (samples * (epochs - 1))] * (epochs - 1)
