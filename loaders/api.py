"""Building loaders by name, and the three-line ``deli_loader`` API for users' own training scripts."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

from delibench.errors import UsageError
from delibench.loaders.base import Decoder, Loader, LoaderContext
from delibench.loaders.decode import ImageDecoder
from delibench.records import LoaderSpec

__all__ = ["DeliIterable", "ImageDecoder", "build_loader", "deli_loader", "keys_manifest"]


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


def _pin(value: Any) -> Any:
    """``value`` with its tensors in page-locked memory (tuples, lists and dicts walked), as
    ``DataLoader(pin_memory=True)`` delivers them."""
    if hasattr(value, "pin_memory"):
        return value.pin_memory()
    if isinstance(value, tuple):
        return type(value)(*(_pin(v) for v in value)) if hasattr(value, "_fields") else tuple(_pin(v) for v in value)
    if isinstance(value, list):
        return [_pin(v) for v in value]
    if isinstance(value, dict):
        return {k: _pin(v) for k, v in value.items()}
    return value


def _can_pin() -> bool:
    import torch

    return torch.cuda.is_available()


class DeliIterable:
    """Iterate ``for inputs, labels in loader`` epoch after epoch over a DELI loader.

    Each ``iter()`` runs the next epoch (or the one set with :meth:`set_epoch`, or the one a
    loaded state resumes). Resumable in torchdata's ``StatefulDataLoader`` way: save
    :meth:`state_dict` with the model's checkpoint, and after a restart :meth:`load_state_dict`
    makes the next ``iter()`` deliver the rest of the interrupted epoch, each sample exactly
    once and in the order of an uninterrupted run (see
    :meth:`delibench.loaders.deli.DeliLoader.state_dict` for the dict and what must match).
    """

    def __init__(self, loader: Any, ctx: LoaderContext, *, pin_memory: bool = False) -> None:
        self.loader = loader
        self.ctx = ctx
        self.epoch = 0
        #: Pin batches only where there is an accelerator to copy them to (DataLoader warns and skips).
        self.pin_memory = pin_memory and _can_pin()
        self._started = False  # an epoch was iterated: the loader's own position is the state
        self._loaded = False  # a state was loaded and not iterated yet: it is the state

    def set_epoch(self, epoch: int) -> None:
        """Choose the epoch the next ``iter()`` runs (as ``DistributedSampler.set_epoch``)."""
        self.epoch = epoch

    @property
    def classes(self) -> tuple[str, ...]:
        """Class names, label ``i`` being ``classes[i]`` (sorted folder names for an ImageFolder tree,
        as torchvision's ``ImageFolder.classes``)."""
        return tuple(self.ctx.manifest.classes)

    def state_dict(self) -> dict[str, Any]:
        """The loader state to checkpoint (a versioned plain dict): the epoch and the samples of
        it already delivered. Taken inside the loop body, it counts the batch just received."""
        state = self.loader.state_dict()
        if not self._started and not self._loaded:
            state.update(epoch=self.epoch, samples_yielded=0, batches_yielded=0)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from a :meth:`state_dict`: the next ``iter()`` runs the rest of its epoch.

        Raises:
            UsageError: A corrupt state or one that does not match this loader (one line naming
                the field), or a mid-epoch state at another world size.
        """
        self.loader.load_state_dict(state)
        self.epoch = self.loader.state_dict()["epoch"]
        self._started, self._loaded = False, True

    def __len__(self) -> int:
        from delibench.loaders.sampler import rank_sample_count

        n = rank_sample_count(len(self.ctx.manifest), self.ctx.world_size, self.ctx.drop_last)
        return -(-n // self.ctx.batch_size)

    def __iter__(self) -> Iterator[tuple[Any, Any]]:
        epoch, self.epoch = self.epoch, self.epoch + 1
        self._started, self._loaded = True, False
        for batch in self.loader.iter_epoch(epoch):
            if self.pin_memory:
                yield _pin(batch.inputs), _pin(batch.labels)
            else:
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


def keys_manifest(
    url: str,
    keys: Sequence[str],
    labels: Sequence[int] | None = None,
    storage_options: dict[str, Any] | None = None,
) -> Any:
    """An in-memory manifest of the objects ``keys`` (relative to ``url``) with their ``labels``,
    for a user's own Dataset whose items are objects: one listing of ``url`` gives the sizes.

    Nothing is written and nothing is read but the listing, so there are no checksums: fetched
    bytes are checked for their size only (a manifest written by ``delibench data index`` also
    checks their sha256).

    Raises:
        UsageError: No keys, labels of another length or negative, or a key not found under ``url``.
    """
    from delibench.manifest import Manifest, SampleEntry
    from delibench.storage import resolve

    keys = [str(k).lstrip("/") for k in keys]
    if not keys:
        raise UsageError("keys= lists no objects")
    labels = [0] * len(keys) if labels is None else [int(v) for v in labels]
    if len(labels) != len(keys):
        raise UsageError(f"labels= has {len(labels)} entries for {len(keys)} keys", hint="one label per key")
    if min(labels) < 0:
        raise UsageError(f"labels must be >= 0, got {min(labels)}")
    loc = resolve(url, storage_options)
    fs = loc.filesystem()
    root = loc.path.rstrip("/")
    try:
        found = fs.find(root, detail=True)
    except FileNotFoundError:
        found = {}
    sizes = {}
    for path, meta in found.items():
        path = "/" + path.lstrip("/") if loc.protocol == "memory" else path
        if path.startswith(root + "/"):
            sizes[path[len(root) + 1 :]] = int(meta.get("size") or 0)
    missing = [k for k in keys if k not in sizes]
    if missing:
        raise UsageError(f"{len(missing)} of {len(keys)} keys not found under {loc.display_url}, e.g. {missing[0]!r}",
                         hint="keys are paths relative to the URL given to deli_loader")
    samples = tuple(SampleEntry(key=k, size_bytes=sizes[k], label=v, sha256="") for k, v in zip(keys, labels))
    return Manifest(samples=samples, classes=tuple(str(c) for c in range(max(labels) + 1)), source="listed")


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
    pin_memory: bool = False,
    keys: Sequence[str] | None = None,
    labels: Sequence[int] | None = None,
    storage_options: dict[str, Any] | None = None,
    **options: Any,
) -> DeliIterable:
    """A cached-prefetch loader over the dataset at ``url`` (which holds a delibench manifest,
    or whose objects ``keys=`` lists).

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
        decode: Custom ``(bytes, label) -> item`` (a picklable, module-level function: it runs in
            the decode workers); your own Dataset's ``__getitem__`` after its read. Default
            decodes images to RGB PIL and applies ``transform``.
        seed: Shuffle seed.
        order: ``shuffle`` (``DistributedSampler(shuffle=True, seed=seed)``'s order, padding
            included) or ``locality``.
        drop_last: Truncate to equal per-rank counts instead of padding.
        pin_memory: Deliver batches in page-locked memory, as ``DataLoader(pin_memory=True)``
            (for ``.to("cuda", non_blocking=True)``); nothing where CUDA is not available.
        keys: Instead of a manifest at ``url``: the objects (paths relative to ``url``) of your
            own dataset, in your Dataset's index order (see :func:`keys_manifest`).
        labels: With ``keys``: each key's integer label (default 0).
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
    if keys is not None:
        manifest = keys_manifest(url, keys, labels, storage_options)
    elif labels is not None:
        raise UsageError("labels= goes with keys=", hint="a dataset with a manifest carries its own labels")
    else:
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
    return DeliIterable(DeliLoader(ctx, **options), ctx, pin_memory=pin_memory)
