"""``delibench advise``: stage the dataset on local disk or stream it with deli, and will the GPUs starve.

Everything here is a pure function of numbers the caller measured or looked up (the probe of the
bucket, a GPU profile, a price sheet, the manifest's sizes), so the answer can be computed from a
cheap CPU machine before a single GPU is rented, and every figure can be checked by hand.

Stage or stream, per VM and for the whole cluster of ``vms`` VMs (each VM has its own link to the
bucket, as measured by the probe from this machine):

* **stage**: every VM copies the whole dataset to its local disk before training, at
  ``min(link bandwidth, object rate x mean sample size)``; the accelerators sit idle (and are
  billed) meanwhile; the copy costs ``vms x samples`` GETs and ``vms x bytes`` of egress; the
  local copies are billed per GB-month, pro-rated over the hours they exist (staging + training).
  Epochs then run from local disk at the accelerators' rate.
* **stream** (deli): each epoch reads ``miss rate x samples`` objects from the bucket (the first
  epoch misses everything; later ones what the cache does not hold) and runs at the predicted
  accelerator utilisation (AU) of the analytic wait model; no local copy, no staging.

The break-even is the first whole epoch count at which staging costs no more than streaming
(dollars, and separately wall time); None when it never does.

The bucket's own storage at rest is the same either way and is not counted. Dollars come from the
cost helpers of ``delibench.reports.cost``; a billed GB is 2^30 bytes and a month 730 hours.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from delibench.errors import UsageError
from delibench.reports.cost import instance_usd, request_usd, transfer_usd
from delibench.reports.prices import InstancePrice, PriceSheet
from delibench.tuning.model import Demand, LinkEstimate, WaitPrediction, predict_wait
from delibench.tuning.space import TuneConfig

__all__ = [
    "HOURS_PER_MONTH",
    "Advice",
    "Cluster",
    "PlanCost",
    "StageOrStream",
    "StageStreamInputs",
    "StarveAdvice",
    "break_even_epochs",
    "candidate_configs",
    "pick_instance",
    "stage_or_stream",
    "will_starve",
]

#: Hours in a billed month (the providers' 730-hour convention for pro-rating GB-month prices).
HOURS_PER_MONTH = 730.0


@dataclass(frozen=True, slots=True)
class Cluster:
    """The GPUs the user intends to rent.

    Attributes:
        profile: GPU profile name (``resnet50-a100``).
        gpus: Accelerators in all.
        gpu_samples_per_s: Training throughput of one accelerator (the profile's).
        batch_size: Samples per step per accelerator.
        instance: The VM type priced.
        vms: VMs needed: ceil(gpus / accelerators per VM).
    """

    profile: str
    gpus: int
    gpu_samples_per_s: float
    batch_size: int
    instance: InstancePrice
    vms: int

    @property
    def gpus_per_vm(self) -> int:
        """Accelerators on one VM (the last VM may hold fewer; the model uses the full ones)."""
        return min(self.gpus, max(1, self.instance.accelerator_count))

    @property
    def step_time_s(self) -> float:
        """Compute time of one step of ``batch_size`` at the profile's throughput."""
        return self.batch_size / self.gpu_samples_per_s

    def demand(self, num_workers: int = 2) -> Demand:
        """What one VM's accelerators consume, as one node-wide demand (deli's node service feeds them all)."""
        return Demand(batch_size=self.batch_size * self.gpus_per_vm, step_time_s=self.step_time_s, num_workers=num_workers)


def pick_instance(sheet: PriceSheet, provider: str, accelerator: str, gpus: int) -> InstancePrice:
    """The cheapest VM of ``provider`` carrying the profile's accelerator family, sized for ``gpus``.

    The family is the first model token of the profile's accelerator (``A100`` of ``NVIDIA
    A100-SXM4-80GB``). Prefers VMs with at least ``min(gpus, 8)`` accelerators, then the fewest
    VMs, then the lowest price; falls back to the sheet's default VM for the provider.
    """
    tokens = [t for t in re.findall(r"[A-Z]+\d+[A-Z]?", accelerator.upper()) if not t.startswith(("SXM", "PCIE", "DGX"))]
    family = tokens[0] if tokens else ""
    matching = [
        vm for vm in sheet.instances.values()
        if vm.provider == provider and family and re.search(rf"\b{re.escape(family)}\b", vm.accelerators.upper())
    ]
    if not matching:
        return sheet.default_instance(provider)
    want = min(max(1, gpus), 8)

    def key(vm: InstancePrice) -> tuple[bool, int, float]:
        count = max(1, vm.accelerator_count)
        return (count < want, math.ceil(gpus / count), vm.usd_per_hour * math.ceil(gpus / count))

    return min(matching, key=key)


# --------------------------------------------------------------------------- stage or stream


@dataclass(frozen=True, slots=True)
class StageStreamInputs:
    """The numbers the stage-or-stream comparison needs (all per VM unless said otherwise).

    Attributes:
        dataset_bytes: Bytes in the dataset.
        dataset_samples: Samples (objects) in the dataset.
        vms: VMs in the cluster.
        vm_usd_per_hour: On-demand price of one VM.
        train_samples_per_s: Samples/s one VM trains at from local disk (its accelerators' rate,
            times the AU the local pipeline reaches).
        stage_bytes_per_s: Bytes/s one VM copies from the bucket.
        stream_au_first: Predicted AU of the first streamed epoch (cold cache: every sample fetched).
        stream_au_steady: Predicted AU of later streamed epochs.
        stream_miss_steady: Share of samples fetched from the bucket in later epochs.
        get_usd_per_1000: Price of 1,000 GETs.
        egress_usd_per_gb: Price of one billed GB (2^30 bytes) leaving the bucket for the VMs.
        disk_usd_per_gb_month: Price of one billed GB-month of local disk.
    """

    dataset_bytes: float
    dataset_samples: int
    vms: int
    vm_usd_per_hour: float
    train_samples_per_s: float
    stage_bytes_per_s: float
    stream_au_first: float
    stream_au_steady: float
    stream_miss_steady: float
    get_usd_per_1000: float
    egress_usd_per_gb: float
    disk_usd_per_gb_month: float

    def __post_init__(self) -> None:
        if self.dataset_bytes <= 0 or self.dataset_samples < 1:
            raise UsageError("the dataset must hold at least one byte and one sample")
        if self.vms < 1:
            raise UsageError(f"at least one VM, got {self.vms}")
        if not (self.train_samples_per_s > 0 and self.stage_bytes_per_s > 0):
            raise UsageError("training and staging rates must be positive")
        for name in ("stream_au_first", "stream_au_steady"):
            if not 0.0 < getattr(self, name) <= 1.0:
                raise UsageError(f"{name} must lie in (0, 1], got {getattr(self, name)}")
        if not 0.0 <= self.stream_miss_steady <= 1.0:
            raise UsageError(f"the miss rate must lie in [0, 1], got {self.stream_miss_steady}")
        if min(self.vm_usd_per_hour, self.get_usd_per_1000, self.egress_usd_per_gb, self.disk_usd_per_gb_month) < 0:
            raise UsageError("prices must not be negative")


@dataclass(frozen=True, slots=True)
class PlanCost:
    """Time and dollars of one plan (stage, or stream), with its parts.

    Attributes:
        setup_s: Wall time before the first step (staging copy; 0 for streaming).
        setup_usd: Dollars of that setup: idle VMs + GETs + egress + disk while copying.
        first_epoch_s: Wall time of the first epoch.
        first_epoch_usd: Its dollars.
        epoch_s: Wall time of each later epoch.
        epoch_usd: Its dollars.
        parts_usd: The dollars of ``epochs`` epochs (and the setup) by kind: ``vm_idle``,
            ``vm_training``, ``requests``, ``egress``, ``disk``.
        epochs: Epochs ``total_s``/``total_usd``/``parts_usd`` are for.
    """

    setup_s: float
    setup_usd: float
    first_epoch_s: float
    first_epoch_usd: float
    epoch_s: float
    epoch_usd: float
    parts_usd: dict[str, float] = field(default_factory=dict)
    epochs: int = 1

    def total_s(self, epochs: int) -> float:
        """Wall time of setup + ``epochs`` epochs."""
        return self.setup_s + (self.first_epoch_s + (epochs - 1) * self.epoch_s if epochs > 0 else 0.0)

    def total_usd(self, epochs: int) -> float:
        """Dollars of setup + ``epochs`` epochs."""
        return self.setup_usd + (self.first_epoch_usd + (epochs - 1) * self.epoch_usd if epochs > 0 else 0.0)


@dataclass(frozen=True, slots=True)
class StageOrStream:
    """The comparison and its answer.

    Attributes:
        stage: Copy to each VM's disk, then train locally.
        stream: Stream with deli.
        epochs: The epochs the totals are for.
        break_even_usd_epochs: First epoch count at which staging costs no more than streaming (None: never).
        break_even_time_epochs: The same for wall time.
        cheaper: ``stage`` or ``stream`` for ``epochs`` epochs.
    """

    stage: PlanCost
    stream: PlanCost
    epochs: int
    break_even_usd_epochs: int | None
    break_even_time_epochs: int | None

    @property
    def cheaper(self) -> str:
        return "stage" if self.stage.total_usd(self.epochs) < self.stream.total_usd(self.epochs) else "stream"


def break_even_epochs(setup: float, stage_epoch: float, stream_first: float, stream_epoch: float, *, stage_first: float | None = None) -> int | None:
    """First whole number of epochs ``E >= 1`` with ``setup + stage(E) <= stream(E)``; None when none exists.

    ``stage(E) = stage_first + (E - 1) stage_epoch`` and ``stream(E) = stream_first + (E - 1)
    stream_epoch`` (``stage_first`` defaults to ``stage_epoch``). The gap ``stream(E) - stage(E)``
    grows by ``stream_epoch - stage_epoch`` per epoch, so staging pays off at
    ``E = 1 + ceil((setup + stage_first - stream_first) / (stream_epoch - stage_epoch))`` when each
    streamed epoch costs more, and never otherwise (unless it already does at E = 1).
    """
    first = stage_epoch if stage_first is None else stage_first
    head = setup + first - stream_first  # what staging still owes after epoch 1
    if head <= 0:
        return 1
    gain = stream_epoch - stage_epoch
    if gain <= 0:
        return None
    return 1 + math.ceil(head / gain - 1e-9)


def stage_or_stream(inp: StageStreamInputs, epochs: int) -> StageOrStream:
    """Time and dollars of staging versus streaming ``epochs`` epochs, and the break-even epochs.

    Raises:
        UsageError: ``epochs < 1``.
    """
    if epochs < 1:
        raise UsageError(f"--epochs must be at least 1, got {epochs}")
    v, n, d = inp.vms, inp.dataset_samples, inp.dataset_bytes
    per_vm_samples = n / v
    month_s = HOURS_PER_MONTH * 3600.0

    def disk_usd(seconds: float) -> float:  # v local copies of the dataset held for ``seconds``
        return v * transfer_usd(d, inp.disk_usd_per_gb_month) * seconds / month_s

    # Stage: each VM copies everything; its accelerators are billed while idle.
    stage_s = d / inp.stage_bytes_per_s
    stage_idle = v * instance_usd(stage_s, inp.vm_usd_per_hour)
    stage_gets = request_usd(v * n, inp.get_usd_per_1000)
    stage_egress = transfer_usd(v * d, inp.egress_usd_per_gb)
    setup_usd = stage_idle + stage_gets + stage_egress + disk_usd(stage_s)
    local_epoch_s = per_vm_samples / inp.train_samples_per_s
    local_epoch_usd = v * instance_usd(local_epoch_s, inp.vm_usd_per_hour) + disk_usd(local_epoch_s)
    stage = PlanCost(
        setup_s=stage_s,
        setup_usd=setup_usd,
        first_epoch_s=local_epoch_s,
        first_epoch_usd=local_epoch_usd,
        epoch_s=local_epoch_s,
        epoch_usd=local_epoch_usd,
        parts_usd={
            "vm_idle": stage_idle,
            "vm_training": epochs * v * instance_usd(local_epoch_s, inp.vm_usd_per_hour),
            "requests": stage_gets,
            "egress": stage_egress,
            "disk": disk_usd(stage_s + epochs * local_epoch_s),
        },
        epochs=epochs,
    )

    # Stream: epoch time stretches by 1/AU; only misses are fetched.
    def stream_epoch(au: float, miss: float) -> tuple[float, float, float, float, float]:
        seconds = per_vm_samples / (inp.train_samples_per_s * au)
        vm = v * instance_usd(seconds, inp.vm_usd_per_hour)
        gets = request_usd(n * miss, inp.get_usd_per_1000)
        egress = transfer_usd(d * miss, inp.egress_usd_per_gb)
        return seconds, vm, gets, egress, vm + gets + egress

    s1, vm1, g1, e1, usd1 = stream_epoch(inp.stream_au_first, 1.0)
    sn, vmn, gn, en, usdn = stream_epoch(inp.stream_au_steady, inp.stream_miss_steady)
    later = epochs - 1
    stream = PlanCost(
        setup_s=0.0,
        setup_usd=0.0,
        first_epoch_s=s1,
        first_epoch_usd=usd1,
        epoch_s=sn,
        epoch_usd=usdn,
        parts_usd={
            "vm_idle": (vm1 - v * instance_usd(local_epoch_s, inp.vm_usd_per_hour)) + later * (vmn - v * instance_usd(local_epoch_s, inp.vm_usd_per_hour)),
            "vm_training": epochs * v * instance_usd(local_epoch_s, inp.vm_usd_per_hour),
            "requests": g1 + later * gn,
            "egress": e1 + later * en,
            "disk": 0.0,
        },
        epochs=epochs,
    )
    return StageOrStream(
        stage=stage,
        stream=stream,
        epochs=epochs,
        break_even_usd_epochs=break_even_epochs(stage.setup_usd, stage.epoch_usd, stream.first_epoch_usd, stream.epoch_usd),
        break_even_time_epochs=break_even_epochs(stage.setup_s, stage.epoch_s, stream.first_epoch_s, stream.epoch_s),
    )


# --------------------------------------------------------------------------- will my GPUs starve


@dataclass(frozen=True, slots=True)
class StarveAdvice:
    """Predicted accelerator utilisation of streaming with deli, per VM.

    Attributes:
        target_au: The AU asked for (MLPerf Storage's pass mark 0.9 by default).
        demand_samples_per_s: Samples/s one VM's accelerators consume when never starved.
        recommended: The cheapest configuration predicted to reach ``target_au`` (smallest cache,
            then fewest requests in flight), or the best one when none does.
        prediction: Its steady-state prediction (later epochs).
        first_epoch: Its prediction for the cold first epoch (every sample fetched).
        miss_rate: Its simulated steady miss rate.
        reaches_target: Whether ``recommended`` reaches ``target_au``.
        bound: What limits the best configuration when the target is out of reach: ``bandwidth``,
            ``server`` (object rate), ``decode`` or ``latency``; ``none`` when it is reached.
        ceilings_samples_per_s: Samples/s each resource allows at the recommended miss rate
            (``bandwidth``, ``server`` when measured, ``decode`` when modelled).
        needs: What reaching the target takes at that miss rate: ``objects_per_s``,
            ``bandwidth_bytes_per_s``, ``requests_in_flight`` and, without a modelled CPU count,
            ``decode_cpus`` (cores at this machine's measured decode rate).
    """

    target_au: float
    demand_samples_per_s: float
    recommended: TuneConfig
    prediction: WaitPrediction
    first_epoch: WaitPrediction
    miss_rate: float
    reaches_target: bool
    bound: str
    ceilings_samples_per_s: dict[str, float]
    needs: dict[str, float]


def candidate_configs(cache_sizes: Sequence[int], *, concurrencies: Sequence[int] = tuple(2**k for k in range(3, 11)), num_workers: int | None = None) -> list[TuneConfig]:
    """The configurations screened: every cache size x concurrency, prefetch depth twice the concurrency, Belady."""
    return [
        TuneConfig(cache_size_bytes=int(c), prefetch_depth=2 * k, concurrency=k, eviction="belady", num_workers=num_workers)
        for c in sorted(set(int(c) for c in cache_sizes))
        for k in concurrencies
    ]


def will_starve(
    link: LinkEstimate,
    demand: Demand,
    configs: Sequence[TuneConfig],
    miss_rate: Callable[[TuneConfig], float],
    *,
    target_au: float = 0.9,
    predict: Callable[[TuneConfig, LinkEstimate, Demand, float], WaitPrediction] = predict_wait,
) -> StarveAdvice:
    """Screen ``configs`` with the analytic wait model and say whether (and how) ``target_au`` is reached.

    Args:
        link: Probe numbers (per VM).
        demand: One VM's demand (batch of all its accelerators, step time).
        configs: Candidates (see :func:`candidate_configs`).
        miss_rate: Steady miss rate of a configuration (the cache simulator's, or a closed form).
        target_au: AU to reach.
        predict: The wait model (:func:`delibench.tuning.model.predict_wait`; tests pass a hand-made one).

    Raises:
        UsageError: No configurations, or a target outside (0, 1].
    """
    if not configs:
        raise UsageError("no loader configurations to screen")
    if not 0.0 < target_au <= 1.0:
        raise UsageError(f"--target-au is a fraction in (0, 1], got {target_au:g}")
    scored = []
    for cfg in configs:
        miss = miss_rate(cfg)
        scored.append((cfg, predict(cfg, link, demand, miss), miss))
    feasible = [s for s in scored if s[1].accelerator_utilization >= target_au - 1e-12]
    if feasible:
        cfg, pred, miss = min(feasible, key=lambda s: (s[0].cache_size_bytes, s[0].concurrency, s[0].prefetch_depth))
    else:
        cfg, pred, miss = max(scored, key=lambda s: (s[1].accelerator_utilization, -s[0].cache_size_bytes, -s[0].concurrency))
    first = predict(cfg, link, demand, 1.0)
    d = demand.samples_per_s
    ceilings = {"bandwidth": math.inf if miss == 0 else link.bandwidth_bytes_per_s / link.sample_bytes / miss}
    if link.server_objects_per_s is not None:
        ceilings["server"] = math.inf if miss == 0 else link.server_objects_per_s / miss
    if link.decode_samples_per_s is not None:
        workers = cfg.num_workers if cfg.num_workers is not None else demand.num_workers
        ceilings["decode"] = link.decode_samples_per_s * min(workers, link.cpu_count)
    objects = target_au * d * miss
    needs = {
        "objects_per_s": objects,
        "bandwidth_bytes_per_s": objects * link.sample_bytes,
        "requests_in_flight": objects * link.request_time_s,
    }
    return StarveAdvice(
        target_au=target_au,
        demand_samples_per_s=d,
        recommended=cfg,
        prediction=pred,
        first_epoch=first,
        miss_rate=miss,
        reaches_target=bool(feasible),
        bound="none" if feasible else pred.bound,
        ceilings_samples_per_s=ceilings,
        needs=needs,
    )


# --------------------------------------------------------------------------- the whole answer


@dataclass(frozen=True, slots=True)
class Advice:
    """What ``delibench advise`` prints: the inputs it used and both answers.

    Attributes:
        dataset_url: The dataset.
        cluster: The GPUs, their VM type and count.
        probe: The probe's figures (RTT, bandwidth, object rate, decode rate).
        prices: The unit prices used (``vm_usd_per_hour``, ``get_usd_per_1000``,
            ``egress_usd_per_gb``, ``disk_usd_per_gb_month``) with the egress class and disk kind.
        starve: Will the GPUs starve (and which deli configuration feeds them).
        plan: Stage or stream.
        notes: Assumptions in words.
    """

    dataset_url: str
    dataset_samples: int
    dataset_bytes: int
    cluster: Cluster
    probe: dict[str, Any]
    prices: dict[str, Any]
    starve: StarveAdvice
    plan: StageOrStream
    notes: tuple[str, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """Plain values for ``--json`` (infinities as None)."""

        def clean(value: Any) -> Any:
            if isinstance(value, float) and not math.isfinite(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            if isinstance(value, (list, tuple)):
                return [clean(v) for v in value]
            return value

        e = self.plan.epochs
        plan = {
            name: {
                **clean(asdict(p)),
                "total_s": p.total_s(e),
                "total_usd": p.total_usd(e),
            }
            for name, p in (("stage", self.plan.stage), ("stream", self.plan.stream))
        }
        s = self.starve
        return clean({
            "dataset": {"url": self.dataset_url, "samples": self.dataset_samples, "bytes": self.dataset_bytes},
            "cluster": {
                "profile": self.cluster.profile,
                "gpus": self.cluster.gpus,
                "gpu_samples_per_s": self.cluster.gpu_samples_per_s,
                "batch_size": self.cluster.batch_size,
                "instance": self.cluster.instance.key,
                "gpus_per_vm": self.cluster.gpus_per_vm,
                "vms": self.cluster.vms,
            },
            "probe": self.probe,
            "prices": self.prices,
            "starve": {
                "target_au": s.target_au,
                "demand_samples_per_s_per_vm": s.demand_samples_per_s,
                "predicted_au": s.prediction.accelerator_utilization,
                "predicted_au_first_epoch": s.first_epoch.accelerator_utilization,
                "reaches_target": s.reaches_target,
                "bound": s.bound,
                "miss_rate": s.miss_rate,
                "loader": {**s.recommended.as_dict(), "spec": _loader_arg(s.recommended)},
                "ceilings_samples_per_s": s.ceilings_samples_per_s,
                "needs": s.needs,
            },
            "stage_or_stream": {
                "epochs": e,
                "cheaper": self.plan.cheaper,
                "break_even_usd_epochs": self.plan.break_even_usd_epochs,
                "break_even_time_epochs": self.plan.break_even_time_epochs,
                **plan,
            },
            "notes": list(self.notes),
        })


def _loader_arg(cfg: TuneConfig) -> str:
    """The ``--loader`` text of a configuration (``deli:cache_size=1GiB,prefetch_depth=64,...``)."""
    from delibench.tuning.space import iec_size

    return (
        f"deli:cache_size={iec_size(cfg.cache_size_bytes)},prefetch_depth={cfg.prefetch_depth},"
        f"concurrency={cfg.concurrency},eviction={cfg.eviction}"
    )


def loader_arg(cfg: TuneConfig) -> str:
    """Public alias of the ``--loader`` text of ``cfg``."""
    return _loader_arg(cfg)


def build_advice(
    *,
    dataset_url: str,
    sample_sizes: Sequence[int],
    probe: Any,
    profile: Any,
    sheet: PriceSheet,
    gpus: int,
    epochs: int,
    instance: str | None = None,
    egress_class: str | None = None,
    disk: str | None = None,
    mem_budget_bytes: int = 8 * 2**30,
    vm_cpus: int | None = None,
    batch_size: int | None = None,
    target_au: float = 0.9,
    seed: int = 0,
) -> Advice:
    """Both answers from measured and looked-up numbers (no I/O: the probe has already run).

    Args:
        dataset_url: The dataset (its scheme picks the cloud whose prices apply).
        sample_sizes: Bytes of every sample (the manifest's), for the cache simulator.
        probe: A :class:`delibench.tuning.probe.ProbeResult` of the dataset from this machine.
        profile: A :class:`delibench.workloads.compute.GpuProfile`.
        sheet: Prices.
        gpus: Accelerators to rent.
        epochs: Epochs of the training the totals are for.
        instance: VM type; default: the cheapest VM of the dataset's cloud with the profile's GPU.
        egress_class: ``same-region``, ``cross-region`` or ``internet``; default: the sheet's.
        disk: Local-disk price key (``aws/ebs-gp3``); default: the cloud's first.
        mem_budget_bytes: Most RAM deli's cache may take on one VM.
        vm_cpus: CPU cores of one VM for decoding; None: decode is not modelled (the cores it
            needs are reported instead).
        batch_size: Samples per step per GPU; default: the profile's.
        target_au: AU to reach.
        seed: Sampler seed of the simulated orders.

    Raises:
        UsageError: Bad counts, an unknown instance, egress class or disk.
    """
    from delibench.reports.prices import EGRESS_CLASSES, provider_for_url
    from delibench.tuning.simulator import CacheSimulator

    if gpus < 1:
        raise UsageError(f"--gpus must be at least 1, got {gpus}")
    if mem_budget_bytes < 0:
        raise UsageError(f"--mem-budget must not be negative, got {mem_budget_bytes}")
    if vm_cpus is not None and vm_cpus < 1:
        raise UsageError(f"--vm-cpus must be at least 1, got {vm_cpus}")
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size must be at least 1, got {batch_size}")
    if not sample_sizes:
        raise UsageError("the dataset has no samples")
    provider = provider_for_url(dataset_url, default=str(sheet.defaults.get("provider", "aws")))
    vm = sheet.instance(instance) if instance else pick_instance(sheet, provider, profile.accelerator, gpus)
    egress = egress_class or str(sheet.defaults.get("egress_class", "cross-region"))
    if egress not in EGRESS_CLASSES and f"{provider}/{egress}" not in sheet.egress:
        raise UsageError(f"unknown egress class {egress!r}", hint=f"use one of {', '.join(EGRESS_CLASSES)}")
    disks = {k: p for k, p in sheet.storage.items() if k.startswith(f"{provider}/")} if disk is None else {}
    if disk is not None:
        if disk not in sheet.storage:
            raise UsageError(f"unknown disk price {disk!r}", hint=f"known: {', '.join(sorted(sheet.storage))}")
        disks = {disk: sheet.storage[disk]}
    if not disks:
        raise UsageError(f"price sheet {sheet.id} has no local-disk price for {provider!r}", hint="pass --disk or add one with --prices")
    disk_key, disk_price = next(iter(sorted(disks.items())))
    batch = batch_size or profile.batch_size
    vms = max(1, math.ceil(gpus / max(1, vm.accelerator_count)))
    cluster = Cluster(profile=profile.name, gpus=gpus, gpu_samples_per_s=profile.samples_per_s, batch_size=batch, instance=vm, vms=vms)

    # One VM's link, as this machine measured it; decode only when the VM's cores are known.
    base = probe.link_estimate()
    link = dataclasses.replace(base, decode_samples_per_s=base.decode_samples_per_s if vm_cpus else None, cpu_count=vm_cpus or 1)
    demand = cluster.demand(num_workers=vm_cpus or 1)
    total = int(sum(sample_sizes))
    share = max(1, math.ceil(total / vms))  # what one VM's node cache would need to hold
    budget = min(mem_budget_bytes, 1 << max(0, math.ceil(math.log2(share))))
    caches = [0] + [budget >> k for k in range(0, 7) if budget >> k > 0]
    simulator = CacheSimulator(list(sample_sizes), epochs=2, seed=seed, world_size=vms, order="locality" if vms > 1 else "shuffle", ranks=(0,))
    starve = will_starve(
        link,
        demand,
        candidate_configs(caches, num_workers=vm_cpus),
        lambda cfg: simulator.run(cfg.cache_size_bytes, cfg.eviction).last_epoch_miss_rate,
        target_au=target_au,
    )
    if not vm_cpus and probe.decode_samples_per_s:
        starve.needs["decode_cpus"] = math.ceil(target_au * starve.demand_samples_per_s / probe.decode_samples_per_s)

    get_price = sheet.object_store(provider).get_usd_per_1000
    egress_price = sheet.egress_price(provider, egress).usd_per_gb
    object_rate = probe.server_objects_per_s or probe.objects_per_s
    stage_rate = min(probe.bandwidth_bytes_per_s, object_rate * probe.mean_sample_bytes)
    local = predict_wait(starve.recommended, link, demand, 0.0)  # from local disk: only decode can bind
    train_rate = demand.samples_per_s * local.accelerator_utilization
    inputs = StageStreamInputs(
        dataset_bytes=float(total),
        dataset_samples=len(sample_sizes),
        vms=vms,
        vm_usd_per_hour=vm.usd_per_hour,
        train_samples_per_s=train_rate,
        stage_bytes_per_s=stage_rate,
        stream_au_first=max(starve.first_epoch.accelerator_utilization / local.accelerator_utilization, 1e-9),
        stream_au_steady=max(starve.prediction.accelerator_utilization / local.accelerator_utilization, 1e-9),
        stream_miss_steady=starve.miss_rate,
        get_usd_per_1000=get_price,
        egress_usd_per_gb=egress_price,
        disk_usd_per_gb_month=disk_price.usd_per_gb_month,
    )
    plan = stage_or_stream(inputs, epochs)
    notes = [
        f"link figures are this machine's ({probe.cpu_count} CPUs); each of the {vms} VM(s) is assumed to get the same link to the bucket",
        "stage: every VM copies the whole dataset at min(bandwidth, object rate x mean size) with its GPUs idle; local disk is not a bound",
        "stream: deli with one node-wide cache per VM" + (" and order=locality" if vms > 1 else "") + "; the first epoch fetches every sample",
        "the bucket's own storage is the same either way and is not counted; a billed GB is 2^30 bytes, a month 730 h",
    ]
    if not vm_cpus:
        notes.append("decode is not modelled (pass --vm-cpus): at this machine's decode rate the VM needs the cores under 'decode CPUs'")
    if profile.approximate:
        notes.append(f"profile {profile.name} is a published, approximate figure: calibrate one on the GPU for an exact step time")
    return Advice(
        dataset_url=dataset_url,
        dataset_samples=len(sample_sizes),
        dataset_bytes=total,
        cluster=cluster,
        probe={
            "rtt_s": probe.rtt_s,
            "bandwidth_bytes_per_s": probe.bandwidth_bytes_per_s,
            "bandwidth_resolved": probe.bandwidth_resolved,
            "objects_per_s": probe.objects_per_s,
            "server_objects_per_s": probe.server_objects_per_s,
            "mean_sample_bytes": probe.mean_sample_bytes,
            "decode_samples_per_s": probe.decode_samples_per_s,
            "stage_bytes_per_s": stage_rate,
        },
        prices={
            "sheet": sheet.id,
            "instance": vm.key,
            "vm_usd_per_hour": vm.usd_per_hour,
            "provider": provider,
            "get_usd_per_1000": get_price,
            "egress_class": egress,
            "egress_usd_per_gb": egress_price,
            "disk": disk_key,
            "disk_usd_per_gb_month": disk_price.usd_per_gb_month,
        },
        starve=starve,
        plan=plan,
        notes=tuple(notes),
    )
