"""A quick probe of the path to the dataset: GET latency, bandwidth, request ceiling and decode rate.

Everything is measured against the dataset's own objects with the loaders' one-request
``SampleSource``, so the numbers describe exactly what the DELI loader will meet (the link, the
store, the client), in a second or two. The figures feed the analytic wait model and, bucketed,
the environment fingerprint that names the study.
"""

from __future__ import annotations

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
        decode_samples_per_s: Samples one process decodes per second (None when not measured).
        cpu_count: CPUs usable by this process.
        requests_count: GETs the probe issued.
        probe_s: Wall time of the probe.
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

    def link_estimate(self) -> LinkEstimate:
        """The model's view of these numbers."""
        return LinkEstimate(
            rtt_s=self.rtt_s,
            bandwidth_bytes_per_s=self.bandwidth_bytes_per_s,
            sample_bytes=self.mean_sample_bytes,
            decode_samples_per_s=self.decode_samples_per_s,
            cpu_count=self.cpu_count,
            server_objects_per_s=self.server_objects_per_s,
        )


def _cpu_count() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def probe_environment(
    dataset_url: str,
    manifest: Manifest,
    *,
    decode: Callable[[bytes, int], Any] | None = None,
    rtt_requests: int = 5,
    bandwidth_requests: int = 8,
    concurrency: int = 8,
    ceiling_requests: int = 48,
    ceiling_concurrency: int = 32,
    storage_options: dict[str, Any] | None = None,
) -> ProbeResult:
    """Measure the path to ``dataset_url`` with a few GETs of its own samples.

    * RTT: ``rtt_requests`` sequential one-request GETs of the smallest samples (median).
    * Bandwidth: the ``bandwidth_requests`` smallest, then largest, samples read with
      ``concurrency`` requests in flight; ``extra bytes / extra time`` of the large read, so the
      per-request costs cancel out and the link's rate remains.
    * Request ceiling: ``ceiling_requests`` GETs of small samples with ``ceiling_concurrency`` in
      flight; when they complete at under half the rate the RTT allows, the store (or the client)
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
        t0 = time.perf_counter()
        if ceiling_set:
            source.fetch_many_sync(ceiling_set, concurrency=ceiling_concurrency)
        ceiling_elapsed = time.perf_counter() - t0
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
    objects_per_s = len(ceiling_set) / ceiling_elapsed if ceiling_set and ceiling_elapsed > 0 else len(large) / elapsed
    in_flight = min(ceiling_concurrency, max(1, len(ceiling_set)))
    small_bytes = statistics.mean(samples[i].size_bytes for i in ceiling_set) if ceiling_set else 0.0
    latency_allows = in_flight / (rtt + small_bytes / bandwidth)
    server_ceiling = objects_per_s if ceiling_set and objects_per_s < 0.5 * latency_allows else None

    decode_rate = None
    if decode is not None:
        decode(blobs[0], samples[large[0]].label)  # first call pays for imports and warm-up
        t0 = time.perf_counter()
        for i, blob in zip(large, blobs):
            decode(blob, samples[i].label)
        decode_s = time.perf_counter() - t0
        decode_rate = len(blobs) / decode_s if decode_s > 0 else None
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
    )
