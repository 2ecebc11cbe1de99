"""What ``geo run`` trains: the synthetic MLP (fast tests) or a real task, a small CNN on JPEG images read through deli.

``cnn-jpeg`` is the project's synthetic JPEG dataset (:func:`delibench.workloads.datagen.make_dataset`
with ``preset="cifar"``, 10 classes: each class has its own base colour and stripe angle and
frequency over shared textures, so classes differ in their pixels and a CNN can learn them) with a
small two-layer CNN (:func:`cnn_model`). Each region's shard lives in a bucket of its own; a
region's workers read the shards the run assigns to it (:class:`DataSource`: the shard's home
region, the reading region, its URL and the storage options that reach it, as data) through the
deli loader, each region's shard partitioned over that region's workers (rank within the region,
workers of the region: the ``DistributedSampler`` order deli gives, over the region's ranks, not the
whole job's). A read of a shard stored in another region crosses that link: the bytes each
``(home, reader)`` pair fetched are counted and priced with :func:`delibench.geo.cost.geo_cost_usd`
(the sender, the shard's home, pays). Accuracy is measured on a held-out split (another seed of the
same generator, every class) that rank 0 evaluates every ``eval_every`` steps.

Strategies ``geo run`` trains with (:func:`make_run_strategy`): the public wrappers of
:mod:`delibench.geo.strategies` (``allreduce``, ``ma``, ``asgd-ga``, ``diloco``), plus two
deliberately broken controls for tests and the benchmark: ``no-exchange`` (every region trains
alone; nothing crosses regions) and ``asgd-ga-wrong-sign`` (ASGD-GA that applies the other regions'
updates with the wrong sign).
"""

from __future__ import annotations

import concurrent.futures
import io
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from delibench.errors import UsageError

__all__ = [
    "ABLATIONS",
    "IMAGE_SIZE",
    "RUN_STRATEGIES",
    "TASKS",
    "DataSource",
    "HeldOut",
    "LOSS_TOLERANCE",
    "RegionBatches",
    "cnn_model",
    "check_sources",
    "cnn_transform",
    "copy_dataset",
    "evaluate",
    "load_held_out",
    "RegionShards",
    "make_region_shards",
    "make_run_strategy",
    "sources_from_regions",
    "matches_reference",
]

#: Tasks ``geo run --task`` trains.
TASKS = ("mlp", "cnn-jpeg")

#: Side of the images the CNN sees (the transform resizes to it).
IMAGE_SIZE = 16

#: Broken on purpose: controls showing that a tolerance on validation loss catches a wrong strategy.
ABLATIONS = ("no-exchange", "asgd-ga-wrong-sign")

#: Every strategy ``geo run`` accepts.
RUN_STRATEGIES = ("allreduce", "asgd-ga", "ma", "diloco", *ABLATIONS)

_MEAN, _STD = 0.5, 0.25


@dataclass(frozen=True)
class DataSource:
    """One shard a region's workers read.

    Attributes:
        shard: Shard name.
        home: Region whose bucket holds it.
        reader: Region whose workers read it.
        url: Dataset root (with a delibench manifest): ``s3://``, ``gs://`` or a local path.
        storage_options: fsspec options that reach ``url`` from ``reader`` (endpoint through the
            right link, dummy or real credentials), as data.
    """

    shard: str
    home: str
    reader: str
    url: str
    storage_options: Mapping[str, Any] = field(default_factory=dict, compare=False)

    def public(self) -> dict[str, str]:
        """What a result may show (no storage options: they may carry credentials)."""
        return {"shard": self.shard, "home": self.home, "reader": self.reader, "url": self.url}


def cnn_transform() -> Any:
    """RGB PIL image -> normalised ``3 x IMAGE_SIZE x IMAGE_SIZE`` float tensor (picklable)."""
    from torchvision import transforms

    return transforms.Compose(
        [transforms.Resize((IMAGE_SIZE, IMAGE_SIZE)), transforms.ToTensor(), transforms.Normalize([_MEAN] * 3, [_STD] * 3)]
    )


