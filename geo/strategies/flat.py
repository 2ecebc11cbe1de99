"""The parameters a strategy steps, as one flat vector: what crosses regions is always one flat tensor.

Every exchange (an average, an update, a broadcast) sends the parameters, their gradients or a change
of them as one concatenated tensor; these helpers go from the parameter list to that vector and back.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch

from delibench.errors import UsageError

__all__ = ["flatten", "flatten_grads", "param_list", "views_like", "write_params_"]


def param_list(params: Any) -> list[torch.nn.Parameter]:
    """The parameters of a model (those that require gradients) or a given list of them, checked non-empty."""
    if isinstance(params, torch.nn.Module):
        params = params.parameters()
    out = [p for p in params if p.requires_grad] if not isinstance(params, list) else list(params)
    if not out:
        raise UsageError("a geo strategy needs at least one parameter")
    return out


def flatten(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One new tensor holding every parameter's values, in order."""
    return torch.cat([p.detach().reshape(-1) for p in params])


def flatten_grads(params: Sequence[torch.Tensor]) -> torch.Tensor:
    """One new tensor holding every parameter's gradient, in order."""
    return torch.cat([p.grad.reshape(-1) for p in params])


def views_like(flat: torch.Tensor, tensors: Sequence[torch.Tensor]) -> Iterator[torch.Tensor]:
    """The consecutive slices of ``flat``, each viewed in the shape of the matching one of ``tensors``."""
    offset = 0
    for t in tensors:
        n = t.numel()
        yield flat[offset : offset + n].view_as(t)
        offset += n


def write_params_(params: Sequence[torch.Tensor], flat: torch.Tensor) -> None:
    """Copy ``flat`` (as :func:`flatten` lays it out) into the parameters."""
    for p, view in zip(params, views_like(flat, params), strict=True):
        p.data.copy_(view)
