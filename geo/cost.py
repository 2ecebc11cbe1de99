"""Dollar cost of geo-distributed work: accelerator time at regional prices plus cross-region egress."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from delibench.geo.regions import RegionsConfig

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

    NOTE: this is the one place where geo multiplies prices (``geo run`` bills every worker for the
    job's wall time; the planner bills the accelerator-seconds each region is busy). It does not use
    ``delibench.reports.cost`` because that prices a single-region run from a price sheet; the
    regions file carries the prices here.

    Args:
        config: The regions file (accelerator ``usd_per_hour``, link ``egress_usd_per_gb``).
        accelerator_s: Region name -> accelerator-seconds billed there.
        link_bytes: ``(src, dst)`` -> bytes sent from ``src`` to ``dst`` (GB = 1e9 bytes).
    """
    compute = sum(config.region(name).accelerators.usd_per_hour * seconds / 3600.0 for name, seconds in accelerator_s.items())
    egress = sum(config.link(src, dst).egress_usd_per_gb * nbytes / 1e9 for (src, dst), nbytes in link_bytes.items() if src != dst)
    return GeoCost(compute_usd=compute, egress_usd=egress)
