"""An analytic model of the data-wait fraction of a DELI configuration, from probe numbers and a miss rate.

The model is a throughput balance (a roofline for the input pipeline), with the prefetch window
played out sample by sample:

* demand ``D = batch_size / step_time_s`` samples/s (what the accelerator consumes);
* one GET takes ``t_req = rtt_s + sample_bytes / bandwidth_bytes_per_s``. The prefetcher walks the
  order at most ``prefetch_depth`` *positions* ahead of the decode workers and keeps at most
  ``concurrency`` GETs in flight; a cache hit inside the window is ready at once but still holds
  its position. So the GETs in flight are ``min(concurrency, prefetch_depth x miss_rate)``, not
  ``min(concurrency, prefetch_depth)``: with a third of the samples cached, depth 4 keeps fewer
  than 3 GETs out. :func:`pipeline_rate` plays this window out over a few thousand positions
  (Little's law with the window's real occupancy) instead of a closed form;
* the link and the store cap objects/s at ``bandwidth / sample_bytes`` and the store's ceiling;
  only misses are fetched, so those caps supply ``cap / miss_rate`` samples/s;
* decoding supplies the no-fetch pipeline's measured rate for the config's workers (decode,
  collate, hand-over; ``pipeline_samples_per_s``), else ``decode_samples_per_s x min(workers,
  CPUs)``. The CPUs are shared: each fetched object also costs ``fetch_cpu_s`` of this host's CPU
  (client, and a local store or link emulator). That figure is read host-wide, other tenants
  included, so only the pessimistic reading counts it (see the band below);
* the accelerator waits ``max(0, B/S - step)`` per batch, plus ``STEP_OVERHEAD_S`` (handing a
  decoded batch over); with ``num_workers = 0`` decoding runs inside ``next()`` at the loop
  process's own decode rate and adds to the wait;
* a measured epoch of ``steps_per_epoch`` steps also waits for its first batch's decode (one
  worker decodes it while the others have nothing to do), and gains the samples the prefetcher
  fetched during the previous epoch's tail (up to ``prefetch_depth``).

Each prediction carries a band: the same model run with the probe's optimistic and pessimistic
readings (the RTT's spread, a bandwidth the probe could not resolve, a store ceiling read from a
short burst, a request rate beyond the one the probe reached, host CPU per GET, a decode rate without the pipeline's hand-over or in the
training process, and CPU-side rates cut by the share of the host other work kept busy when
probed). A band wider than :data:`TRUST_BAND` makes the prediction untrusted, its reason names the
readings that move it, and the tuner does not enqueue it.

Validated by ``benchmarks/model_check.py`` (see ``benchmarks/results/model-check.txt``).
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, replace
from functools import lru_cache

from delibench.errors import UsageError
from delibench.tuning.space import TuneConfig

__all__ = ["BUSY_HOST", "EPOCH_START_S", "STEP_OVERHEAD_S", "TRUST_BAND", "Demand", "LinkEstimate", "WaitPrediction", "pipeline_rate", "predict_wait"]

#: Seconds ``next()`` costs even when the decoded batch is ready (worker -> loop hand-over, collate).
STEP_OVERHEAD_S = 0.0015

#: Seconds a measured epoch loses at its start beyond its first batch's decode: the persistent
#: workers' iterator reset and the first batch request's round trip (30-60 ms on the 2-core testbed).
EPOCH_START_S = 0.03

#: Batches each DataLoader worker decodes ahead of the loop (torch's default ``prefetch_factor``).
DATALOADER_PREFETCH_FACTOR = 2

#: Widest band (pessimistic minus optimistic wait fraction) of a prediction the model still trusts.
TRUST_BAND = 0.1


@dataclass(frozen=True, slots=True)
class LinkEstimate:
    """What the model needs to know about the path to the bucket and the CPU (from ``tuning.probe``).

    Attributes:
        rtt_s: Time of a small GET (request round trip plus server time).
        bandwidth_bytes_per_s: Aggregate bytes/s the link delivers (shared by all connections).
        sample_bytes: Mean size of one sample object.
        decode_samples_per_s: Samples one process decodes per second (None = free, not a bound).
        cpu_count: CPUs available to decode workers.
        server_objects_per_s: Ceiling of objects/s the store serves (None = unknown, not a bound).
        rtt_min_s: Fastest probe GET (with ``rtt_s``, the RTT's spread); None = no spread known.
        bandwidth_resolved: False when ``bandwidth_bytes_per_s`` is only a lower bound.
        probed_objects_per_s: Objects/s the probe's ceiling read reached (None = not read).
        probed_in_flight: Requests in flight during that read.
        fetch_cpu_s: Host CPU seconds per fetched object (None = not counted).
        decode_main_samples_per_s: Decode rate in the loop's own process (``num_workers=0``);
            None = use ``decode_samples_per_s``.
        pipeline_samples_per_s: ``(num_workers, samples/s)`` pairs: the whole no-fetch pipeline
            (decode, collate, hand-over to the loop) measured from RAM with a near-zero step; where
            given it replaces ``decode x workers``, which misses the hand-over's cost.
        host_busy_fraction: Share of the host's CPUs other work used when probed (None = unknown).
    """

    rtt_s: float
    bandwidth_bytes_per_s: float
    sample_bytes: float
    decode_samples_per_s: float | None = None
    cpu_count: int = 1
    server_objects_per_s: float | None = None
    rtt_min_s: float | None = None
    bandwidth_resolved: bool = True
    probed_objects_per_s: float | None = None
    probed_in_flight: int | None = None
    fetch_cpu_s: float | None = None
    decode_main_samples_per_s: float | None = None
    pipeline_samples_per_s: tuple[tuple[int, float], ...] = ()
    host_busy_fraction: float | None = None

    def __post_init__(self) -> None:
        if not (self.rtt_s >= 0 and math.isfinite(self.rtt_s)):
            raise UsageError(f"rtt must be a finite non-negative number, got {self.rtt_s}")
        if not self.bandwidth_bytes_per_s > 0:
            raise UsageError(f"bandwidth must be positive, got {self.bandwidth_bytes_per_s}")
        if not self.sample_bytes > 0:
            raise UsageError(f"sample size must be positive, got {self.sample_bytes}")
        if self.decode_samples_per_s is not None and not self.decode_samples_per_s > 0:
            raise UsageError(f"decode rate must be positive, got {self.decode_samples_per_s}")
        if self.cpu_count < 1:
            raise UsageError(f"cpu count must be at least 1, got {self.cpu_count}")

    @property
    def request_time_s(self) -> float:
        """Time of one GET of a mean-sized sample on an otherwise idle link."""
        return self.rtt_s + self.sample_bytes / self.bandwidth_bytes_per_s


@dataclass(frozen=True, slots=True)
class Demand:
    """What the training step consumes (one rank).

    Attributes:
        batch_size: Samples per step.
        step_time_s: Compute time of one step (the emulated step time, or a measured one).
        num_workers: DataLoader workers of the run (used when the config does not set its own).
        steps_per_epoch: Steps of the measured epoch (a trial's slice); None = a long epoch, whose
            first batch and carried-over prefetch do not matter.
    """

    batch_size: int
    step_time_s: float
    num_workers: int = 2
    steps_per_epoch: int | None = None

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.step_time_s > 0:
            raise UsageError(f"step time must be positive, got {self.step_time_s}")
        if self.num_workers < 0:
            raise UsageError(f"num_workers must not be negative, got {self.num_workers}")
        if self.steps_per_epoch is not None and self.steps_per_epoch < 1:
            raise UsageError(f"steps per epoch must be at least 1, got {self.steps_per_epoch}")

    @property
    def samples_per_s(self) -> float:
        """Samples per second the accelerator would consume if never starved."""
        return self.batch_size / self.step_time_s


@dataclass(frozen=True, slots=True)
class WaitPrediction:
    """The model's answer for one configuration.

    Attributes:
        wait_fraction: Predicted data-wait fraction in [0, 1).
        supply_samples_per_s: Samples/s the pipeline can deliver (inf when nothing bounds it).
        demand_samples_per_s: Samples/s the accelerator consumes.
        bound: What limits supply: ``latency`` (in-flight requests), ``bandwidth``, ``server``,
            ``decode``, or ``none`` when supply covers demand.
        in_flight_needed: Requests that must be in flight to keep up (latency x miss demand).
        low: Wait fraction with the probe's optimistic readings.
        high: Wait fraction with its pessimistic readings.
        trusted: Whether the band ``high - low`` is within :data:`TRUST_BAND`.
        uncertain_reason: What widens the band, when not trusted.
    """

    wait_fraction: float
    supply_samples_per_s: float
    demand_samples_per_s: float
    bound: str
    in_flight_needed: float
    low: float = 0.0
    high: float = 0.0
    trusted: bool = True
    uncertain_reason: str = ""

    @property
    def accelerator_utilization(self) -> float:
        """1 - wait fraction."""
        return 1.0 - self.wait_fraction


@lru_cache(maxsize=4096)
def _pipeline_rate(depth: int, concurrency: int, miss: float, t_req: float, pace_s: float, n: int) -> float:
    rng = random.Random(1234567)
    take = [0.0] * n
    done: list[float] = []  # completion times of the misses, in issue order (non-decreasing)
    last_issue = 0.0
    prev = 0.0
    for p in range(n):
        issue = max(last_issue, take[p - depth] if p >= depth else 0.0)
        if rng.random() < miss:
            if len(done) >= concurrency:
                issue = max(issue, done[-concurrency])
            ready = issue + t_req
            done.append(ready)
        else:
            ready = issue
        last_issue = issue
        prev = take[p] = max(ready, prev + pace_s)
    half = n // 2
    span = take[-1] - take[half]
    return math.inf if span <= 0 else (n - 1 - half) / span


def pipeline_rate(depth: int, concurrency: int, miss_rate: float, request_time_s: float, pace_s: float, *, positions: int = 3000) -> float:
    """Samples/s the prefetch window delivers to a consumer that takes one sample every ``pace_s``.

    Plays the prefetcher out position by position: position ``p`` is looked up when the consumer
    has taken ``p - depth``; a miss (drawn with probability ``miss_rate``, a fixed seed) is sent
    when fewer than ``concurrency`` are in flight and is ready ``request_time_s`` later; a hit is
    ready at once. The consumer takes positions in order, no faster than ``pace_s`` apart. The
    rate is read over the second half (the steady state). Latency only: bandwidth and store
    ceilings are applied by :func:`predict_wait`.
    """
    if miss_rate <= 0:
        return math.inf if pace_s <= 0 else 1.0 / pace_s
    # Rounded arguments keep the memo small when a whole space is screened.
    return _pipeline_rate(max(1, depth), max(1, concurrency), round(miss_rate, 3), float(f"{request_time_s:.4g}"),
                          float(f"{pace_s:.4g}"), positions)


@dataclass(frozen=True, slots=True)
class _Point:
    fraction: float
    supply: float
    bound: str


def _phases(config: TuneConfig, miss_rate: float) -> list[tuple[float, float]]:
    """(share of the epoch, miss rate within it): where in the epoch the misses fall.

    Belady keeps the samples the next epoch needs soonest, so a warm epoch starts with its hits
    and ends with its misses (a run of pure misses at the window's full-miss rate); LRU's hits are
    spread over the shuffled order.
    """
    if config.eviction == "belady" and 0.0 < miss_rate < 1.0 and config.cache_size_bytes > 0:
        return [(1.0 - miss_rate, 0.0), (miss_rate, 1.0)]
    return [(1.0, miss_rate)]


def _point(config: TuneConfig, link: LinkEstimate, demand: Demand, miss_rate: float) -> _Point:
    d = demand.samples_per_s
    batch, step = demand.batch_size, demand.step_time_s
    workers = config.num_workers if config.num_workers is not None else demand.num_workers
    r1 = link.decode_samples_per_s
    measured = dict(link.pipeline_samples_per_s).get(workers)
    # --- decode and CPU
    serial_per_sample = 0.0  # decode inside next() (num_workers=0)
    decode_supply = math.inf
    if workers == 0:
        rate0 = measured or link.decode_main_samples_per_s or r1
        if rate0:
            serial_per_sample = 1.0 / rate0
    elif measured or r1 is not None:
        base = measured or r1 * min(workers, link.cpu_count)  # type: ignore[operator]
        decode_supply = base
        if link.fetch_cpu_s and r1 is not None and min(workers, link.cpu_count) >= link.cpu_count:
            # Every CPU decodes: each fetched object's CPU (client, local store) comes off decoding.
            decode_supply = 1.0 / (1.0 / base + miss_rate * link.fetch_cpu_s / link.cpu_count)
    decode_period = batch / decode_supply if serial_per_sample == 0 else step + batch * serial_per_sample
    consumer = min(d, decode_supply) if serial_per_sample == 0 else 1.0 / (1.0 / d + serial_per_sample)
    t_req = link.request_time_s
    caps = {"bandwidth": link.bandwidth_bytes_per_s / link.sample_bytes}
    if link.server_objects_per_s is not None:
        caps["server"] = link.server_objects_per_s

    # --- per phase: the fetch supply (window, then the link's and the store's caps) and the period
    wait_steps = 0.0  # wait per step, averaged over the epoch (without the hand-over overhead)
    worst_period, worst_bound, worst_fetch = step, "none", math.inf
    fetch_bound_share = 0.0
    for share, miss in _phases(config, miss_rate):
        if miss == 0:
            fetch_supply, fetch_bound = math.inf, "none"
        else:
            # The window is played out at a pace a little above the consumer's own, so the rate it
            # returns says whether latency binds without being capped at demand itself.
            window = pipeline_rate(config.prefetch_depth, config.concurrency, miss, t_req, 1.0 / (1.25 * consumer))
            rates = {"latency": window, **{k: v / miss for k, v in caps.items()}}
            fetch_bound = min(rates, key=lambda k: rates[k])
            fetch_supply = rates[fetch_bound]
        fetch_period = batch / fetch_supply
        period = max(step, decode_period, fetch_period)
        wait_steps += share * (period - step)
        if fetch_period > max(step, decode_period):
            fetch_bound_share += share
        if period > worst_period:
            worst_period, worst_fetch = period, fetch_supply
            worst_bound = "decode" if decode_period >= fetch_period else fetch_bound
    supply = batch / (worst_period - batch * serial_per_sample) if worst_period > batch * serial_per_sample else math.inf
    n = demand.steps_per_epoch
    if n is None:
        wait = wait_steps + STEP_OVERHEAD_S
        return _Point(wait / (wait + step), supply, worst_bound)
    # --- a finite measured epoch: its first batch, and the prefetch lead it starts a fetch-bound run with
    head = batch / (measured or r1) if ((measured or r1) and workers > 0) else 0.0  # type: ignore[operator]
    steady = n * wait_steps
    if fetch_bound_share > 0 and math.isfinite(worst_fetch):
        # The previous epoch's tail (or the hits before a run of misses) let the window fill.
        hit_samples = (1.0 - fetch_bound_share) * n * batch
        if hit_samples > 0 and workers > 0:
            # Belady's hits open the epoch: the decode workers race through them up to the
            # DataLoader's prefetch (2 batches per worker) ahead of the loop, so the run of misses
            # starts that many samples (at the loop's pace) early. Depth does not add here: the
            # workers pass the hits faster than any window could fetch ahead of them.
            credit_s = min(DATALOADER_PREFETCH_FACTOR * workers * batch, hit_samples) / d
        else:
            # The epoch's tail (the workers decode the last batches, the loop steps through them)
            # lets the window fetch up to ``prefetch_depth`` of the next epoch's first samples.
            tail_s = step * max(1, workers) + head
            credit_s = min(config.prefetch_depth, fetch_bound_share * n * batch, tail_s * worst_fetch) / worst_fetch
        steady = max(0.0, steady - credit_s)
    wait = EPOCH_START_S + head + steady + n * STEP_OVERHEAD_S
    return _Point(wait / (wait + n * step), supply, worst_bound)


#: Host CPU share busy with other work above which CPU-side readings are taken as unreliable.
BUSY_HOST = 0.25


def _band(config: TuneConfig, link: LinkEstimate, demand: Demand, miss_rate: float) -> tuple[float, float, list[str]]:
    """Wait fractions with the probe's optimistic and pessimistic readings, and the readings that matter.

    Each uncertain reading is varied alone too; the reasons name those that move the prediction
    by more than 0.02 on their own.
    """
    factors: list[tuple[str, dict[str, object], dict[str, object]]] = []
    if link.rtt_min_s is not None and link.rtt_min_s < link.rtt_s:
        spread = link.rtt_s - link.rtt_min_s
        factors.append(("RTT spread", {"rtt_s": link.rtt_min_s}, {"rtt_s": link.rtt_s + spread}))
    if not link.bandwidth_resolved:
        factors.append(("bandwidth not resolved by the probe", {"bandwidth_bytes_per_s": link.bandwidth_bytes_per_s * 1e3}, {}))
    in_flight = min(config.concurrency, config.prefetch_depth)
    if (
        link.server_objects_per_s is None
        and link.probed_objects_per_s is not None
        and link.probed_in_flight is not None
        and in_flight > link.probed_in_flight
    ):
        factors.append((f"request rate beyond the probe's ({link.probed_in_flight} in flight)", {},
                        {"server_objects_per_s": link.probed_objects_per_s}))
    if link.server_objects_per_s is not None and miss_rate > 0:
        # A store ceiling read from a few round trips of requests may be the start-up of a burst
        # (queues filling) rather than the sustained rate: optimistically it is twice as high.
        factors.append(("store ceiling from a short read", {"server_objects_per_s": 2 * link.server_objects_per_s}, {}))
    if link.fetch_cpu_s and miss_rate > 0:
        factors.append(("host CPU per GET", {"fetch_cpu_s": None}, {}))  # the pessimistic reading keeps it
    workers = config.num_workers if config.num_workers is not None else demand.num_workers
    measured = dict(link.pipeline_samples_per_s).get(workers)
    busy = link.host_busy_fraction or 0.0
    slow = 0.9 if busy <= BUSY_HOST else max(0.3, 1.0 - busy)
    pairs = dict(link.pipeline_samples_per_s)
    if measured is not None:
        factors.append(("no-fetch pipeline rate", {"pipeline_samples_per_s": tuple((w, r * 1.05) for w, r in pairs.items())},
                        {"pipeline_samples_per_s": tuple((w, r * slow) for w, r in pairs.items())}))
    elif link.decode_samples_per_s is not None:  # None: the caller says decoding is free
        r1 = link.decode_samples_per_s
        # NOTE: the decode rate alone misses collating and handing decoded batches to the loop,
        # which cost more than the decode for 224 px images on 2 cores; without a pipeline
        # measurement the pessimistic reading halves it.
        factors.append(("decode rate without the pipeline's hand-over", {"decode_samples_per_s": r1 * 1.05},
                        {"decode_samples_per_s": r1 * min(0.5, slow)}))
        if workers == 0:
            main = link.decode_main_samples_per_s or r1
            # NOTE: decode in the loop's process shares its GIL and torch threads with the fetcher
            # and the hand-over; the probe measured it in a quieter process.
            factors.append(("decode in the training process (num_workers=0)", {"decode_main_samples_per_s": max(main, r1)},
                            {"decode_main_samples_per_s": main * 0.5}))
    nominal = _point(config, replace(link, fetch_cpu_s=None), demand, miss_rate).fraction
    opt: dict[str, object] = {}
    pess: dict[str, object] = {}
    reasons: list[str] = []
    for name, o, p in factors:
        opt.update(o)
        pess.update(p)
        alone = [_point(config, replace(link, **{"fetch_cpu_s": None, **o}), demand, miss_rate).fraction,  # type: ignore[arg-type]
                 _point(config, replace(link, **p), demand, miss_rate).fraction]  # type: ignore[arg-type]
        if max(abs(a - nominal) for a in alone) > 0.02:
            reasons.append(name)
    if busy > BUSY_HOST and any(r in reasons for r in ("no-fetch pipeline rate", "decode rate without the pipeline's hand-over")):
        reasons.append(f"host CPUs {busy:.0%} busy with other work when probed")
    lo = _point(config, replace(link, **opt), demand, miss_rate).fraction  # type: ignore[arg-type]
    hi = _point(config, replace(link, **pess), demand, miss_rate).fraction  # type: ignore[arg-type]
    return min(lo, hi), max(lo, hi), reasons


def predict_wait(config: TuneConfig, link: LinkEstimate, demand: Demand, miss_rate: float) -> WaitPrediction:
    """Predict the data-wait fraction of ``config`` (of a measured epoch of ``demand.steps_per_epoch``).

    Args:
        config: The loader configuration.
        link: Probe numbers (RTT, bandwidth, sample size, decode rate, ...).
        demand: Batch size, step time, workers, steps per measured epoch.
        miss_rate: Share of samples that must be fetched (1 - cache hit rate, from the simulator).

    Returns:
        The prediction, with the supply rate, the bound that limits it and the band (trusted or not).

    Raises:
        UsageError: ``miss_rate`` outside [0, 1].
    """
    if not 0.0 <= miss_rate <= 1.0:
        raise UsageError(f"miss rate must lie in [0, 1], got {miss_rate}")
    nominal = _point(config, replace(link, fetch_cpu_s=None), demand, miss_rate)
    lo, hi = nominal.fraction, nominal.fraction
    reasons: list[str] = []
    lo_b, hi_b, reasons = _band(config, link, demand, miss_rate)
    lo, hi = min(lo, lo_b), max(hi, hi_b)
    trusted = hi - lo <= TRUST_BAND
    why = ""
    if not trusted:
        why = f"band {lo:.2f}-{hi:.2f}" + (f" ({', '.join(reasons)})" if reasons else "")
    return WaitPrediction(
        wait_fraction=nominal.fraction,
        supply_samples_per_s=nominal.supply,
        demand_samples_per_s=demand.samples_per_s,
        bound=nominal.bound,
        in_flight_needed=demand.samples_per_s * miss_rate * link.request_time_s,
        low=lo,
        high=hi,
        trusted=trusted,
        uncertain_reason=why,
    )