def cnn_model(classes: int = 10, seed: int = 0) -> Any:
    """Two conv + pool layers and a linear head (3,962 parameters at 10 classes); seeded, so every rank starts equal."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    side = IMAGE_SIZE // 4
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, classes),
    )


@dataclass
class HeldOut:
    """A held-out split decoded once: inputs ``N x 3 x S x S`` and labels."""

    inputs: Any
    labels: Any

    def __len__(self) -> int:
        return int(self.labels.numel())


def load_held_out(url: str, storage_options: Mapping[str, Any] | None = None, *, limit: int | None = None) -> HeldOut:
    """Read and decode every sample of the dataset at ``url`` (its manifest's order) with :func:`cnn_transform`."""
    import torch
    from PIL import Image

    from delibench.manifest import read_manifest
    from delibench.storage import resolve

    opts = dict(storage_options or {})
    manifest = read_manifest(url, opts)
    loc = resolve(url, opts)
    fs = loc.filesystem()
    transform = cnn_transform()
    samples = manifest.samples[:limit] if limit else manifest.samples
    blobs = fs.cat([loc.child(s.key) for s in samples])
    xs = [transform(Image.open(io.BytesIO(blobs[loc.child(s.key)])).convert("RGB")) for s in samples]
    return HeldOut(torch.stack(xs), torch.tensor([s.label for s in samples]))


def evaluate(model: Any, held_out: HeldOut, *, batch: int = 512) -> tuple[float, float]:
    """``(mean cross-entropy, accuracy)`` of ``model`` on ``held_out``."""
    import torch
    import torch.nn.functional as F

    loss = correct = 0.0
    with torch.no_grad():
        for i in range(0, len(held_out), batch):
            x, y = held_out.inputs[i : i + batch], held_out.labels[i : i + batch]
            logits = model(x)
            loss += float(F.cross_entropy(logits, y, reduction="sum"))
            correct += float((logits.argmax(dim=1) == y).sum())
    n = max(1, len(held_out))
    return loss / n, correct / n


class RegionBatches:
    """Endless ``(inputs, labels)`` batches for one rank from the shards its region reads, through deli.

    Each shard is a deli loader partitioned over the region's workers (``rank`` = the rank's index in
    its region, ``world`` = the region's workers); batches alternate over the shards, each shard
    epoch after epoch. ``bytes_by_pair`` is what each ``(home, reader)`` pair fetched;
    ``state_dict``/``load_state_dict`` carry the loaders' positions through a checkpoint.
    """

    def __init__(self, sources: list[DataSource], rank: int, world: int, *, batch_size: int, seed: int = 0, cache_size: int | str | None = None) -> None:
        if not sources:
            raise UsageError("cnn-jpeg: this region reads no shard", hint="give every region with workers a data source")
        from delibench.geo.planner import READER_CACHE_BYTES  # the cache the planner assumes a stream reader has
        from delibench.loaders.api import DeliIterable
        from delibench.loaders.base import LoaderContext
        from delibench.loaders.decode import ImageDecoder
        from delibench.loaders.deli import DeliLoader
        from delibench.manifest import read_manifest

        self.sources = sources
        self.loaders: list[Any] = []
        for i, src in enumerate(sources):
            opts = dict(src.storage_options)
            # NOTE: deli_loader() takes rank and world from torch.distributed (the whole job, every
            # region); a shard is partitioned over its region's workers only, so the context is
            # built here as deli_loader builds it, with the region's rank and world. Decoding runs
            # in this process (num_workers=0): geo workers are daemonic and may not fork.
            ctx = LoaderContext(
                dataset_url=src.url,
                manifest=read_manifest(src.url, opts),
                decode=ImageDecoder(cnn_transform()),
                batch_size=batch_size,
                num_workers=0,
                seed=seed + i,
                rank=rank,
                world_size=world,
                drop_last=True,
                storage_options=opts,
            )
            self.loaders.append(DeliIterable(DeliLoader(ctx, cache_size=cache_size if cache_size is not None else READER_CACHE_BYTES), ctx))
        self._iters: list[Iterator[Any] | None] = [None] * len(self.loaders)
        self._next = 0
        self.wait_s = 0.0

    def _batch_of(self, i: int) -> Any:
        for _ in range(2):
            it = self._iters[i]
            if it is None:
                it = self._iters[i] = iter(self.loaders[i])
            try:
                return next(it)
            except StopIteration:
                self._iters[i] = None
        raise UsageError(f"cnn-jpeg: shard {self.sources[i].shard!r} has fewer samples per worker than one batch")

    def next(self) -> tuple[Any, Any]:
        """The next batch (its wait is added to ``wait_s``)."""
        t0 = time.perf_counter()
        i = self._next
        self._next = (i + 1) % len(self.loaders)
        x, y = self._batch_of(i)
        self.wait_s += time.perf_counter() - t0
        return x, y

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint keeps: every shard loader's position (deli's state) and whose batch is next."""
        return {"version": 1, "next": self._next, "loaders": [loader.state_dict() for loader in self.loaders]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Resume from :meth:`state_dict`: each shard's next batches are the rest of its interrupted epoch.

        Raises:
            UsageError: A state for another number of shards (deli refuses one for another shard).
        """
        if state.get("version") != 1 or len(state.get("loaders", ())) != len(self.loaders):
            raise UsageError("cnn-jpeg: the data state does not match this run's shards")
        for loader, sub in zip(self.loaders, state["loaders"]):
            loader.load_state_dict(sub)
        self._iters = [None] * len(self.loaders)
        self._next = int(state["next"]) % len(self.loaders)

    def bytes_by_pair(self) -> dict[str, int]:
        """``"home->reader"`` -> bytes fetched from storage (every shard, local ones included)."""
        out: dict[str, int] = {}
        for src, loader in zip(self.sources, self.loaders):
            key = f"{src.home}->{src.reader}"
            out[key] = out.get(key, 0) + int(loader.stats().bytes_read_remote)
        return out

    def close(self) -> None:
        for loader in self.loaders:
            loader.close()


