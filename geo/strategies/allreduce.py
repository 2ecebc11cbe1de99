"""The synchronous baseline: gradients averaged over every rank (through the metered WAN) before each step."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from delibench.geo.strategies.base import GeoOptimizer
from delibench.geo.sync import GeoComm

__all__ = ["AllReduceGradients"]


class AllReduceGradients(GeoOptimizer):
    """Synchronous data parallelism through the metered WAN: gradients averaged over all ranks before every step.

    What DDP over all ranks computes (the baseline the other strategies are measured against).
    """

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, *, group: GeoComm | None = None, sync_initial: bool = True) -> None:
        super().__init__(optimizer, params, group, sync_initial=sync_initial, average_region_gradients=False)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:  # type: ignore[override]
        if closure is not None:
            with torch.enable_grad():
                closure()
        self._average_gradients_(self.comm.all_sum_, self.comm.topology.world_size)
        return self.optim.step()
