"""The registries of loaders and workloads, with every built-in registered in one place."""

from __future__ import annotations

from typing import Any

from delibench.registry import Registry

__all__ = ["loaders", "workloads"]

#: Loader classes by name; third parties add theirs through the ``delibench.loaders`` entry points.
loaders: Registry[Any] = Registry("delibench.loaders")
loaders.register("disk", "delibench.loaders.disk:DiskLoader")
loaders.register("bucket", "delibench.loaders.bucket:BucketLoader")
loaders.register("deli", "delibench.loaders.deli:DeliLoader")
loaders.register("fsspec-cache", "delibench.loaders.fsspec_cache:FsspecCacheLoader")
loaders.register("memory", "delibench.loaders.memory:MemoryLoader")
loaders.register(
    "s3torchconnector",
    "delibench.loaders.peers:S3TorchConnectorLoader",
    err="pip install 'delibench[peers]' to compare with s3torchconnector",
)
loaders.register(
    "webdataset",
    "delibench.loaders.peers:WebDatasetLoader",
    err="pip install 'delibench[peers]' to compare with webdataset shards",
)
loaders.register(
    "s3torchconnector-shards",
    "delibench.loaders.peers:S3TorchShardsLoader",
    err="pip install 'delibench[peers]' to compare with s3torchconnector over tar shards",
)
loaders.register(
    "litdata",
    "delibench.loaders.peers:LitDataLoader",
    err="pip install 'delibench[peers]' to compare with LitData's optimized format",
)
loaders.register(
    "litdata-raw",
    "delibench.loaders.peers:LitDataRawLoader",
    err="pip install 'delibench[peers]' to compare with LitData's StreamingRawDataset",
)
loaders.register(
    "mosaic-streaming",
    "delibench.loaders.peers:MosaicStreamingLoader",
    err="pip install --no-deps 'mosaicml-streaming>=0.13' (see the README: it pins google-cloud-storage<3.3) "
    "to compare with Mosaic Streaming",
)

#: Workload factories by name; third parties add theirs through ``delibench.workloads``.
workloads: Registry[Any] = Registry("delibench.workloads")
workloads.register("resnet50", "delibench.workloads.models:RESNET50")
workloads.register("resnet18", "delibench.workloads.models:RESNET18")
workloads.register("mobilenet_v3_small", "delibench.workloads.models:MOBILENET_V3_SMALL")
workloads.register("mnist-cnn", "delibench.workloads.models:MNIST_CNN")
workloads.register("cifar-resnet50", "delibench.workloads.models:CIFAR_RESNET50")
