"""``delibench advise``: stage or stream, and will my GPUs starve, answered from a cheap CPU machine."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Optional

import typer

from delibench.cli import environment
from delibench.cli.output import console, err_console, print_json
from delibench.errors import UsageError

__all__ = ["register"]

ADVISE_HELP = """Before renting GPUs: stage the dataset on each VM's disk or stream it with deli, and will the GPUs starve?

Probes the bucket from this machine (GET round trip, bandwidth, object rate, decode rate: a few
seconds and under a hundred GETs), then answers with the analytic wait model and the price sheet:

  * will my GPUs starve: the predicted accelerator utilisation (AU) of --gpus accelerators of the
    --gpu profile fed by deli, the cheapest deli configuration that reaches --target-au (0.9 =
    MLPerf Storage's pass mark), or the bound that prevents it (link bandwidth, object rate, decode);

  * stage or stream: time and dollars of copying the dataset to every VM's local disk (GPUs idle
    meanwhile, GETs, egress, disk pro-rated per GB-month) against streaming it with deli (GETs and
    egress of the misses, GPU time stretched by 1/AU), for --epochs epochs, and the break-even
    number of epochs from which staging is cheaper.

Examples:

  delibench advise --data s3://my-bucket/imgs --gpu resnet50-a100 --gpus 8

  delibench advise --data s3://my-bucket/imgs --gpu resnet50-h100 --gpus 16 --instance p5.48xlarge --egress internet --epochs 90 --json

  delibench advise --data gs://my-bucket/imgs --gpu resnet50-a100 --gpus 8 --vm-cpus 96 --mem-budget 64GiB --prices my-prices.yaml
