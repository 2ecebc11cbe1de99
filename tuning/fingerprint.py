"""The environment fingerprint of a tuning study, and the stable short study name derived from it.

A tuned configuration is only good for the environment it was measured in: the link (RTT,
bandwidth), the dataset, the accelerator's appetite and the CPUs that decode. The fingerprint
holds those facts. A rerun first looks for a stored study whose fingerprint :meth:`matches`
(same fixed facts, RTT and bandwidth within a factor 1.5) and resumes it; only a new
environment gets a new name, ``deli-<dataset_id>-<hash>``, where the hash covers the fixed facts
and the measured ones rounded into octave buckets (``floor(log2(x))``). It never contains
credentials: only the endpoint's host and port.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit

from delibench.records import ComputeSpec
from delibench.storage import resolve
from delibench.tuning.probe import ProbeResult

__all__ = ["Fingerprint", "endpoint_host", "fingerprint", "octave"]


def octave(value: float | None) -> int | None:
    """``floor(log2(value))`` (None for None or non-positive): 20 ms -> 4 when given in ms."""
    if value is None or not value > 0 or not math.isfinite(value):
        return None
    return math.floor(math.log2(value))


def endpoint_host(dataset_url: str, storage_options: dict[str, Any] | None = None) -> str:
    """``host[:port]`` of the service holding ``dataset_url``; never credentials or a path.

    The endpoint comes from the storage options (the CLI fills them from ``AWS_ENDPOINT_URL``);
    without one, the public service's host is used.
    """
    loc = resolve(dataset_url, storage_options)
    opts = loc.storage_options
    endpoint = None
    if loc.protocol == "s3":
        endpoint = (opts.get("client_kwargs") or {}).get("endpoint_url") or opts.get("endpoint_url")
        default = "s3.amazonaws.com"
    elif loc.protocol == "gs":
        endpoint = opts.get("endpoint_url")
        default = "storage.googleapis.com"
    else:
        return loc.protocol
    if not endpoint:
        return default
    parts = urlsplit(endpoint if "://" in endpoint else f"http://{endpoint}")
    host = parts.hostname or default
    return f"{host}:{parts.port}" if parts.port else host


@dataclass(frozen=True, slots=True)
class Fingerprint:
    """The facts a tuned configuration depends on.

    Attributes:
        dataset_id: The manifest's content id.
        endpoint: ``host[:port]`` of the store (no credentials).
        workload: Workload name.
        compute_kind: ``emulated``, ``cuda`` or ``cpu``.
        step_time_ms: Emulated step time, rounded to 1 ms (None for real compute).
        batch_size: Samples per step.
        world_size: Ranks.
        cpu_count: CPUs for decoding.
        mean_sample_bytes: Mean sample size.
        rtt_ms: Measured GET latency (informational; the name uses its octave).
        bandwidth_mb_per_s: Measured bandwidth in MB/s (informational; the name uses its octave).
        rtt_octave: ``floor(log2(rtt_ms))``.
        bandwidth_octave: ``floor(log2(bandwidth_mb_per_s))``, or None when the probe's read was
            latency-bound (the link's rate did not show, so it does not limit this dataset).
        sample_octave: ``floor(log2(mean_sample_bytes))``.
    """

    dataset_id: str
    endpoint: str
    workload: str
    compute_kind: str
    step_time_ms: int | None
    batch_size: int
    world_size: int
    cpu_count: int
    mean_sample_bytes: int
    rtt_ms: float | None = None
    bandwidth_mb_per_s: float | None = None
    rtt_octave: int | None = None
    bandwidth_octave: int | None = None
    sample_octave: int | None = None

    def bucket_key(self) -> dict[str, Any]:
        """The fields that decide the study: everything but the raw measured numbers."""
        d = asdict(self)
        for raw in ("rtt_ms", "bandwidth_mb_per_s", "mean_sample_bytes"):
            d.pop(raw)
        return d

    def digest(self, search: dict[str, Any] | None = None) -> str:
        """8 hex characters of the bucketed fingerprint (and of the search settings, when given)."""
        text = json.dumps({"env": self.bucket_key(), "search": search}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:8]

    def study_name(self, search: dict[str, Any] | None = None) -> str:
        """``deli-<dataset_id>-<digest>``: stable across reruns in the same environment.

        Args:
            search: The search settings (objective, constraint, space) that must also match for
                a study to be resumed; a change of ``--mem-budget`` or ``--objective`` starts a
                new study instead of clashing with the old one.
        """
        return f"deli-{self.dataset_id}-{self.digest(search)}"

    def matches(self, stored: dict[str, Any], tolerance: float = 1.5) -> bool:
        """Whether a stored fingerprint (``as_dict``) describes the same environment as this one.

        The fixed facts must be equal; the measured RTT and bandwidth must each lie within a
        factor ``tolerance`` of this probe's (a bandwidth the probe could not resolve matches an
        unresolved one). This is what lets a rerun find its study even when a measurement lands
        on the other side of an octave edge.
        """
        mine = self.as_dict()
        measured = ("rtt_ms", "bandwidth_mb_per_s", "rtt_octave", "bandwidth_octave", "sample_octave", "mean_sample_bytes")
        for key, value in mine.items():
            if key not in measured and stored.get(key) != value:
                return False

        def close(a: float | None, b: float | None) -> bool:
            if a is None or b is None:
                return a is None and b is None
            return a > 0 and b > 0 and max(a, b) / min(a, b) <= tolerance

        if not close(self.rtt_ms, stored.get("rtt_ms")):
            return False
        if (self.bandwidth_octave is None) != (stored.get("bandwidth_octave") is None):
            return False
        return self.bandwidth_octave is None or close(self.bandwidth_mb_per_s, stored.get("bandwidth_mb_per_s"))

    def as_dict(self) -> dict[str, Any]:
        """Plain values (stored as a study attribute)."""
        return asdict(self)


def fingerprint(
    *,
    dataset_id: str,
    dataset_url: str,
    workload: str,
    compute: ComputeSpec,
    batch_size: int,
    world_size: int,
    mean_sample_bytes: float,
    probe: ProbeResult | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Fingerprint:
    """Build the fingerprint of a tuning environment (``probe`` adds the measured link buckets)."""
    rtt_ms = probe.rtt_s * 1000 if probe else None
    bw = probe.bandwidth_bytes_per_s / 1e6 if probe else None
    # An unresolved (latency-bound) bandwidth is only a lower bound: it must not split studies.
    bw_bucket = octave(bw) if probe and probe.bandwidth_resolved else None
    return Fingerprint(
        dataset_id=dataset_id,
        endpoint=endpoint_host(dataset_url, storage_options),
        workload=workload,
        compute_kind=compute.kind,
        step_time_ms=None if compute.step_time_s is None else int(round(compute.step_time_s * 1000)),
        batch_size=batch_size,
        world_size=world_size,
        cpu_count=probe.cpu_count if probe else 0,
        mean_sample_bytes=int(round(mean_sample_bytes)),
        rtt_ms=None if rtt_ms is None else round(rtt_ms, 2),
        bandwidth_mb_per_s=None if bw is None else round(bw, 2),
        rtt_octave=octave(rtt_ms),
        bandwidth_octave=bw_bucket,
        sample_octave=octave(mean_sample_bytes),
    )
