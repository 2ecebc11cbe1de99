"""An analytic model of the data-wait fraction of a DELI configuration, from probe numbers and a miss rate.

The model is a throughput balance (a roofline for the input pipeline):

* demand ``D = batch_size / step_time_s`` samples/s (what the accelerator consumes);
* one GET takes ``t_req = rtt_s + sample_bytes / bandwidth_bytes_per_s``; at most
  ``min(concurrency, prefetch_depth)`` are in flight (Little's law: the prefetcher cannot have more
  requests out than samples it looks ahead), so objects arrive at
  ``min(in_flight / t_req, bandwidth / sample_bytes, server ceiling)`` per second;
* only misses are fetched, so fetching supplies ``fetch_rate / miss_rate`` samples/s;
* decoding supplies ``decode_samples_per_s * workers`` (workers capped by CPUs);
* the pipeline delivers ``S = min(fetch supply, decode supply)`` and the accelerator waits
  ``max(0, B/S - step)`` per batch. With ``num_workers = 0`` decoding runs inside ``next()``, so its
  time is added to the wait instead of being overlapped.

It ignores warm-up, jitter and CPU contention between decode, fetch threads and (on a testbed) the
object store itself, so it ranks configurations better than it predicts absolute values; the tuner
enqueues its best guesses first and records predicted against measured for every trial.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from delibench.errors import UsageError
from delibench.tuning.space import TuneConfig

__all__ = ["Demand", "LinkEstimate", "WaitPrediction", "predict_wait"]


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
    """

    rtt_s: float
    bandwidth_bytes_per_s: float
    sample_bytes: float
    decode_samples_per_s: float | None = None
    cpu_count: int = 1
    server_objects_per_s: float | None = None

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
    """

    batch_size: int
    step_time_s: float
    num_workers: int = 2

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise UsageError(f"batch size must be at least 1, got {self.batch_size}")
        if not self.step_time_s > 0:
            raise UsageError(f"step time must be positive, got {self.step_time_s}")
        if self.num_workers < 0:
            raise UsageError(f"num_workers must not be negative, got {self.num_workers}")

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
    """

    wait_fraction: float
    supply_samples_per_s: float
    demand_samples_per_s: float
    bound: str
    in_flight_needed: float

    @property
    def accelerator_utilization(self) -> float:
        """1 - wait fraction."""
        return 1.0 - self.wait_fraction


def predict_wait(config: TuneConfig, link: LinkEstimate, demand: Demand, miss_rate: float) -> WaitPrediction:
    """Predict the steady-state data-wait fraction of ``config``.

    Args:
        config: The loader configuration.
        link: Probe numbers (RTT, bandwidth, sample size, decode rate).
        demand: Batch size and step time.
        miss_rate: Share of samples that must be fetched (1 - cache hit rate, from the simulator).

    Returns:
        The prediction, with the supply rate and the bound that limits it.

    Raises:
        UsageError: ``miss_rate`` outside [0, 1].
    """
    if not 0.0 <= miss_rate <= 1.0:
        raise UsageError(f"miss rate must lie in [0, 1], got {miss_rate}")
    d = demand.samples_per_s
    in_flight = min(config.concurrency, config.prefetch_depth)
    rates = {
        "latency": in_flight / link.request_time_s if link.request_time_s > 0 else math.inf,
        "bandwidth": link.bandwidth_bytes_per_s / link.sample_bytes,
    }
    if link.server_objects_per_s is not None:
        rates["server"] = link.server_objects_per_s
    fetch_bound = min(rates, key=lambda k: rates[k])
    fetch_objects_per_s = rates[fetch_bound]
    fetch_supply = math.inf if miss_rate == 0 else fetch_objects_per_s / miss_rate

    workers = config.num_workers if config.num_workers is not None else demand.num_workers
    serial_decode_s = 0.0  # decode time per batch that is NOT overlapped with compute
    decode_supply = math.inf
    if link.decode_samples_per_s is not None:
        if workers == 0:
            serial_decode_s = demand.batch_size / link.decode_samples_per_s
        else:
            decode_supply = link.decode_samples_per_s * min(workers, link.cpu_count)

    supply = min(fetch_supply, decode_supply)
    bound = "none"
    if supply < d:
        bound = "decode" if decode_supply <= fetch_supply else fetch_bound
    elif serial_decode_s > 0:
        bound = "decode"
    batch_time_s = demand.batch_size / supply if supply > 0 else math.inf
    wait_s = max(0.0, batch_time_s - demand.step_time_s) + serial_decode_s
    fraction = 1.0 if math.isinf(wait_s) else wait_s / (wait_s + demand.step_time_s)
    return WaitPrediction(
        wait_fraction=fraction,
        supply_samples_per_s=supply,
        demand_samples_per_s=d,
        bound=bound,
        in_flight_needed=d * miss_rate * link.request_time_s,
    )
