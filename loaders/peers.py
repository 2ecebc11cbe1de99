"""Peer loaders for side-by-side comparison, defined only when their packages import.

``s3torchconnector`` (AWS's connector, one GET per sample through its CRT client) and
``webdataset`` (sequential reads of tar shards). Install with ``pip install 'delibench[peers]'``;
without the package, looking the loader up raises ImportError, which the registry turns into a
usage error naming that command.
"""

from __future__ import annotations

import os
import posixpath
import time
from collections.abc import Iterator
from dataclasses import dataclass
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



def __getattr__(name: str) -> Any:
    if name == "S3TorchConnectorLoader" and _s3t is None:
        raise ImportError("s3torchconnector is not installed")
    if name == "WebDatasetLoader" and _wds is None:
        raise ImportError("webdataset is not installed")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _region(storage_options: dict[str, Any]) -> str:
    """The bucket's region as s3fs would use it: ``client_kwargs['region_name']``, then botocore's own
    configuration chain (``AWS_DEFAULT_REGION``, ``~/.aws/config``), then ``us-east-1``."""
    region = (storage_options.get("client_kwargs") or {}).get("region_name")
    if region:
        return str(region)
    import botocore.session

    return botocore.session.get_session().get_config_variable("region") or "us-east-1"


@dataclass(frozen=True)
class NoOptions:
    """Peers are run as their users run them: no options."""


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
            endpoint = (self.location.storage_options.get("client_kwargs") or {}).get("endpoint_url")
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
        options_class: ClassVar[type] = NoOptions

        def _check_context(self) -> None:
            if not self.ctx.dataset_url.startswith("s3://"):
                raise UsageError("the s3torchconnector loader reads s3:// datasets only")

        def _dataset(self) -> FetchBatchDataset:
            return FetchBatchDataset(self.source, self.ctx.decode, read=_S3TorchReader(self.source))


class _ShardStream:
    """Iterable over tar shards: each worker streams its share of this epoch's shards.

    Wrapped in a ``torch.utils.data.IterableDataset`` (:func:`_iterable`) before it reaches the
    DataLoader, which otherwise treats it as a map-style dataset and asks for its length.
    """

    def __init__(self, source: SampleSource, shards: list[str], decode: Any, stems: dict[str, int]) -> None:
        self.source = source
        self.shards = shards
        self.decode = decode
        self.stems = stems

    def __iter__(self) -> Iterator[tuple[Any, int, int, int]]:
        import torch.utils.data as tud
        from webdataset.tariterators import tar_file_iterator

        info = tud.get_worker_info()
        mine = self.shards if info is None else self.shards[info.id :: info.num_workers]
        fs = self.source.fs
        for key in mine:
            with fs.open(self.source.location.child(key), "rb") as stream:
                for member in tar_file_iterator(stream):
                    stem, ext = posixpath.splitext(member["fname"])
                    if ext == ".cls" or stem not in self.stems:
                        continue
                    index = self.stems[stem]
                    label = self.source.manifest.samples[index].label
                    yield self.decode(member["data"], label), label, index, len(member["data"])


def _iterable(stream: _ShardStream) -> Any:
    """``stream`` as an IterableDataset (torch imported here, not at module import)."""
    from torch.utils.data import IterableDataset

    class _Stream(IterableDataset):  # type: ignore[type-arg]
        def __iter__(self) -> Iterator[tuple[Any, int, int, int]]:
            return iter(stream)

    return _Stream()


if _wds is not None:  # pragma: no cover - needs the optional extra

    class WebDatasetLoader:
        """Streams the dataset's WebDataset tar shards (sequential reads, shard-level shuffle).

        Each rank reads a seeded, per-epoch permutation of the shards split across ranks; samples
        keep the order inside each shard, so this loader does not follow ``epoch_order`` (and is not
        run against the exact-order conformance test).
        """

        name: ClassVar[str] = "webdataset"

        def __init__(self, ctx: LoaderContext, **options: Any) -> None:
            self.ctx = ctx
            self.options = parse_options(NoOptions, self.name, options)
            if not ctx.manifest.shards:
                raise UsageError("this dataset has no tar shards", hint="make it with 'delibench data make --layout both'")
            self.source = SampleSource(ctx.dataset_url, ctx.manifest, ctx.storage_options)
            self.meter = FetchMeter()
            self._closed = False

        def iter_epoch(self, epoch: int) -> Iterator[Batch]:
            import numpy as np
            import torch
            from torch.utils.data import DataLoader

            if self._closed:
                raise UsageError("the webdataset loader is closed")
            keys = [s.key for s in self.ctx.manifest.shards]
            order = np.random.default_rng([self.ctx.seed, epoch]).permutation(len(keys))
            mine = [keys[i] for i in order[self.ctx.rank :: self.ctx.world_size]]
            stems = {posixpath.splitext(posixpath.basename(s.key))[0]: i for i, s in enumerate(self.ctx.manifest.samples)}
            stream = _ShardStream(self.source, mine, self.ctx.decode, stems)
            loader = DataLoader(_iterable(stream), batch_size=self.ctx.batch_size, num_workers=self.ctx.num_workers)  # type: ignore[arg-type]
            it = iter(loader)
            try:
                for inputs, labels, indices, sizes in it:
                    self.meter.bytes_read += int(torch.as_tensor(sizes).sum())
                    yield Batch(inputs, labels, indices)
            finally:
                shutdown = getattr(it, "_shutdown_workers", None)
                if shutdown is not None:
                    shutdown()
            self.meter.requests_count += len(mine)

        def stats(self) -> LoaderStats:
            p50, p95, p99 = percentiles(self.meter.latencies_s)
            return LoaderStats(requests_count=self.meter.requests_count, bytes_read_remote=self.meter.bytes_read,
                               fetch_latency_s_p50=p50, fetch_latency_s_p95=p95, fetch_latency_s_p99=p99)

        def close(self) -> None:
            if not self._closed:
                self._closed = True
                self.source.close()


__all__ = sorted(name for name in ("S3TorchConnectorLoader", "WebDatasetLoader") if name in globals())
