"""Loaders: the bucket, disk, fsspec-cache and memory baselines and the DELI cached-prefetch loader.

``build_loader(spec, ctx)`` builds any registered loader; ``deli_loader(url, ...)`` is the
three-line API for a user's own training script.
"""

from __future__ import annotations

from delibench.loaders.api import DeliIterable, ImageDecoder, build_loader, deli_loader, keys_manifest
from delibench.loaders.base import Batch, Decoder, Loader, LoaderContext

__all__ = [
    "Batch",
    "Decoder",
    "DeliIterable",
    "ImageDecoder",
    "Loader",
    "LoaderContext",
    "build_loader",
    "deli_loader",
    "keys_manifest",
]
