"""geo: regions, the WAN-emulating communicator, sync strategies for your own DDP loop, the planner.

The strategies are exported lazily (importing ``delibench.geo`` does not import torch)::

    from delibench.geo import AsyncGradientAccumulation, DiLoCo, GeoComm, ModelAveraging
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "AllReduceGradients",
    "AsyncGradientAccumulation",
    "Compression",
    "DiLoCo",
    "GeoComm",
    "ModelAveraging",
    "Topology",
]

_LAZY = {
    "AllReduceGradients": "delibench.geo.strategies",
    "AsyncGradientAccumulation": "delibench.geo.strategies",
    "Compression": "delibench.geo.strategies",
    "DiLoCo": "delibench.geo.strategies",
    "ModelAveraging": "delibench.geo.strategies",
    "GeoComm": "delibench.geo.sync",
    "Topology": "delibench.geo.sync",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
