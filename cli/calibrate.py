"""``delibench calibrate``: measure a workload's real step time and save it as a GPU profile."""

from __future__ import annotations

from pathlib import Path

import typer

from delibench.cli.output import console, err_console, print_json

__all__ = ["calibrate_cmd", "register"]


def calibrate_cmd(
    workload: str = typer.Option("resnet50", "--workload", "-w", help="Workload to time (see 'delibench list workloads')."),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Samples per step [default: the workload's own]."),
    steps: int = typer.Option(30, "--steps", help="Timed steps; the profile keeps their median."),
    warmup: int = typer.Option(5, "--warmup", help="Untimed steps first (cuDNN autotuning, allocator)."),
    device: str = typer.Option("auto", "--device", help="auto (CUDA when present), cuda or cpu."),
    name: str = typer.Option(None, "--name", help="Profile name [default: <workload>-<device>, e.g. resnet50-h100]."),
    out: Path = typer.Option(
        None,
        "--out",
        "--profiles",
        help="Profiles YAML to create or merge into [default: ~/.config/delibench/profiles.yaml].",
        dir_okay=False,
    ),
    fp32: bool = typer.Option(False, "--fp32", help="Disable autocast on CUDA (time full precision)."),
    as_json: bool = typer.Option(False, "--json", help="Print the profile as JSON on stdout."),
) -> None:
    """Time real training steps on this machine (CUDA if present, else CPU) and save the step time as a profile.

    Benchmarks on machines without that GPU can then emulate it: --compute emulated:<name>.

    Example: delibench calibrate --workload resnet50 --batch-size 256 --steps 30
    """
    from delibench.errors import UsageError
    from delibench.workloads.calibration import calibrate
    from delibench.workloads.compute import save_profile
    from delibench.workloads.models import get_workload

    # NOTE: checked before the workload loads; ``batch_size or default`` would take 0 for "default".
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be >= 1, got {batch_size}", hint="leave it out for the workload's own batch size")
    if steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    if warmup < 0:
        raise UsageError(f"--warmup must be >= 0, got {warmup}")
    wl = get_workload(workload)
    batch = wl.default_batch_size if batch_size is None else batch_size
    if name is not None and not name.replace("-", "").replace("_", "").replace(".", "").isalnum():
        raise UsageError(f"bad profile name {name!r}", hint="use letters, digits, '-', '_' or '.'")

    def progress(i: int, dt: float) -> None:
        err_console.print(f"  step {i + 1}/{steps}: {dt * 1000:.1f} ms", highlight=False)

    err_console.print(f"calibrating {wl.name}, batch {batch}, {warmup} warm-up + {steps} timed steps ...")
    profile = calibrate(wl, batch_size=batch, steps=steps, warmup_steps=warmup, device=device, name=name, amp=not fp32, on_step=progress)
    path = save_profile(profile, out)
    if as_json:
        print_json({"name": profile.name, "path": str(path), **profile.to_yaml_dict()})
        return
    console.print(
        f"[bold]{profile.name}[/]: {profile.step_time_s() * 1000:.1f} ms per batch of {batch} "
        f"({profile.samples_per_s:.1f} samples/s) on {profile.accelerator}",
        highlight=False,
    )
    flag = f" --profiles {path}" if out is not None else ""
    console.print(f"saved to {path}; use it with: delibench run ... --compute emulated:{profile.name}{flag}", highlight=False)


def register(app: typer.Typer) -> None:
    """Add ``calibrate`` to the root app."""
    app.command("calibrate")(calibrate_cmd)
