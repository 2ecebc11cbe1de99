"""Real multi-process training across emulated regions: one process per worker, gloo collectives, measured results.

Two tasks (:mod:`delibench.geo.task`): ``mlp`` (the fast one) -- every worker trains the same small
MLP on its own stream of synthetic samples (a fixed random "teacher" network labels Gaussian inputs,
so the task is learnable and a fixed held-out set measures accuracy); ``cnn-jpeg`` -- a small CNN on
the project's synthetic 10-class JPEG images, each region's workers reading the shards the spec
assigns to it through deli (remote reads counted per region pair and priced), rank 0 measuring
held-out accuracy every ``eval_every`` steps (evaluation time is left out of the clock). Each step's compute is padded to the region's ``step_time_s`` (an emulated accelerator,
as in DLIO), so regions with slower or faster accelerators behave as they would. Each worker trains
with plain SGD wrapped in the public strategy object of :mod:`delibench.geo.strategies` (the same
objects a user adds to a DDP loop); the WAN emulation comes from :mod:`delibench.geo.sync`.

Every run is a torchrun job (:mod:`delibench.geo.launch`): ``geo run``, ``geo compare`` and
:func:`run_geo` start one agent per region, whose workers run :func:`run_worker`; one loop
(:func:`_train_loop`) trains every rank, whichever command started it.
"""

from __future__ import annotations

import json
import os
import time
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.geo.cost import RegionUsage, geo_cost_usd
from delibench.geo.regions import RegionsConfig
from delibench.geo.sync import EMULATION, GeoComm, Topology
from delibench.geo.task import RUN_STRATEGIES, TASKS, DataSource

__all__ = ["CHECKPOINT_VERSION", "GeoResult", "GeoRunSpec", "WorkerPlace", "budget_left_s", "complete_checkpoints", "parse_workers", "run_geo", "run_worker"]


@dataclass(frozen=True, slots=True)
class GeoRunSpec:
    """Inputs of one geo-distributed training run.

    Attributes:
        strategy: ``allreduce``, ``asgd-ga``, ``ma`` or ``diloco`` (or a broken control of
            :data:`delibench.geo.task.ABLATIONS`).
        workers: ``(region, workers)`` pairs; regions with workers, in regions-file order.
        steps: Training steps per worker.
        period: ``ma``: average models every ``period`` steps (H).
        accum: ``asgd-ga``: accumulate ``accum`` steps per exchange (K).
        staleness: ``asgd-ga``: the staleness bound S (rounds): a region waits only when it would
            otherwise apply another region's update more than S rounds stale (``None``: never waits).
        lr: SGD learning rate (no momentum).
        batch_size: Samples per worker per step.
        input_dim: Features per synthetic sample.
        hidden: Width of the MLP's two hidden layers (sets the bytes each sync moves).
        classes: Number of classes.
        seed: Seed of the model initialisation, the teacher and every worker's sample stream.
        step_time_scale: Multiplies every region's ``step_time_s`` (0 = no compute padding).
        val_samples: Size of the held-out set.
        params_path: Where rank 0 saves the final parameter vector (``torch.save``), if set.
        task: ``mlp`` or ``cnn-jpeg`` (:data:`delibench.geo.task.TASKS`).
        data: ``cnn-jpeg``: the shards each region reads (:class:`~delibench.geo.task.DataSource`).
        val_url: ``cnn-jpeg``: the held-out split (a dataset root with a manifest).
        val_storage_options: fsspec options reaching ``val_url``.
        eval_every: Rank 0 evaluates on the held-out set every this many steps (0: at the end only).
        momentum: SGD momentum (kept local by every strategy).
        region_steps: ``(region, steps)`` overriding ``steps`` for a region's workers (``asgd-ga``
            only, whose regions step at their own pace: e.g. equal emulated time for every region).
        time_budget_s: ``asgd-ga`` only: every worker stops stepping once this much training time
            (from the start barrier, evaluation left out) has passed, or at its step count; regions
            then train for the same time at their own pace.
    """

    strategy: str
    workers: tuple[tuple[str, int], ...]
    steps: int = 100
    period: int = 8
    accum: int = 4
    staleness: int | None = 1
    lr: float = 0.3
    batch_size: int = 32
    input_dim: int = 32
    hidden: int = 64
    classes: int = 4
    seed: int = 0
    step_time_scale: float = 1.0
    val_samples: int = 2048
    params_path: str | None = None
    task: str = "mlp"
    data: tuple[DataSource, ...] = ()
    val_url: str | None = None
    val_storage_options: dict[str, Any] | None = field(default=None, compare=False)
    eval_every: int = 0
    momentum: float = 0.0
    region_steps: tuple[tuple[str, int], ...] = ()
    time_budget_s: float | None = None

    def __post_init__(self) -> None:
        if self.strategy not in RUN_STRATEGIES:
            raise UsageError(f"unknown sync strategy {self.strategy!r}", hint=f"choose one of {', '.join(RUN_STRATEGIES)}")
        if self.task not in TASKS:
            raise UsageError(f"unknown task {self.task!r}", hint=f"choose one of {', '.join(TASKS)}")
        if self.task == "cnn-jpeg":
            readers = {d.reader for d in self.data}
            missing = [name for name, _ in self.workers if name not in readers]
            if missing:
                raise UsageError(f"--task cnn-jpeg: region {missing[0]} reads no shard", hint="give every region with workers a data source")
            if not self.val_url:
                raise UsageError("--task cnn-jpeg needs a held-out split (val_url)")
        if self.eval_every < 0 or not 0 <= self.momentum < 1:
            raise UsageError("eval_every must be >= 0 and momentum in [0, 1)")
        if (self.region_steps or self.time_budget_s is not None) and self.strategy not in ("asgd-ga", "no-exchange", "asgd-ga-wrong-sign"):
            raise UsageError("per-region steps need a strategy that lets regions step at their own pace (asgd-ga)")
        for name, value in (("steps", self.steps), ("period", self.period), ("accum", self.accum), ("batch_size", self.batch_size), ("hidden", self.hidden)):
            if value < 1:
                raise UsageError(f"--{name.replace('_', '-')} must be >= 1, got {value}")
        if self.staleness is not None and self.staleness < 0:
            raise UsageError(f"--staleness must be >= 0, got {self.staleness}")
        if not self.lr > 0:
            raise UsageError(f"--lr must be > 0, got {self.lr}")
        if self.step_time_scale < 0:
            raise UsageError(f"--step-time-scale must be >= 0, got {self.step_time_scale}")

    @property
    def topology(self) -> Topology:
        """Ranks per region."""
        return Topology(regions=tuple(r for r, _ in self.workers), workers=tuple(n for _, n in self.workers))


