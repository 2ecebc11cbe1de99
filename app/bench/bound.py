"""The physical bound of an epoch: the most any loader could deliver, as a pure function of measured inputs.

The bound is ``min(accelerator rate, CPU rate, link bandwidth / mean sample size / miss rate, store
ceiling / miss rate, no-fetch pipeline rate)``. The CPU rate is ``cores / (CPU per sample of the
pipeline + miss rate x CPU per object of the co-located store and emulator)``: on a testbed the
store shares the cores with decoding, and counting it keeps efficiency figures honest. Each
epoch's fetch terms also carry the round trips before its first byte (fill) and the last sample's
decode and step after its last byte (drain). Nothing here measures or starts anything.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = [
    "Bound",
    "bound_for",
    "compute_bound",
    "epoch_bounds",
    "fetch_term_rate",
    "no_fetch_bounds",
    "wait_reduction_at_bound",
]


@dataclass(frozen=True)
class Bound:
    """The physical bound of one epoch, with every input.

    Attributes:
        epoch: Epoch index.
        miss_rate: Best miss rate a cache of the budget can reach in this epoch (simulated).
        accelerator_per_s: Batch / step time.
        cpu_per_s: Cores / (pipeline CPU per sample + miss rate x store/emulator CPU per object),
            the pipeline's CPU per sample being the no-fetch loaders' steady-state CPU.
        link_per_s: Link bandwidth / mean sample bytes / miss rate.
        store_per_s: Raw-fetch ceiling (direct) / miss rate.
        samples_per_s: The minimum of the terms.
        binds: Which term is the minimum.
        pipeline_per_s: Measured rate of the same decode pipeline with no fetch at all (the memory
            and disk loaders, DS-Analyzer's prep rate) in this epoch: a loader that also fetches
            cannot beat it. Below the accelerator it holds what CPU time alone does not show (the
            hand-over to the workers, their scheduling, the jitter of the last batch).
        fill_s: Time before the first byte of an epoch can arrive: the round trips of a new
            connection and of the first request (the rates above are steady-state rates).
        drain_s: Time after the epoch's last byte has arrived that no loader can avoid: that
            sample's decode and the last step. Fill and drain are added to the fetch terms of an
            epoch measured whole (:func:`fetch_term_rate`); with epochs of 10 batches they are
            several per cent of a bandwidth-bound epoch.
    """

    epoch: int
    miss_rate: float
    accelerator_per_s: float
    cpu_per_s: float
    link_per_s: float
    store_per_s: float
    samples_per_s: float
    binds: str
    pipeline_per_s: float = math.inf
    fill_s: float = 0.0
    drain_s: float = 0.0


def compute_bound(
    *,
    epoch: int,
    miss_rate: float,
    accelerator_per_s: float,
    cores: float,
    pipeline_cpu_s_per_sample: float | None,
    testbed_cpu_s_per_object: float,
    link_bytes_per_s: float,
    mean_sample_bytes: float,
    store_objects_per_s: float,
    pipeline_per_s: float = math.inf,
    fill_s: float = 0.0,
    drain_s: float = 0.0,
) -> Bound:
    """``min(accelerator, CPU, link bandwidth / size / miss, store ceiling / miss, no-fetch pipeline)`` for one epoch.

    A zero bandwidth (an unshaped link) or a zero miss rate leaves that term unbounded. ``fill_s``
    and ``drain_s`` are kept for :func:`fetch_term_rate` (see :class:`Bound`).
    """

    def per_miss(rate: float) -> float:
        if rate <= 0:
            return math.inf
        return math.inf if miss_rate <= 0 else rate / miss_rate

    cpu_cost = (pipeline_cpu_s_per_sample or 0.0) + miss_rate * testbed_cpu_s_per_object
    terms = {
        "accelerator": accelerator_per_s,
        "cpu": cores / cpu_cost if cpu_cost > 0 else math.inf,
        "link": per_miss(link_bytes_per_s / mean_sample_bytes if link_bytes_per_s > 0 else 0.0),
        "store": per_miss(store_objects_per_s),
        "pipeline": pipeline_per_s,
    }
    binds = min(terms, key=lambda k: terms[k])
    return Bound(epoch, miss_rate, terms["accelerator"], terms["cpu"], terms["link"], terms["store"], terms[binds], binds,
                 pipeline_per_s, fill_s, drain_s)



def epoch_bounds(
    *,
    miss_rates: Sequence[float],
    accelerator_per_s: float,
    cores: float,
    pipeline_cpu_s_per_sample: float | None,
    pipeline_epoch_rates: Sequence[Sequence[float]],
    testbed_cpu_s_per_object: float,
    link_bytes_per_s: float,
    mean_sample_bytes: float,
    store_objects_per_s: float,
    rtt_s: float,
    connect_rtts: int,
    step_time_s: float,
) -> list[Bound]:
    """The bound of each epoch of a cell for the loaders that fetch, from what the cell measured.

    Args:
        miss_rates: Best reachable miss rate per epoch.
        accelerator_per_s: Batch / step time.
        cores: CPU cores the run may use.
        pipeline_cpu_s_per_sample: Steady-state CPU per sample of the no-fetch loaders (None: unknown).
        pipeline_epoch_rates: Per no-fetch loader, its measured throughput per epoch.
        testbed_cpu_s_per_object: CPU per object of the co-located store and link emulator.
        link_bytes_per_s: The link's bandwidth (0: unshaped).
        mean_sample_bytes: Mean sample size.
        store_objects_per_s: The store's raw-fetch ceiling (direct).
        rtt_s: The link's round-trip time.
        connect_rtts: Round trips a new connection takes before its first request.
        step_time_s: The accelerator's time per batch.
    """
    bounds = []
    for e, m in enumerate(miss_rates):
        rates = [r[e] for r in pipeline_epoch_rates if e < len(r)]
        epoch_cpu = pipeline_cpu_s_per_sample
        if epoch_cpu is not None and rates:
            # The pipeline cannot have burnt more than every core for the whole epoch: at its measured
            # rate that caps its CPU per sample (the process-tree CPU readings carry ~10 % error).
            epoch_cpu = min(epoch_cpu, cores / max(rates))
        bounds.append(compute_bound(
            epoch=e,
            miss_rate=m,
            accelerator_per_s=accelerator_per_s,
            cores=cores,
            pipeline_cpu_s_per_sample=epoch_cpu,
            testbed_cpu_s_per_object=testbed_cpu_s_per_object,
            link_bytes_per_s=link_bytes_per_s,
            mean_sample_bytes=mean_sample_bytes,
            store_objects_per_s=store_objects_per_s,
            pipeline_per_s=max(rates) if rates else math.inf,
            # The first byte needs a new connection's round trips in epoch 0 (after a pause, one
            # round trip); after the last byte, that sample's decode and the last step remain.
            fill_s=rtt_s * ((connect_rtts + 1) if e == 0 else 1),
            drain_s=step_time_s + (epoch_cpu or 0.0),
        ))
    return bounds


def no_fetch_bounds(bounds: Sequence[Bound], *, cores: float, pipeline_cpu_s_per_sample: float | None,
                    mean_sample_bytes: float) -> list[Bound]:
    """The bounds of the loaders that read no bucket (disk, memory): no link, store or fetch-CPU term."""
    return [
        compute_bound(epoch=b.epoch, miss_rate=0.0, accelerator_per_s=b.accelerator_per_s, cores=cores,
                      pipeline_cpu_s_per_sample=pipeline_cpu_s_per_sample, testbed_cpu_s_per_object=0.0,
                      link_bytes_per_s=0.0, mean_sample_bytes=mean_sample_bytes, store_objects_per_s=0.0,
                      pipeline_per_s=b.pipeline_per_s)
        for b in bounds
    ]


def fetch_term_rate(
    bound: Bound, counted: int, *, warmup_samples: int = 0, warmup_s: float = 0.0, whole_epoch: bool = True
) -> float:
    """The epoch's bound for ``counted`` samples measured after a warm-up of ``warmup_s``.

    The fetch terms (link, store) are steady-state rates; an epoch also needs ``fill_s`` before its
    first byte and ``drain_s`` after its last one (when the counted steps reach the epoch's end:
    ``whole_epoch``). The link and the store could already work during the warm-up (a loader that
    looks ahead does), so they only have to carry what the warm-up did not:
    ``counted / (fill + (warmup + counted) / term + drain - warmup_s)``. This is the most any
    loader could reach in the counted window; one that fetched nothing during its warm-up scores
    lower.
    """
    rate = min(bound.accelerator_per_s, bound.cpu_per_s, bound.pipeline_per_s)
    fixed_s = bound.fill_s + (bound.drain_s if whole_epoch else 0.0)
    for term in (bound.link_per_s, bound.store_per_s):
        if math.isfinite(term) and term > 0:
            need_s = fixed_s + (warmup_samples + counted) / term - warmup_s
            rate = min(rate, counted / need_s if need_s > 0 else math.inf)
    return rate


def bound_for(
    samples_per_epoch: Sequence[int],
    bounds: Sequence[Bound],
    *,
    warmup_samples: int = 0,
    warmup_s: float = 0.0,
    whole_epochs: bool = True,
) -> float:
    """Samples / Σ (epoch samples / epoch bound): the bound weighted by a loader's counted samples per epoch.

    Epoch 0 is credited with the link time of the warm-up steps; every epoch's fetch terms carry
    its fill and, when measured to its end (``whole_epochs``), its drain (see :func:`fetch_term_rate`).
    Epochs beyond ``bounds`` take the last bound.
    """
    t = 0.0
    for i, n in enumerate(samples_per_epoch):
        b = bounds[min(i, len(bounds) - 1)]
        head = i == 0 and warmup_s > 0
        rate = fetch_term_rate(b, n, warmup_samples=warmup_samples if head else 0,
                               warmup_s=warmup_s if head else 0.0, whole_epoch=whole_epochs)
        t += n / rate
    return sum(samples_per_epoch) / t if t > 0 else math.inf


def wait_reduction_at_bound(fig: dict[str, Any], bucket: dict[str, Any] | None) -> float | None:
    """The wait reduction vs ``bucket`` that a loader running exactly at ``fig``'s bound would reach.

    Why: where the link binds, the accelerator waits even at the bound (the bytes of each miss
    must cross the link), so "remove 97 % of the wait" can be out of reach for any loader; this
    says how much is reachable. At the bound a sample costs ``1 / bound`` of which the step's
    compute (``1 / throughput - wait``) is not waiting.
    """
    if bucket is None or not bucket.get("wait_s_per_sample") or not fig.get("bound_per_s"):
        return None
    rate = fig["throughput_per_s"]
    if not rate or not math.isfinite(rate) or not math.isfinite(fig["bound_per_s"]):
        return None
    compute_s = max(0.0, 1.0 / rate - fig["wait_s_per_sample"])
    wait_at_bound = max(0.0, 1.0 / fig["bound_per_s"] - compute_s)
    return 1.0 - wait_at_bound / bucket["wait_s_per_sample"]
