"""Peer loaders for side-by-side comparison, each run as its own documentation recommends.

Every peer runs the context's decode step in ``ctx.num_workers`` DataLoader worker processes (the
same pipeline and CPU budget as every delibench loader), unless an option says otherwise:

* ``s3torchconnector`` — AWS's connector, map-style: ``S3MapDataset`` (one GET per sample through
  its CRT client) under the context's order, exactly like its README's ``DistributedSampler``
  example. ``workers=N`` runs it with N DataLoader workers, which is what its users raise to hide
  the per-object round trip (the processes share the same cores: the CPU budget is the machine's).
* ``s3torchconnector-shards`` — its iterable style over the dataset's WebDataset tar shards:
  ``S3IterableDataset.from_objects(shards, enable_sharding=True)`` streamed through webdataset's
  ``tar_file_expander``/``group_by_keys``, as the project's own examples do for many small objects.
* ``webdataset`` — the recommended pipeline: per-epoch shard shuffle (``shardshuffle``), shards
  split by node (the context's rank) and by worker (``split_by_worker``), a sample shuffle buffer
  (``shuffle=1000``, the documented ``.shuffle(1000)``); ``shuffle=0`` is the plain
  ``WebDataset(urls)`` reading shards in order. Shards are opened through fsspec with the run's
  storage options.
* ``litdata`` — LitData's optimized format (chunks written by ``litdata.optimize`` from the same
  images, see :func:`write_litdata`) read by ``StreamingDataset(shuffle=True)`` +
  ``StreamingDataLoader``, chunks cached on local disk as LitData does.
* ``litdata-raw`` — ``StreamingRawDataset`` over the raw objects (no conversion), map-style,
  batches fetched concurrently by its own ``__getitems__`` under the context's order.
* ``mosaic-streaming`` — Mosaic ``StreamingDataset(remote=..., local=..., shuffle=True)`` over MDS
  shards written by ``MDSWriter`` from the same images (:func:`write_mds`).

Exactness. The map-style peers (``s3torchconnector``, ``litdata-raw``) follow the context's
``epoch_order`` exactly and pass the conformance kit. The streaming peers read shards/chunks in
their own order by design: each delivers every sample of the rank's share exactly once per epoch
(checked by ``tests/loaders/test_peers_best.py``), an epoch being one pass of their iterator;
``webdataset`` and ``s3torchconnector-shards`` split shards across ranks as ``split_by_node`` does,
LitData and Mosaic take the rank from ``torch.distributed``/torchrun themselves.

Converted formats live beside the dataset, ``<dataset_url>.litdata`` and ``<dataset_url>.mds``
(outside the ImageFolder root), written by :func:`convert_for_peers`. Install with
``pip install 'delibench[peers]'`` (Mosaic Streaming apart: see the README); without the package,
looking the loader up raises ImportError, which the registry turns into a usage error naming that
command.
"""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from delibench.errors import FetchError, UsageError
from delibench.loaders.base import Batch, LoaderContext
from delibench.loaders.bucket import WorkerFetchLoader
from delibench.loaders.pipeline import FetchBatchDataset, parse_options, percentiles
from delibench.loaders.source import FetchMeter, SampleSource, clean_cause
from delibench.records import LoaderStats

try:  # pragma: no cover - depends on the optional extra
    import s3torchconnector as _s3t
except ImportError:  # pragma: no cover
    _s3t = None
try:  # pragma: no cover
    import webdataset as _wds
except ImportError:  # pragma: no cover
    _wds = None
try:  # pragma: no cover
    import litdata as _litdata
except ImportError:  # pragma: no cover
    _litdata = None
try:  # pragma: no cover
    import streaming as _mosaic
except ImportError:  # pragma: no cover
    _mosaic = None

#: Where each converted copy lives, relative to the dataset URL (a sibling prefix).
LITDATA_SUFFIX = ".litdata"
MDS_SUFFIX = ".mds"

