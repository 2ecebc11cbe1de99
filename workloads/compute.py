"""Compute backends: what executes one training step (a real model on CUDA or CPU, or an emulated accelerator).

The measured loop (:mod:`delibench.workloads.loop`) only sees the :class:`Compute` protocol, so a
storage benchmark runs the same way with a real GPU, on a laptop CPU, or with an *emulated*
accelerator that holds a fixed time per batch, as DLIO and MLPerf Storage do. ``--compute`` text is
parsed here into a :class:`~delibench.records.ComputeSpec`; named GPU profiles (shipped in
``gpu_profiles.yaml`` or written by ``delibench calibrate``) turn ``emulated:resnet50-a100`` into a
step time.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from delibench.errors import UsageError
from delibench.records import ComputeSpec
from delibench.units import parse_duration
from delibench.yamlfile import check_keys, expect_mapping, parse_yaml, read_yaml

__all__ = [
    "Compute",
    "agree_stop",
    "EmulatedCompute",
    "GpuProfile",
    "TorchCompute",
    "default_profiles_path",
    "load_profiles",
    "parse_compute",
    "resolve_device",
    "save_profile",
]

#: Environment variable naming an extra profiles file (read after the user's own file).


@runtime_checkable
class Compute(Protocol):
    """What the measured loop drives for each batch.

    ``to_device`` runs inside the data-wait interval (only its blocking part costs time: a
    non-blocking pinned copy returns at once); ``step`` plus ``sync`` is the compute interval.
    """

    kind: str

    def to_device(self, batch: Any) -> Any:
        """Move a batch to the accelerator (identity on CPU and for the emulated backend)."""
        ...

    def step(self, batch: Any) -> None:
        """Run one training step (forward, backward, optimizer step) on the batch."""
        ...

    def sync(self) -> None:
        """Wait for queued device work, so that the clock read after it is honest."""
        ...


def agree_stop(stop: bool, device: Any, group: Any = None) -> bool:
    """Whether any rank wants to stop: an all-reduce (MAX) of one flag over the default process group.

    The measured loop calls it once per step on every rank, at the same point (after the batch
    arrived, before the step's gradient all-reduce), so that a stop (Ctrl-C, pruning) or a rank
    whose loader failed ends every rank after the same step instead of leaving the others blocked
    in a collective that one rank will never join.
    """
    import torch
    import torch.distributed as dist

    flag = torch.tensor([1 if stop else 0], dtype=torch.int32, device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX, group=group)
    return bool(flag.item())


class EmulatedCompute:
    """An accelerator that takes exactly ``step_time_s`` per batch and touches no data (DLIO-style).

    The sleep aims at a deadline rather than sleeping a fixed amount, and carries any oversleep of
    one step over as credit to the next back-to-back step, so that the mean step time does not
    drift above ``step_time_s`` over thousands of steps (``time.sleep`` overshoots by tens of
    microseconds to milliseconds on a loaded machine). One step may therefore be shorter than
    ``step_time_s`` by the previous step's oversleep; the total of back-to-back steps never is. A
    step that starts after the loop waited for data (a gap of 1 ms or more) starts a fresh deadline.

    Args:
        step_time_s: Seconds per batch (``>= 0``).
        profile: The named profile the step time came from, for labels.
        clock: Monotonic clock (injectable for tests).
        sleep: Sleep function (injectable for tests).
        allreduce_numel: With ``torch.distributed`` initialised and more than one rank: all-reduce a
            float32 tensor of this many elements every step (the workload's parameter count, i.e.
            its gradients), started with the step and waited for at its end. An emulated
            accelerator has no model for DDP to wrap, but the step still synchronises the ranks
            through a real collective sharing the machine and the network, as DDP's gradient
            all-reduce does (overlapped with the step, as DDP overlaps it with the backward pass):
            a rank that waited for data holds up the others' step. 0: no collective.
    """

    kind = "emulated"

    def __init__(
        self,
        step_time_s: float,
        *,
        profile: str | None = None,
        clock: Callable[[], float] = time.perf_counter,
        sleep: Callable[[float], None] = time.sleep,
        allreduce_numel: int = 0,
    ) -> None:
        if not step_time_s >= 0:
            raise UsageError(f"emulated step time must be >= 0 s, got {step_time_s}")
        if allreduce_numel < 0:
            raise UsageError(f"allreduce_numel must be >= 0, got {allreduce_numel}")
        self.step_time_s = float(step_time_s)
        self.profile = profile
        self._clock = clock
        self._sleep = sleep
        self._last_end: float | None = None
        self._credit_s = 0.0
        self.allreduce_numel = int(allreduce_numel)
        #: Every step synchronises the ranks (the loop then agrees on stopping through :meth:`agree_stop`).
        self.synchronised = self.allreduce_numel > 0
        self._grads: Any = None
        if self.allreduce_numel:
            import torch
            import torch.distributed as dist

            if not (dist.is_available() and dist.is_initialized()):
                raise UsageError("emulated compute with a gradient all-reduce needs an initialised torch.distributed process group")
            device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
            self._grads = torch.zeros(self.allreduce_numel, dtype=torch.float32, device=device)

    def to_device(self, batch: Any) -> Any:
        """Identity: an emulated accelerator has no memory of its own."""
        return batch

    def step(self, batch: Any) -> None:
        """Sleep until this step's deadline (and, across ranks, until the gradient all-reduce is done)."""
        work = None
        if self._grads is not None:
            import torch.distributed as dist

            work = dist.all_reduce(self._grads, async_op=True)
        start = self._clock()
        # Credit only applies to a step that follows the previous one without a gap: a gap
        # (the loop waited for data) means the previous oversleep already cost the loop nothing extra.
        credit = self._credit_s if self._last_end is not None and start - self._last_end < 1e-3 else 0.0
        deadline = start + max(self.step_time_s - credit, 0.0)
        now = start
        while now < deadline:
            self._sleep(deadline - now)
            now = self._clock()
        self._credit_s = min(now - deadline, self.step_time_s)
        if work is not None:
            work.wait()
            now = self._clock()
            if self._grads.is_cuda:
                import torch

                torch.cuda.synchronize(self._grads.device)
                now = self._clock()
        self._last_end = now

    def sync(self) -> None:
        """Nothing is queued (the all-reduce, if any, was waited for in :meth:`step`)."""

    def agree_stop(self, stop: bool) -> bool:
        """True when any rank asks to stop (see :func:`agree_stop`); ``stop`` itself on one rank."""
        return agree_stop(stop, self._grads.device) if self.synchronised else stop

    def __repr__(self) -> str:
        return f"EmulatedCompute(step_time_s={self.step_time_s!r}, profile={self.profile!r}, allreduce_numel={self.allreduce_numel!r})"


class TorchCompute:
    """A real training step of a torch model: forward, loss, backward, optimizer step.

    Inputs arrive as ``uint8`` image tensors (NCHW) and are converted and normalised here, on the
    device: that moves a quarter of the bytes over PCIe and out of the DataLoader workers, as DALI
    and FFCV do. On CUDA the step runs under autocast (bf16 where supported, else fp16 with a grad
    scaler) in channels-last layout, and CUDA events time the device work of each step
    (:attr:`last_step_device_s`); the loop still calls :meth:`sync` before reading its clock.

    Args:
        model: The network (moved to ``device`` here).
        device: ``torch.device`` or its name.
        mean: Per-channel mean in [0, 1] for normalisation.
        std: Per-channel std in [0, 1].
        lr: SGD learning rate.
        momentum: SGD momentum.
        weight_decay: SGD weight decay.
        amp: Use autocast on CUDA.
        channels_last: Use channels-last memory format on CUDA.
        distributed: Wrap the model in ``torch.nn.parallel.DistributedDataParallel`` (needs an
            initialised process group: gloo on CPU, NCCL on CUDA): every step then all-reduces the
            gradients, overlapped with the backward pass, so the ranks' parameters stay equal.
    """

    def __init__(
        self,
        model: Any,
        device: Any,
        *,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        lr: float = 0.01,
        momentum: float = 0.9,
        weight_decay: float = 1e-4,
        amp: bool = True,
        channels_last: bool = True,
        distributed: bool = False,
    ) -> None:
        import torch

        self.device = torch.device(device)
        self.kind = self.device.type
        self._cuda = self.device.type == "cuda"
        self._channels_last = channels_last and self._cuda
        if self._cuda:
            torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick the fastest kernels
        memory_format = torch.channels_last if self._channels_last else torch.contiguous_format
        self.model = model.to(self.device, memory_format=memory_format)
        self.model.train()
        #: Batches should come in page-locked memory (the loop pins them ahead, in a helper thread,
        #: as ``DataLoader(pin_memory=True)`` does), so that :meth:`to_device` copies asynchronously.
        self.pin_memory = self._cuda
        self.distributed = distributed
        self._group: Any = None  # None: the default process group
        #: Every step synchronises the ranks (DDP's all-reduce): the loop agrees on stopping through :meth:`agree_stop`.
        self.synchronised = distributed
        if distributed:
            import torch.distributed as dist
            from torch.nn.parallel import DistributedDataParallel

            if not (dist.is_available() and dist.is_initialized()):
                raise UsageError("a distributed step needs an initialised torch.distributed process group")
            # NCCL carries CUDA tensors only: a CPU model on a GPU machine (--compute cpu, whose
            # process group is NCCL) synchronises through a gloo group of the same ranks.
            if not self._cuda and dist.get_backend() == "nccl":
                self._group = dist.new_group(backend="gloo")
            # DDP broadcasts rank 0's parameters and buffers here, so every rank starts equal.
            self.model = DistributedDataParallel(self.model, device_ids=[self.device] if self._cuda else None, process_group=self._group)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
        self.loss_fn = torch.nn.CrossEntropyLoss()
        shape = (1, len(mean), 1, 1)
        self._mean = torch.tensor(mean, device=self.device).view(shape) * 255.0
        self._std = torch.tensor(std, device=self.device).view(shape) * 255.0
        self.amp_dtype = None
        self._scaler = None
        if amp and self._cuda:
            self.amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            if self.amp_dtype == torch.float16:
                self._scaler = torch.amp.GradScaler("cuda")
        self._events: tuple[Any, Any] | None = None
        self.last_loss: float | None = None

    def pin_batch(self, batch: Any) -> Any:
        """``batch`` with its inputs and labels in page-locked memory (CUDA only; else as is)."""
        if not self.pin_memory:
            return batch
        inputs, labels = batch[0], batch[1]
        rest = tuple(batch[2:])
        inputs = inputs.pin_memory() if hasattr(inputs, "pin_memory") else inputs
        labels = labels.pin_memory() if hasattr(labels, "pin_memory") else labels
        return type(batch)(inputs, labels, *rest) if hasattr(batch, "_fields") else (inputs, labels, *rest)

    def to_device(self, batch: Any) -> Any:
        """Copy inputs and labels to the device; non-blocking from pinned memory on CUDA (a batch
        that is not pinned is copied synchronously, and that copy is then part of the data wait)."""
        if not self._cuda:
            return batch
        inputs, labels = batch[0], batch[1]
        rest = tuple(batch[2:])
        inputs = inputs.to(self.device, non_blocking=inputs.is_pinned())
        labels = labels.to(self.device, non_blocking=labels.is_pinned())
        return type(batch)(inputs, labels, *rest) if hasattr(batch, "_fields") else (inputs, labels, *rest)

    def _prepare(self, inputs: Any) -> Any:
        import torch

        x = inputs
        if x.device != self.device:
            x = x.to(self.device)
        if x.dtype == torch.uint8:
            x = (x.float() - self._mean) / self._std
        if self._channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def step(self, batch: Any) -> None:
        """One optimisation step on ``batch`` (``(inputs, labels, ...)``)."""
        import torch

        inputs, labels = batch[0], batch[1]
        start_event = end_event = None
        if self._cuda:
            start_event = torch.cuda.Event(enable_timing=True)
            end_event = torch.cuda.Event(enable_timing=True)
            start_event.record()
        x = self._prepare(inputs)
        y = labels.to(self.device) if labels.device != self.device else labels
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=self.amp_dtype, enabled=self.amp_dtype is not None):
            loss = self.loss_fn(self.model(x), y)
        if self._scaler is not None:
            self._scaler.scale(loss).backward()
            self._scaler.step(self.optimizer)
            self._scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        if self._cuda:
            end_event.record()
            self._events = (start_event, end_event)
        else:
            self.last_loss = float(loss.detach())

    def sync(self) -> None:
        """``torch.cuda.synchronize()`` on CUDA; nothing on CPU (the step already finished)."""
        if self._cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def agree_stop(self, stop: bool) -> bool:
        """True when any rank asks to stop (see :func:`agree_stop`); ``stop`` itself on one rank."""
        return agree_stop(stop, self.device, self._group) if self.synchronised else stop

    @property
    def last_step_device_s(self) -> float | None:
        """Device time of the last step from CUDA events (after :meth:`sync`), or None on CPU."""
        if self._events is None:
            return None
        start, end = self._events
        return start.elapsed_time(end) / 1000.0


