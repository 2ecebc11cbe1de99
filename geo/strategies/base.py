"""What every geo strategy shares: wrapping the user's optimizer, the checkpoint format, the first broadcast.

:class:`GeoOptimizer` is the base of the public strategies (and of the task's controls in
:mod:`delibench.geo.task`): it stands in for the wrapped optimizer (``param_groups``, ``state``,
``zero_grad``), gives every rank rank 0's parameters at construction, averages gradients inside a
region when the model is not wrapped in DDP, and checks and loads the ``state_dict()`` every
strategy saves in the same envelope (:data:`STATE_VERSION`, class name, shapes, inner optimizer).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist

from delibench.errors import UsageError
from delibench.geo.strategies.flat import flatten, flatten_grads, param_list, views_like, write_params_
from delibench.geo.sync import GeoComm

__all__ = ["GeoOptimizer", "STATE_VERSION"]

#: The version of the dicts the strategies' ``state_dict()`` returns (``load_state_dict`` refuses others).
STATE_VERSION = 1


class GeoOptimizer(torch.optim.Optimizer):
    """Shared plumbing: wraps ``optimizer`` (its ``param_groups`` and ``state`` are the wrapper's, as in ``PostLocalSGDOptimizer``)."""

    def __init__(self, optimizer: torch.optim.Optimizer, params: Any, group: GeoComm | None, *, sync_initial: bool, average_region_gradients: bool) -> None:
        # NOTE: Optimizer.__init__ is not called on purpose: the wrapper owns no parameters of its own.
        self.optim = optimizer
        self.param_groups = optimizer.param_groups
        self.defaults = optimizer.defaults
        self.params = param_list(params)
        self.comm = group if group is not None else GeoComm.per_rank()
        self.average_region_gradients = average_region_gradients
        self._shapes = [p.shape for p in self.params]
        self.numel = sum(p.numel() for p in self.params)
        if sync_initial:
            self._broadcast_initial()

    @property
    def state(self) -> Any:  # type: ignore[override]
        return self.optim.state

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.optim!r})"

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.optim.zero_grad(set_to_none=set_to_none)

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        raise UsageError(f"{type(self).__name__}: add parameter groups to the inner optimizer before wrapping it")

    #: The strategy's own keys in its state (besides the common ones and the inner optimizer's).
    _STATE_KEYS: tuple[str, ...] = ()

    def state_dict(self) -> dict[str, Any]:
        """This rank's state, to ``torch.save`` beside the model's ``state_dict()`` at a checkpoint.

        A plain dict (tensors, numbers, strings, lists; ``torch.load(..., weights_only=True)`` reads
        it): ``version`` (:data:`STATE_VERSION`), ``strategy`` (the class name), ``shapes`` (of the
        parameters it steps), ``optim`` (the wrapped optimizer's ``state_dict()``, momentum and Adam
        moments included) and the strategy's own fields (counters, anchors, outer optimizer,
        compression state). The parameters themselves are the model's: save ``model.state_dict()``.
        """
        state: dict[str, Any] = {
            "version": STATE_VERSION,
            "strategy": type(self).__name__,
            "shapes": [list(shape) for shape in self._shapes],
            "optim": self.optim.state_dict(),
        }
        state.update(self._own_state())
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict` (this rank's own; the same strategy on the same model).

        Build the model, the optimizer and the strategy as for a fresh run, then load the model's
        parameters and this state: construction broadcasts rank 0's parameters (``sync_initial``),
        so load the model after it. Nothing is changed unless the whole state is valid.

        Raises:
            UsageError: Not a strategy state, another strategy's or another version's, or one for
                parameters of other shapes (the message names which).
        """
        self._check_state(state_dict)
        self._load_state(state_dict)

    def _own_state(self) -> dict[str, Any]:
        return {}

    def _check_own(self, state: dict[str, Any]) -> None:
        """Raise :meth:`_bad`'s error when the strategy's own fields do not fit (mutates nothing)."""

    def _load_own(self, state: dict[str, Any]) -> None:
        """Restore the strategy's own fields (``state`` already checked)."""

    def _check_tensor(self, value: Any, key: str, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        if not isinstance(value, torch.Tensor) or tuple(value.shape) != tuple(shape) or value.dtype != dtype:
            raise self._bad(f"corrupt state: {key!r} is not a {dtype} tensor of shape {tuple(shape)}")

    def _bad(self, problem: str) -> UsageError:
        return UsageError(f"{type(self).__name__}.load_state_dict: {problem}", hint="load the state_dict() this strategy saved, built on the same model")

    def _check_state(self, state: Any) -> None:
        name = type(self).__name__
        if not isinstance(state, dict):
            raise self._bad(f"expected the dict state_dict() returns, got {type(state).__name__}")
        if "version" not in state or "strategy" not in state:
            raise self._bad("not a geo strategy state (no 'version' or 'strategy' key)")
        version = state["version"]
        if version != STATE_VERSION:
            newer = isinstance(version, int) and version > STATE_VERSION
            raise self._bad(f"state version {version!r} {'is newer than' if newer else 'is not'} the version this delibench reads ({STATE_VERSION})")
        if state["strategy"] != name:
            raise self._bad(f"the state is {state['strategy']}'s, not {name}'s")
        missing = [key for key in ("shapes", "optim", *self._STATE_KEYS) if key not in state]
        if missing:
            raise self._bad(f"corrupt state: no {', '.join(repr(k) for k in missing)}")
        shapes = [list(shape) for shape in self._shapes]
        if state["shapes"] != shapes:
            saved = state["shapes"]
            count = sum(int(torch.Size(s).numel()) for s in saved) if isinstance(saved, list) and all(isinstance(s, list) for s in saved) else "?"
            raise self._bad(f"the state is for {len(saved) if isinstance(saved, list) else '?'} parameter tensors of {count} elements, this strategy steps {len(shapes)} of {self.numel}")
        optim = state["optim"]
        groups = optim.get("param_groups") if isinstance(optim, dict) else None
        if not isinstance(groups, list) or "state" not in optim or not all(isinstance(g, dict) and isinstance(g.get("params"), list) for g in groups):
            raise self._bad("corrupt state: 'optim' is not an optimizer state_dict()")
        if [len(g["params"]) for g in groups] != [len(g["params"]) for g in self.optim.param_groups]:
            raise self._bad(f"the inner optimizer's parameter groups differ ({[len(g['params']) for g in groups]} parameters saved, {[len(g['params']) for g in self.optim.param_groups]} here)")
        self._check_own(state)

    def _load_state(self, state: dict[str, Any]) -> None:
        try:
            self.optim.load_state_dict(state["optim"])
        except (ValueError, KeyError, TypeError) as exc:  # checked above; what torch still refuses
            raise self._bad(f"the inner optimizer refused its state: {exc}".replace("\n", " ")) from exc
        self._load_own(state)

    @torch.no_grad()
    def _broadcast_initial(self) -> None:
        """Give every rank rank 0's parameters (what DDP does at construction); metered across regions."""
        comm = self.comm
        flat = flatten(self.params)
        if comm.cross_region and comm.is_leader:
            t0 = time.perf_counter()
            leaders = comm.topology.leaders
            dist.broadcast(flat, src=leaders[0], group=comm.leaders_group)
            if comm.region_index == 0:
                for name in comm.topology.regions[1:]:
                    comm.meter_link_(name, flat.numel() * flat.element_size())
            comm.ledger.sync_s += time.perf_counter() - t0
        comm.region_broadcast_(flat)
        write_params_(self.params, flat)

    @torch.no_grad()
    def _average_gradients_(self, sum_: Callable[[torch.Tensor], None], ranks: int) -> None:
        """Replace every gradient by its mean over ``ranks`` ranks, summed in one flat tensor by ``sum_``."""
        grads = flatten_grads(self.params)
        sum_(grads)
        grads.div_(ranks)
        for p, mean in zip(self.params, views_like(grads, self.params), strict=True):
            p.grad.copy_(mean)

    @torch.no_grad()
    def _inner_step(self, closure: Callable[[], Any] | None) -> Any:
        if self.average_region_gradients and len(self.comm.region_ranks) > 1:
            self._average_gradients_(self.comm.region_sum_, len(self.comm.region_ranks))
        if closure is None:
            return self.optim.step()
        with torch.enable_grad():
            return self.optim.step(closure)

    def finish(self) -> None:
        """Synchronise whatever is pending so that every rank holds the same parameters."""