@dataclass(frozen=True, slots=True)
class GeoResult:
    """What one run measured (all ranks aggregated).

    Attributes:
        wall_s: Slowest rank's time from the start barrier to its last sync.
        sync_s_mean: Mean over ranks of the time inside synchronisation calls.
        wan_wait_s_mean: Mean over ranks of the injected WAN wait (part of ``sync_s_mean``).
        compute_s_mean: Mean over ranks of the (padded) compute time.
        cross_region_bytes: Every byte that crossed a region boundary (sum over links).
        link_bytes: ``"src->dst"`` -> bytes.
        cross_region_collectives: Cross-region exchanges per leader.
        loss_curve: Training loss per step, averaged over ranks.
        val_loss: Loss of the final model on the held-out set.
        val_accuracy: Accuracy of the final model on the held-out set, in [0, 1].
        compute_usd: Every worker's accelerator billed for ``wall_s``.
        egress_usd: Cross-region bytes (sync, and data read from another region's bucket) at the
            senders' prices.
        data_link_bytes: ``cnn-jpeg``: ``"home->reader"`` -> bytes the readers fetched from each
            shard's bucket (``home == reader``: a local read, free).
        evals: Rank 0's ``(step, seconds since start without evaluation, val loss, val accuracy)``.
        region_step_rate: Region -> its workers' mean training steps per second, up to their
            last step (before the final sync).
        staleness: ``asgd-ga``: rounds behind of every update applied, over all region leaders.
        copied_bytes: ``"home->reader"`` -> bytes of shards copied into the reader's bucket before
            the run (a plan's ``copy`` mode); also in ``data_link_bytes`` and priced as egress.
    """

    strategy: str
    spec: dict[str, Any]
    emulation: str
    world_size: int
    param_count: int
    wall_s: float
    sync_s_mean: float
    wan_wait_s_mean: float
    compute_s_mean: float
    cross_region_bytes: int
    link_bytes: dict[str, int]
    cross_region_collectives: int
    loss_curve: tuple[float, ...]
    val_loss: float
    val_accuracy: float
    compute_usd: float
    egress_usd: float
    total_usd: float
    data_link_bytes: dict[str, int] = field(default_factory=dict)
    evals: tuple[tuple[int, float, float, float], ...] = ()
    region_step_rate: dict[str, float] = field(default_factory=dict)
    staleness: tuple[int, ...] = ()
    copied_bytes: dict[str, int] = field(default_factory=dict)
    rank_results: tuple[dict[str, Any], ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict (per-rank details left out)."""
        d = asdict(self)
        d.pop("rank_results")
        d["loss_curve"] = list(self.loss_curve)
        d["evals"] = [list(e) for e in self.evals]
        d["staleness"] = list(self.staleness)
        return d


def parse_workers(text: str | None, config: RegionsConfig) -> tuple[tuple[str, int], ...]:
    """``"2"`` (every region), ``"us-east=2,eu-west=1"`` (only those) or None (1 per region).

    Raises:
        UsageError: Unknown region, a count that is not a positive integer, or more workers than
            the region's accelerators.
    """
    counts: dict[str, int] = {}
    if text is None or text.strip().isdigit():
        n = 1 if text is None else int(text)
        counts = {name: n for name in config.names}
    else:
        for part in text.split(","):
            name, sep, value = part.partition("=")
            if not sep or not value.strip().isdigit():
                raise UsageError(f"bad --workers-per-region entry {part!r}", hint="use e.g. us-east=2,eu-west=1 or a single number")
            counts[config.region(name.strip()).name] = int(value)
    out = []
    for region in config.regions:
        n = counts.get(region.name, 0)
        if n < 0 or (n == 0 and region.name in counts):
            raise UsageError(f"--workers-per-region: {region.name} needs at least 1 worker (leave it out instead)")
        if n > region.accelerators.count:
            raise UsageError(f"--workers-per-region: {region.name} has only {region.accelerators.count} accelerators, asked for {n}")
        if n:
            out.append((region.name, n))
    if not out:
        raise UsageError("--workers-per-region: no workers")
    return tuple(out)


def _teacher(spec: GeoRunSpec) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(spec.seed + 7919)
    return torch.randn(spec.input_dim, 64, generator=g), torch.randn(64, spec.classes, generator=g)


def _samples(spec: GeoRunSpec, teacher: tuple[Any, Any], n: int, seed: int) -> tuple[Any, Any]:
    import torch

    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, spec.input_dim, generator=g)
    y = torch.argmax(torch.tanh(x @ teacher[0]) @ teacher[1], dim=1)
    return x, y


def _model(spec: GeoRunSpec, classes: int | None = None) -> Any:
    import torch
    from torch import nn

    if spec.task == "cnn-jpeg":
        from delibench.geo.task import cnn_model

        return cnn_model(classes or spec.classes, spec.seed)
    torch.manual_seed(spec.seed)
    return nn.Sequential(
        nn.Linear(spec.input_dim, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.hidden),
        nn.ReLU(),
        nn.Linear(spec.hidden, spec.classes),
    )


class _TaskData:
    """One rank's batches and held-out evaluation for ``spec.task``."""

    def __init__(self, spec: GeoRunSpec, comm: GeoComm, rank: int) -> None:
        self.spec, self.rank = spec, rank
        self.batches: Any = None
        self.digests: list[int] = []  # cnn-jpeg: CRC-32 of each batch's labels (which samples came, in order)
        if spec.task == "cnn-jpeg":
            from delibench.geo.task import RegionBatches, load_held_out

            ranks = list(comm.region_ranks)
            sources = [d for d in spec.data if d.reader == comm.region]
            self.batches = RegionBatches(sources, ranks.index(rank), len(ranks), batch_size=spec.batch_size, seed=spec.seed)
            self.classes: int | None = len(self.batches.loaders[0].classes)
            self.held_out = load_held_out(spec.val_url or "", spec.val_storage_options, limit=spec.val_samples) if rank == 0 else None
        else:
            self.classes = None
            self.teacher = _teacher(spec)
            self.val = _samples(spec, self.teacher, spec.val_samples, spec.seed + 104_729)

    def batch(self, step: int) -> tuple[Any, Any]:
        if self.batches is not None:
            x, y = self.batches.next()
            self.digests.append(zlib.crc32(y.numpy().tobytes()))
            return x, y
        return _samples(self.spec, self.teacher, self.spec.batch_size, self.spec.seed * 1_000_003 + self.rank * 100_003 + step)

    def evaluate(self, model: Any) -> tuple[float, float]:
        """``(val loss, val accuracy)``; ``cnn-jpeg`` evaluates on rank 0 only (others: NaN)."""
        if self.batches is not None:
            from delibench.geo.task import HeldOut, evaluate

            return evaluate(model, self.held_out) if isinstance(self.held_out, HeldOut) else (float("nan"), float("nan"))
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            vx, vy = self.val
            logits = model(vx)
            return float(F.cross_entropy(logits, vy)), float((logits.argmax(dim=1) == vy).float().mean())

    def data_bytes(self) -> dict[str, int]:
        return self.batches.bytes_by_pair() if self.batches is not None else {}

    def close(self) -> None:
        if self.batches is not None:
            self.batches.close()


def _local_step(model: Any, data: Any, step: int, step_time_s: float) -> tuple[float, float]:
    """One local step on an emulated accelerator: forward and backward, lasting at least the region's
    step time; returns (loss, seconds). The strategy's ``step()`` follows it."""
    import torch.nn.functional as F  # heavy: torch is imported by the workers only

    t0 = time.perf_counter()
    x, y = data.batch(step)
    loss = F.cross_entropy(model(x), y)
    model.zero_grad(set_to_none=False)
    loss.backward()
    pad_s = step_time_s - (time.perf_counter() - t0)
    if pad_s > 0:
        time.sleep(pad_s)
    return float(loss.detach()), time.perf_counter() - t0


def budget_left_s(budget_s: float | None, carried_s: float, attempt_s: float) -> float | None:
    """Training time left of a job's ``time_budget_s`` (None: no budget); at or below 0 the rank stops.

    The budget is the job's, not the attempt's: ``carried_s`` is the training time the checkpoint
    resumed from had reached (0 on a first attempt; evaluation and restarts left out), ``attempt_s``
    this attempt's training time since its start barrier. Steps lost to a restart are trained again
    and counted once.
    """
    if budget_s is None:
        return None
    return budget_s - carried_s - attempt_s


def _train_loop(
    rank: int,
    comm: GeoComm,
    config: RegionsConfig,
    spec: GeoRunSpec,
    data: _TaskData,
    model: Any,
    strategy: Any,
    *,
    start: int = 0,
    carried_s: float = 0.0,
    after_step: Any = None,
) -> dict[str, Any]:
    """The training loop of every geo run (the in-process one and the torchrun worker): what the rank measured.

    Trains from step ``start`` to the region's step count (``spec.region_steps``, else
    ``spec.steps``), stopping early once ``spec.time_budget_s`` of training time has passed: the
    job's, i.e. ``carried_s`` (training time of earlier attempts, up to the checkpoint resumed
    from) plus this attempt's since its start barrier, evaluation left out (:func:`budget_left_s`).
    A region stops at its leader's decision, so its ranks never disagree on the last step. Rank 0
    evaluates every ``spec.eval_every`` steps. ``after_step(done, last, elapsed_s)`` runs after each
    step's strategy update with the job's training time so far (the worker checkpoints there).
    """
    import hashlib

    import torch
    import torch.distributed as dist

    params = list(model.parameters())
    step_time_s = config.region(comm.region).accelerators.step_time_s * spec.step_time_scale
    last = dict(spec.region_steps).get(comm.region, spec.steps)
    losses: list[float] = []
    step_end_s: list[float] = []
    evals: list[list[float]] = []
    compute_s = eval_s = 0.0
    dist.barrier()
    t_start = time.perf_counter()
    shared_stop = spec.time_budget_s is not None and len(comm.region_ranks) > 1
    for step in range(start, last):
        left = budget_left_s(spec.time_budget_s, carried_s, time.perf_counter() - t_start - eval_s)
        if shared_stop:  # the leader's clock decides for the region (its ranks average gradients every step)
            flag = torch.tensor([1.0 if left is not None and left <= 0 else 0.0])
            comm.region_broadcast_(flag)
            left = -1.0 if flag.item() else left
        if left is not None and left <= 0:
            break
        loss_value, step_s = _local_step(model, data, step, step_time_s)
        losses.append(loss_value)
        compute_s += step_s
        strategy.step()
        step_end_s.append(round(time.perf_counter() - t_start - eval_s, 4))
        if rank == 0 and spec.eval_every and (step + 1) % spec.eval_every == 0:
            t_eval = time.perf_counter()
            val_loss, val_accuracy = data.evaluate(model)
            eval_s += time.perf_counter() - t_eval
            evals.append([step + 1, time.perf_counter() - t_start - eval_s, val_loss, val_accuracy])
        if after_step is not None:
            after_step(step + 1, last, carried_s + time.perf_counter() - t_start - eval_s)
    steps_s = time.perf_counter() - t_start - eval_s
    strategy.finish()
    wall_s = time.perf_counter() - t_start - eval_s
    vec = torch.nn.utils.parameters_to_vector(params).detach()
    val_loss, val_accuracy = data.evaluate(model)
    if rank == 0 and spec.params_path:
        torch.save(vec.clone(), spec.params_path)
    ledger = comm.ledger
    return {
        "rank": rank,
        "region": comm.region,
        "start_step": start,
        "carried_s": carried_s,
        "steps_done": len(losses),
        "wall_s": wall_s,
        "steps_s": steps_s,
        "compute_s": compute_s,
        "sync_s": ledger.sync_s,
        "wan_wait_s": ledger.wan_wait_s,
        "cross_region_bytes": ledger.cross_region_bytes,
        "link_bytes": ledger.link_bytes,
        "cross_region_collectives": ledger.cross_region_collectives,
        "staleness": list(getattr(strategy, "staleness", [])),  # asgd-ga: rounds behind, per applied update
        "losses": losses,
        "step_end_s": step_end_s,
        "evals": evals,
        "data_bytes": data.data_bytes(),
        "data_wait_s": data.batches.wait_s if data.batches is not None else 0.0,
        "batch_digests": list(data.digests),
        "val_loss": val_loss,
        "val_accuracy": val_accuracy,
        "param_count": vec.numel(),
        "params_sha256": hashlib.sha256(vec.numpy().tobytes()).hexdigest(),
    }


def run_geo(config: RegionsConfig, spec: GeoRunSpec, *, timeout_s: float = 600.0, copied: dict[str, int] | None = None) -> GeoResult:
    """Train ``spec`` on this machine and return the aggregated measurements (the Python entry point).

    The run is a torchrun job like ``geo run``'s (:func:`delibench.geo.launch.launch_local`: one
    agent per region over loopback, the communication-level WAN model), without checkpoints or
    restarts: a failed worker fails the run. ``copied``: ``"home->reader"`` -> bytes copied between
    buckets before the run (a plan's ``copy`` mode), priced with the run's data.

    Raises:
        RuntimeFailure: A worker failed (the agent's last error line is in the message) or the run
            exceeded ``timeout_s``; every agent and worker is stopped either way.
    """
    from delibench.geo.launch import launch_local

    for name, _ in spec.workers:
        config.region(name)
    return launch_local(config, spec, links="model", checkpoint_every=0, max_restarts=0, timeout_s=timeout_s, copied=copied).result


def aggregate_ranks(
    config: RegionsConfig,
    spec: GeoRunSpec,
    ranks: list[dict[str, Any]],
    *,
    emulation: str = EMULATION,
    workers: dict[str, int] | None = None,
    copied: dict[str, int] | None = None,
) -> GeoResult:
    """One :class:`GeoResult` from every rank's report (the final attempt's ranks of a torchrun job).

    Args:
        emulation: How the WAN was emulated (the communication model, or namespaces + tbf).
        workers: Workers per region that are billed (default: the spec's; an elastic run passes
            the workers of its final attempt).
        copied: ``"home->reader"`` -> bytes copied between buckets before the run (priced as data).
    """
    world = len(ranks)
    link_bytes: dict[str, int] = {}
    for r in ranks:
        for key, nbytes in r["link_bytes"].items():
            link_bytes[key] = link_bytes.get(key, 0) + nbytes
    data_link_bytes: dict[str, int] = dict(copied or {})
    for r in ranks:
        for key, nbytes in r.get("data_bytes", {}).items():
            data_link_bytes[key] = data_link_bytes.get(key, 0) + nbytes
    priced: dict[tuple[str, str], int] = {}
    for key, nbytes in [*link_bytes.items(), *data_link_bytes.items()]:
        pair = tuple(key.split("->", 1))
        priced[pair] = priced.get(pair, 0) + nbytes  # type: ignore[index]
    wall_s = max(r["wall_s"] for r in ranks)
    billed = workers if workers is not None else dict(spec.workers)
    busy: dict[str, float] = {}
    for r in ranks:
        busy[r["region"]] = busy.get(r["region"], 0.0) + float(r["compute_s"])
    # The planner's billing rule (geo/cost.py billed_accelerator_s): hourly regions pay every
    # rented worker's wall time, per-second (serverless) regions only the seconds computed.
    cost = geo_cost_usd(config, {name: RegionUsage(n, wall_s, busy.get(name, 0.0)) for name, n in billed.items()}, priced)
    rates: dict[str, list[float]] = {}
    for r in ranks:
        if r.get("steps_s"):
            rates.setdefault(r["region"], []).append(len(r["losses"]) / r["steps_s"])
    steps = min(len(r["losses"]) for r in ranks)
    curve = tuple(sum(r["losses"][i] for r in ranks) / world for i in range(steps))
    return GeoResult(
        strategy=spec.strategy,
        spec={
            **{k: v for k, v in asdict(spec).items() if k not in ("params_path", "data", "val_storage_options")},
            "data": [d.public() for d in spec.data],
        },
        emulation=emulation,
        world_size=world,
        param_count=ranks[0]["param_count"],
        wall_s=wall_s,
        sync_s_mean=sum(r["sync_s"] for r in ranks) / world,
        wan_wait_s_mean=sum(r["wan_wait_s"] for r in ranks) / world,
        compute_s_mean=sum(r["compute_s"] for r in ranks) / world,
        cross_region_bytes=sum(r["cross_region_bytes"] for r in ranks),
        link_bytes=link_bytes,
        cross_region_collectives=max(r["cross_region_collectives"] for r in ranks),
        loss_curve=curve,
        val_loss=ranks[0]["val_loss"],
        val_accuracy=ranks[0]["val_accuracy"],
        compute_usd=cost.compute_usd,
        egress_usd=cost.egress_usd,
        total_usd=cost.total_usd,
        data_link_bytes=data_link_bytes,
        evals=tuple(tuple(e) for e in ranks[0].get("evals", [])),  # type: ignore[misc]
        region_step_rate={name: sum(v) / len(v) for name, v in rates.items()},
        staleness=tuple(x for r in ranks for x in r.get("staleness", [])),
        copied_bytes=dict(copied or {}),
        rank_results=tuple(ranks),
    )


# -- torchrun worker (``python -m delibench geo worker``; started by geo/launch.py's agents) --------


@dataclass(frozen=True, slots=True)
class WorkerPlace:
    """A torchrun worker's place in the job, as torchrun's variables give it (read by the CLI, passed as data).

    Attributes:
        rank: Global rank (``RANK``).
        world_size: ``WORLD_SIZE``.
        local_rank: ``LOCAL_RANK``.
        group_rank: The node group's rank (``GROUP_RANK``).
        restart_count: ``TORCHELASTIC_RESTART_COUNT`` (this agent's restarts after failures).
    """

    rank: int
    world_size: int
    local_rank: int = 0
    group_rank: int = 0
    restart_count: int = 0


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


#: The version of the per-rank checkpoint files :func:`run_worker` writes (older or newer ones are skipped).
CHECKPOINT_VERSION = 1


def _checkpoint_file(job_dir: Path, step: int, rank: int, world_size: int) -> Path:
    return job_dir / "ckpt" / f"s{step:08d}" / f"r{rank}-of-{world_size}.pt"


def complete_checkpoints(job_dir: str | Path) -> list[tuple[int, int]]:
    """``(step, world_size)`` of every complete checkpoint in ``job_dir/ckpt``, newest first.

    A checkpoint step is complete when every rank of the world that saved it has written its file
    (``ckpt/s<step>/r<rank>-of-<world>.pt``; each file is written to a temporary name and renamed,
    so a file that exists is whole unless something outside damaged it).
    """
    root = Path(job_dir) / "ckpt"
    out = []
    for folder in root.glob("s*") if root.is_dir() else ():
        if not folder.name[1:].isdigit():
            continue
        worlds: dict[int, set[int]] = {}
        for f in folder.glob("r*-of-*.pt"):
            rank, _, world = f.name[1:-3].partition("-of-")
            if rank.isdigit() and world.isdigit():
                worlds.setdefault(int(world), set()).add(int(rank))
        for world, ranks in worlds.items():
            if ranks == set(range(world)):
                out.append((int(folder.name[1:]), world))
    return sorted(out, reverse=True)


def _prune_checkpoints(job_dir: Path, keep: int = 2) -> None:
    """Remove checkpoint steps older than the ``keep``-th newest complete one (a fallback if the newest is damaged)."""
    import shutil

    complete = complete_checkpoints(job_dir)
    if len(complete) < keep:
        return
    oldest_kept = complete[keep - 1][0]
    for folder in (job_dir / "ckpt").glob("s*"):
        if folder.name[1:].isdigit() and int(folder.name[1:]) < oldest_kept:
            shutil.rmtree(folder, ignore_errors=True)


def _drop_checkpoints_after(job_dir: Path, step: int) -> None:
    """Remove checkpoint steps newer than ``step``, the one this attempt resumes from.

    They are an earlier attempt's partial steps (a complete one would have been chosen). Left in
    place, one could become "complete" when this attempt writes its missing file, mixing two
    histories in one step.
    """
    import shutil

    for folder in (job_dir / "ckpt").glob("s*"):
        if folder.name[1:].isdigit() and int(folder.name[1:]) > step:
            shutil.rmtree(folder, ignore_errors=True)


def _read_checkpoint(path: Path, step: int, world: dict[str, Any]) -> dict[str, Any]:
    """One rank's checkpoint file, checked; raises ``ValueError`` with a one-line reason."""
    import torch

    try:
        state = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - whatever a damaged file raises (pickle, zip, EOF, torch)
        raise ValueError(f"{path.parent.name}/{path.name} is unreadable ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})") from None
    if not isinstance(state, dict) or state.get("version") != CHECKPOINT_VERSION or state.get("step") != step:
        raise ValueError(f"{path.parent.name}/{path.name} is not a version-{CHECKPOINT_VERSION} checkpoint of step {step}")
    if state.get("world", {}).get("world_size") != world.get("world_size") or not isinstance(state.get("params"), torch.Tensor):
        raise ValueError(f"{path.parent.name}/{path.name} is damaged (world or parameters)")
    return state


@dataclass
class _Restore:
    """What a new attempt resumes from (see :func:`run_worker`)."""

    step: int = 0
    mode: str = "none"  # none | exact | mean
    params: Any = None
    strategy: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    carried_s: float = 0.0
    skipped: list[str] = field(default_factory=list)
    saved_world: dict[str, Any] | None = None


def _find_restore(out: Path, place: WorkerPlace, names: list[str]) -> _Restore:
    """Choose, collectively, the newest complete checkpoint every rank can read, and this rank's part of it.

    Same world (size and every rank's region): each rank its own file (``exact``). Another world:
    every rank reads every saved rank's file and takes the mean of their parameters and the
    largest training time (``mean``). A step whose file is damaged on any rank is skipped for all
    (the reason kept); if checkpoints exist but none is usable, every rank raises one UsageError.
    """
    import torch
    import torch.distributed as dist

    found: list[Any] = [complete_checkpoints(out) if place.rank == 0 else None]
    dist.broadcast_object_list(found, src=0)
    candidates: list[tuple[int, int]] = found[0]
    skipped: list[str] = []
    for step, saved_size in candidates:
        restore: _Restore | None = None
        problem = ""
        try:
            if saved_size == place.world_size:
                state = _read_checkpoint(_checkpoint_file(out, step, place.rank, saved_size), step, {"world_size": saved_size})
            else:
                state = None
            if state is not None and state["world"].get("regions") == names:
                restore = _Restore(step, "exact", state["params"], state["strategy"], state.get("data"), float(state["elapsed_s"]))
            else:
                states = [_read_checkpoint(_checkpoint_file(out, step, r, saved_size), step, {"world_size": saved_size}) for r in range(saved_size)]
                params = torch.stack([s["params"].to(torch.float64) for s in states]).mean(dim=0).to(states[0]["params"].dtype)
                restore = _Restore(step, "mean", params, None, None, max(float(s["elapsed_s"]) for s in states), saved_world=states[0]["world"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:  # RuntimeError: saved parameters of other shapes
            problem = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        problems: list[Any] = [None] * place.world_size
        dist.all_gather_object(problems, problem)
        bad = [p for p in problems if p]
        if not bad and restore is not None:
            restore.skipped = skipped
            return restore
        skipped.extend(dict.fromkeys(bad))  # every rank's reason, once each
    if candidates:
        raise UsageError(f"no usable checkpoint in {out / 'ckpt'}: {'; '.join(skipped)[:400]}", hint="remove the damaged files (or the folder, to start afresh)")
    return _Restore(skipped=skipped)


def run_worker(job_dir: str, region: str, place: WorkerPlace) -> None:
    """One torchrun worker of ``delibench geo run``: join, restore the checkpoint, train to ``spec.steps``, report.

    The job (regions, spec, link mode, checkpoint interval) is ``job_dir/job.pkl``, written by the
    launcher. The process group comes from torchrun's rendezvous (``env://``); the regions of the
    ranks are gathered (each agent names its region), so the communicator follows whatever world the
    elastic rendezvous formed.

    **Checkpoints.** Every ``checkpoint_every`` steps every rank writes its own file,
    ``ckpt/s<step>/r<rank>-of-<world>.pt`` (written to a temporary name, then renamed): its
    parameters, its strategy's ``state_dict()`` (inner optimizer state such as momentum, the
    strategy's counters, anchors, DiLoCo's outer state, ASGD-GA's round and updates in flight;
    collective, so every rank calls it at the same step), its ``cnn-jpeg`` loaders' positions and
    the job's training time so far (so ``time_budget_s`` is the job's). A step is complete when
    every rank's file is there; global rank 0 keeps the two newest complete steps. A new attempt
    resumes from the newest complete step every rank can read (:func:`_find_restore`):

    * the same world (as many ranks, every rank in the same region): every rank loads its own
      parameters and strategy state (after building the strategy) and its loaders' positions, and
      continues as the uninterrupted run would have from that step;
    * another world (a region left or joined, another worker count): the saved ranks' files no
      longer map onto the ranks, so every rank starts from the **mean of the saved ranks'
      parameters** (what model averaging's next sync computes; for all-reduce every rank's are equal
      anyway) with a fresh strategy and optimizer state (no momentum), loaders afresh (the region's
      shards are partitioned anew), and the largest saved training time;
    * a damaged file: that step is skipped on every rank and the previous complete one is tried;
      none usable: a one-line error.

    Rank 0 appends each restart to ``events.jsonl``: steps reached before it (``progress.json``),
    the step resumed from, the steps lost, ``restore`` (``exact``, ``mean`` or ``none``), the
    world saved and ``skipped`` checkpoints with why.
    """
    import io
    import pickle
    from datetime import timedelta

    import torch
    import torch.distributed as dist

    from delibench.geo.task import make_run_strategy

    out = Path(job_dir)
    job = pickle.loads((out / "job.pkl").read_bytes())
    config: RegionsConfig = job["config"]
    spec: GeoRunSpec = job["spec"]
    every = int(job["checkpoint_every"])
    torch.set_num_threads(1)
    (out / f"pid-r{place.rank}").write_text(f"{os.getpid()} {region}")
    dist.init_process_group("gloo", init_method="env://", rank=place.rank, world_size=place.world_size, timeout=timedelta(seconds=60))
    data: Any = None
    try:
        names: list[Any] = [None] * place.world_size
        dist.all_gather_object(names, region)
        comm = GeoComm.from_regions(names, config if job["links"] == "model" else None)
        data = _TaskData(spec, comm, place.rank)
        model = _model(spec, data.classes)
        params = list(model.parameters())
        world = {"world_size": place.world_size, "regions": list(names)}
        restore = _find_restore(out, place, names)
        start = restore.step
        if place.rank == 0:
            _drop_checkpoints_after(out, start)
        dist.barrier()  # no rank writes this attempt's first checkpoint before the old partial steps are gone

        def build() -> Any:
            return make_run_strategy(spec.strategy, comm, params, spec.lr, period=spec.period, accum=spec.accum, staleness=spec.staleness, momentum=spec.momentum)

        with torch.no_grad():
            if restore.mode == "exact":
                # The strategy first, then the model, then its state (construction may broadcast rank 0's parameters).
                strategy = build()
                torch.nn.utils.vector_to_parameters(restore.params, params)
                strategy.load_state_dict(restore.strategy)
                if data.batches is not None and restore.data is not None:
                    data.batches.load_state_dict(restore.data)
            else:
                # A fresh strategy starts from the parameters it is built on (ASGD-GA's model of record).
                if restore.mode == "mean":
                    torch.nn.utils.vector_to_parameters(restore.params, params)
                strategy = build()
        progress = out / "progress.json"
        if place.rank == 0 and progress.exists():
            reached = json.loads(progress.read_text())["step"]
            event = {
                "t": time.time(), "world_size": place.world_size, "regions": sorted(set(names)), "resumed_at": start, "reached": reached,
                "lost_steps": max(0, reached - start), "restore": restore.mode, "carried_s": round(restore.carried_s, 4), "skipped": restore.skipped,
            }  # fmt: skip
            if restore.mode == "mean":
                event["saved_world"] = restore.saved_world
                event["rule"] = "world changed: mean of the saved ranks' parameters, fresh strategy and optimizer state, loaders afresh"
            with (out / "events.jsonl").open("a") as f:
                f.write(json.dumps(event) + "\n")

        def checkpoint(done: int, last: int, elapsed_s: float) -> None:
            if every and done % every == 0 and done < last:
                state = {
                    "version": CHECKPOINT_VERSION, "step": done, "rank": place.rank, "world": world, "elapsed_s": float(elapsed_s),
                    "params": torch.nn.utils.parameters_to_vector(params).detach().clone(),
                    "strategy": strategy.state_dict(),  # collective (ASGD-GA): every rank, this same step
                    "data": data.batches.state_dict() if data.batches is not None else None,
                }  # fmt: skip
                buf = io.BytesIO()
                torch.save(state, buf)
                _atomic_write(_checkpoint_file(out, done, place.rank, place.world_size), buf.getvalue())
                if place.rank == 0:
                    _prune_checkpoints(out)
            if every and place.rank == 0:  # progress: what a restart reports as reached (no restart resumes without checkpoints)
                _atomic_write(progress, json.dumps({"step": done, "world_size": place.world_size}).encode())

        result = {
            "world_size": place.world_size, "regions": names, "restore": restore.mode,
            **_train_loop(place.rank, comm, config, spec, data, model, strategy, start=start, carried_s=restore.carried_s, after_step=checkpoint),
        }  # fmt: skip
        _atomic_write(out / f"rank{place.rank}.json", json.dumps(result).encode())
        dist.barrier()
    finally:
        if data is not None:
            data.close()
        dist.destroy_process_group()