def resolve_device(kind: str) -> str:
    """Turn ``auto`` into ``cuda`` or ``cpu`` (importing torch), and check that ``cuda`` exists.

    Raises:
        UsageError: ``cuda`` was asked for on a machine without a CUDA device.
    """
    if kind not in ("auto", "cuda", "cpu"):
        raise UsageError(f"unknown device {kind!r}", hint="use cpu, cuda or auto")
    if kind == "cpu":
        return "cpu"
    import torch

    has_cuda = torch.cuda.is_available()
    if kind == "cuda" and not has_cuda:
        raise UsageError(
            "CUDA was asked for but no CUDA device is visible",
            hint="use --compute cpu, or --compute emulated:<profile> to benchmark storage without a GPU",
        )
    return "cuda" if has_cuda else "cpu"


# --------------------------------------------------------------------------- GPU profiles


@dataclass(frozen=True, slots=True)
class GpuProfile:
    """Measured or published training throughput of one workload on one accelerator.

    Attributes:
        name: The profile's name, used as ``--compute emulated:<name>``.
        workload: The workload it was measured with (``resnet50``, ...).
        accelerator: The device, in words (``NVIDIA A100-SXM4-80GB``).
        batch_size: The batch size of the measurement.
        samples_per_s: Training throughput (samples per second per device).
        precision: ``amp``, ``fp32``, ``bf16``, ...
        source: Where the figure comes from (a URL or ``delibench calibrate on <host>``).
        approximate: True when read off a published chart or rounded.
    """

    name: str
    workload: str
    accelerator: str
    batch_size: int
    samples_per_s: float
    precision: str = "amp"
    source: str = ""
    approximate: bool = False

    def __post_init__(self) -> None:
        if self.batch_size < 1 or not self.samples_per_s > 0:
            raise UsageError(f"profile {self.name!r}: batch_size and samples_per_s must be positive")

    def step_time_s(self, batch_size: int | None = None) -> float:
        """Seconds per batch of ``batch_size`` (default: the profile's own), at the profile's throughput.

        Throughput is assumed constant in batch size near the measured one; calibrate at the
        batch size you run for an exact figure.
        """
        return (batch_size or self.batch_size) / self.samples_per_s

    def to_yaml_dict(self) -> dict[str, Any]:
        """The mapping stored under ``profiles.<name>``."""
        return {
            "workload": self.workload,
            "accelerator": self.accelerator,
            "batch_size": self.batch_size,
            "samples_per_s": round(self.samples_per_s, 3),
            "step_time_s": round(self.step_time_s(), 6),
            "precision": self.precision,
            "source": self.source,
            "approximate": self.approximate,
        }


