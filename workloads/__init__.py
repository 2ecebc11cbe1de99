"""Reference workloads, compute backends (cuda, cpu, emulated) and the measured training loop.

Importing this package does not import torch; models and decoders import it when first used.

Example::

    from delibench.workloads import get_workload, measure_loader, parse_compute

    wl = get_workload("resnet50", num_classes=len(manifest.classes))
    decode = wl.decoder(train=True)                  # picklable, for DataLoader workers
    compute = wl.build(compute=parse_compute("emulated:resnet50-a100", batch_size=256))
    result = measure_loader(loader, compute, epochs=2)
    metrics = result.summarize(warmup_steps=10, bytes_per_sample=manifest.mean_sample_bytes)
"""

from __future__ import annotations

from delibench.workloads.compute import (
    Compute,
    EmulatedCompute,
    GpuProfile,
    TorchCompute,
    load_profiles,
    parse_compute,
    save_profile,
)
from delibench.workloads.loop import DecodeRate, EpochTiming, LoopResult, measure_loader, probe_decode_rate
from delibench.workloads.models import BUILTIN_WORKLOADS, ImageDecoder, Workload, get_workload

__all__ = [
    "BUILTIN_WORKLOADS",
    "Compute",
    "DecodeRate",
    "EmulatedCompute",
    "EpochTiming",
    "GpuProfile",
    "ImageDecoder",
    "LoopResult",
    "TorchCompute",
    "Workload",
    "get_workload",
    "load_profiles",
    "measure_loader",
    "parse_compute",
    "probe_decode_rate",
    "save_profile",
]