_NEEDS = {
    "S3TorchConnectorLoader": ("s3torchconnector", lambda: _s3t),
    "S3TorchShardsLoader": ("s3torchconnector and webdataset", lambda: _s3t and _wds),
    "WebDatasetLoader": ("webdataset", lambda: _wds),
    "LitDataLoader": ("litdata", lambda: _litdata),
    "LitDataRawLoader": ("litdata", lambda: _litdata),
    "MosaicStreamingLoader": ("mosaicml-streaming", lambda: _mosaic),
}


def __getattr__(name: str) -> Any:
    if name in _NEEDS and not _NEEDS[name][1]():
        raise ImportError(f"{_NEEDS[name][0]} is not installed")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _region(storage_options: dict[str, Any]) -> str:
    """The bucket's region as s3fs would use it: ``client_kwargs['region_name']``, then botocore's own
    configuration chain (``AWS_DEFAULT_REGION``, ``~/.aws/config``), then ``us-east-1``."""
    region = (storage_options.get("client_kwargs") or {}).get("region_name")
    if region:
        return str(region)
    import botocore.session

    return botocore.session.get_session().get_config_variable("region") or "us-east-1"


def _endpoint(storage_options: dict[str, Any]) -> str | None:
    return (storage_options.get("client_kwargs") or {}).get("endpoint_url")


def _boto_options(storage_options: dict[str, Any]) -> dict[str, Any]:
    """s3fs-style storage options as boto3 ``client(...)`` keywords (what LitData and Mosaic take)."""
    out: dict[str, Any] = {}
    if _endpoint(storage_options):
        out["endpoint_url"] = _endpoint(storage_options)
    region = (storage_options.get("client_kwargs") or {}).get("region_name")
    if region:
        out["region_name"] = region
    if storage_options.get("key"):
        out["aws_access_key_id"] = storage_options["key"]
    if storage_options.get("secret"):
        out["aws_secret_access_key"] = storage_options["secret"]
    if storage_options.get("token"):
        out["aws_session_token"] = storage_options["token"]
    return out


def _stem(key: str) -> str:
    return posixpath.splitext(posixpath.basename(key))[0]


def _shard_urls(ctx: LoaderContext, epoch: int, shuffle: bool) -> list[str]:
    """This rank's shard keys for ``epoch``: a seeded per-epoch permutation (``shardshuffle``), split
    across ranks as webdataset's ``split_by_node`` does (the rank comes from the context, as data)."""
    import numpy as np

    if not ctx.manifest.shards:
        raise UsageError("this dataset has no tar shards", hint="make it with 'delibench data make --layout both'")
    keys = [s.key for s in ctx.manifest.shards]
    order = np.random.default_rng([ctx.seed, epoch]).permutation(len(keys)) if shuffle else range(len(keys))
    return [keys[i] for i in order][ctx.rank :: ctx.world_size]


@dataclass(frozen=True)
class NoOptions:
    """Peers without options."""


@dataclass(frozen=True)
class S3MapOptions:
    """Options of ``s3torchconnector`` (map-style).

    Attributes:
        workers: DataLoader workers for this peer (None: the run's ``--num-workers``). Its users
            raise it to overlap more one-object-at-a-time GETs; the workers share the same cores.
    """

    workers: int | None = None

    def __post_init__(self) -> None:
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 0):
            raise UsageError(f"workers must be a whole number >= 0, got {self.workers!r}")


@dataclass(frozen=True)
class ShardStreamOptions:
    """Options of the tar-shard streaming peers (``webdataset``, ``s3torchconnector-shards``).

    Attributes:
        shuffle: Sample shuffle buffer per worker (webdataset's ``.shuffle(1000)``; 0 = none, the
            plain ``WebDataset(urls)``).
        shardshuffle: Shuffle the shard order every epoch (seeded by seed and epoch).
    """

    shuffle: int = 1000
    shardshuffle: bool = True

    def __post_init__(self) -> None:
        if not isinstance(self.shuffle, int) or self.shuffle < 0:
            raise UsageError(f"shuffle must be a whole number >= 0, got {self.shuffle!r}")