class _NoExchange:
    """Control: every region trains alone (gradients averaged inside the region only; nothing crosses)."""

    @staticmethod
    def build(comm: Any, params: list[Any], sgd: Any) -> Any:
        from delibench.geo.strategies.base import GeoOptimizer

        class NoExchange(GeoOptimizer):
            def step(self, closure: Any = None) -> Any:  # type: ignore[override]
                return self._inner_step(closure)

        return NoExchange(sgd, params, comm, sync_initial=False, average_region_gradients=True)


def _wrong_sign(comm: Any, params: list[Any], sgd: Any, accum: int, staleness: int | None) -> Any:
    """Control: ASGD-GA applying the other regions' updates with the wrong sign."""
    from delibench.geo.strategies import AsyncGradientAccumulation

    class WrongSign(AsyncGradientAccumulation):
        def _incoming(self, need: Any, upto: Any) -> Any:
            return -super()._incoming(need, upto)  # the bug: start + incoming instead of start - incoming

    return WrongSign(sgd, params, accum=accum, max_staleness=staleness, group=comm, sync_initial=False, average_region_gradients=True)


def make_run_strategy(
    name: str,
    comm: Any,
    params: list[Any],
    lr: float,
    *,
    period: int = 8,
    accum: int = 4,
    staleness: int | None = 1,
    momentum: float = 0.0,
    outer_lr: float = 0.7,
    outer_momentum: float = 0.9,
) -> Any:
    """The optimizer a ``geo run`` worker trains with: SGD (``momentum`` kept local) in the named strategy.

    ``staleness=None`` (``asgd-ga``): never wait. ``diloco``: inner SGD for ``period`` steps, outer
    Nesterov SGD (``outer_lr``, ``outer_momentum``) on the averaged pseudo-gradient.
    """
    import torch

    from delibench.geo.strategies import AllReduceGradients, AsyncGradientAccumulation, DiLoCo, ModelAveraging

    sgd = torch.optim.SGD(params, lr=lr, momentum=momentum)
    if name == "allreduce":
        return AllReduceGradients(sgd, params, group=comm, sync_initial=False)
    if name == "ma":
        return ModelAveraging(sgd, params, period=period, group=comm, weighting="uniform", sync_initial=False, average_region_gradients=True)
    if name == "asgd-ga":
        return AsyncGradientAccumulation(sgd, params, accum=accum, max_staleness=staleness, group=comm, sync_initial=False, average_region_gradients=True)
    if name == "diloco":
        return DiLoCo(
            sgd, params, outer_lr=outer_lr, momentum=outer_momentum, period=period, group=comm,
            weighting="uniform", sync_initial=False, average_region_gradients=True,
        )
    if name == "no-exchange":
        return _NoExchange.build(comm, params, sgd)
    if name == "asgd-ga-wrong-sign":
        return _wrong_sign(comm, params, sgd, accum, staleness)
    raise UsageError(f"unknown sync strategy {name!r}", hint=f"choose one of {', '.join(RUN_STRATEGIES)}")


