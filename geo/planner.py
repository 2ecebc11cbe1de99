"""Placement planner: workers per region, which region reads each shard and whether it streams or copies it.

One time/cost model (:func:`evaluate`) prices every placement, the plan and the baselines alike; a
mixed-integer program (PuLP/CBC) picks the plan.

Inputs: regions r with ``c_r`` accelerators at ``p_r`` USD/hour, ``tau_r`` s/step (per-worker
batch ``b``) and a billing rule; shards s of ``z_s`` bytes (``z_s / beta`` samples) stored in
region ``h(s)``; links with bandwidth ``bw``, RTT and per-direction egress ``e_qr`` (the sender
pays; cross-cloud at the sender's internet rate: :meth:`RegionsConfig.egress_usd_per_gb`), prices
per billed GB (``G`` = 2^30 bytes); ``E`` epochs; a sync strategy with period ``P`` (1 for
``allreduce``, H for ``ma``, K for ``asgd-ga``) and a model of ``M`` bytes.

Time model (workers step in lockstep: every cross-region exchange is a collective of all regions).
With ``n_r`` workers in the active regions A (``N = sum n_r``) and ``S_r`` samples read by r:

    steps     sigma = max_r ceil(E S_r / (n_r b))       (= E S / (N b) when data follows workers)
    rounds    Q = ceil(sigma / P)                        (global batch per round N * b * P)
    round     allreduce/ma: a ring all-reduce of M bytes among A in regions-file order
              (:func:`delibench.geo.sync.ring_allreduce_traffic`, the run's own model): bytes per
              directed link and t_round = sum over 2(|A|-1) steps of max link (rtt/2 + chunk/bw);
              asgd-ga: every region sends M bytes to every other point to point (the run's
              exchange), t_round = max link M/bw when overlapped, plus one tail rtt/2 + M/bw
    compute   sigma * max_{r in A} tau_r                 (the slowest region paces a lockstep step)
    train     compute + Q t_round; asgd-ga with staleness >= 1 overlaps: max(compute, Q t_round) + tail
    copy      before training, each copied shard in turn: (2 + k_s) rtt + k_s m_s (1/R_h + 1/R_r)
              + z_s / bw with k_s = ceil(o_s / C_copy), m_s = min(C_copy, o_s), o_s the shard's objects (``z_s`` over the
              workload's object size: a sample, or a tar shard), two round trips for its manifest,
              C_copy (:data:`COPY_CONCURRENCY`) threads each a GET across then a PUT, and R the
              stores' requests per second (``store_requests_per_s``; no limit by default):
              small objects are latency-bound (:func:`copy_time_s`)
    links     every directed link carries its data (streamed shards p_sr z_s, copied shards z_s once)
              plus Q times its ring bytes, within T at its bandwidth; streamed shards also pay
              p_sr o_s (rtt / (C_stream n_r) + 1 / R_h) of requests (deli's :data:`STREAM_CONCURRENCY`
              GETs in flight per reading worker; R_h the home store's rate, :func:`stream_request_s`)
    passes    p_sr (:func:`stream_passes`): how many times a streamed shard's bytes cross. The reader
              reads it through deli, whose cache never fetches a sample twice while it holds it; each
              of the n_r workers reads a fresh random 1/n_r of the shard every epoch (DistributedSampler's
              order) and so, over E epochs, u = z_s (1 - (1 - 1/n_r)^E) distinct bytes. If u fits in a
              worker's cache (``PlanWorkload.reader_cache_bytes``, per shard: ``geo run`` gives every
              shard a deli loader of its own) each is fetched once: p_sr = n_r (1 - (1 - 1/n_r)^E)
              (1 for one worker or one epoch); otherwise p_sr = E (conservatively every epoch: a cache
              that keeps part of the shard saves part of a pass, not counted)
    T         max(copy + train, every link's bytes / bw + its streamed requests)

Data: a shard read in its home region is local; a remote one is either streamed (egress ``p_sr z_s
e``: every epoch unless deli's cache keeps it) or copied once before training into a bucket of the
reader, as ``geo run --plan`` does (egress ``z_s e`` once plus storage for T; the copy's time adds
to T). Copying wins on cost when ``(p_sr - 1) e > s T / month``: never for a shard the reader's cache
holds with one reading worker (p = 1).

Cost: accelerators by :func:`delibench.geo.cost.billed_accelerator_s` (``hourly``: ``n_r (T - copy)``,
rented once the copies are done, as ``geo run --plan`` starts its workers after them;
``per_second``: busy ``n_r sigma tau_r``) + data egress + storage + sync egress (``Q`` times each
ring link's bytes at its sender's price) — :func:`delibench.geo.cost.geo_cost_usd`, the same
function ``geo run`` prices with.

The program: worker counts are enumerated (with lower-bound pruning); for fixed ``n`` the rest is
linear: binaries ``x_sr`` (r reads s), ``c_sr`` (copy) per remote pair, continuous ``sigma`` and
``T``; storage ``c_sr T`` is linearised with a big-M. ``objective=cost`` minimises cost (``T <=
deadline``); ``objective=time`` minimises ``T`` (``cost <= budget``), then the cost at that ``T``.

Baselines (:func:`baselines`) are what a practitioner would run: all data copied once to one
region, synchronous DDP (``allreduce``) on all its accelerators (the region with the cheapest such
job, among those meeting the deadline); and synchronous DDP on the plan's own regions, workers and
data placement (on every region when the plan keeps to one). They process the same samples; the time/cost model does not predict accuracy,
and ``ma``/``asgd-ga`` take more steps than DDP to reach it on some workloads.
"""

