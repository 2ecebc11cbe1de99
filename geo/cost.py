"""Dollar cost of geo-distributed work: accelerator time at regional prices plus cross-region egress.

Prices are applied with the cost model's unit-price functions (:func:`delibench.reports.cost.instance_usd`
and :func:`~delibench.reports.cost.transfer_usd`), so a link's ``egress_usd_per_gb`` is per billed GB
(:data:`delibench.units.BYTES_PER_BILLED_GB` = 2^30 bytes), exactly as the report's egress prices are.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from delibench.geo.regions import RegionsConfig
from delibench.reports.cost import instance_usd, transfer_usd

__all__ = ["GeoCost", "geo_cost_usd"]


@dataclass(frozen=True, slots=True)
class GeoCost:
    """Cost split of one job (USD)."""

    compute_usd: float
    egress_usd: float

    @property
    def total_usd(self) -> float:
        """Compute plus egress."""
        return self.compute_usd + self.egress_usd


def geo_cost_usd(
    config: RegionsConfig,
    accelerator_s: Mapping[str, float],
    link_bytes: Mapping[tuple[str, str], float],
) -> GeoCost:
    """Price accelerator-seconds per region and bytes per directed link.

    NOTE: ``geo run`` bills every worker for the job's wall time; the planner bills the
    accelerator-seconds each region is busy. The prices come from the regions file (not a price
    sheet), but the arithmetic is the report's (:mod:`delibench.reports.cost`): one billing rule.

    Args:
        config: The regions file (accelerator ``usd_per_hour``, link ``egress_usd_per_gb``).
        accelerator_s: Region name -> accelerator-seconds billed there.
        link_bytes: ``(src, dst)`` -> bytes sent from ``src`` to ``dst`` (priced per billed GB, 2^30 bytes).
    """
    compute = sum(instance_usd(seconds, config.region(name).accelerators.usd_per_hour) for name, seconds in accelerator_s.items())
    egress = sum(transfer_usd(nbytes, config.link(src, dst).egress_usd_per_gb) for (src, dst), nbytes in link_bytes.items() if src != dst)
    return GeoCost(compute_usd=compute, egress_usd=egress)