"""


def _fmt_s(seconds: float) -> str:
    from delibench.units import format_duration

    if not math.isfinite(seconds):
        return "never"
    if seconds >= 3600:
        return f"{seconds / 3600:.2f} h"
    return format_duration(seconds)


def _fmt_rate(value: float | None, unit: str = "/s") -> str:
    if value is None or not math.isfinite(value):
        return "-"
    return f"{value:,.0f}{unit}"


def _print_tables(doc: dict[str, Any]) -> None:
    from rich.table import Table

    from delibench.reports.tables import format_usd
    from delibench.units import format_bytes

    c, p, s, plan = doc["cluster"], doc["probe"], doc["starve"], doc["stage_or_stream"]
    ds = doc["dataset"]
    console.print(
        f"[bold]{ds['url']}[/]: {ds['samples']:,} samples, {format_bytes(ds['bytes'])}; "
        f"{c['gpus']}x {c['profile']} ({c['gpu_samples_per_s']:,.0f} samples/s each, batch {c['batch_size']}) "
        f"on {c['vms']}x {c['instance']} ({c['gpus_per_vm']} GPUs/VM)",
        highlight=False,
    )
    console.print(
        f"probe: GET {p['rtt_s'] * 1000:.1f} ms, {p['bandwidth_bytes_per_s'] / 1e6:,.1f} MB/s"
        + ("" if p["bandwidth_resolved"] else " (lower bound)")
        + f", {p['objects_per_s']:,.0f} objects/s"
        + (f" (store ceiling {p['server_objects_per_s']:,.0f}/s)" if p["server_objects_per_s"] else "")
        + (f", decode {p['decode_samples_per_s']:,.0f} samples/s per core" if p["decode_samples_per_s"] else ""),
        highlight=False,
    )

    au = Table(title=f"Will the GPUs starve? (per VM, target AU {s['target_au']:.0%})", title_justify="left")
    au.add_column("figure", no_wrap=True)
    au.add_column("value")
    au.add_row("demand", _fmt_rate(s["demand_samples_per_s_per_vm"], " samples/s"))
    au.add_row("predicted AU, later epochs", f"{s['predicted_au']:.1%}" + ("  ✓ reaches target" if s["reaches_target"] else "  ✗ below target"))
    au.add_row("predicted AU, first epoch (cold)", f"{s['predicted_au_first_epoch']:.1%}")
    au.add_row("deli configuration", s["loader"]["spec"])
    au.add_row("steady miss rate (simulated)", f"{s['miss_rate']:.1%}")
    au.add_row("bound", s["bound"] if not s["reaches_target"] else "none (the accelerators are)")
    for name, value in s["ceilings_samples_per_s"].items():
        au.add_row(f"ceiling: {name}", _fmt_rate(value, " samples/s"))
    needs = s["needs"]
    au.add_row("needs: objects/s from the bucket", _fmt_rate(needs["objects_per_s"]))
    au.add_row("needs: bandwidth", f"{needs['bandwidth_bytes_per_s'] / 1e6:,.1f} MB/s")
    au.add_row("needs: requests in flight", f"{needs['requests_in_flight']:,.0f}")
    if "decode_cpus" in needs:
        au.add_row("needs: decode CPUs", f"{needs['decode_cpus']:,.0f}")
    console.print(au)

    e = plan["epochs"]
    t = Table(title=f"Stage or stream? (whole cluster, {e} epoch{'s' if e != 1 else ''})", title_justify="left")
    t.add_column("", no_wrap=True)
    t.add_column("stage to local disk", justify="right")
    t.add_column("stream with deli", justify="right")
    st, sm = plan["stage"], plan["stream"]
    t.add_row("setup (copy, GPUs idle)", _fmt_s(st["setup_s"]), _fmt_s(sm["setup_s"]))
    t.add_row("first epoch", _fmt_s(st["first_epoch_s"]), _fmt_s(sm["first_epoch_s"]))
    t.add_row("each later epoch", _fmt_s(st["epoch_s"]), _fmt_s(sm["epoch_s"]))
    t.add_row("total time", _fmt_s(st["total_s"]), _fmt_s(sm["total_s"]))
    for key, label in (("vm_training", "GPU VMs, training"), ("vm_idle", "GPU VMs, idle"), ("requests", "GETs"), ("egress", "egress"), ("disk", "local disk")):
        t.add_row(label, format_usd(st["parts_usd"][key]), format_usd(sm["parts_usd"][key]))
    t.add_row("[bold]total $[/]", f"[bold]{format_usd(st['total_usd'])}[/]", f"[bold]{format_usd(sm['total_usd'])}[/]")
    console.print(t)
    be_usd, be_time = plan["break_even_usd_epochs"], plan["break_even_time_epochs"]
    console.print(
        f"break-even: staging is cheaper from {be_usd} epoch{'s' if be_usd != 1 else ''}" if be_usd else "break-even: staging never costs less than streaming",
        highlight=False,
        end="",
    )
    console.print(
        f"; faster from {be_time} epoch{'s' if be_time != 1 else ''}" if be_time else "; staging is never faster",
        highlight=False,
    )
    console.print(f"for {e} epoch{'s' if e != 1 else ''}: [bold]{plan['cheaper']}[/] is cheaper", highlight=False)
    pr = doc["prices"]
    console.print(
        f"[dim]prices ({pr['sheet']}): {pr['instance']} ${pr['vm_usd_per_hour']}/h, GET ${pr['get_usd_per_1000']}/1000, "
        f"egress {pr['egress_class']} ${pr['egress_usd_per_gb']}/GB, {pr['disk']} ${pr['disk_usd_per_gb_month']}/GB-month[/]",
        highlight=False,
    )
    for note in doc["notes"]:
        console.print(f"[dim]note: {note}[/]", highlight=False)


def advise_cmd(
    data: Optional[str] = typer.Option(None, "--data", "-d", help="Dataset root with a delibench manifest, e.g. s3://my-bucket/imgs (gs://..., or a path)."),
    gpu: Optional[str] = typer.Option(None, "--gpu", help="GPU profile to feed, e.g. resnet50-a100 (see 'delibench list gpus'; 'delibench calibrate' measures one)."),
    gpus: int = typer.Option(8, "--gpus", help="Accelerators to rent, e.g. --gpus 8."),
    epochs: int = typer.Option(10, "--epochs", "-e", help="Epochs of the training the totals are for, e.g. --epochs 90."),
    instance: Optional[str] = typer.Option(None, "--instance", help="VM type from the price sheet, e.g. p4d.24xlarge. Default: the cheapest VM of the dataset's cloud with the profile's GPU."),
    egress: Optional[str] = typer.Option(None, "--egress", help="Where the bucket is from the VMs: same-region | cross-region | internet. Default: the sheet's (cross-region)."),
    disk: Optional[str] = typer.Option(None, "--disk", help="Local-disk price key for staging, e.g. aws/ebs-gp3. Default: the dataset cloud's."),
    mem_budget: str = typer.Option("8GiB", "--mem-budget", help="Most RAM deli's node cache may use on one VM, e.g. 64GiB."),
    vm_cpus: Optional[int] = typer.Option(None, "--vm-cpus", help="CPU cores of one GPU VM for decoding, e.g. 96; decode is then a modelled bound. Default: not modelled (the cores needed are shown)."),
    batch_size: Optional[int] = typer.Option(None, "--batch-size", "-b", help="Samples per step per GPU, e.g. 256. Default: the profile's."),
    target_au: float = typer.Option(0.9, "--target-au", help="Accelerator utilisation to reach, e.g. 0.9 (MLPerf Storage's pass mark)."),
    prices: Optional[list[Path]] = typer.Option(None, "--prices", help="YAML price sheet merged over the shipped one (yours win), e.g. --prices my-prices.yaml. Repeatable.", metavar="FILE"),
    seed: int = typer.Option(0, "--seed", help="Sampler seed of the simulated epoch orders, e.g. 1."),
    as_json: bool = typer.Option(False, "--json", help="Print the advice as one JSON document on stdout, nothing else."),
) -> None:
    from delibench.units import parse_bytes

    if not data or not gpu:
        missing = " and ".join(f for f, v in (("--data", data), ("--gpu", gpu)) if not v)
        raise UsageError(f"delibench advise needs {missing}", hint="e.g. delibench advise --data s3://my-bucket/imgs --gpu resnet50-a100 --gpus 8")
    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {gpus}")
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    if not 0.0 < target_au <= 1.0:
        raise UsageError(f"--target-au is a fraction in (0, 1], got {target_au:g}", hint="e.g. --target-au 0.9")
    if vm_cpus is not None and vm_cpus < 1:
        raise UsageError(f"--vm-cpus must be at least 1, got {vm_cpus}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    try:
        budget = parse_bytes(mem_budget)
    except UsageError as exc:
        raise UsageError(f"--mem-budget {mem_budget!r}: {exc.message}", hint="e.g. --mem-budget 8GiB") from exc
    from delibench.reports.build import resolve_sheet
    from delibench.workloads.compute import load_profiles

    profiles = load_profiles(environment.profiles_path())
    if gpu not in profiles:
        import difflib

        close = difflib.get_close_matches(gpu, profiles, n=1)
        raise UsageError(f"unknown GPU profile {gpu!r}", hint=(f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(profiles))}") + " ('delibench list gpus')")
    profile = profiles[gpu]
    sheet = resolve_sheet(list(prices) if prices else None)
    # NOTE: a typo must not cost a probe first
    if instance:
        sheet.instance(instance)
    from delibench.reports.prices import EGRESS_CLASSES

    if egress is not None and egress not in EGRESS_CLASSES and not any(k.endswith(f"/{egress}") for k in sheet.egress):
        raise UsageError(f"unknown --egress {egress!r}", hint=f"use one of {', '.join(EGRESS_CLASSES)}")
    if disk is not None and disk not in sheet.storage:
        raise UsageError(f"unknown --disk {disk!r}", hint=f"known: {', '.join(sorted(sheet.storage))}")

    from delibench.manifest import read_manifest
    from delibench.tuning.advise import build_advice
    from delibench.tuning.probe import probe_environment
    from delibench.workloads.models import get_workload

    options = environment.storage_options_for(data)
    manifest = read_manifest(data, options)
    try:
        decoder = get_workload(profile.workload or "resnet50", num_classes=max(1, len(manifest.classes))).decoder()
    except UsageError:
        decoder = None  # a calibrated profile of a workload this version does not ship: no decode figure
    if not as_json:
        err_console.print(f"probing {data} from this machine ...", highlight=False)
    probe = probe_environment(data, manifest, decode=decoder, storage_options=options)
    advice = build_advice(
        dataset_url=data,
        sample_sizes=[s.size_bytes for s in manifest.samples],
        probe=probe,
        profile=profile,
        sheet=sheet,
        gpus=gpus,
        epochs=epochs,
        instance=instance,
        egress_class=egress,
        disk=disk,
        mem_budget_bytes=budget,
        vm_cpus=vm_cpus,
        batch_size=batch_size,
        target_au=target_au,
        seed=seed,
    )
    doc = advice.as_dict()
    if as_json:
        print_json(doc)
    else:
        _print_tables(doc)


def register(app: typer.Typer) -> None:
    """Add ``advise`` to the root app."""
    app.command("advise", help=ADVISE_HELP, no_args_is_help=True)(advise_cmd)