from __future__ import annotations

import difflib
import itertools
import math
from dataclasses import dataclass, field, replace

from delibench.errors import UsageError
from delibench.geo.cost import SECONDS_PER_MONTH, RegionUsage, geo_cost_usd
from delibench.geo.regions import RegionsConfig
from delibench.units import BYTES_PER_BILLED_GB

__all__ = [
    "COPY_CONCURRENCY",
    "DATA_MODES",
    "READER_CACHE_BYTES",
    "STREAM_CONCURRENCY",
    "SYNC_STRATEGIES",
    "WORKLOADS",
    "DataPlacement",
    "Placement",
    "PlanWorkload",
    "SyncChoice",
    "baselines",
    "copy_time_s",
    "evaluate",
    "get_workload",
    "plan_placement",
    "shard_objects",
    "stream_passes",
    "stream_request_s",
]

#: Strategies the planner models (the names ``geo run --sync`` takes).
SYNC_STRATEGIES = ("allreduce", "ma", "asgd-ga")

#: How a region reads a shard: ``local`` (its own), ``stream`` (across every epoch), ``copy`` (once).
DATA_MODES = ("local", "stream", "copy")

#: Most worker combinations the planner enumerates.
MAX_COMBINATIONS = 20_000

#: GETs in flight while a shard is copied into the reader's bucket (``geo run --plan``'s copy,
#: :func:`delibench.geo.task.copy_dataset`).
COPY_CONCURRENCY = 16

#: GETs in flight per reading worker when a shard is streamed (the deli loader's default ``concurrency``).
STREAM_CONCURRENCY = 32

#: Default deli cache of each reading worker, per streamed shard: what ``geo run`` gives every shard's
#: loader (:class:`delibench.geo.task.RegionBatches` uses this as its default ``cache_size``).
READER_CACHE_BYTES = 256 * 2**20


def shard_objects(size_bytes: int, object_bytes: int) -> int:
    """Data objects a shard of ``size_bytes`` is stored as, ``object_bytes`` each (a sample, or a tar shard of them)."""
    return math.ceil(size_bytes / object_bytes - 1e-9)


def copy_time_s(config: RegionsConfig, home: str, reader: str, size_bytes: int, object_bytes: int, *, concurrency: int = COPY_CONCURRENCY) -> float:
    """Seconds to copy a shard from ``home``'s bucket into ``reader``'s: its round trips, the stores' time per request, its bytes.

    How :func:`delibench.geo.task.copy_dataset` runs: the manifest first (two round trips: its size,
    then its bytes), then ``concurrency`` threads, each a loop of one GET across the link and one
    PUT into the reader's bucket, the PUT before the thread's next GET. So each thread's cycle per
    object is the link's round trip plus the time its GET spends at ``home``'s store and its PUT at
    ``reader``'s. A store serving ``R`` requests per second (``store_requests_per_s``) with ``m``
    requests in flight keeps each for ``m / R`` (Little's law; ``R`` is measured with
    :data:`COPY_CONCURRENCY` in flight, ``m = min(concurrency, objects)``), and the copy takes
    ``k = ceil(objects / concurrency)`` cycles::

        (2 + k) * rtt + k * m * (1 / R_home + 1 / R_reader) + bytes / bandwidth

    Why a sum and not ``max(k * rtt, objects / min(R))``: the max would hold if the store's work
    overlapped the round trips of other threads for free, and it does not change the prediction
    here (16 in flight over 70 ms ask ~220 objects/s of a store serving ~800): measured on the
    testbed, 455 objects took 3.1-3.5 s against 2.2 s of round trips, and that copy's GETs across
    the link (2.4 s) plus its PUTs alone at 16 in flight (0.4-0.5 s) add up to it. The sum is
    conservative where the link holds most requests (the store then sees fewer than ``m``). A store
    without a rate (the default) adds nothing: ``(2 + k) * rtt + bytes / bandwidth``, the earlier
    model. The manifest's own requests at the stores are left out (a few against hundreds).
    """
    link = config.link(home, reader)
    objects = shard_objects(size_bytes, object_bytes)
    cycles = math.ceil(objects / concurrency)
    per_request_s = config.region(home).store_request_s + config.region(reader).store_request_s
    return (2 + cycles) * link.rtt_s + cycles * min(concurrency, objects) * per_request_s + size_bytes / link.bandwidth_bytes_per_s


def stream_passes(size_bytes: int, *, epochs: int, readers: int, cache_bytes: int) -> float:
    """How many times a streamed shard's bytes cross its link over ``epochs`` (see the module docstring).

    Each of ``readers`` workers visits a fresh random ``1/readers`` of the shard every epoch, so it
    fetches ``u = size * (1 - (1 - 1/readers)^epochs)`` distinct bytes. When ``u`` fits in its deli
    cache of ``cache_bytes`` every sample is fetched once: ``readers * (1 - (1 - 1/readers)^epochs)``
    passes (1 with one worker or one epoch, at most ``epochs``); otherwise every epoch: ``epochs``.
    """
    n = max(1, readers)
    seen = 1.0 - (1.0 - 1.0 / n) ** epochs
    return n * seen if size_bytes * seen <= cache_bytes else float(epochs)