@dataclass(frozen=True)
class ConvertedOptions:
    """Options of the peers reading a converted copy (``litdata``, ``mosaic-streaming``).

    Attributes:
        path: URL of the converted copy (default: the dataset URL plus ``.litdata``/``.mds``).
        shuffle: The peer's own shuffle (on by default, as its docs train).
    """

    path: str | None = None
    shuffle: bool = True


class _S3TorchReader:
    """Reads samples with s3torchconnector's client, created lazily in each worker process."""

    def __init__(self, source: SampleSource) -> None:
        self.location = source.location
        self.manifest = source.manifest
        self._pid: int | None = None
        self._dataset: Any = None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_pid": None, "_dataset": None}

    def _map_dataset(self) -> Any:
        if self._pid != os.getpid():
            endpoint = _endpoint(self.location.storage_options)
            # s3fs's anon=True (anonymous access) is s3torchconnector's unsigned=True.
            config = _s3t.S3ClientConfig(force_path_style=bool(endpoint), unsigned=bool(self.location.storage_options.get("anon")))
            uris = [f"s3://{self.location.child(s.key)}" for s in self.manifest.samples]
            region = _region(self.location.storage_options)
            self._dataset = _s3t.S3MapDataset.from_objects(uris, region=region, endpoint=endpoint, s3client_config=config)
            self._pid = os.getpid()
        return self._dataset

    def __call__(self, indices: list[int]) -> tuple[list[bytes], FetchMeter]:
        dataset = self._map_dataset()
        meter = FetchMeter()
        out = []
        for index in indices:
            start = time.perf_counter()
            try:
                data = dataset[index].read()
            except Exception as exc:  # noqa: BLE001 - becomes a FetchError naming the key
                key = self.manifest.samples[index].key
                raise FetchError(key, f"s3://{self.location.child(key)}", clean_cause(exc)) from exc
            meter.record(len(data), time.perf_counter() - start)
            out.append(data)
        return out, meter


if _s3t is not None:  # pragma: no cover - needs the optional extra

    class S3TorchConnectorLoader(WorkerFetchLoader):
        """AWS s3torchconnector's map-style dataset, one GET per sample, in the same pipeline."""

        name: ClassVar[str] = "s3torchconnector"
        options_class: ClassVar[type] = S3MapOptions

        def __init__(self, ctx: LoaderContext, **options: Any) -> None:
            super().__init__(ctx, **options)
            if self.options.workers is not None:
                self.ctx = dataclasses.replace(self.ctx, num_workers=self.options.workers)

        def _check_context(self) -> None:
            if not self.ctx.dataset_url.startswith("s3://"):
                raise UsageError("the s3torchconnector loader reads s3:// datasets only")

        def _dataset(self) -> FetchBatchDataset:
            return FetchBatchDataset(self.source, self.ctx.decode, read=_S3TorchReader(self.source))


