"""Placement planner: how many workers per region and which region reads each shard, as a mixed-integer program (PuLP/CBC).

Model (all regions progress independently, as under ``asgd-ga`` or ``ma``; billing per accelerator-second):

Inputs: regions r with ``c_r`` accelerators at ``p_r`` USD/hour and ``tau_r`` s/step; shards s of
``z_s`` bytes stored in region ``h(s)``; links with bandwidth ``bw_qr`` bytes/s and egress ``e_qr``
USD per billed GB (``G`` = 2^30 bytes, :data:`delibench.units.BYTES_PER_BILLED_GB`); a workload
with ``b`` samples/step of ``beta`` bytes each, ``E`` epochs, model size ``M`` bytes and ``Q``
cross-region sync rounds (``E * samples / global_batch / sync_period``). A worker in r processes
``rho_r = b * beta / tau_r`` bytes of data per second.

Variables: ``x_sr`` in {0, 1} (region r reads shard s), ``n_r`` integer in [0, c_r] (workers),
``y_r`` in {0, 1} (region r takes part), ``T`` >= 0 (job time, s).

    W_r = E * sum_s z_s x_sr                                  (bytes region r processes)
    sum_r x_sr = 1                    for every shard          (each shard read once per epoch)
    x_sr <= y_r,  y_r <= n_r <= c_r y_r
    W_r <= rho_r * T * n_r            (T = deadline, fixed: linear)        (compute time)
    E * sum_{s: h(s)=q} z_s x_sr <= bw_qr * T    for q != r                (remote reads fit the link)
    compute_usd = sum_r p_r / 3600 * W_r / rho_r                           (accelerator-seconds)
    read_usd    = sum_{s, r != h(s)} E * z_s * x_sr * e_{h(s) r} / G
    sync_usd    = Q * 2 M (sum_r y_r - 1) * e_max / G     (ring all-reduce bytes among the active
                                                            regions, priced at the dearest link)
    cost = compute_usd + read_usd + sync_usd

* ``objective=cost``: minimise cost (+ 1e-6 * sum n_r, to use no more workers than the deadline
  needs); with no deadline the time rows are dropped and every used region takes all its
  accelerators (same cost, shortest time).
* ``objective=time``: minimise T subject to ``cost <= budget`` (if given). Cost does not depend on
  ``n_r`` under per-second billing, so the time rows use ``n_r = c_r`` (linear in T), and the
  reported ``n_r`` is the fewest workers that still meet the optimal T. Ties in T are broken by a
  second solve that minimises cost with ``T <= T*``.

The naive placement — every accelerator of the cheapest region (lowest ``usd_per_hour``) reading
all shards across regions — is priced with the same model (:func:`naive_placement`). Sync time is
not in the time rows (asgd-ga/ma overlap or amortise it); ``geo run`` measures it.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field

from delibench.errors import UsageError
from delibench.geo.cost import geo_cost_usd
from delibench.geo.regions import RegionsConfig
from delibench.reports.cost import instance_usd, transfer_usd

__all__ = ["WORKLOADS", "Placement", "PlanWorkload", "get_workload", "naive_placement", "plan_placement"]


@dataclass(frozen=True, slots=True)
class PlanWorkload:
    """What the planner needs to know about the training job.

    Attributes:
        name: Workload name.
        sample_bytes: Mean bytes per stored sample.
        batch_size: Samples per step per worker (the batch the regions' ``step_time_s`` refers to).
        model_bytes: Bytes of parameters exchanged per sync.
        epochs: Passes over the data.
        global_batch: Samples per global step (sets the number of sync rounds).
        sync_period: Global steps between cross-region syncs (H for ma, K for asgd-ga).
    """

    name: str
    sample_bytes: int
    batch_size: int
    model_bytes: int
    epochs: int = 1
    global_batch: int = 4096
    sync_period: int = 8

    def __post_init__(self) -> None:
        for key in ("sample_bytes", "batch_size", "epochs", "global_batch", "sync_period"):
            if getattr(self, key) < 1:
                raise UsageError(f"workload {self.name}: {key} must be >= 1")
        if self.model_bytes < 0:
            raise UsageError(f"workload {self.name}: model_bytes must be >= 0")

    def sync_rounds(self, data_bytes: int) -> int:
        """Cross-region sync rounds for the whole job over ``data_bytes`` of data."""
        steps = self.epochs * math.ceil(data_bytes / self.sample_bytes / self.global_batch)
        return math.ceil(steps / self.sync_period)


#: Built-in workloads; sizes are the public figures (ResNet-50: 25.6 M fp32 parameters; ImageNet
#: JPEGs average about 110 kB; BERT-base 110 M parameters on 512-token samples of ~2 kB).
WORKLOADS: dict[str, PlanWorkload] = {
    "resnet50": PlanWorkload("resnet50", sample_bytes=110_000, batch_size=256, model_bytes=102_228_128),
    "bert-base": PlanWorkload("bert-base", sample_bytes=2_048, batch_size=256, model_bytes=438_000_000),
    "mlp": PlanWorkload("mlp", sample_bytes=128, batch_size=32, model_bytes=27_168, global_batch=256),
}


def get_workload(name: str, *, epochs: int = 1, sync_period: int | None = None) -> PlanWorkload:
    """A built-in workload, with ``epochs`` and ``sync_period`` applied."""
    if name not in WORKLOADS:
        close = difflib.get_close_matches(name, list(WORKLOADS), n=1)
        raise UsageError(f"unknown workload {name!r}", hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(WORKLOADS)}")
    base = WORKLOADS[name]
    return PlanWorkload(
        base.name, base.sample_bytes, base.batch_size, base.model_bytes, epochs, base.global_batch, sync_period or base.sync_period
    )


@dataclass(frozen=True, slots=True)
class Placement:
    """A placement and what it costs under the planner's model.

    Attributes:
        label: ``optimal`` or ``naive``.
        workers: Region -> workers.
        shards: Shard name -> region that reads it.
        time_s: When the slowest region (or link) finishes.
        compute_usd: Accelerator-seconds at regional prices.
        egress_usd: Remote shard reads plus sync traffic.
        sync_bytes: Bytes of model sync across regions over the job.
        read_bytes: Bytes of shards read across regions over the job.
        meets_deadline: False when a deadline was given and this placement misses it.
    """

    label: str
    workers: dict[str, int]
    shards: dict[str, str]
    time_s: float
    compute_usd: float
    egress_usd: float
    sync_bytes: int
    read_bytes: int
    meets_deadline: bool = True
    notes: tuple[str, ...] = field(default=())

    @property
    def total_usd(self) -> float:
        """Compute plus egress."""
        return self.compute_usd + self.egress_usd


def _solver() -> object:
    """CBC as bundled with PuLP (the only solver PuLP installs by itself)."""
    import warnings

    import pulp

    with warnings.catch_warnings():
        # NOTE: PuLP 3.3 deprecates the bundled-CBC class in favour of COIN_CMD with a separate
        # ``pulp[cbc]`` install; the bundled binary is what a plain ``pip install pulp`` has.
        warnings.simplefilter("ignore", DeprecationWarning)
        return pulp.PULP_CBC_CMD(msg=False)


def _rho(config: RegionsConfig, workload: PlanWorkload, region: str) -> float:
    return workload.batch_size * workload.sample_bytes / config.region(region).accelerators.step_time_s


def _max_egress(config: RegionsConfig) -> float:
    return max((link.egress_usd_per_gb for link in config.links), default=0.0)


def evaluate(
    config: RegionsConfig,
    workload: PlanWorkload,
    workers: dict[str, int],
    shards: dict[str, str],
    *,
    label: str,
    deadline_s: float | None = None,
) -> Placement:
    """Price and time a given placement with the planner's model (used for both optimal and naive)."""
    home = {s.name: r.name for r in config.regions for s in r.shards}
    size = {s.name: s.size_bytes for r in config.regions for s in r.shards}
    e = workload.epochs
    work = {r: 0.0 for r in workers}
    link_bytes: dict[tuple[str, str], float] = {}
    for shard, region in shards.items():
        work[region] = work.get(region, 0.0) + e * size[shard]
        if home[shard] != region:
            key = (home[shard], region)
            link_bytes[key] = link_bytes.get(key, 0.0) + e * size[shard]
    active = [r for r, n in workers.items() if n > 0]
    times = [work[r] / (_rho(config, workload, r) * workers[r]) for r in active if work.get(r, 0) > 0]
    times += [nbytes / config.link(*key).bandwidth_bytes_per_s for key, nbytes in link_bytes.items()]
    time_s = max(times, default=0.0)
    cost = geo_cost_usd(config, {r: work[r] / _rho(config, workload, r) for r in active}, link_bytes)
    data_bytes = sum(size.values())
    sync_bytes = workload.sync_rounds(data_bytes) * 2 * workload.model_bytes * max(len(active) - 1, 0)
    sync_usd = transfer_usd(sync_bytes, _max_egress(config))
    return Placement(
        label=label,
        workers={r: n for r, n in workers.items() if n > 0},
        shards=dict(shards),
        time_s=time_s,
        compute_usd=cost.compute_usd,
        egress_usd=cost.egress_usd + sync_usd,
        sync_bytes=sync_bytes,
        read_bytes=int(sum(link_bytes.values())),
        meets_deadline=deadline_s is None or time_s <= deadline_s * (1 + 1e-9),
    )


def naive_placement(config: RegionsConfig, workload: PlanWorkload, *, deadline_s: float | None = None) -> Placement:
    """Every accelerator of the cheapest region, reading every shard from wherever it is."""
    cheapest = min(config.regions, key=lambda r: r.accelerators.usd_per_hour)
    shards = {s.name: cheapest.name for r in config.regions for s in r.shards}
    return evaluate(config, workload, {cheapest.name: cheapest.accelerators.count}, shards, label="naive", deadline_s=deadline_s)


def plan_placement(
    config: RegionsConfig,
    workload: PlanWorkload,
    *,
    objective: str = "cost",
    deadline_s: float | None = None,
    budget_usd: float | None = None,
) -> Placement:
    """Solve the program in the module docstring.

    Raises:
        UsageError: No shards in the regions file, a bad objective, or no placement meets the
            deadline/budget (the hint says how close one gets).
    """
    import pulp

    if objective not in ("cost", "time"):
        raise UsageError(f"unknown objective {objective!r}", hint="use cost or time")
    shard_home = [(s, r.name) for r in config.regions for s in r.shards]
    if not shard_home:
        raise UsageError(f"{config.source}: no shards listed; the planner places shards", hint="add 'shards' with sizes to the regions")
    regions = [r.name for r in config.regions if r.accelerators.count > 0]
    if not regions:
        raise UsageError(f"{config.source}: no region has accelerators")
    e = workload.epochs
    rho = {r: _rho(config, workload, r) for r in regions}
    cap = {r: config.region(r).accelerators.count for r in regions}
    price_s = {r: instance_usd(1.0, config.region(r).accelerators.usd_per_hour) for r in regions}
    data_bytes = sum(s.size_bytes for s, _ in shard_home)
    sync_usd_per_extra_region = transfer_usd(workload.sync_rounds(data_bytes) * 2 * workload.model_bytes, _max_egress(config))

    prob = pulp.LpProblem("geo_placement", pulp.LpMinimize)
    x = {(s.name, r): prob.add_variable(f"x_{i}_{j}", cat="Binary") for i, (s, _) in enumerate(shard_home) for j, r in enumerate(regions)}
    n = {r: prob.add_variable(f"n_{j}", lowBound=0, upBound=cap[r], cat="Integer") for j, r in enumerate(regions)}
    y = {r: prob.add_variable(f"y_{j}", cat="Binary") for j, r in enumerate(regions)}
    work = {r: pulp.lpSum(e * s.size_bytes * x[s.name, r] for s, _ in shard_home) for r in regions}
    compute_usd = pulp.lpSum(price_s[r] * (1.0 / rho[r]) * work[r] for r in regions)
    read_usd = pulp.lpSum(
        transfer_usd(e * s.size_bytes, config.link(home, r).egress_usd_per_gb) * x[s.name, r] for s, home in shard_home for r in regions if r != home
    )
    sync_usd = sync_usd_per_extra_region * (pulp.lpSum(y.values()) - 1)
    cost = compute_usd + read_usd + sync_usd
    for s, _ in shard_home:
        prob += pulp.lpSum(x[s.name, r] for r in regions) == 1
        for r in regions:
            prob += x[s.name, r] <= y[r]
    for r in regions:
        prob += n[r] >= y[r]
        prob += n[r] <= cap[r] * y[r]

    def link_rows(t: float | pulp.LpVariable) -> None:
        for q in config.names:
            for r in regions:
                if q != r:
                    remote = [s for s, home in shard_home if home == q]
                    if remote:
                        prob.addConstraint(pulp.lpSum(e * s.size_bytes * x[s.name, r] for s in remote) <= config.link(q, r).bandwidth_bytes_per_s * t)

    if objective == "cost":
        if budget_usd is not None:
            prob += cost <= budget_usd
        if deadline_s is not None:
            for r in regions:
                prob += work[r] <= rho[r] * deadline_s * n[r]
            link_rows(deadline_s)
        prob += cost + 1e-6 * pulp.lpSum(n.values())
    else:
        t = prob.add_variable("T", lowBound=0)
        for r in regions:
            prob += work[r] <= rho[r] * cap[r] * t
        link_rows(t)
        if budget_usd is not None:
            prob += cost <= budget_usd
        if deadline_s is not None:
            prob += t <= deadline_s
        prob += t
    status = prob.solve(_solver())
    if pulp.LpStatus[status] != "Optimal":
        limits = " and ".join(name for name, v in (("deadline", deadline_s), ("budget", budget_usd)) if v is not None)
        fastest = plan_placement(config, workload, objective="time")
        cheapest = plan_placement(config, workload, objective="cost")
        raise UsageError(
            f"no placement meets the {limits or 'constraints'}",
            hint=f"fastest: {fastest.time_s:.0f} s for ${fastest.total_usd:.2f}; cheapest: ${cheapest.total_usd:.2f} in {cheapest.time_s:.0f} s",
        )
    if objective == "time":
        # Second pass: among the fastest placements, take the cheapest (the first pass breaks ties arbitrarily).
        t_best = t.value() or 0.0
        prob += t <= t_best * (1 + 1e-7) + 1e-9
        prob.setObjective(cost)
        prob.solve(_solver())
    shards = {s.name: next(r for r in regions if (x[s.name, r].value() or 0) > 0.5) for s, _ in shard_home}
    if objective == "cost" and deadline_s is not None:
        workers = {r: int(round(n[r].value() or 0)) for r in regions}
    else:
        t_opt = (t.value() or 0.0) if objective == "time" else None
        workers = {}
        for r in regions:
            w = sum(e * s.size_bytes for s, _ in shard_home if shards[s.name] == r)
            if w == 0:
                continue
            workers[r] = cap[r] if not t_opt else min(cap[r], max(1, math.ceil(w / (rho[r] * t_opt) - 1e-9)))
    return evaluate(config, workload, workers, shards, label="optimal", deadline_s=deadline_s)