#: What a profiles file is called in its error messages.
_WHAT = "profiles file"

_PROFILE_FIELDS = {"workload", "accelerator", "batch_size", "samples_per_s", "step_time_s", "precision", "source", "approximate"}


def default_profiles_path() -> Path:
    """The user's own profiles file: ``$XDG_CONFIG_HOME/delibench/profiles.yaml`` (``~/.config/...``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "delibench" / "profiles.yaml"


def _profiles_in(doc: Mapping[str, Any], origin: str) -> dict[str, GpuProfile]:
    """The profiles of a profiles file's mapping (``origin`` names the file in every message)."""
    section = expect_mapping(doc.get("profiles", {}), origin, "'profiles:' section")
    out: dict[str, GpuProfile] = {}
    for name, entry in section.items():
        where = f"{origin}: profile {name!r}"
        entry = expect_mapping(entry, where, "profile")
        check_keys(entry, sorted(_PROFILE_FIELDS), where)
        try:
            batch = int(entry["batch_size"])
            if "samples_per_s" in entry:
                rate = float(entry["samples_per_s"])
            else:
                rate = batch / float(entry["step_time_s"])
            out[str(name)] = GpuProfile(
                name=str(name),
                workload=str(entry.get("workload", "")),
                accelerator=str(entry.get("accelerator", "")),
                batch_size=batch,
                samples_per_s=rate,
                precision=str(entry.get("precision", "amp")),
                source=str(entry.get("source", "")),
                approximate=bool(entry.get("approximate", False)),
            )
        except (KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            raise UsageError(
                f"{origin}: profile {name!r} is incomplete or malformed ({exc})",
                hint="each profile needs batch_size and samples_per_s (or step_time_s)",
            ) from exc
    return out


def load_profiles(path: str | os.PathLike[str] | None = None) -> dict[str, GpuProfile]:
    """Every known profile: shipped ones, then the user's file, then ``path`` (the CLI passes ``$DELIBENCH_PROFILES``).

    Later sources override earlier ones by name, so a calibrated ``resnet50-a100`` replaces the
    shipped estimate.

    Raises:
        UsageError: ``path`` does not exist, or a file is malformed.
    """
    shipped = resources.files("delibench.workloads").joinpath("gpu_profiles.yaml").read_text(encoding="utf-8")
    origin = "gpu_profiles.yaml (shipped)"
    profiles = _profiles_in(expect_mapping(parse_yaml(shipped, origin) or {}, origin, _WHAT), origin)
    candidates: list[tuple[Path, bool]] = [(default_profiles_path(), False)]
    if path is not None:
        candidates.append((Path(path), True))
    for file, required in candidates:
        if not file.is_file():
            if required:
                raise UsageError(f"profiles file not found: {file}", hint="write one with 'delibench calibrate --profiles FILE'")
            continue
        profiles.update(_profiles_in(read_yaml(file, _WHAT), str(file)))
    return profiles


def save_profile(profile: GpuProfile, path: str | os.PathLike[str] | None = None) -> Path:
    """Merge ``profile`` into a profiles YAML file (created if missing), replacing one of the same name.

    Returns:
        The file written.
    """
    import yaml

    file = Path(path) if path is not None else default_profiles_path()
    doc: dict[str, Any] = {"version": 1, "profiles": {}}
    if file.is_file():
        loaded = read_yaml(file, _WHAT)
        _profiles_in(loaded, str(file))  # refuse to merge into a broken file
        doc.update(loaded)
        doc["profiles"] = dict(loaded.get("profiles") or {})
    doc["profiles"][profile.name] = profile.to_yaml_dict()
    file.parent.mkdir(parents=True, exist_ok=True)
    tmp = file.with_suffix(file.suffix + ".tmp")
    tmp.write_text(yaml.safe_dump(doc, sort_keys=False), encoding="utf-8")
    tmp.replace(file)
    return file


# --------------------------------------------------------------------------- --compute parsing

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")


def parse_compute(
    text: str,
    *,
    batch_size: int | None = None,
    profiles_path: str | os.PathLike[str] | None = None,
    resolve_auto: bool = True,
) -> ComputeSpec:
    """Parse ``--compute`` text: ``cpu``, ``cuda``, ``auto``, ``emulated:120ms`` or ``emulated:<profile>``.

    Args:
        text: The flag's value.
        batch_size: The run's batch size; a profile's step time is scaled to it (default: the
            profile's own batch size).
        profiles_path: An extra profiles file (``--profiles FILE``).
        resolve_auto: Resolve ``auto`` to ``cuda``/``cpu`` now (imports torch), so the stored spec says
            what actually ran.

    Raises:
        UsageError: Unknown kind, bad duration, or unknown profile (with the known names).
    """
    raw = text.strip() if isinstance(text, str) else ""
    kind, sep, arg = raw.partition(":")
    kind = kind.lower()
    if kind in ("cpu", "cuda", "auto") and not sep:
        if kind == "auto" and not resolve_auto:
            return ComputeSpec(kind="auto")
        return ComputeSpec(kind=resolve_device(kind))
    if kind == "emulated" and sep and arg:
        if arg[0].isdigit() or arg[0] == ".":
            try:
                step = parse_duration(arg)
            except UsageError as exc:
                raise UsageError(f"--compute {text!r}: {exc.message}", hint="e.g. emulated:120ms or emulated:0.25s") from exc
            if step <= 0:
                raise UsageError(f"--compute {text!r}: the emulated step time must be positive")
            return ComputeSpec(kind="emulated", step_time_s=step)
        if not _NAME.fullmatch(arg):
            raise UsageError(f"--compute {text!r}: {arg!r} is neither a duration nor a profile name")
        profiles = load_profiles(profiles_path)
        if arg not in profiles:
            import difflib

            close = difflib.get_close_matches(arg, profiles, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known profiles: {', '.join(sorted(profiles))}"
            raise UsageError(f"unknown GPU profile {arg!r}", hint=hint + "; or measure one with 'delibench calibrate'")
        return ComputeSpec(kind="emulated", step_time_s=profiles[arg].step_time_s(batch_size), profile=arg)
    raise UsageError(
        f"bad --compute value {text!r}",
        hint="use cpu, cuda, auto, emulated:<duration> (e.g. emulated:120ms) or emulated:<profile> (e.g. emulated:resnet50-a100)",
    )