class _Stream:
    """Base of the streaming peers: one DataLoader per epoch over an iterable of
    ``(decoded, label, index, nbytes)`` items, batched and collated in the workers.

    Subclasses implement :meth:`_dataset` (the IterableDataset of one epoch) and may override
    :meth:`_dataloader` and :meth:`_requests`.
    """

    name: ClassVar[str] = ""
    options_class: ClassVar[type] = NoOptions

    def __init__(self, ctx: LoaderContext, **options: Any) -> None:
        self.ctx = ctx
        self.options = parse_options(self.options_class, self.name, options)
        if not ctx.dataset_url.startswith("s3://") and self.name != "webdataset":
            raise UsageError(f"the {self.name} loader reads s3:// datasets only")
        self.source = SampleSource(ctx.dataset_url, ctx.manifest, ctx.storage_options)
        self.meter = FetchMeter()
        self._closed = False
        self._scratch: Path | None = None
        self._setup()

    def _setup(self) -> None:
        """Per-loader preparation (hook)."""

    def scratch(self) -> Path:
        """A private local directory for the peer's cache, removed by :meth:`close`."""
        if self._scratch is None:
            self._scratch = Path(tempfile.mkdtemp(prefix=f"delibench-{self.name}-"))
        return self._scratch

    def _dataset(self, epoch: int) -> Any:
        raise NotImplementedError

    def _dataloader(self, dataset: Any) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(dataset, batch_size=self.ctx.batch_size, num_workers=self.ctx.num_workers)

    def _requests(self, epoch: int) -> int:
        """GETs of ``epoch`` (hook; called after the epoch)."""
        return 0

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch`` in the peer's own order."""
        import torch

        if self._closed:
            raise UsageError(f"the {self.name} loader is closed")
        it = iter(self._dataloader(self._dataset(epoch)))
        try:
            for inputs, labels, indices, sizes in it:
                self.meter.bytes_read += int(torch.as_tensor(sizes).sum())
                yield Batch(inputs, labels, indices)
        finally:
            shutdown = getattr(it, "_shutdown_workers", None)
            if shutdown is not None:
                shutdown()
            del it
        self.meter.requests_count += self._requests(epoch)

    def stats(self) -> LoaderStats:
        p50, p95, p99 = percentiles(self.meter.latencies_s)
        return LoaderStats(requests_count=self.meter.requests_count, bytes_read_remote=self.meter.bytes_read,
                           fetch_latency_s_p50=p50, fetch_latency_s_p95=p95, fetch_latency_s_p99=p99)

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            self.source.close()
            if self._scratch is not None:
                shutil.rmtree(self._scratch, ignore_errors=True)

    def __enter__(self) -> _Stream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _iterable(make: Callable[[], Iterator[Any]]) -> Any:
    """``make()`` as a torch IterableDataset (torch imported here, not at module import)."""
    from torch.utils.data import IterableDataset

    class _It(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[Any]:
            return make()

    return _It()


class _TarSamples:
    """Picklable: shard streams -> webdataset samples -> ``(decoded, label, index, nbytes)``.

    ``opener(key)`` yields ``{"url", "stream"}`` dicts for this worker's shards; webdataset's own
    ``tar_file_expander``/``group_by_keys`` turn them into samples and ``shuffle(n)`` buffers them.
    """

    def __init__(self, ctx: LoaderContext, shuffle: int) -> None:
        self.decode = ctx.decode
        self.labels = [s.label for s in ctx.manifest.samples]
        self.stems = {_stem(s.key): i for i, s in enumerate(ctx.manifest.samples)}
        self.shuffle = shuffle

    def samples(self, streams: Iterator[dict[str, Any]]) -> Iterator[tuple[Any, int, int, int]]:
        from webdataset import filters, tariterators

        samples = tariterators.group_by_keys(tariterators.tar_file_expander(streams))
        if self.shuffle:
            samples = filters._shuffle(samples, self.shuffle, min(self.shuffle, 100))
        for sample in samples:
            index = self.stems.get(posixpath.basename(sample["__key__"]))
            if index is None:
                continue
            data = next(v for k, v in sample.items() if not k.startswith("__") and k != "cls")
            label = self.labels[index]
            yield self.decode(data, label), label, index, len(data)


class _FsspecShards:
    """webdataset's ``split_by_worker`` + an fsspec opener (the run's storage options as data)."""

    def __init__(self, source: SampleSource, shards: list[str], tar: _TarSamples) -> None:
        self.source, self.shards, self.tar = source, shards, tar

    def __iter__(self) -> Iterator[tuple[Any, int, int, int]]:
        from webdataset import shardlists

        def streams() -> Iterator[dict[str, Any]]:
            for key in shardlists.split_by_worker(self.shards):
                with self.source.fs.open(self.source.location.child(key), "rb") as stream:
                    yield {"url": key, "stream": stream}

        return self.tar.samples(streams())


if _wds is not None:  # pragma: no cover - needs the optional extra

    class WebDatasetLoader(_Stream):
        """WebDataset's recommended pipeline over the dataset's tar shards (see the module doc)."""

        name: ClassVar[str] = "webdataset"
        options_class: ClassVar[type] = ShardStreamOptions

        def _setup(self) -> None:
            _shard_urls(self.ctx, 0, False)  # no shards: a usage error now, not in a worker

        def _dataset(self, epoch: int) -> Any:
            self._shards = _shard_urls(self.ctx, epoch, self.options.shardshuffle)
            stream = _FsspecShards(self.source, self._shards, _TarSamples(self.ctx, self.options.shuffle))
            return _iterable(stream.__iter__)

        def _requests(self, epoch: int) -> int:
            return len(self._shards)


class _S3TorchShards:
    """s3torchconnector's ``S3IterableDataset`` over shard URIs (``enable_sharding``: split across
    workers), expanded by webdataset's tar iterators, as the connector's examples do."""

    def __init__(self, location: Any, shards: list[str], tar: _TarSamples) -> None:
        self.location, self.shards, self.tar = location, shards, tar

    def __iter__(self) -> Iterator[tuple[Any, int, int, int]]:
        options = self.location.storage_options
        endpoint = _endpoint(options)
        config = _s3t.S3ClientConfig(force_path_style=bool(endpoint), unsigned=bool(options.get("anon")))
        dataset = _s3t.S3IterableDataset.from_objects(
            [f"s3://{self.location.child(k)}" for k in self.shards], region=_region(options), endpoint=endpoint,
            s3client_config=config, enable_sharding=True, transform=_shard_to_dict,
        )
        return self.tar.samples(iter(dataset))


def _shard_to_dict(reader: Any) -> dict[str, Any]:
    """The connector's example transform: an object reader as webdataset's ``{"url", "stream"}``."""
    return {"url": reader.key, "stream": reader}


if _s3t is not None and _wds is not None:  # pragma: no cover - needs the optional extra

    class S3TorchShardsLoader(_Stream):
        """s3torchconnector's iterable style over the tar shards (see the module doc)."""

        name: ClassVar[str] = "s3torchconnector-shards"
        options_class: ClassVar[type] = ShardStreamOptions

        def _setup(self) -> None:
            _shard_urls(self.ctx, 0, False)

        def _dataset(self, epoch: int) -> Any:
            self._shards = _shard_urls(self.ctx, epoch, self.options.shardshuffle)
            stream = _S3TorchShards(self.source.location, self._shards, _TarSamples(self.ctx, self.options.shuffle))
            return _iterable(stream.__iter__)

        def _requests(self, epoch: int) -> int:
            return len(self._shards)


def _litdata_allow_http(storage_options: dict[str, Any] | None) -> None:
    """Let LitData's obstore path reach a plain-http endpoint (the testbed; real S3 is https).

    LitData builds its obstore ``S3Store`` with module-level client options and offers no setting
    for obstore's ``allow_http``; against an ``http://`` endpoint every GET fails with "BadScheme".
    A user of an http S3-compatible store has to do the same.
    """
    endpoint = _endpoint(storage_options or {})
    if endpoint and endpoint.startswith("http://"):
        from litdata.streaming import downloader

        downloader._OBSTORE_CLIENT_OPTIONS["allow_http"] = True  # type: ignore[index]


def _converted_url(ctx: LoaderContext, path: str | None, suffix: str) -> str:
    return path or ctx.dataset_url.rstrip("/") + suffix


def _cached_files(root: Path, skip: tuple[str, ...]) -> int:
    """Files a peer downloaded into its local cache (index files and locks left out)."""
    return sum(1 for p in root.rglob("*") if p.is_file() and not p.name.endswith(skip))


class _DecodeItem:
    """Picklable transform: a converted record ``{"image", "label", "index"}`` -> the pipeline's item."""

    def __init__(self, decode: Any) -> None:
        self.decode = decode

    def __call__(self, item: dict[str, Any]) -> tuple[Any, int, int, int]:
        data, label, index = bytes(item["image"]), int(item["label"]), int(item["index"])
        return self.decode(data, label), label, index, len(data)


if _litdata is not None:  # pragma: no cover - needs the optional extra

    class LitDataLoader(_Stream):
        """LitData ``StreamingDataset`` + ``StreamingDataLoader`` over its optimized chunks."""

        name: ClassVar[str] = "litdata"
        options_class: ClassVar[type] = ConvertedOptions

        def _setup(self) -> None:
            self.url = _converted_url(self.ctx, self.options.path, LITDATA_SUFFIX)
            if not self.source.fs.exists(self.url.rstrip("/") + "/index.json"):
                raise UsageError(f"no LitData copy at {self.url}", hint="write it with delibench.loaders.peers.convert_for_peers")
            _litdata_allow_http(self.ctx.storage_options)
            # One StreamingDataset for all epochs: LitData counts epochs itself and keeps its chunk cache.
            self._ds = _litdata.StreamingDataset(
                self.url, cache_dir=str(self.scratch()), shuffle=self.options.shuffle, drop_last=False, seed=self.ctx.seed,
                storage_options=_boto_options(self.ctx.storage_options or {}), transform=_DecodeItem(self.ctx.decode),
            )

        def _dataset(self, epoch: int) -> Any:
            return self._ds

        def _dataloader(self, dataset: Any) -> Any:
            # One StreamingDataLoader for all epochs, as LitData trains: each iteration bumps its
            # epoch (from 1) and reshuffles; set so that the epoch number is the caller's.
            if getattr(self, "_dl", None) is None:
                self._dl = _litdata.StreamingDataLoader(dataset, batch_size=self.ctx.batch_size,
                                                        num_workers=self.ctx.num_workers)
            self._dl.current_epoch = self._epoch
            return self._dl

        def iter_epoch(self, epoch: int) -> Iterator[Batch]:
            self._epoch = epoch
            return super().iter_epoch(epoch)

        def _requests(self, epoch: int) -> int:
            return max(0, _cached_files(self.scratch(), (".json", ".lock", ".cnt")) - self.meter.requests_count)

    from litdata.raw.indexer import BaseIndexer as _BaseIndexer
    from litdata.raw.indexer import FileMetadata as _FileMetadata

    class ManifestIndexer(_BaseIndexer):  # type: ignore[misc]
        """The raw dataset's files from the manifest, in manifest order: keys and sizes are known,
        so no LIST and no index file written to the bucket (LitData's own indexer does both)."""

        def __init__(self, files: list[tuple[str, int]]) -> None:
            self.files = files

        def discover_files(self, input_dir: str, storage_options: dict[str, Any] | None) -> list[Any]:
            return [_FileMetadata(path=path, size=size) for path, size in self.files]

        def build_or_load_index(self, input_dir: str, cache_dir: str, storage_options: dict[str, Any] | None,
                                recompute_index: bool = False) -> list[Any]:
            return self.discover_files(input_dir, storage_options)

    class _RawReader:
        """Reads a batch through ``StreamingRawDataset.__getitems__`` (its own concurrent GETs)."""

        def __init__(self, dataset: Any) -> None:
            self.dataset = dataset

        def __call__(self, indices: list[int]) -> tuple[list[bytes], FetchMeter]:
            meter = FetchMeter()
            start = time.perf_counter()
            blobs = [bytes(b) for b in self.dataset.__getitems__(list(indices))]
            elapsed = time.perf_counter() - start
            for blob in blobs:
                meter.record(len(blob), elapsed)
            return blobs, meter

    class LitDataRawLoader(WorkerFetchLoader):
        """LitData ``StreamingRawDataset`` over the raw objects, map-style under the context's order."""

        name: ClassVar[str] = "litdata-raw"
        options_class: ClassVar[type] = NoOptions

        def _check_context(self) -> None:
            if not self.ctx.dataset_url.startswith("s3://"):
                raise UsageError("the litdata-raw loader reads s3:// datasets only")

        def _raw(self) -> Any:
            if getattr(self, "_raw_ds", None) is None:
                self._cache = tempfile.mkdtemp(prefix="delibench-litdata-raw-")
                _litdata_allow_http(self.ctx.storage_options)
                root = self.source.location.path.rstrip("/")
                files = [(f"s3://{self.source.location.child(s.key)}", s.size_bytes) for s in self.ctx.manifest.samples]
                self._raw_ds = _litdata.StreamingRawDataset(
                    f"s3://{root}/", cache_dir=self._cache, indexer=ManifestIndexer(files),
                    storage_options=_boto_options(self.ctx.storage_options or {}),
                )
            return self._raw_ds

        def _dataset(self) -> FetchBatchDataset:
            return FetchBatchDataset(self.source, self.ctx.decode, read=_RawReader(self._raw()))

        def close(self) -> None:
            super().close()
            if getattr(self, "_cache", None):
                shutil.rmtree(self._cache, ignore_errors=True)


if _mosaic is not None:  # pragma: no cover - needs the optional extra
    from streaming.base.storage.download import S3Downloader as _MosaicS3Downloader

    class DataS3Downloader(_MosaicS3Downloader):  # type: ignore[misc]
        """Mosaic's S3 downloader with its client built from the run's storage options.

        Mosaic takes its S3 endpoint only from ``S3_ENDPOINT_URL`` in the environment; below the CLI
        delibench passes configuration as data, so each stream's downloader is this subclass, which
        creates the same boto3 client (same retries and timeout) from the options instead.
        """

        def __init__(self, boto_options: dict[str, Any], unsigned: bool) -> None:
            super().__init__()
            self._boto_options = boto_options
            self._unsigned = unsigned

        def _create_s3_client(self, unsigned: bool = False, timeout: float = 60) -> Any:
            from boto3.session import Session
            from botocore import UNSIGNED
            from botocore.config import Config

            kwargs: dict[str, Any] = {"read_timeout": timeout, "retries": {"mode": "adaptive"}}
            if unsigned or self._unsigned:
                kwargs["signature_version"] = UNSIGNED
            self._s3_client = Session().client("s3", config=Config(**kwargs), **self._boto_options)

    class MosaicStreamingLoader(_Stream):
        """Mosaic ``StreamingDataset`` over MDS shards (see the module doc)."""

        name: ClassVar[str] = "mosaic-streaming"
        options_class: ClassVar[type] = ConvertedOptions

        def _setup(self) -> None:
            self.url = _converted_url(self.ctx, self.options.path, MDS_SUFFIX).rstrip("/")
            local = self.scratch() / "local"
            local.mkdir()
            index = self.url + "/index.json"
            if not self.source.fs.exists(index):
                raise UsageError(f"no MDS copy at {self.url}", hint="write it with delibench.loaders.peers.convert_for_peers")
            # The index through fsspec (Mosaic downloads it in this process, before a downloader
            # can be swapped in); a local index.json is what Mosaic reads when it is there.
            self.source.fs.get(index, str(local / "index.json"))
            from streaming import StreamingDataset

            options = self.ctx.storage_options or {}
            self._ds = StreamingDataset(remote=self.url, local=str(local), shuffle=self.options.shuffle,
                                        shuffle_seed=self.ctx.seed, batch_size=self.ctx.batch_size)
            for stream in self._ds.streams:
                stream._downloader = DataS3Downloader(_boto_options(options), bool(options.get("anon")))
            self._decode = _DecodeItem(self.ctx.decode)
            self._local = local

        def _dataset(self, epoch: int) -> Any:
            return _iterable(_MosaicEpoch(self._ds, self._decode).__iter__)

        def _requests(self, epoch: int) -> int:
            return max(0, _cached_files(self._local, (".json", ".lock", ".tmp")) - self.meter.requests_count)

        def close(self) -> None:
            if not self._closed:
                ds = getattr(self, "_ds", None)
                if ds is not None:
                    del self._ds  # releases its shared memory
                super().close()


class _MosaicEpoch:
    """Mosaic's dataset with the pipeline's decode applied to each record (in the worker)."""

    def __init__(self, dataset: Any, decode: _DecodeItem) -> None:
        self.dataset, self.decode = dataset, decode

    def __iter__(self) -> Iterator[tuple[Any, int, int, int]]:
        for item in self.dataset:
            yield self.decode(item)


def write_mds(manifest: Any, local_root: str | os.PathLike[str], out_dir: str | os.PathLike[str], shard_bytes: int) -> None:
    """Write the dataset's JPEG bytes (unchanged), labels and manifest indices as MDS shards.

    ``shard_bytes`` is Mosaic's ``size_limit``; :func:`convert_for_peers` sets it to the size of the
    dataset's tar shards so every format has the same number of objects per epoch.
    """
    from streaming import MDSWriter

    root = Path(local_root)
    columns = {"image": "bytes", "label": "int", "index": "int"}
    with MDSWriter(out=str(out_dir), columns=columns, size_limit=shard_bytes) as out:
        for i, s in enumerate(manifest.samples):
            out.write({"image": (root / s.key).read_bytes(), "label": int(s.label), "index": i})


def _litdata_record(item: tuple[str, int, int]) -> dict[str, Any]:
    path, label, index = item
    return {"image": Path(path).read_bytes(), "label": label, "index": index}


def write_litdata(manifest: Any, local_root: str | os.PathLike[str], out_dir: str | os.PathLike[str], chunk_bytes: int) -> None:
    """Write the dataset with ``litdata.optimize`` (raw JPEG bytes, label, index), ``chunk_bytes`` per chunk."""
    import litdata

    root = Path(local_root)
    inputs = [(str(root / s.key), int(s.label), i) for i, s in enumerate(manifest.samples)]
    litdata.optimize(fn=_litdata_record, inputs=inputs, output_dir=str(out_dir), chunk_bytes=chunk_bytes,
                     num_workers=1, mode="overwrite", verbose=False, start_method="fork")


def convert_for_peers(
    manifest: Any,
    local_root: str | os.PathLike[str],
    dataset_url: str,
    storage_options: dict[str, Any] | None = None,
    formats: tuple[str, ...] = ("litdata", "mds"),
    log: Callable[[str], None] = lambda _line: None,
) -> list[str]:
    """Write the LitData and MDS copies of a local dataset and upload them beside ``dataset_url``.

    The copies hold the same JPEG bytes (so every peer decodes the same images) in chunks the size
    of the dataset's tar shards (the mean shard, or an eighth of the dataset without shards).
    Formats whose package is missing are skipped. Returns the URLs written.
    """
    from delibench.storage import resolve

    total = sum(s.size_bytes for s in manifest.samples)
    shard_bytes = int(max(s.size_bytes for s in manifest.shards)) if manifest.shards else max(1, total // 8)
    shard_bytes = max(shard_bytes + 4096, 64 * 1024)
    written = []
    base = dataset_url.rstrip("/")
    location = resolve(base, storage_options)
    fs = location.filesystem()
    for fmt in formats:
        if (fmt == "litdata" and _litdata is None) or (fmt == "mds" and _mosaic is None):
            log(f"{fmt}: package not installed, skipped")
            continue
        url = base + (LITDATA_SUFFIX if fmt == "litdata" else MDS_SUFFIX)
        with tempfile.TemporaryDirectory(prefix=f"delibench-{fmt}-") as tmp:
            out = Path(tmp) / "out"
            (write_litdata if fmt == "litdata" else write_mds)(manifest, local_root, out, shard_bytes)
            target = resolve(url, storage_options).path
            if fs.exists(target):
                fs.rm(target, recursive=True)
            files = sorted(p for p in out.rglob("*") if p.is_file())
            for p in files:
                fs.put_file(str(p), f"{target}/{p.relative_to(out).as_posix()}")
            log(f"{fmt}: {len(files)} files -> {url}")
        written.append(url)
    return written


__all__ = sorted(
    name for name in ("S3TorchConnectorLoader", "S3TorchShardsLoader", "WebDatasetLoader", "LitDataLoader",
                      "LitDataRawLoader", "MosaicStreamingLoader") if name in globals()
) + ["LITDATA_SUFFIX", "MDS_SUFFIX", "convert_for_peers", "write_litdata", "write_mds"]
