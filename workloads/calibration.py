"""Measure a workload's real step time on this machine and turn it into a GPU profile.

A profile calibrated on a GPU lets every later storage benchmark run with
``--compute emulated:<name>`` on machines without that GPU, with the step time of the real one
(DLIO and MLPerf Storage do the same with their accelerator models). The step runs on random
in-memory batches, so nothing but compute is timed.
"""

from __future__ import annotations

import platform
import re
import statistics
import time
from collections.abc import Callable
from pathlib import Path

from delibench.errors import UsageError
from delibench.records import ComputeSpec
from delibench.workloads.compute import GpuProfile, resolve_device
from delibench.workloads.models import Workload

__all__ = ["calibrate", "device_label", "device_slug"]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "CPU"


def device_label(device: str) -> str:
    """The device in words: the CUDA device's name, or the CPU model with its thread count."""
    import torch

    if device == "cuda":
        return torch.cuda.get_device_name(torch.cuda.current_device())
    return f"CPU {_cpu_name()} ({torch.get_num_threads()} threads)"


def device_slug(device: str) -> str:
    """A short profile-name part: ``h100``, ``a100``, ``t4`` for GPUs (model number), ``cpu`` for the CPU."""
    if device != "cuda":
        return "cpu"
    name = device_label(device)
    match = re.search(r"\b([A-Z]{1,2}\d{1,4}[A-Za-z]?)\b", name)
    if match:
        return match.group(1).lower()
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "gpu"


def calibrate(
    workload: Workload,
    *,
    batch_size: int,
    steps: int = 30,
    warmup_steps: int = 5,
    device: str = "auto",
    name: str | None = None,
    amp: bool = True,
    on_step: Callable[[int, float], None] | None = None,
) -> GpuProfile:
    """Time ``steps`` real training steps of ``workload`` after ``warmup_steps`` untimed ones.

    Args:
        workload: The workload (its model, input shape and step).
        batch_size: Samples per step.
        steps: Timed steps; the profile uses their median (robust to a noisy neighbour).
        warmup_steps: Untimed steps first (cuDNN autotuning, allocator warm-up).
        device: ``auto``, ``cuda`` or ``cpu``.
        name: Profile name; default ``<workload>-<device slug>`` (e.g. ``resnet50-h100``).
        amp: Autocast on CUDA.
        on_step: Called with (step index, seconds) after each timed step, for progress output.

    Returns:
        The measured profile (not yet saved; see :func:`~delibench.workloads.compute.save_profile`).

    Raises:
        UsageError: Bad counts, or CUDA asked for but absent.
    """
    if batch_size < 1 or steps < 1 or warmup_steps < 0:
        raise UsageError("calibrate needs --batch-size >= 1, --steps >= 1 and --warmup >= 0")
    resolved = resolve_device(device)
    compute = workload.build(resolved, ComputeSpec(kind=resolved), amp=amp)
    batch = compute.to_device(workload.example_batch(batch_size))
    for _ in range(warmup_steps):
        compute.step(batch)
    compute.sync()
    times: list[float] = []
    for i in range(steps):
        t0 = time.perf_counter()
        compute.step(batch)
        compute.sync()
        dt = time.perf_counter() - t0
        times.append(dt)
        if on_step is not None:
            on_step(i, dt)
    step_s = statistics.median(times)
    precision = "fp32"
    if resolved == "cuda" and amp and compute.amp_dtype is not None:
        precision = "amp-bf16" if "bfloat16" in str(compute.amp_dtype) else "amp-fp16"
    return GpuProfile(
        name=name or f"{workload.name}-{device_slug(resolved)}",
        workload=workload.name,
        accelerator=device_label(resolved),
        batch_size=batch_size,
        samples_per_s=batch_size / step_s,
        precision=precision,
        source=(
            f"delibench calibrate on {platform.node()} at {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}: "
            f"median of {steps} steps (min {min(times):.4f} s, max {max(times):.4f} s)"
        ),
        approximate=False,
    )