def stream_request_s(config: RegionsConfig, home: str, reader: str, size_bytes: int, object_bytes: int, *, epochs: float, readers: int) -> float:
    """Seconds of requests to stream a shard ``epochs`` times (its passes): round trips and the home store's time.

    Each of ``readers`` workers keeps :data:`STREAM_CONCURRENCY` GETs in flight (deli's default), so
    ``c = STREAM_CONCURRENCY * readers`` requests overlap; at a home store serving ``R`` requests
    per second each also spends ``c / R`` there (Little's law, as in :func:`copy_time_s`), and a
    request's cycle is ``rtt + c / R``: ``epochs * objects * (rtt / c + 1 / R)``. Without a store
    rate (the default) the second term is 0.
    """
    in_flight = STREAM_CONCURRENCY * max(1, readers)
    per_object_s = config.link(home, reader).rtt_s / in_flight + config.region(home).store_request_s
    return epochs * shard_objects(size_bytes, object_bytes) * per_object_s


@dataclass(frozen=True, slots=True)
class PlanWorkload:
    """What the planner needs to know about the training job.

    Attributes:
        name: Workload name.
        sample_bytes: Mean bytes per stored sample.
        batch_size: Samples per step per worker (the batch the regions' ``step_time_s`` refers to).
        model_bytes: Bytes of parameters exchanged per sync (fp32: 4 per parameter).
        epochs: Passes over the data.
        object_bytes: Bytes per stored object when samples are packed into larger objects (tar
            shards); 0: one object per sample. Copies and streams pay a round trip per object.
        reader_cache_bytes: The deli cache of each worker reading a streamed shard (per shard);
            a shard whose samples fit crosses once, not every epoch (:func:`stream_passes`).
            Default :data:`READER_CACHE_BYTES`, what ``geo run`` gives each shard's loader; 0: no cache.
    """

    name: str
    sample_bytes: int
    batch_size: int
    model_bytes: int
    epochs: int = 1
    object_bytes: int = 0
    reader_cache_bytes: int = READER_CACHE_BYTES

    @property
    def stored_object_bytes(self) -> int:
        """Bytes per object in the bucket (``object_bytes``, else ``sample_bytes``)."""
        return self.object_bytes or self.sample_bytes

    def __post_init__(self) -> None:
        for key in ("sample_bytes", "batch_size", "epochs"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"workload {self.name}: {key} must be a whole number >= 1, got {value!r}")
        for key in ("model_bytes", "object_bytes", "reader_cache_bytes"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"workload {self.name}: {key} must be a whole number >= 0, got {value!r}")


#: The large workloads' data sits in ~100 MB tar shards (as WebDataset and Mosaic Streaming store
#: ImageNet-scale data): a copy or stream of them pays few round trips. ``mlp`` and ``cnn-jpeg``
#: (what ``geo run`` trains) store one object per sample, as ``delibench data make`` writes them.
_TAR_SHARD_BYTES = 100_000_000

#: Built-in workloads; sizes are the public figures (ResNet-50: 25.6 M fp32 parameters; ImageNet
#: JPEGs average about 110 kB; BERT-base 110 M parameters on 512-token samples of ~2 kB).
WORKLOADS: dict[str, PlanWorkload] = {
    "resnet50": PlanWorkload("resnet50", sample_bytes=110_000, batch_size=256, model_bytes=102_228_128, object_bytes=_TAR_SHARD_BYTES),
    "bert-base": PlanWorkload("bert-base", sample_bytes=2_048, batch_size=256, model_bytes=438_000_000, object_bytes=_TAR_SHARD_BYTES),
    "mlp": PlanWorkload("mlp", sample_bytes=128, batch_size=32, model_bytes=27_168),
    # geo run --task cnn-jpeg: 16x16 synthetic JPEGs (~800 bytes), the 3,962-parameter CNN of geo/task.py.
    "cnn-jpeg": PlanWorkload("cnn-jpeg", sample_bytes=800, batch_size=16, model_bytes=15_848),
}


def get_workload(name: str, *, epochs: int = 1) -> PlanWorkload:
    """A built-in workload with ``epochs`` applied."""
    if name not in WORKLOADS:
        close = difflib.get_close_matches(name, list(WORKLOADS), n=1)
        raise UsageError(f"unknown workload {name!r}", hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(WORKLOADS)}")
    return replace(WORKLOADS[name], epochs=epochs)


