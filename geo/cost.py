"""Dollar cost of geo-distributed work: one billing rule for ``geo plan`` and ``geo run``.

Accelerators are billed by :func:`billed_accelerator_s`, the only place the rule lives: under a
region's ``billing: hourly`` (the default; rented on-demand VMs, priced per hour and billed per
second) every worker pays for the job's wall time, busy or waiting; under ``billing: per_second``
(serverless) only the seconds it computes. Bytes are priced per directed link, the sender paying
its own rate (:meth:`delibench.geo.regions.RegionsConfig.egress_usd_per_gb`: per-direction link
prices, cross-cloud traffic at the sender's internet egress). Shards copied to another region are
stored there for the run's duration.

Prices are applied with the cost model's unit-price functions (:func:`delibench.reports.cost.instance_usd`
and :func:`~delibench.reports.cost.transfer_usd`), so every ``usd_per_gb`` is per billed GB
(:data:`delibench.units.BYTES_PER_BILLED_GB` = 2^30 bytes), exactly as the report's egress prices are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from delibench.geo.regions import RegionsConfig
from delibench.reports.cost import instance_usd, transfer_usd

__all__ = ["SECONDS_PER_MONTH", "GeoCost", "RegionUsage", "billed_accelerator_s", "geo_cost_usd", "storage_usd"]

#: A storage "month" as the providers prorate GB-months: 730 hours.
SECONDS_PER_MONTH = 730 * 3600.0


@dataclass(frozen=True, slots=True)
class RegionUsage:
    """What one region's workers did in a job.

    Attributes:
        workers: Accelerators rented there.
        wall_s: How long they were held: the job's wall time (start to the last sync).
        busy_s: Accelerator-seconds spent computing, summed over the region's workers.
    """

    workers: int
    wall_s: float
    busy_s: float


def billed_accelerator_s(billing: str, usage: RegionUsage) -> float:
    """Accelerator-seconds billed in one region: THE billing rule of plan and run.

    ``hourly``: ``workers * wall_s`` (rented for the whole job, idle or not). ``per_second``:
    ``busy_s`` (serverless: only the computing seconds).
    """
    if billing == "per_second":
        return usage.busy_s
    if billing == "hourly":
        return usage.workers * usage.wall_s
    raise ValueError(f"unknown billing rule {billing!r}")


def storage_usd(config: RegionsConfig, region: str, nbytes: float, seconds: float) -> float:
    """Storing ``nbytes`` in ``region`` for ``seconds`` (GB-months prorated by the second)."""
    return transfer_usd(nbytes, config.storage_usd_per_gb_month(region)) * seconds / SECONDS_PER_MONTH


@dataclass(frozen=True, slots=True)
class GeoCost:
    """Cost split of one job (USD)."""

    compute_usd: float
    egress_usd: float
    storage_usd: float = 0.0

    @property
    def total_usd(self) -> float:
        """Compute plus egress plus storage."""
        return self.compute_usd + self.egress_usd + self.storage_usd


def geo_cost_usd(
    config: RegionsConfig,
    usage: Mapping[str, RegionUsage | float],
    link_bytes: Mapping[tuple[str, str], float],
    *,
    stored: Mapping[str, tuple[float, float]] | None = None,
) -> GeoCost:
    """Price accelerators per region, bytes per directed link and copies stored.

    Args:
        config: The regions file (accelerator ``usd_per_hour`` and ``billing``, egress prices).
        usage: Region name -> :class:`RegionUsage`, billed by :func:`billed_accelerator_s`. A bare
            number is taken as accelerator-seconds already billed (the older call shape).
        link_bytes: ``(src, dst)`` -> bytes sent from ``src`` to ``dst``, priced at what ``src``
            pays (per billed GB, 2^30 bytes).
        stored: Region name -> ``(bytes, seconds)`` of copies kept there.
    """
    compute = 0.0
    for name, use in usage.items():
        accel = config.region(name).accelerators
        seconds = use if isinstance(use, (int, float)) else billed_accelerator_s(accel.billing, use)
        compute += instance_usd(seconds, accel.usd_per_hour)
    egress = sum(transfer_usd(nbytes, config.egress_usd_per_gb(src, dst)) for (src, dst), nbytes in link_bytes.items() if src != dst)
    storage = sum(storage_usd(config, name, nbytes, seconds) for name, (nbytes, seconds) in (stored or {}).items())
    return GeoCost(compute_usd=compute, egress_usd=egress, storage_usd=storage)
