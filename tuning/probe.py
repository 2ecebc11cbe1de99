"""A quick probe of the path to the dataset: GET latency, bandwidth, request ceiling and decode rate.

Everything is measured against the dataset's own objects with the loaders' one-request
``SampleSource``, so the numbers describe exactly what the DELI loader will meet (the link, the
store, the client), in a second or two. The figures feed the analytic wait model and, bucketed,
the environment fingerprint that names the study.
"""

from __future__ import annotations

import math
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from delibench.errors import UsageError
from delibench.manifest import Manifest
from delibench.tuning.model import LinkEstimate

__all__ = ["ProbeResult", "probe_environment"]


@dataclass(frozen=True, slots=True)
class ProbeResult:
    """What the probe measured.

    Attributes:
        rtt_s: Median time of a one-request GET of a small sample (round trip + server time).
        rtt_min_s: Fastest of those GETs.
        bandwidth_bytes_per_s: Bytes/s of the link, from a differential read (largest minus smallest
            samples); a lower bound when ``bandwidth_resolved`` is False.
        bandwidth_resolved: Whether the read was long enough for the link's rate to show; False
            when latency alone explains it (bandwidth is then not what limits this dataset).
        objects_per_s: Small samples/s with many requests in flight (the raw-fetch ceiling read).
        server_objects_per_s: ``objects_per_s`` when it fell clearly short of what latency alone
            allows (the store or client is the ceiling), else None.
        mean_sample_bytes: Mean sample size (from the manifest).
        decode_samples_per_s: Samples of mean size one decode worker (one torch thread) decodes per
            second (None when not measured).
        cpu_count: CPUs usable by this process.
        requests_count: GETs the probe issued.
        probe_s: Wall time of the probe.
        ceiling_in_flight: Requests in flight during the ceiling read (the model does not trust
            extrapolations of the request rate far beyond it).
        fetch_cpu_s: CPU seconds this host spent per fetched object during the ceiling read (the
            client, plus a local store or link emulator when they run here; None when unknown).
        decode_main_samples_per_s: Samples/s decoded in this process with torch's default threads
            (what ``num_workers=0`` gets), or None.
        pipeline_samples_per_s: ``(num_workers, samples/s)`` of the whole no-fetch pipeline (from
            RAM, a near-zero step), measured by :func:`delibench.tuning.api.prepare_tuning` through
            the run it is handed; empty when not measured.
        host_busy_fraction: Share of this host's CPUs busy with other work just before the probe
            (0.0-1.0; None when unknown): CPU-bound figures measured on a busy host do not repeat.
    """

    rtt_s: float
    rtt_min_s: float
    bandwidth_bytes_per_s: float
    bandwidth_resolved: bool
    objects_per_s: float
    server_objects_per_s: float | None
    mean_sample_bytes: float
    decode_samples_per_s: float | None
    cpu_count: int
    requests_count: int
    probe_s: float
    ceiling_in_flight: int | None = None
    fetch_cpu_s: float | None = None
    decode_main_samples_per_s: float | None = None
    pipeline_samples_per_s: tuple[tuple[int, float], ...] = ()
    host_busy_fraction: float | None = None

    def link_estimate(self) -> LinkEstimate:
        """The model's view of these numbers."""
        return LinkEstimate(
            rtt_s=self.rtt_s,
            bandwidth_bytes_per_s=self.bandwidth_bytes_per_s,
            sample_bytes=self.mean_sample_bytes,
            decode_samples_per_s=self.decode_samples_per_s,
            cpu_count=self.cpu_count,
            server_objects_per_s=self.server_objects_per_s,
            rtt_min_s=self.rtt_min_s,
            bandwidth_resolved=self.bandwidth_resolved,
            probed_objects_per_s=self.objects_per_s,
            probed_in_flight=self.ceiling_in_flight,
            fetch_cpu_s=self.fetch_cpu_s,
            decode_main_samples_per_s=self.decode_main_samples_per_s,
            pipeline_samples_per_s=tuple((int(w), float(r)) for w, r in self.pipeline_samples_per_s),
            host_busy_fraction=self.host_busy_fraction,
        )


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def _host_busy_cpu_s() -> float | None:
    """CPU seconds all CPUs of this host have been busy (Linux ``/proc/stat``), or None."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        return None


def _decode_time_at_mean(decode: Callable[[bytes, int], Any], items: list[tuple[bytes, int]], mean_bytes: float) -> float:
    """Seconds to decode a sample of ``mean_bytes``: a line through (size, best time) of ``items``.

    Decode time grows with the image (its bytes); the probe holds the smallest and the largest
    samples, so a straight line through them, read at the mean size, stands for the dataset.
    """
    times = []
    for data, label in items:
        best = math.inf
        for _ in range(2):  # the better of two: a preempted decode says nothing about the decoder
            t0 = time.perf_counter()
            decode(data, label)
            best = min(best, time.perf_counter() - t0)
        times.append((len(data), best))
    xs = [x for x, _ in times]
    ys = [y for _, y in times]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    var = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in times) / var if var > 0 else 0.0
    slope = max(slope, 0.0)
    return max(my + slope * (mean_bytes - mx), min(ys), 1e-6)


def probe_environment(
    dataset_url: str,
    manifest: Manifest,
    *,
    decode: Callable[[bytes, int], Any] | None = None,
    rtt_requests: int = 5,
    bandwidth_requests: int = 8,
    concurrency: int = 8,
    ceiling_requests: int = 128,
    ceiling_concurrency: int = 32,
    storage_options: dict[str, Any] | None = None,
) -> ProbeResult:
    """Measure the path to ``dataset_url`` with a few GETs of its own samples.

    * RTT: ``rtt_requests`` sequential one-request GETs of the smallest samples (median).
    * Bandwidth: the ``bandwidth_requests`` smallest, then largest, samples read with
      ``concurrency`` requests in flight; ``extra bytes / extra time`` of the large read, so the
      per-request costs cancel out and the link's rate remains.
    * Request ceiling: ``ceiling_requests`` GETs of small samples with ``ceiling_concurrency`` in
      flight (a warm pass, after one that opens the connections); when they complete at under 80 % of the rate the RTT allows, the store (or the client)
      caps requests/s and the model must know it (on a 2-core testbed SeaweedFS does).
    * Decode: the fetched samples decoded with ``decode`` (the workload's decoder), when given.

    Args:
        dataset_url: Dataset root.
        manifest: Its manifest (keys, sizes).
        decode: ``bytes, label -> item``; None skips the decode measurement.
        rtt_requests: Sequential small GETs.
        bandwidth_requests: Concurrent large GETs.
        concurrency: Requests in flight for the bandwidth read.
        storage_options: fsspec overrides.

    Raises:
        UsageError: Non-positive counts.
        FetchError: A probe GET failed (the dataset is unreachable).
    """
    from delibench.loaders.source import SampleSource

    if rtt_requests < 1 or bandwidth_requests < 1 or concurrency < 1 or ceiling_requests < 0 or ceiling_concurrency < 1:
        raise UsageError("probe request counts and concurrency must be at least 1")
    start = time.perf_counter()
    # Other work on this host (before ours starts): a quarter of a second of /proc/stat.
    busy0 = _host_busy_cpu_s()
    time.sleep(0.25)
    busy1 = _host_busy_cpu_s()
    host_busy = None
    if busy0 is not None and busy1 is not None:
        host_busy = min(1.0, max(0.0, (busy1 - busy0) / ((time.perf_counter() - start) * _cpu_count())))
    samples = manifest.samples
    by_size = sorted(range(len(samples)), key=lambda i: samples[i].size_bytes)
    small = by_size[: min(rtt_requests, len(by_size))]
    large = by_size[-min(bandwidth_requests, len(by_size)) :]
    source = SampleSource(dataset_url, manifest, storage_options)
    try:
        source.fetch_sync(small[0])  # connection setup and DNS: not part of the RTT
        rtts = []
        for i in small:
            t0 = time.perf_counter()
            source.fetch_sync(i)
            rtts.append(time.perf_counter() - t0)
        rtt = statistics.median(rtts)
        # The ceiling read comes before the bandwidth read: it also opens the pooled connections,
        # so the bandwidth read measures transfers and not TCP handshakes.
        ceiling_set = [by_size[k % max(1, len(by_size) // 2)] for k in range(ceiling_requests)] if ceiling_requests else []
        ceiling_elapsed = 0.0
        fetch_cpu = None
        # NOTE: the first ``ceiling_concurrency`` GETs open the pool's connections (handshakes through
        # the link): timed, they reported a quarter of the real rate and the model then saw a store
        # ceiling that does not exist. They are sent first and untimed; the rest are timed, warm.
        # (With too few requests for both, all are timed, as before.) Several rounds are timed: a
        # single burst of ``ceiling_concurrency`` read a third of the sustained rate on a busy host.
        warm = ceiling_set[:ceiling_concurrency] if len(ceiling_set) > ceiling_concurrency else []
        timed = ceiling_set[len(warm):]
        if warm:
            source.fetch_many_sync(warm, concurrency=ceiling_concurrency)
        if timed:
            busy0 = _host_busy_cpu_s()
            t0 = time.perf_counter()
            source.fetch_many_sync(timed, concurrency=ceiling_concurrency)
            ceiling_elapsed = time.perf_counter() - t0
            busy1 = _host_busy_cpu_s()
            if busy0 is not None and busy1 is not None:
                fetch_cpu = max(0.0, busy1 - busy0) / len(timed)
        # Differential read: the same number of the smallest samples, then of the largest, with the
        # same concurrency. Per-request costs (server time, client overhead, RTT) cancel out, and
        # what is left is the time the extra bytes took on the link.
        few = by_size[: len(large)]
        t0 = time.perf_counter()
        few_blobs = source.fetch_many_sync(few, concurrency=concurrency)
        elapsed_small = time.perf_counter() - t0
        t0 = time.perf_counter()
        blobs = source.fetch_many_sync(large, concurrency=concurrency)
        elapsed = time.perf_counter() - t0
        requests = 1 + len(small) + len(ceiling_set) + 2 * len(large)
    finally:
        source.close()
    total = sum(len(b) for b in blobs)
    extra_bytes = total - sum(len(b) for b in few_blobs)
    extra_s = elapsed - elapsed_small
    # NOTE: when the larger read took barely longer than the small one (or the samples are all
    # alike in size), the link's rate did not show and the difference is noise: report the lower
    # bound the read proves (its bytes in a quarter of the small read's time) and mark the
    # bandwidth unresolved, so it neither drives the model nor splits studies.
    resolved = extra_bytes > 0 and extra_s >= 0.25 * elapsed_small
    if resolved:
        bandwidth = extra_bytes / extra_s
    else:
        bandwidth = max(extra_bytes, total) / max(0.25 * elapsed_small, 1e-6)
    objects_per_s = len(timed) / ceiling_elapsed if timed and ceiling_elapsed > 0 else len(large) / elapsed
    in_flight = min(ceiling_concurrency, max(1, len(timed)))
    small_bytes = statistics.mean(samples[i].size_bytes for i in ceiling_set) if ceiling_set else 0.0
    # What the link alone allows: the round trips of ``in_flight`` requests, and its bytes/s (the
    # read's requests share the link: a ceiling read on a thin link is bandwidth-bound, not a store ceiling).
    # ``n`` requests with ``in_flight`` at a time take ceil(n / in_flight) round trips at best.
    rounds = math.ceil(len(timed) / in_flight) if timed else 1
    latency_allows = min(max(1, len(timed)) / (rounds * (rtt + small_bytes / bandwidth)), bandwidth / small_bytes if small_bytes else math.inf)
    server_ceiling = objects_per_s if timed and objects_per_s < 0.8 * latency_allows else None

    decode_rate = decode_main = None
    if decode is not None:
        items = [(b, samples[i].label) for i, b in zip(few, few_blobs)] + [(b, samples[i].label) for i, b in zip(large, blobs)]
        decode(*items[-1])  # first call pays for imports and warm-up
        decode_main = 1.0 / _decode_time_at_mean(decode, items, manifest.mean_sample_bytes)
        # A DataLoader worker runs torch on one thread; so must the measurement that stands for it
        # (with torch's default threads on a busy host it read 4x slower than the workers decode).
        threads = None
        try:
            import torch

            threads = torch.get_num_threads()
            torch.set_num_threads(1)
        except ImportError:  # a decoder without torch
            pass
        try:
            decode_rate = 1.0 / _decode_time_at_mean(decode, items, manifest.mean_sample_bytes)
        finally:
            if threads is not None:
                torch.set_num_threads(threads)
    return ProbeResult(
        rtt_s=rtt,
        rtt_min_s=min(rtts),
        bandwidth_bytes_per_s=bandwidth,
        bandwidth_resolved=resolved,
        objects_per_s=objects_per_s,
        server_objects_per_s=server_ceiling,
        mean_sample_bytes=manifest.mean_sample_bytes,
        decode_samples_per_s=decode_rate,
        cpu_count=_cpu_count(),
        requests_count=requests,
        probe_s=time.perf_counter() - start,
        ceiling_in_flight=in_flight if timed else None,
        fetch_cpu_s=fetch_cpu,
        decode_main_samples_per_s=decode_main,
        host_busy_fraction=host_busy,
    )
