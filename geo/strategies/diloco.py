"""DiLoCo: local inner steps, then an outer Nesterov SGD step on the pseudo-gradient averaged over all ranks."""

from __future__ import annotations

from typing import Any

import torch

from delibench.geo.strategies.averaging import PeriodicAverage
from delibench.geo.strategies.compression import Compression
from delibench.geo.strategies.flat import flatten, views_like
from delibench.geo.sync import GeoComm

__all__ = ["DiLoCo"]


class DiLoCo(PeriodicAverage):
    """DiLoCo: ``period`` inner steps, then an outer Nesterov SGD step on the averaged pseudo-gradient.

    ``opt = DiLoCo(torch.optim.AdamW(model.parameters(), lr=4e-4), model, outer_lr=0.7, momentum=0.9, period=500, group=comm)``;
    ``opt.step()`` after every backward. Every ``period`` steps: ``pseudo = params_before - params_after``
    averaged over all ranks (weighted by samples), then ``outer_optimizer`` (``torch.optim.SGD`` with
    Nesterov momentum) steps the outer parameters ``params_before`` with it and every rank continues
    from the result. The inner optimizer's state stays local across outer steps (as in DiLoCo).
    With ``outer_lr=1`` and ``momentum=0`` this is model averaging.

    Args: as :class:`ModelAveraging`, plus ``outer_lr``, ``momentum`` and ``nesterov`` of the outer SGD.
    """

    def __init__(
        self,
        inner_optimizer: torch.optim.Optimizer,
        params: Any,
        *,
        outer_lr: float = 0.7,
        momentum: float = 0.9,
        nesterov: bool = True,
        period: int = 500,
        group: GeoComm | None = None,
        compression: Compression | str | None = None,
        weighting: str = "samples",
        sync_initial: bool = True,
        average_region_gradients: bool = False,
    ) -> None:
        super().__init__(inner_optimizer, params, group, period=period, compression=compression, weighting=weighting, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.outer_params = [p.detach().clone() for p in self.params]
        self.outer_optimizer = torch.optim.SGD(self.outer_params, lr=outer_lr, momentum=momentum, nesterov=nesterov and momentum > 0)

    @torch.no_grad()
    def outer_step(self) -> None:
        """Average the pseudo-gradients and take the outer step now (collective)."""
        pseudo = flatten(self.outer_params) - flatten(self.params)
        self._average_(pseudo)
        for op, grad in zip(self.outer_params, views_like(pseudo, self.outer_params), strict=True):
            op.grad = grad.clone()
        self.outer_optimizer.step()
        for p, op in zip(self.params, self.outer_params, strict=True):
            p.data.copy_(op)

    _STATE_KEYS = (*PeriodicAverage._STATE_KEYS, "outer", "outer_params")

    def _own_state(self) -> dict[str, Any]:
        return {**super()._own_state(), "outer": self.outer_optimizer.state_dict(), "outer_params": [p.detach().clone() for p in self.outer_params]}

    def _check_own(self, state: dict[str, Any]) -> None:
        super()._check_own(state)
        outer, saved = state["outer"], state["outer_params"]
        groups = outer.get("param_groups") if isinstance(outer, dict) else None
        if not isinstance(groups, list) or "state" not in outer or [len(g.get("params", ())) for g in groups] != [len(self.outer_params)]:
            raise self._bad("corrupt state: 'outer' is not the outer SGD's state_dict()")
        if not isinstance(saved, list) or len(saved) != len(self.outer_params):
            raise self._bad(f"corrupt state: 'outer_params' is not a list of {len(self.outer_params)} tensors")
        for i, (op, value) in enumerate(zip(self.outer_params, saved, strict=True)):
            self._check_tensor(value, f"outer_params[{i}]", tuple(op.shape), op.dtype)

    def _load_own(self, state: dict[str, Any]) -> None:
        super()._load_own(state)
        self.outer_optimizer.load_state_dict(state["outer"])
        for op, saved in zip(self.outer_params, state["outer_params"], strict=True):
            op.data.copy_(saved)

    def _sync(self) -> None:
        self.outer_step()