@dataclass(frozen=True, slots=True)
class SyncChoice:
    """The cross-region sync strategy of a plan.

    Attributes:
        strategy: ``allreduce`` (every step), ``ma`` (average models every ``period`` steps) or
            ``asgd-ga`` (accumulate ``period`` steps, exchange asynchronously ``staleness`` rounds late).
        period: Steps per sync round (forced to 1 for ``allreduce``).
        staleness: ``asgd-ga`` only: rounds an exchange may lag (0 = wait at once, no overlap).
    """

    strategy: str = "ma"
    period: int = 8
    staleness: int = 1

    def __post_init__(self) -> None:
        if self.strategy not in SYNC_STRATEGIES:
            close = difflib.get_close_matches(str(self.strategy), SYNC_STRATEGIES, n=1)
            raise UsageError(f"unknown sync strategy {self.strategy!r}", hint=f"did you mean {close[0]!r}?" if close else f"choose from {', '.join(SYNC_STRATEGIES)}")
        for key in ("period", "staleness"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < (1 if key == "period" else 0):
                raise UsageError(f"sync {key} must be a whole number >= {1 if key == 'period' else 0}, got {value!r}")
        if self.strategy == "allreduce" and self.period != 1:
            object.__setattr__(self, "period", 1)

    @property
    def accum(self) -> int:
        """Micro-steps accumulated into one exchange (``asgd-ga``'s K; 1 otherwise)."""
        return self.period if self.strategy == "asgd-ga" else 1

    @property
    def overlaps(self) -> bool:
        """Whether the exchange overlaps compute (``asgd-ga`` with staleness >= 1)."""
        return self.strategy == "asgd-ga" and self.staleness >= 1


@dataclass(frozen=True, slots=True)
class DataPlacement:
    """Where one shard is read and how.

    Attributes:
        shard: Shard name.
        home: Region that stores it.
        reader: Region whose workers train on it.
        size_bytes: Its size.
        mode: ``local`` (reader == home), ``stream`` (read across while training) or ``copy`` (once, before).
        passes: How many times its bytes cross regions: 0 local, 1 copy, a stream's
            :func:`stream_passes` (1 when the readers' deli caches keep it, else the epochs).
    """

    shard: str
    home: str
    reader: str
    size_bytes: int
    mode: str
    passes: float = 0.0

    def __post_init__(self) -> None:
        if self.mode not in DATA_MODES:
            raise UsageError(f"shard {self.shard}: mode must be one of {', '.join(DATA_MODES)}, got {self.mode!r}")
        if (self.mode == "local") != (self.reader == self.home):
            raise UsageError(f"shard {self.shard}: mode 'local' exactly when the reader is the home region ({self.home})")
        if not self.passes >= 0:
            raise UsageError(f"shard {self.shard}: passes must be >= 0, got {self.passes!r}")


@dataclass(frozen=True, slots=True)
class Placement:
    """A placement and its predicted time and cost under the planner's model.

    Attributes:
        label: ``plan`` or a baseline's name.
        workers: Region -> workers (active regions only, regions-file order).
        data: Per shard: reader and mode.
        sync: Strategy and period.
        steps: Steps per worker (lockstep: the region with the most samples per worker sets it).
        rounds: Cross-region sync rounds (0 with one region).
        global_batch: Samples per sync round: workers x per-worker batch x period.
        time_s: Predicted job time.
        compute_time_s: ``steps * slowest step time``.
        copy_time_s: Copying the ``copy``-mode shards before training (requests and bytes; part of ``time_s``).
        sync_time_s: Sync time on the critical path (0 where asgd-ga hides it behind compute).
        round_s: One round's ring time.
        compute_usd: Accelerators under the billing rule.
        data_egress_usd: Streamed and copied shards' egress.
        storage_usd: Copies stored for the run.
        sync_egress_usd: Sync traffic at each sender's price.
        sync_bytes: Bytes of sync crossing regions over the job.
        data_bytes: Bytes of shards crossing regions over the job.
        link_bytes: ``(src, dst)`` -> every byte (data + sync) sent over that link.
        meets_deadline: False when a deadline was given and this placement misses it.
    """

    label: str
    workers: dict[str, int]
    data: tuple[DataPlacement, ...]
    sync: SyncChoice
    steps: int
    rounds: int
    global_batch: int
    time_s: float
    compute_time_s: float
    sync_time_s: float
    round_s: float
    compute_usd: float
    data_egress_usd: float
    storage_usd: float
    sync_egress_usd: float
    sync_bytes: int
    data_bytes: int
    link_bytes: dict[tuple[str, str], int] = field(default_factory=dict)
    meets_deadline: bool = True
    copy_time_s: float = 0.0

    @property
    def egress_usd(self) -> float:
        """Data plus sync egress."""
        return self.data_egress_usd + self.sync_egress_usd

    @property
    def total_usd(self) -> float:
        """Compute, egress and storage."""
        return self.compute_usd + self.data_egress_usd + self.storage_usd + self.sync_egress_usd

    @property
    def shards(self) -> dict[str, str]:
        """Shard -> reading region."""
        return {d.shard: d.reader for d in self.data}


def _shards(config: RegionsConfig) -> list[tuple[str, str, int]]:
    return [(s.name, r.name, s.size_bytes) for r in config.regions for s in r.shards]


def _round_traffic(config: RegionsConfig, active: list[str], model_bytes: int, sync: SyncChoice) -> tuple[dict[tuple[str, str], int], float, float]:
    """One sync round as the run performs it: bytes per directed link, the round's time, a one-off tail.

    ``allreduce``/``ma``: a ring all-reduce among ``active`` in regions-file order
    (:func:`delibench.geo.sync.ring_allreduce_traffic`, the run's own model); the round takes its
    modelled time, no tail. ``asgd-ga``: every region sends its update (``M`` bytes) to every other
    region point to point, one message at a time per link (``rtt/2 + M/bw`` each, as the run's WAN
    emulation delivers them); overlapped with compute (staleness >= 1) a round costs the busiest
    link's ``M/bw`` and the last message's ``rtt/2 + M/bw`` is the tail; otherwise a round waits
    for the slowest message.
    """
    from delibench.geo.sync import ring_allreduce_traffic

    if len(active) < 2 or model_bytes == 0:
        return {}, 0.0, 0.0
    numel = math.ceil(model_bytes / 4)
    if sync.strategy != "asgd-ga":
        traffic = ring_allreduce_traffic(numel, 4, tuple(active), config)
        return dict(traffic.sent_bytes), traffic.time_s, 0.0
    nbytes = numel * 4
    pairs = [(a, b) for a in active for b in active if a != b]
    message_s = max(config.link(a, b).transfer_s(nbytes) for a, b in pairs)
    if sync.overlaps:
        return dict.fromkeys(pairs, nbytes), max(nbytes / config.link(a, b).bandwidth_bytes_per_s for a, b in pairs), message_s
    return dict.fromkeys(pairs, nbytes), message_s, 0.0


def _ordered(config: RegionsConfig, workers: dict[str, int]) -> list[str]:
    return [r for r in config.names if workers.get(r, 0) > 0]


def evaluate(
    config: RegionsConfig,
    workload: PlanWorkload,
    workers: dict[str, int],
    data: dict[str, tuple[str, str]] | tuple[DataPlacement, ...],
    sync: SyncChoice,
    *,
    label: str,
    deadline_s: float | None = None,
) -> Placement:
    """Time and price a placement with the module's model (the plan and every baseline).

    Args:
        workers: Region -> workers (0 or absent = unused).
        data: Shard -> ``(reader, mode)`` with mode ``stream`` or ``copy`` for remote readers (a
            local reader's mode is ``local`` whatever is given), or the placements themselves.

    Raises:
        UsageError: A shard missing or unknown, a reader without workers, or more workers than a
            region has.
    """
    shards = _shards(config)
    if isinstance(data, tuple):
        data = {d.shard: (d.reader, d.mode) for d in data}
    unknown = sorted(set(data) - {s for s, _, _ in shards})
    if unknown:
        raise UsageError(f"unknown shard {unknown[0]!r}", hint=f"shards: {', '.join(s for s, _, _ in shards)}")
    for region, n in workers.items():
        cap = config.region(region).accelerators.count
        if n > cap:
            raise UsageError(f"{region} has {cap} accelerators, the placement uses {n}")
    active = _ordered(config, workers)
    if not active:
        raise UsageError("the placement has no workers")
    placed = []
    for name, home, size in shards:
        if name not in data:
            raise UsageError(f"shard {name!r} is read by no region")
        reader, mode = data[name]
        config.region(reader)
        if workers.get(reader, 0) < 1:
            raise UsageError(f"shard {name!r} is read in {reader}, which has no workers")
        mode = "local" if reader == home else mode
        passes = 0.0 if mode == "local" else 1.0
        if mode == "stream":
            passes = stream_passes(size, epochs=workload.epochs, readers=workers[reader], cache_bytes=workload.reader_cache_bytes)
        placed.append(DataPlacement(name, home, reader, size, mode, passes))
    e, b = workload.epochs, workload.batch_size
    samples = {r: sum(d.size_bytes for d in placed if d.reader == r) / workload.sample_bytes for r in active}
    steps = max(math.ceil(e * samples[r] / (workers[r] * b) - 1e-9) for r in active)
    n_total = sum(workers[r] for r in active)
    ring_bytes, round_s, tail_s = _round_traffic(config, active, workload.model_bytes, sync)
    rounds = math.ceil(steps / sync.period) if len(active) > 1 else 0
    tau_max = max(config.region(r).accelerators.step_time_s for r in active)
    compute_time_s = steps * tau_max
    sync_total_s = rounds * round_s
    train_s = (max(compute_time_s, sync_total_s) if sync.overlaps else compute_time_s + sync_total_s) + (tail_s if rounds else 0.0)
    copy_s = sum(copy_time_s(config, d.home, d.reader, d.size_bytes, workload.stored_object_bytes) for d in placed if d.mode == "copy")
    data_link: dict[tuple[str, str], float] = {}
    requests_s: dict[tuple[str, str], float] = {}
    for d in placed:
        if d.mode != "local":
            data_link[(d.home, d.reader)] = data_link.get((d.home, d.reader), 0.0) + d.size_bytes * d.passes
        if d.mode == "stream":
            extra = stream_request_s(config, d.home, d.reader, d.size_bytes, workload.stored_object_bytes, epochs=d.passes, readers=workers[d.reader])
            requests_s[(d.home, d.reader)] = requests_s.get((d.home, d.reader), 0.0) + extra
    sync_link = {k: rounds * v for k, v in ring_bytes.items()}
    link_bytes = {k: int(round(data_link.get(k, 0.0) + sync_link.get(k, 0))) for k in set(data_link) | set(sync_link)}
    link_s = [nbytes / config.link(*k).bandwidth_bytes_per_s + requests_s.get(k, 0.0) for k, nbytes in link_bytes.items()]
    time_s = max([copy_s + train_s, *link_s])
    # The accelerators are rented from the start of training (as ``geo run --plan`` starts its
    # workers after the copies); the copies' storage is paid for the whole time.
    usage = {r: RegionUsage(workers[r], time_s - copy_s, workers[r] * steps * config.region(r).accelerators.step_time_s) for r in active}
    copies: dict[str, tuple[float, float]] = {}
    for d in placed:
        if d.mode == "copy":
            nbytes, _ = copies.get(d.reader, (0.0, time_s))
            copies[d.reader] = (nbytes + d.size_bytes, time_s)
    data_cost = geo_cost_usd(config, usage, data_link, stored=copies)
    sync_cost = geo_cost_usd(config, {}, sync_link)
    return Placement(
        label=label,
        workers={r: workers[r] for r in active},
        data=tuple(placed),
        sync=sync,
        steps=steps,
        rounds=rounds,
        global_batch=n_total * b * sync.period if len(active) > 1 else n_total * b,
        time_s=time_s,
        compute_time_s=compute_time_s,
        sync_time_s=train_s - compute_time_s,
        copy_time_s=copy_s,
        round_s=round_s,
        compute_usd=data_cost.compute_usd,
        data_egress_usd=data_cost.egress_usd,
        storage_usd=data_cost.storage_usd,
        sync_egress_usd=sync_cost.egress_usd,
        sync_bytes=int(sum(sync_link.values())),
        data_bytes=int(round(sum(data_link.values()))),
        link_bytes=link_bytes,
        meets_deadline=deadline_s is None or time_s <= deadline_s * (1 + 1e-9),
    )


def _solver() -> object:
    """CBC as bundled with PuLP (the only solver PuLP installs by itself)."""
    import warnings

    import pulp

    with warnings.catch_warnings():
        # NOTE: PuLP 3.3 deprecates the bundled-CBC class in favour of COIN_CMD with a separate
        # ``pulp[cbc]`` install; the bundled binary is what a plain ``pip install pulp`` has.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False)


def _usd_per_byte(price_per_gb: float) -> float:
    return price_per_gb / BYTES_PER_BILLED_GB


@dataclass(frozen=True, slots=True)
class _Solved:
    time_s: float
    cost_usd: float
    data: dict[str, tuple[str, str]]


def _solve_fixed_workers(
    config: RegionsConfig,
    workload: PlanWorkload,
    sync: SyncChoice,
    workers: dict[str, int],
    *,
    objective: str,
    deadline_s: float | None,
    budget_usd: float | None,
    big_t: float,
) -> _Solved | None:
    """The linear program for fixed workers (see the module docstring); None if infeasible."""
    import pulp

    active = _ordered(config, workers)
    shards = _shards(config)
    e, b, beta = workload.epochs, workload.batch_size, workload.sample_bytes
    ring_bytes, round_s, tail_s = _round_traffic(config, active, workload.model_bytes, sync)
    multi = len(active) > 1
    tau = {r: config.region(r).accelerators.step_time_s for r in active}
    tau_max = max(tau.values())
    prob = pulp.LpProblem("geo_plan", pulp.LpMinimize)
    x = {(s, r): prob.add_variable(f"x_{i}_{j}", cat="Binary") for i, (s, _, _) in enumerate(shards) for j, r in enumerate(active)}
    c = {(s, r): prob.add_variable(f"c_{i}_{j}", cat="Binary") for i, (s, h, _) in enumerate(shards) for j, r in enumerate(active) if r != h}
    v = {k: prob.add_variable(f"v_{i}", lowBound=0) for i, k in enumerate(c)}
    sigma = prob.add_variable("sigma", lowBound=0)
    t = prob.add_variable("T", lowBound=0, upBound=big_t)
    q = sigma * (1.0 / sync.period) if multi else 0
    for s, _, _ in shards:
        prob += pulp.lpSum(x[s, r] for r in active) == 1
    for (s, r), cv in c.items():
        prob += cv <= x[s, r]
        prob += v[s, r] >= t - big_t * (1 - cv)
    for r in active:
        prob += sigma * (workers[r] * b) >= pulp.lpSum(e * z / beta * x[s, r] for s, _, z in shards)
    copying = pulp.lpSum(copy_time_s(config, h, r, z, workload.stored_object_bytes) * c[s, r] for s, h, z in shards for r in active if (s, r) in c)
    if sync.overlaps:
        prob += t >= copying + sigma * tau_max + tail_s
        prob += t >= copying + q * round_s + tail_s
    else:
        prob += t >= copying + sigma * tau_max + q * round_s + tail_s
    pairs = {(h, r) for _, h, _ in shards for r in active if h != r} | set(ring_bytes)
    data_bytes = {}
    for h, r in pairs:
        remote = [(s, z) for s, hh, z in shards if hh == h and r in active and (s, r) in c]
        passes = {s: stream_passes(z, epochs=e, readers=workers[r], cache_bytes=workload.reader_cache_bytes) for s, z in remote}
        data_bytes[h, r] = pulp.lpSum(z * (passes[s] * (x[s, r] - c[s, r]) + c[s, r]) for s, z in remote)
        requests = pulp.lpSum(stream_request_s(config, h, r, z, workload.stored_object_bytes, epochs=passes[s], readers=workers[r]) * (x[s, r] - c[s, r]) for s, z in remote)
        bw = config.link(h, r).bandwidth_bytes_per_s
        prob += data_bytes[h, r] + q * ring_bytes.get((h, r), 0) + bw * requests <= bw * t
    compute = pulp.lpSum(
        (config.region(r).accelerators.usd_per_hour / 3600.0) * (workers[r] * (t - copying) if config.region(r).accelerators.billing == "hourly" else workers[r] * tau[r] * sigma)
        for r in active
    )
    egress = pulp.lpSum(_usd_per_byte(config.egress_usd_per_gb(h, r)) * data_bytes[h, r] for h, r in pairs)
    storage = pulp.lpSum(_usd_per_byte(config.storage_usd_per_gb_month(r)) / SECONDS_PER_MONTH * z * v[s, r] for (s, r), _ in c.items() for ss, _, z in shards if ss == s)
    sync_usd = q * sum(_usd_per_byte(config.egress_usd_per_gb(*k)) * nbytes for k, nbytes in ring_bytes.items()) if multi else 0
    cost = compute + egress + storage + sync_usd
    if deadline_s is not None:
        prob += t <= deadline_s
    if budget_usd is not None:
        prob += cost <= budget_usd
    prob += (cost + 1e-9 * t) if objective == "cost" else t
    status = prob.solve(_solver())
    if pulp.LpStatus[status] != "Optimal":
        return None
    if objective == "time":
        t_best = t.value() or 0.0
        prob += t <= t_best * (1 + 1e-7) + 1e-9
        prob.setObjective(cost)
        if pulp.LpStatus[prob.solve(_solver())] != "Optimal":
            return None
    data = {}
    for s, h, _ in shards:
        reader = next(r for r in active if (x[s, r].value() or 0) > 0.5)
        data[s] = (reader, "copy" if reader != h and (c[s, reader].value() or 0) > 0.5 else ("local" if reader == h else "stream"))
    return _Solved(time_s=t.value() or 0.0, cost_usd=pulp.value(cost) or 0.0, data=data)


def _lower_bounds(config: RegionsConfig, workload: PlanWorkload, sync: SyncChoice, workers: dict[str, int]) -> tuple[float, float]:
    """(time, cost) no placement with these workers beats: data spread perfectly, no egress."""
    active = _ordered(config, workers)
    total_samples = sum(z for _, _, z in _shards(config)) / workload.sample_bytes
    n = sum(workers[r] for r in active)
    steps = workload.epochs * total_samples / (n * workload.batch_size)
    tau_max = max(config.region(r).accelerators.step_time_s for r in active)
    _, round_s, _ = _round_traffic(config, active, workload.model_bytes, sync)
    sync_s = steps / sync.period * round_s if len(active) > 1 else 0.0
    t = max(steps * tau_max, sync_s) if sync.overlaps else steps * tau_max + sync_s
    usage = {r: RegionUsage(workers[r], t, workers[r] * steps * config.region(r).accelerators.step_time_s) for r in active}
    return t, geo_cost_usd(config, usage, {}).total_usd


def _candidates(config: RegionsConfig) -> list[dict[str, int]]:
    regions = [r for r in config.regions if r.accelerators.count > 0]
    choices = []
    for r in regions:
        cap = r.accelerators.count
        counts = list(range(cap + 1)) if cap <= 16 else sorted({0, cap, *(2**k for k in range(cap.bit_length()) if 2**k <= cap)})
        choices.append(counts)
    total = math.prod(len(c) for c in choices)
    if total > MAX_COMBINATIONS:
        raise UsageError(f"{config.source}: {total} worker combinations is more than the planner enumerates ({MAX_COMBINATIONS})", hint="plan with fewer regions")
    out = []
    for combo in itertools.product(*choices):
        if any(combo):
            out.append({r.name: n for r, n in zip(regions, combo) if n})
    return out


def plan_placement(
    config: RegionsConfig,
    workload: PlanWorkload,
    *,
    sync: SyncChoice | None = None,
    objective: str = "cost",
    deadline_s: float | None = None,
    budget_usd: float | None = None,
) -> Placement:
    """Solve the program in the module docstring; the result is priced by :func:`evaluate`.

    Raises:
        UsageError: No shards in the regions file, a bad objective, or no placement meets the
            deadline/budget (the hint says how close one gets).
    """
    if objective not in ("cost", "time"):
        raise UsageError(f"unknown objective {objective!r}", hint="use cost or time")
    sync = sync or SyncChoice()
    shards = _shards(config)
    if not shards:
        raise UsageError(f"{config.source}: no shards listed; the planner places shards", hint="add 'shards' with sizes to the regions")
    if not any(r.accelerators.count > 0 for r in config.regions):
        raise UsageError(f"{config.source}: no region has accelerators")
    # A bound on T for the storage big-M: one worker, everything streamed over the slowest link, a sync every step.
    total_bytes = sum(z for _, _, z in shards)
    steps_max = workload.epochs * total_bytes / workload.sample_bytes / workload.batch_size + 1
    slowest_round = max((_round_traffic(config, list(pair), workload.model_bytes, SyncChoice("ma", 1))[1] for pair in itertools.combinations(config.names, 2)), default=0.0) * len(config.names) ** 2
    big_t = 2 * (
        steps_max * (max(r.accelerators.step_time_s for r in config.regions) + slowest_round)
        + workload.epochs * total_bytes / min((lk.bandwidth_bytes_per_s for lk in config.links), default=math.inf)
        + (workload.epochs + 1)
        * sum(shard_objects(z, workload.stored_object_bytes) + COPY_CONCURRENCY for _, _, z in shards)
        * (max((lk.rtt_s for lk in config.links), default=0.0) + 2 * max(r.store_request_s for r in config.regions))
    )
    if deadline_s is not None:
        big_t = min(big_t, deadline_s)
    best: tuple[tuple[float, float], Placement] | None = None
    scored = []
    for workers in _candidates(config):
        t_lb, cost_lb = _lower_bounds(config, workload, sync, workers)
        if deadline_s is not None and t_lb > deadline_s * (1 + 1e-9):
            continue
        if budget_usd is not None and cost_lb > budget_usd:
            continue
        scored.append(((cost_lb, t_lb) if objective == "cost" else (t_lb, cost_lb), workers))
    scored.sort(key=lambda item: item[0])
    for bound, workers in scored:
        if best is not None and bound[0] > best[0][0] * (1 + 1e-9) + (0.005 if objective == "cost" else 0.0):
            break
        solved = _solve_fixed_workers(config, workload, sync, workers, objective=objective, deadline_s=deadline_s, budget_usd=budget_usd, big_t=big_t)
        if solved is None:
            continue
        def key_of(p: Placement) -> tuple[float, float]:
            # Cents decide cost ties (a fraction of a step's rounding), then the faster placement wins.
            return (round(p.total_usd, 2), p.time_s) if objective == "cost" else (p.time_s, p.total_usd)

        def exact(p: Placement) -> tuple[float, float]:
            return (p.total_usd, p.time_s) if objective == "cost" else (p.time_s, p.total_usd)

        def admissible(p: Placement) -> bool:
            return (deadline_s is None or p.meets_deadline) and (budget_usd is None or p.total_usd <= budget_usd * (1 + 1e-9))

        placement = evaluate(config, workload, workers, solved.data, sync, label="plan", deadline_s=deadline_s)
        # The solver cannot tell stream from copy when they differ by less than its tolerance (a tiny
        # shard the reader's cache keeps: the same egress, a fraction of a cent of storage, the copy's
        # wait): try the other mode of each remote shard, by the program's own objective, exactly.
        for shard, (reader, mode) in solved.data.items():
            if mode in ("stream", "copy"):
                flipped = {**{d.shard: (d.reader, d.mode) for d in placement.data}, shard: (reader, "copy" if mode == "stream" else "stream")}
                other = evaluate(config, workload, workers, flipped, sync, label="plan", deadline_s=deadline_s)
                if admissible(other) and (not admissible(placement) or exact(other) < exact(placement)):
                    placement = other
        if not admissible(placement):
            continue
        key = key_of(placement)
        if best is None or key < best[0]:
            best = (key, placement)
    if best is None:
        limits = " and ".join(name for name, v in (("deadline", deadline_s), ("budget", budget_usd)) if v is not None)
        if not limits:
            raise UsageError("the planner found no placement")
        fastest = plan_placement(config, workload, sync=sync, objective="time")
        cheapest = plan_placement(config, workload, sync=sync, objective="cost")
        raise UsageError(
            f"no placement meets the {limits}",
            hint=f"fastest: {fastest.time_s:.0f} s for ${fastest.total_usd:.2f}; cheapest: ${cheapest.total_usd:.2f} in {cheapest.time_s:.0f} s",
        )
    return best[1]


def baselines(config: RegionsConfig, workload: PlanWorkload, plan: Placement, *, deadline_s: float | None = None) -> list[Placement]:
    """What a practitioner would run instead, priced by the same model (see the module docstring).

    1. ``single-region DDP (<region>)``: every shard copied once to one region, ``allreduce`` on all
       its accelerators; of the regions, the cheapest job that meets the deadline (else the cheapest).
    2. ``multi-region DDP``: the plan's workers and data placement with ``allreduce`` every step
       (when the plan keeps to one region: every region's accelerators, each shard read at home).
    """
    ddp = SyncChoice("allreduce", 1, 0)
    singles = []
    for region in config.regions:
        if region.accelerators.count < 1:
            continue
        data = {s: (region.name, "copy") for s, _, _ in _shards(config)}
        singles.append(evaluate(config, workload, {region.name: region.accelerators.count}, data, ddp, label=f"single-region DDP ({region.name})", deadline_s=deadline_s))
    single = min(singles, key=lambda p: (not p.meets_deadline, p.total_usd, p.time_s))
    if len(plan.workers) > 1:
        multi = evaluate(config, workload, plan.workers, plan.data, ddp, label="multi-region DDP", deadline_s=deadline_s)
    else:
        # The plan stays in one region: DDP over every region instead, all accelerators, each shard
        # read where it is stored (copied once to the first such region where its home has none).
        full = {r.name: r.accelerators.count for r in config.regions if r.accelerators.count > 0}
        first = next(iter(full))
        data = {s: (h, "local") if h in full else (first, "copy") for s, h, _ in _shards(config)}
        multi = evaluate(config, workload, full, data, ddp, label="multi-region DDP (all regions)", deadline_s=deadline_s)
    return [single, multi]
