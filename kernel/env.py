"""The environment fingerprint stored with every result (pytest-benchmark's ``machine_info``).

Cheap and offline: no network call, no cloud client, and torch is only *queried* when it is already
imported (``torch.cuda`` initialisation costs seconds); otherwise its version is read from the
installed package's metadata. Nothing secret is recorded: the endpoint is stored without
credentials or query strings.
"""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata

from delibench.records import MachineInfo

__all__ = ["cpu_count", "machine_info", "memory_bytes"]


def cpu_count() -> int:
    """CPUs this process may run on (the affinity mask / cgroup view where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def memory_bytes() -> int:
    """Total host RAM in bytes (0 when unknown)."""
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:  # psutil missing or the platform hides it
        try:
            return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
        except (AttributeError, ValueError, OSError):
            return 0


def _torch_facts(probe: bool) -> tuple[str | None, str, str | None]:
    torch = sys.modules.get("torch")
    if torch is None and probe:
        try:
            import torch  # noqa: F811
        except ImportError:
            torch = None
    if torch is None:
        try:
            version = metadata.version("torch")
        except metadata.PackageNotFoundError:
            version = None
        return version, "none", None
    version = getattr(torch, "__version__", None)
    try:
        if torch.cuda.is_available():
            return version, "cuda", torch.cuda.get_device_name(torch.cuda.current_device())
    except Exception:  # a broken driver must not fail a benchmark's bookkeeping
        pass
    return version, "none", None


def machine_info(endpoint: str | None = None, *, probe_accelerator: bool = False) -> MachineInfo:
    """Describe this machine for a result file.

    Args:
        endpoint: The storage endpoint used (URL); credentials and query strings are removed.
        probe_accelerator: Import torch (if installed) to look for a CUDA device even when it is not
            imported yet. By default only an already-imported torch is asked.

    Returns:
        Host name, OS, Python, CPUs, RAM, torch version and the accelerator's name.
    """
    from delibench import __version__
    from delibench.storage import redact

    torch_version, accelerator, accelerator_name = _torch_facts(probe_accelerator)
    return MachineInfo(
        hostname=socket.gethostname(),
        platform=platform.platform(),
        python_version=platform.python_version(),
        cpu_count=cpu_count(),
        memory_bytes=memory_bytes(),
        torch_version=torch_version,
        accelerator=accelerator,
        accelerator_name=accelerator_name,
        delibench_version=__version__,
        endpoint=redact(endpoint).split("?", 1)[0] if endpoint else None,
    )
