"""Building loaders by name, and the three-line ``deli_loader`` API for users' own training scripts."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from delibench.loaders.base import Decoder, Loader, LoaderContext
from delibench.loaders.decode import ImageDecoder
from delibench.records import LoaderSpec

__all__ = ["DeliIterable", "ImageDecoder", "build_loader", "deli_loader"]


def build_loader(spec: LoaderSpec, ctx: LoaderContext) -> Loader:
    """Build the loader ``spec.kind`` (a name in ``delibench.plugins.loaders``) with ``spec.options``.

    Raises:
        UsageError: Unknown loader (with a did-you-mean hint), a peer that is not installed, or a
            bad option.
    """
    from delibench.plugins import loaders

    cls = loaders.get(spec.kind)
    return cls(ctx, **dict(spec.options))


def _distributed_rank_world() -> tuple[int, int]:
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch always ships it
        return 0, 1
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class DeliIterable:
    """Iterate ``for inputs, labels in loader`` epoch after epoch over a DELI loader.

    Each ``iter()`` runs the next epoch (or the one set with :meth:`set_epoch`).
    """

    def __init__(self, loader: Any, ctx: LoaderContext) -> None:
        self.loader = loader
        self.ctx = ctx
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next ``iter()`` runs (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    def __len__(self) -> int:
        from delibench.loaders.sampler import rank_sample_count

        n = rank_sample_count(len(self.ctx.manifest), self.ctx.world_size, self.ctx.drop_last)
        return -(-n // self.ctx.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        for batch in self.loader.iter_epoch(epoch):
            yield batch.inputs, batch.labels

    def stats(self) -> Any:
        """The loader's cumulative :class:`delibench.records.LoaderStats`."""
        return self.loader.stats()

    def close(self) -> None:
        """Stop prefetching and free the cache; idempotent."""
        self.loader.close()

    def __enter__(self) -> DeliIterable:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def deli_loader(
    url: str,
    transform: Callable[[Any], Any] | None = None,
    *,
    batch_size: int = 64,
    cache_size: int | str | None = None,
    num_workers: int = 2,
    decode: Decoder | None = None,
    seed: int = 0,
    order: str = "shuffle",
    drop_last: bool = False,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> DeliIterable:
    """A cached-prefetch loader over the dataset at ``url`` (which holds a delibench manifest).

    Example::

        from delibench.loaders import deli_loader
        loader = deli_loader("s3://bucket/imgs", transform=my_transform, batch_size=64, cache_size="8GiB")
        for epoch in range(3):
            for inputs, labels in loader: ...

    Rank and world size come from ``torch.distributed`` when it is initialised.

    Args:
        url: Dataset root (``s3://``, ``gs://``, local path).
        transform: Applied to each decoded RGB PIL image (ignored when ``decode`` is given).
        batch_size: Samples per batch.
        cache_size: Memory cache budget, a hard limit: bytes or a size string (``"8GiB"``), parsed
            like every loader option by :func:`~delibench.loaders.pipeline.parse_options`. None:
            1 GiB, unless ``cache_items=...`` (a sample count) is given among ``options``.
        num_workers: Decode worker processes.
        decode: Custom ``(bytes, label) -> item``; default decodes images.
        seed: Shuffle seed.
        order: ``shuffle`` or ``locality``.
        drop_last: Truncate to equal per-rank counts instead of padding.
        storage_options: fsspec options (endpoint, credentials), passed as data; None: the cloud
            client's own configuration chain.
        **options: More :class:`delibench.loaders.deli.DeliOptions` (``prefetch_depth``,
            ``concurrency``, ``eviction``, ``cache_items``, ``fetch_size``/``fetch_threshold``,
            ``cache_tier``, ``retry_deadline_s="60s"``, ...).

    Raises:
        UsageError: No manifest at ``url`` or bad options.
    """
    from delibench.loaders.deli import DeliLoader
    from delibench.manifest import read_manifest

    rank, world = _distributed_rank_world()
    manifest = read_manifest(url, storage_options)
    ctx = LoaderContext(
        dataset_url=url,
        manifest=manifest,
        decode=decode or ImageDecoder(transform),
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        rank=rank,
        world_size=world,
        drop_last=drop_last,
        storage_options=storage_options,
        order=order,
    )
    if cache_size is not None:
        options["cache_size"] = cache_size
    return DeliIterable(DeliLoader(ctx, **options), ctx)
