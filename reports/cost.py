"""The cost model: pure functions from a RunRecord and a PriceSheet to dollars.

Measured run = instance time x hourly price + GETs x request price + remote bytes x egress price.
Idle-accelerator dollars = data-wait fraction x instance dollars: what the accelerators cost while
they waited for data.

Byte convention: every ``usd_per_gb`` price (this sheet's egress and storage, and geo's link
prices) is per billed GB, :data:`delibench.units.BYTES_PER_BILLED_GB` = 2^30 bytes, because that
is how the providers whose prices the sheets carry bill (AWS counts its "GB" as 2^30 bytes; GCS
prices per GiB). The three unit prices are applied by :func:`instance_usd`,
:func:`request_usd` and :func:`transfer_usd`, which ``delibench.geo`` uses too, so a dollar of
egress means the same thing in a report and in a geo plan.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from delibench.errors import UsageError
from delibench.records import CostEstimate, RunRecord
from delibench.reports.prices import EGRESS_CLASSES, InstancePrice, PriceSheet, provider_for_url
from delibench.units import BYTES_PER_BILLED_GB

__all__ = [
    "PricedRun",
    "Projection",
    "Savings",
    "estimate",
    "instance_usd",
    "instances_needed",
    "is_local",
    "price_inputs",
    "project",
    "request_usd",
    "savings",
    "transfer_usd",
]

#: Loaders that read no object storage while they are measured (a local copy, or RAM).
LOCAL_LOADERS = frozenset({"disk", "memory"})

#: Dataset URL schemes that are not a cloud bucket (no scheme at all is a local path).
LOCAL_SCHEMES = frozenset({"", "file", "local", "memory"})


@dataclass(frozen=True, slots=True)
class PricedRun:
    """The prices that apply to one record (resolved from the sheet), so every figure can be explained.

    Attributes:
        instance: The VM type priced.
        instance_count: VMs needed for the run's ranks: ceil(world_size / accelerator_count).
        instance_usd_per_hour: instance_count x the VM's hourly price.
        get_usd_per_1000: Price of 1,000 GETs in the dataset's object store.
        egress_usd_per_gb: Price of one billed GB (2^30 bytes) read from the bucket, for the egress class.
        egress_class: ``same-region``, ``cross-region`` or ``internet``.
        provider: Cloud whose request and egress prices apply (from the dataset URL).
        price_sheet_id: ``<sheet id>:<instance>:<egress class>``, stored in the CostEstimate.
        local: The run read no object storage (see :func:`is_local`): GET and egress prices are 0.
    """

    instance: InstancePrice
    instance_count: int
    instance_usd_per_hour: float
    get_usd_per_1000: float
    egress_usd_per_gb: float
    egress_class: str
    provider: str
    price_sheet_id: str
    local: bool = False


@dataclass(frozen=True, slots=True)
class Projection:
    """Dollars and hours of a full training of ``epochs`` x ``dataset_samples`` at the measured rates.

    Attributes:
        epochs: Epochs projected.
        dataset_samples: Samples per epoch.
        hours: Wall-clock hours at the steady-state throughput.
        compute_usd: Instance dollars for those hours.
        requests_usd: GET dollars at the measured GETs per sample.
        egress_usd: Egress dollars at the measured remote bytes per sample.
        total_usd: compute + requests + egress.
        idle_accelerator_usd: data-wait fraction x compute dollars.
    """

    epochs: int
    dataset_samples: int
    hours: float
    compute_usd: float
    requests_usd: float
    egress_usd: float
    total_usd: float
    idle_accelerator_usd: float


@dataclass(frozen=True, slots=True)
class Savings:
    """What the best loader saves against the raw ``bucket`` loader, per epoch.

    Attributes:
        best_label: Display name of the cheapest loader per epoch.
        baseline_label: Display name of the bucket baseline.
        best_usd_per_epoch: Its dollars per epoch.
        baseline_usd_per_epoch: The baseline's dollars per epoch.
        usd_saved_per_epoch: baseline - best (negative when the baseline is cheaper).
        saved_fraction: usd_saved_per_epoch / baseline_usd_per_epoch.
        wait_reduction: baseline data-wait fraction / best data-wait fraction (inf when best waits 0).
    """

    best_label: str
    baseline_label: str
    best_usd_per_epoch: float
    baseline_usd_per_epoch: float
    usd_saved_per_epoch: float
    saved_fraction: float
    wait_reduction: float


def instance_usd(seconds: float, usd_per_hour: float) -> float:
    """Dollars of ``seconds`` of a machine (or accelerator) billed at ``usd_per_hour`` (per-second billing)."""
    return seconds / 3600.0 * usd_per_hour


def request_usd(count: float, usd_per_1000: float) -> float:
    """Dollars of ``count`` requests priced per 1,000."""
    return count / 1000.0 * usd_per_1000


def transfer_usd(nbytes: float, usd_per_gb: float) -> float:
    """Dollars of moving ``nbytes`` at ``usd_per_gb`` per billed GB (:data:`delibench.units.BYTES_PER_BILLED_GB`)."""
    return nbytes / BYTES_PER_BILLED_GB * usd_per_gb


def instances_needed(world_size: int, instance: InstancePrice) -> int:
    """VMs a run of ``world_size`` ranks occupies (one rank per accelerator; whole VMs are billed)."""
    return max(1, math.ceil(max(1, world_size) / max(1, instance.accelerator_count)))


def is_local(record: RunRecord) -> bool:
    """Whether ``record`` read its samples without cloud requests: a ``disk``/``memory`` loader or a local dataset.

    Such loaders still count their file reads in ``requests_count``/``bytes_read_remote`` (the same
    meter as the bucket loaders), but a local read is not a billed GET and moves no bytes out of a
    bucket, so charging them would make the no-network bound look expensive.
    """
    url = record.spec.dataset_url
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return record.spec.loader.kind in LOCAL_LOADERS or scheme in LOCAL_SCHEMES


def price_inputs(
    record: RunRecord,
    sheet: PriceSheet,
    *,
    instance: str | None = None,
    egress_class: str = "cross-region",
) -> PricedRun:
    """Resolve the instance, request and egress prices that apply to ``record``.

    Args:
        record: The run.
        sheet: The prices.
        instance: VM key (``p4d.24xlarge``); default: the sheet's one-accelerator default for the
            dataset's cloud.
        egress_class: Where the bucket is relative to the VMs (see :data:`EGRESS_CLASSES`).

    Raises:
        UsageError: Unknown instance or egress class.

    A local run (:func:`is_local`) gets GET and egress prices of 0.
    """
    provider = provider_for_url(record.spec.dataset_url, default=str(sheet.defaults.get("provider", "aws")))
    vm = sheet.instance(instance) if instance else sheet.default_instance(provider)
    if egress_class not in EGRESS_CLASSES and f"{provider}/{egress_class}" not in sheet.egress:
        raise UsageError(f"unknown egress class {egress_class!r}", hint=f"use one of {', '.join(EGRESS_CLASSES)}")
    count = instances_needed(record.spec.world_size, vm)
    get_price = sheet.object_store(provider).get_usd_per_1000
    egress_price = sheet.egress_price(provider, egress_class).usd_per_gb
    local = is_local(record)
    return PricedRun(
        instance=vm,
        instance_count=count,
        instance_usd_per_hour=vm.usd_per_hour * count,
        get_usd_per_1000=0.0 if local else get_price,
        egress_usd_per_gb=0.0 if local else egress_price,
        egress_class=egress_class,
        provider=provider,
        price_sheet_id=f"{sheet.id}:{vm.key}:{egress_class}",
        local=local,
    )


def _epoch_share(record: RunRecord) -> float:
    """Full epochs the measured run amounts to: samples processed / samples in the dataset.

    NOTE: runs sliced with ``max_steps_per_epoch`` read only part of each epoch, so counting the
    spec's epochs would understate the cost of a real epoch; samples are what the bill follows.
    """
    if record.metrics.total_samples > 0 and record.dataset_sample_count > 0:
        return record.metrics.total_samples / record.dataset_sample_count
    return float(max(1, len({e.epoch for e in record.metrics.epochs}) or record.spec.epochs))


def estimate(
    record: RunRecord,
    sheet: PriceSheet,
    *,
    instance: str | None = None,
    egress_class: str = "cross-region",
) -> CostEstimate:
    """Dollars of the measured run and per full epoch.

    compute = wall_s / 3600 x instance $/h; requests = GETs / 1000 x GET price; egress = remote
    bytes / 2^30 (billed GB) x egress $/GB (both 0 for a local run, see :func:`is_local`); idle
    accelerator = data_wait_fraction x compute; per epoch = total scaled from the samples processed
    to the dataset's sample count.

    Args:
        record: The run (its ``metrics.wall_s``, ``loader_stats`` and ``data_wait_fraction`` are used).
        sheet: The prices.
        instance: VM key, or the sheet's default for the dataset's cloud.
        egress_class: ``same-region``, ``cross-region`` (default) or ``internet``.

    Returns:
        A :class:`delibench.records.CostEstimate` whose ``price_sheet_id`` names sheet, VM and egress class.
    """
    prices = price_inputs(record, sheet, instance=instance, egress_class=egress_class)
    stats = record.loader_stats
    compute_usd = instance_usd(record.metrics.wall_s, prices.instance_usd_per_hour)
    requests_usd = request_usd(stats.requests_count, prices.get_usd_per_1000)
    egress_usd = transfer_usd(stats.bytes_read_remote, prices.egress_usd_per_gb)
    total = compute_usd + requests_usd + egress_usd
    return CostEstimate(
        price_sheet_id=prices.price_sheet_id,
        instance_usd_per_hour=prices.instance_usd_per_hour,
        compute_usd=compute_usd,
        requests_usd=requests_usd,
        egress_usd=egress_usd,
        total_usd=total,
        idle_accelerator_usd=record.metrics.data_wait_fraction * compute_usd,
        usd_per_epoch=total / _epoch_share(record),
    )


def project(
    record: RunRecord,
    epochs: int,
    dataset_samples: int | None = None,
    *,
    sheet: PriceSheet,
    instance: str | None = None,
    egress_class: str = "cross-region",
) -> Projection:
    """Project a full training from the measured steady-state rates.

    Hours come from the steady-state throughput (warm-up excluded); GETs and remote bytes per
    sample come from the whole measured run, so a cache's later-epoch savings count only as far as
    the measured epochs showed them.

    Args:
        record: The measured run.
        epochs: Epochs of the training to project.
        dataset_samples: Samples per epoch (default: the record's dataset).
        sheet: Prices; instance and egress_class as in :func:`estimate`.

    Raises:
        UsageError: Non-positive epochs or samples, or a record with no throughput.
    """
    samples = record.dataset_sample_count if dataset_samples is None else dataset_samples
    if epochs < 1 or samples < 1:
        raise UsageError(f"projection needs epochs >= 1 and dataset samples >= 1 (got {epochs}, {samples})")
    if record.metrics.throughput_samples_per_s <= 0 or record.metrics.total_samples <= 0:
        raise UsageError(f"run {record.run_id} has no throughput to project from")
    prices = price_inputs(record, sheet, instance=instance, egress_class=egress_class)
    total_samples = epochs * samples
    hours = total_samples / record.metrics.throughput_samples_per_s / 3600.0
    per_sample = 1.0 / record.metrics.total_samples
    compute_usd = instance_usd(hours * 3600.0, prices.instance_usd_per_hour)
    requests_usd = request_usd(record.loader_stats.requests_count * per_sample * total_samples, prices.get_usd_per_1000)
    egress_usd = transfer_usd(record.loader_stats.bytes_read_remote * per_sample * total_samples, prices.egress_usd_per_gb)
    return Projection(
        epochs=epochs,
        dataset_samples=samples,
        hours=hours,
        compute_usd=compute_usd,
        requests_usd=requests_usd,
        egress_usd=egress_usd,
        total_usd=compute_usd + requests_usd + egress_usd,
        idle_accelerator_usd=record.metrics.data_wait_fraction * compute_usd,
    )


def savings(records: Sequence[RunRecord], costs: Sequence[CostEstimate]) -> Savings | None:
    """Savings of the cheapest loader per epoch against the raw ``bucket`` loader.

    Args:
        records: Runs to compare (the first with ``spec.loader.kind == "bucket"`` is the baseline;
            ``disk`` runs are a bound, considered only when no other loader ran).
        costs: Their estimates, in the same order.

    Returns:
        None when there is no bucket run or nothing else to compare it with.
    """
    if len(records) != len(costs):
        raise ValueError("records and costs must have the same length")
    pairs = list(zip(records, costs))
    baseline = next((p for p in pairs if p[0].spec.loader.kind == "bucket"), None)
    others = [p for p in pairs if p is not baseline and p[0].spec.loader.kind != "bucket"]
    # NOTE: ``disk`` needs a local copy of the dataset (not priced here): it counts only when alone.
    others = [p for p in others if p[0].spec.loader.kind != "disk"] or others
    if baseline is None or not others:
        return None
    best = min(others, key=lambda p: p[1].usd_per_epoch)
    base_usd, best_usd = baseline[1].usd_per_epoch, best[1].usd_per_epoch
    base_wait, best_wait = baseline[0].metrics.data_wait_fraction, best[0].metrics.data_wait_fraction
    return Savings(
        best_label=best[0].spec.loader.display_name,
        baseline_label=baseline[0].spec.loader.display_name,
        best_usd_per_epoch=best_usd,
        baseline_usd_per_epoch=base_usd,
        usd_saved_per_epoch=base_usd - best_usd,
        saved_fraction=(base_usd - best_usd) / base_usd if base_usd > 0 else 0.0,
        wait_reduction=base_wait / best_wait if best_wait > 0 else math.inf,
    )
