"""Model averaging (local SGD): every ``period`` steps, what each rank did is averaged, weighted by samples.

:class:`PeriodicAverage` is the part :class:`ModelAveraging` and :class:`~delibench.geo.strategies.diloco.DiLoCo`
share: the period, the sample weights, the compressed weighted sum and their checkpoint fields.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from delibench.errors import UsageError
from delibench.geo.strategies.base import GeoOptimizer
from delibench.geo.strategies.compression import Compression, exchange_sum_
from delibench.geo.strategies.flat import flatten, views_like, write_params_
from delibench.geo.sync import GeoComm

__all__ = ["ModelAveraging", "PeriodicAverage"]


class PeriodicAverage(GeoOptimizer):
    """A weighted average over all ranks of what each did since the last sync, every ``period`` steps."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, group: GeoComm | None, *, period: int, compression: Any, weighting: str, sync_initial: bool, average_region_gradients: bool) -> None:
        if period < 1:
            raise UsageError(f"period must be >= 1, got {period}")
        if weighting not in ("samples", "uniform"):
            raise UsageError(f"weighting must be 'samples' or 'uniform', got {weighting!r}")
        super().__init__(optimizer, params, group, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.period, self.weighting = period, weighting
        self.compression = Compression.of(compression)
        self.steps = 0
        self.syncs = 0
        self._samples = 0.0

    _STATE_KEYS = ("steps", "syncs", "samples", "compression")

    def _own_state(self) -> dict[str, Any]:
        return {"steps": self.steps, "syncs": self.syncs, "samples": self._samples, "compression": self.compression.state_dict()}

    def _check_own(self, state: dict[str, Any]) -> None:
        for key in ("steps", "syncs"):
            if not isinstance(state[key], int) or state[key] < 0:
                raise self._bad(f"corrupt state: {key!r} is {state[key]!r}")
        if not isinstance(state["samples"], (int, float)):
            raise self._bad(f"corrupt state: 'samples' is {state['samples']!r}")
        problem = self.compression.check_state(state["compression"])
        if problem:
            raise self._bad(problem)

    def _load_own(self, state: dict[str, Any]) -> None:
        self.steps, self.syncs, self._samples = int(state["steps"]), int(state["syncs"]), float(state["samples"])
        self.compression.load_state_dict(state["compression"])

    def step(self, closure: Callable[[], Any] | None = None, *, samples: float | None = None) -> Any:  # type: ignore[override]
        """One local step; every ``period``-th also syncs (collective). ``samples``: this step's batch, the weight (default 1)."""
        loss = self._inner_step(closure)
        self.steps += 1
        self._samples += 1.0 if samples is None else float(samples)
        if self.steps % self.period == 0:
            self._sync()
        return loss

    def finish(self) -> None:
        """Sync once more unless the last step just did, so that every rank ends with the same parameters."""
        if self.steps % self.period:
            self._sync()

    def _sync(self) -> None:
        """What every ``period`` steps does: :meth:`ModelAveraging.average` or :meth:`DiLoCo.outer_step`."""
        raise NotImplementedError

    def _weight(self) -> float:
        """This rank's share of the samples processed by all ranks since the last sync (collective when weighting by samples)."""
        if self.weighting == "uniform":
            return 1.0 / self.comm.topology.world_size
        total = torch.tensor([self._samples], dtype=torch.float64)
        self.comm.all_sum_(total)
        return self._samples / float(total)

    def _average_(self, payload: torch.Tensor) -> torch.Tensor:
        """Weighted sum over all ranks of ``payload`` (each rank's own value times its weight), in place."""
        payload.mul_(self._weight())
        exchange_sum_(self.comm, payload, self.compression, self._shapes)
        self._samples = 0.0
        self.syncs += 1
        return payload


class ModelAveraging(PeriodicAverage):
    """Local SGD with model averaging every ``period`` steps (MA), weighted by samples processed.

    Use it like PyTorch's ``PostLocalSGDOptimizer`` + ``PeriodicModelAverager``::

        opt = ModelAveraging(torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9), model, period=8, group=comm)
        for x, y in loader:
            opt.zero_grad(); loss_fn(model(x), y).backward(); opt.step(samples=len(x))
        opt.finish()

    What is averaged is each rank's change since the last average (so compression only rounds the
    change). With ``period=1``, plain SGD and equal samples this is exactly what DDP computes.

    Args:
        optimizer: The inner (local) optimizer.
        params: The model or its parameters (the ones ``optimizer`` steps).
        period: Average after every ``period`` steps (H).
        group: The :class:`GeoComm`; default: every rank a region of its own.
        compression: ``None``/``"fp16"``/``"bf16"``/``"powersgd"`` or a :class:`Compression`.
        weighting: ``samples`` (each rank weighted by the samples its ``step(samples=...)`` calls
            declared since the last average, 1 per step by default; one tiny extra all-reduce per
            average) or ``uniform`` (every rank alike, no extra exchange: the same when all batches
            are equal).
        optimizer_state: At every average: ``local`` (keep each rank's momentum/Adam state, as
            PyTorch's post-local SGD does), ``average`` (average its floating-point tensors too,
            with the same weights) or ``reset`` (clear it).
        sync_initial: Broadcast rank 0's parameters at construction.
        average_region_gradients: Average gradients over the region's ranks before each local
            step (for a model that is not wrapped in DDP over ``group.region_group``).
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        params: Any,
        *,
        period: int = 8,
        group: GeoComm | None = None,
        compression: Compression | str | None = None,
        weighting: str = "samples",
        optimizer_state: str = "local",
        sync_initial: bool = True,
        average_region_gradients: bool = False,
    ) -> None:
        if optimizer_state not in ("local", "average", "reset"):
            raise UsageError(f"optimizer_state must be local, average or reset, got {optimizer_state!r}")
        super().__init__(optimizer, params, group, period=period, compression=compression, weighting=weighting, sync_initial=sync_initial, average_region_gradients=average_region_gradients)
        self.optimizer_state = optimizer_state
        self._anchor = flatten(self.params).clone()

    _STATE_KEYS = (*PeriodicAverage._STATE_KEYS, "anchor")

    def _own_state(self) -> dict[str, Any]:
        return {**super()._own_state(), "anchor": self._anchor.clone()}

    def _check_own(self, state: dict[str, Any]) -> None:
        super()._check_own(state)
        self._check_tensor(state["anchor"], "anchor", (self.numel,), self._anchor.dtype)

    def _load_own(self, state: dict[str, Any]) -> None:
        super()._load_own(state)
        self._anchor = state["anchor"].clone()

    def _state_tensors(self) -> list[torch.Tensor]:
        out = []
        for p in self.params:
            for key, value in sorted(self.optim.state.get(p, {}).items()):
                if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() == p.numel() and key != "step":
                    out.append(value)
        return out

    @torch.no_grad()
    def average(self) -> None:
        """Average now (collective: every rank must call it at the same point)."""
        state = self._state_tensors() if self.optimizer_state == "average" else []
        delta = flatten(self.params) - self._anchor
        payload = torch.cat([delta] + [s.reshape(-1).to(delta.dtype) for s in state]) if state else delta
        self._average_(payload)
        new = self._anchor + payload[: self.numel]
        write_params_(self.params, new)
        self._anchor = new
        for s, averaged in zip(state, views_like(payload[self.numel :], state), strict=True):
            s.copy_(averaged)
        if self.optimizer_state == "reset":
            self.optim.state.clear()

    def _sync(self) -> None:
        self.average()