@dataclass(frozen=True)
class RegionShards:
    """Local copies of the ``cnn-jpeg`` data: one shard directory per region and the held-out split.

    Attributes:
        shards: Region -> local dataset root (manifest + images) of the shard stored there.
        held_out: Local dataset root of the held-out split (every class).
        classes_of: Region -> the classes its shard holds most of.
        samples: Region -> samples in its shard.
        sample_bytes: Mean bytes per image over every shard.
    """

    shards: dict[str, str]
    held_out: str
    classes_of: dict[str, tuple[int, ...]]
    samples: dict[str, int]
    sample_bytes: int

    def local_sources(self, reading: Mapping[str, str] | None = None) -> tuple[DataSource, ...]:
        """Sources reading the local copies (each shard read at home unless ``reading`` names its reader)."""
        reading = reading or {}
        return tuple(DataSource(f"{r}-shard", r, reading.get(r, r), path) for r, path in self.shards.items())


def make_region_shards(
    root: str | Any,
    regions: tuple[str, ...] | list[str],
    *,
    samples_per_region: int = 400,
    held_out: int = 300,
    classes: int = 10,
    skew: float = 1.0,
    seed: int = 0,
) -> RegionShards:
    """Generate the ``cnn-jpeg`` images once and split them into one shard per region (reused if present).

    Region ``i`` of ``R`` owns the classes ``c`` with ``c * R // classes == i`` (a block of
    classes: regional data differs by region, as data gathered where it is stored does); each image
    goes to the region owning its class with probability ``skew`` and to a uniformly drawn region
    otherwise (``skew=1``: disjoint classes, so no region can learn every class alone). The
    held-out split is generated with another seed and holds every class equally.
    """
    import os
    import random
    import shutil
    from dataclasses import replace
    from pathlib import Path

    from delibench.manifest import MANIFEST_NAME, read_manifest, write_manifest
    from delibench.workloads.datagen import make_dataset

    if not 0 <= skew <= 1:
        raise UsageError(f"skew must lie in [0, 1], got {skew}")
    base = Path(root)
    regions = tuple(regions)
    n = len(regions)
    pool_dir, val_dir = base / "pool", base / "held-out"
    size = (IMAGE_SIZE, IMAGE_SIZE)
    if not (pool_dir / MANIFEST_NAME).exists():
        make_dataset(pool_dir, samples=samples_per_region * n, classes=classes, preset="cifar", image_size=size, seed=seed, workers=1, overwrite=True)
    if not (val_dir / MANIFEST_NAME).exists():
        make_dataset(val_dir, samples=held_out, classes=classes, preset="cifar", image_size=size, seed=seed + 1_000_003, workers=1, overwrite=True)
    pool = read_manifest(str(pool_dir))
    rng = random.Random(seed)
    owner = {c: c * n // classes for c in range(classes)}
    assigned: dict[int, list[Any]] = {i: [] for i in range(n)}
    for s in pool.samples:
        i = owner[s.label] if rng.random() < skew else rng.randrange(n)
        assigned[i].append(s)
    shards: dict[str, str] = {}
    for i, region in enumerate(regions):
        out = base / f"shard-{region}"
        if not (out / MANIFEST_NAME).exists():
            if out.exists():
                shutil.rmtree(out)
            for s in assigned[i]:
                dst = out / s.key
                dst.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(pool_dir / s.key, dst)
                except OSError:
                    shutil.copyfile(pool_dir / s.key, dst)
            write_manifest(replace(pool, samples=tuple(assigned[i]), shards=()), str(out))
        shards[region] = str(out)
    total = sum(s.size_bytes for s in pool.samples)
    return RegionShards(
        shards=shards,
        held_out=str(val_dir),
        classes_of={r: tuple(c for c in range(classes) if owner[c] == i) for i, r in enumerate(regions)},
        samples={r: len(assigned[i]) for i, r in enumerate(regions)},
        sample_bytes=max(1, round(total / max(1, len(pool.samples)))),
    )


#: How close (relative) a strategy's final held-out loss must come to synchronous DDP's to count
#: as reaching the same loss; the broken controls (:data:`ABLATIONS`) must miss it.
LOSS_TOLERANCE = 0.25


def matches_reference(val_loss: float, reference_loss: float, tolerance: float = LOSS_TOLERANCE) -> bool:
    """``val_loss`` within ``tolerance`` (relative) of ``reference_loss`` (NaN or infinite: never)."""
    import math

    if not (math.isfinite(val_loss) and math.isfinite(reference_loss)):
        return False
    return abs(val_loss - reference_loss) <= tolerance * reference_loss


def sources_from_regions(config: Any, regions: tuple[str, ...] | list[str], storage_options: Mapping[str, Any] | None = None) -> tuple[DataSource, ...]:
    """Each region reads its own ``data_url`` from the regions file (what ``geo run --task cnn-jpeg`` trains on).

    Raises:
        UsageError: A region with workers has no ``data_url``.
    """
    out = []
    for name in regions:
        url = config.region(name).data_url
        if not url:
            raise UsageError(f"--task cnn-jpeg: region {name} has no data_url in {config.source}", hint="give each region the URL of its shard (a dataset with a delibench manifest)")
        out.append(DataSource(f"{name}-shard", name, name, url, dict(storage_options or {})))
    return tuple(out)


def copy_dataset(
    src_url: str, src_options: Mapping[str, Any] | None, dst_url: str, dst_options: Mapping[str, Any] | None, *, concurrency: int | None = None
) -> int:
    """Copy a dataset (every sample its manifest lists, then the manifest) from ``src_url`` to ``dst_url``; the sample bytes copied.

    A plan's ``copy`` mode: the shard crosses the link once, into a bucket of the reading region.
    Small objects are latency-bound, so the reads go through deli's sample source: one GET per
    object (the manifest knows every size: no HEAD first), ``concurrency`` in flight (default the
    planner's :data:`~delibench.geo.planner.COPY_CONCURRENCY`, which its copy time assumes), with
    its retries; each object is written into the reader's bucket as soon as it arrives, so the
    writes overlap the other reads.
    """
    from dataclasses import replace

    from delibench.geo.planner import COPY_CONCURRENCY
    from delibench.loaders.source import SampleSource
    from delibench.manifest import read_manifest, write_manifest
    from delibench.storage import resolve

    n = COPY_CONCURRENCY if concurrency is None else concurrency
    if n < 1:
        raise UsageError(f"copy concurrency must be >= 1, got {n}")
    src_opts, dst_opts = dict(src_options or {}), dict(dst_options or {})
    manifest = read_manifest(src_url, src_opts)
    source = SampleSource(src_url, manifest, src_opts, io_threads=n, members=False)
    dst = resolve(dst_url, dst_opts)
    fs = dst.filesystem()

    def one(index: int) -> int:  # read across, then write at once: the writes overlap the other reads
        blob = source.fetch_sync(index)
        fs.pipe_file(dst.child(manifest.samples[index].key), blob)
        return len(blob)

    try:
        with concurrent.futures.ThreadPoolExecutor(max_workers=n, thread_name_prefix="geo-copy") as pool:
            nbytes = sum(pool.map(one, range(len(manifest.samples))))
    finally:
        source.close()
    write_manifest(replace(manifest), dst_url, dst_opts)
    return nbytes


def check_sources(sources: tuple[DataSource, ...] | list[DataSource], val_url: str | None, val_options: Mapping[str, Any] | None = None) -> None:
    """Read every source's manifest and the held-out split's before a run starts, so a wrong URL fails in one line.

    Raises:
        UsageError: No dataset (manifest) at a URL, or no held-out split given.
        RuntimeFailure: A store that cannot be reached or read (the message names the region).
    """
    from delibench.errors import DelibenchError, RuntimeFailure
    from delibench.manifest import read_manifest

    if not val_url:
        raise UsageError("--task cnn-jpeg needs a held-out split (--val-url URL)", hint="a dataset with a delibench manifest; or use --testbed, which makes one")
    checks = [(f"shard {s.shard} (stored in {s.home}, read in {s.reader})", s.url, s.storage_options) for s in sources]
    for where, url, opts in [*checks, ("the held-out split (--val-url)", val_url, val_options)]:
        try:
            read_manifest(url, dict(opts or {}))
        except DelibenchError as exc:
            kind = UsageError if isinstance(exc, UsageError) else RuntimeFailure
            raise kind(f"{where}: {exc.message}", hint=exc.hint) from None
