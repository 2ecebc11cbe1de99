"""delibench: how long accelerators wait for data in cloud object storage, and the loader that removes it.

The package root holds what every part shares: records, errors, units, the manifest, URL
resolution and registries. It imports neither torch nor a cloud client at import time.
"""

from __future__ import annotations

__version__ = "0.1.0"

from delibench.errors import DelibenchError, ExitCode, FetchError, RuntimeFailure, UsageError, ValidityError
from delibench.manifest import Manifest, SampleEntry, read_manifest, write_manifest
from delibench.records import (
    ComputeSpec,
    LoaderSpec,
    LoaderStats,
    RunMetrics,
    RunRecord,
    RunSpec,
    StepSample,
)
from delibench.units import parse_bytes, parse_duration

__all__ = [
    "ComputeSpec",
    "DelibenchError",
    "ExitCode",
    "FetchError",
    "LoaderSpec",
    "LoaderStats",
    "Manifest",
    "RunMetrics",
    "RunRecord",
    "RunSpec",
    "RuntimeFailure",
    "SampleEntry",
    "StepSample",
    "UsageError",
    "ValidityError",
    "__version__",
    "parse_bytes",
    "parse_duration",
    "read_manifest",
    "write_manifest",
]
