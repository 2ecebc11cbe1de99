"""The plan file: ``geo plan --out plan.yaml`` writes it, ``geo run --plan plan.yaml`` reads it.

A versioned YAML document (``format: delibench-geo-plan``, ``version: 1``)::

    format: delibench-geo-plan
    version: 1
    regions_file: geo/example-regions.yaml
    regions_sha256: 3f1c...                  # the regions file the plan was made for
    workload: {name: resnet50, sample_bytes: 110000, batch_size: 256, model_bytes: 102228128, epochs: 10,
               object_bytes: 100000000, reader_cache_bytes: 268435456}   # deli cache per reading worker
    objective: cost
    deadline_s: null
    budget_usd: null
    plan:                                    # a placement (baselines have the same shape)
      label: plan
      sync: {strategy: ma, period: 64, staleness: 1}
      workers: [{region: us-east, count: 8, type: a100, billing: hourly}, ...]
      data: [{shard: us-0, home: us-east, reader: us-east, size_bytes: 20000000000, mode: local, passes: 0.0}, ...]
                                             # passes: times its bytes cross (a stream: 1 when deli's cache keeps it)
      predicted: {time_s: ..., steps: ..., rounds: ..., global_batch: ..., compute_usd: ..., ...}
    baselines: [...]

:func:`load_plan` validates every field and raises a one-line :class:`UsageError` naming the file;
:func:`plan_to_run_settings` turns a plan into the :class:`delibench.geo.train.GeoRunSpec` that
``geo run`` takes (pure: no file, no process).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from delibench.errors import UsageError
from delibench.geo.planner import READER_CACHE_BYTES, DataPlacement, Placement, PlanWorkload, SyncChoice
from delibench.geo.regions import RegionsConfig

if TYPE_CHECKING:
    from delibench.geo.train import GeoRunSpec

__all__ = [
    "PLAN_FORMAT",
    "PLAN_VERSION",
    "GeoPlan",
    "check_plan_regions",
    "load_plan",
    "mlp_hidden_for",
    "plan_reading",
    "plan_vs_measured",
    "plan_from_dict",
    "plan_to_dict",
    "plan_to_run_settings",
    "regions_digest",
    "write_plan",
]

PLAN_FORMAT = "delibench-geo-plan"
PLAN_VERSION = 1

_PREDICTED = (
    "time_s",
    "compute_time_s",
    "sync_time_s",
    "round_s",
    "steps",
    "rounds",
    "global_batch",
    "compute_usd",
    "data_egress_usd",
    "storage_usd",
    "sync_egress_usd",
    "total_usd",
    "sync_bytes",
    "data_bytes",
    "meets_deadline",
)
_INT_FIELDS = ("steps", "rounds", "global_batch", "sync_bytes", "data_bytes")


@dataclass(frozen=True, slots=True)
class GeoPlan:
    """A plan as written to and read from a plan file.

    Attributes:
        placement: The chosen placement (workers, data, sync, predicted time and cost).
        workload: The workload it was planned for.
        objective: ``cost`` or ``time``.
        deadline_s: The deadline given, if any.
        budget_usd: The budget given, if any.
        regions_file: Path of the regions file, as given to ``geo plan``.
        regions_sha256: SHA-256 of that file's bytes (None for a plan made from memory).
        baselines: The baselines priced beside it.
    """

    placement: Placement
    workload: PlanWorkload
    objective: str = "cost"
    deadline_s: float | None = None
    budget_usd: float | None = None
    regions_file: str = ""
    regions_sha256: str | None = None
    baselines: tuple[Placement, ...] = ()


def regions_digest(path: str | Path) -> str:
    """SHA-256 of a regions file's bytes."""
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _placement_dict(p: Placement, config: RegionsConfig | None) -> dict[str, Any]:
    workers = []
    for region, n in p.workers.items():
        entry: dict[str, Any] = {"region": region, "count": n}
        if config is not None:
            accel = config.region(region).accelerators
            entry.update(type=accel.type, billing=accel.billing, usd_per_hour=accel.usd_per_hour, step_time_s=accel.step_time_s)
        workers.append(entry)
    predicted = {key: getattr(p, key) for key in (*_PREDICTED, "copy_time_s")}
    predicted["link_bytes"] = [{"src": src, "dst": dst, "bytes": nbytes} for (src, dst), nbytes in sorted(p.link_bytes.items())]
    return {
        "label": p.label,
        "sync": {"strategy": p.sync.strategy, "period": p.sync.period, "staleness": p.sync.staleness},
        "workers": workers,
        "data": [{"shard": d.shard, "home": d.home, "reader": d.reader, "size_bytes": d.size_bytes, "mode": d.mode, "passes": d.passes} for d in p.data],
        "predicted": predicted,
    }


def plan_to_dict(plan: GeoPlan, config: RegionsConfig | None = None) -> dict[str, Any]:
    """The plan file's document (``config`` adds each region's accelerator type, billing and price)."""
    w = plan.workload
    return {
        "format": PLAN_FORMAT,
        "version": PLAN_VERSION,
        "regions_file": plan.regions_file,
        "regions_sha256": plan.regions_sha256,
        "workload": {"name": w.name, "sample_bytes": w.sample_bytes, "batch_size": w.batch_size, "model_bytes": w.model_bytes, "epochs": w.epochs, "object_bytes": w.object_bytes, "reader_cache_bytes": w.reader_cache_bytes},
        "objective": plan.objective,
        "deadline_s": plan.deadline_s,
        "budget_usd": plan.budget_usd,
        "plan": _placement_dict(plan.placement, config),
        "baselines": [_placement_dict(b, config) for b in plan.baselines],
    }


def write_plan(path: str | Path, plan: GeoPlan, config: RegionsConfig | None = None) -> None:
    """Write ``plan`` as YAML to ``path``."""
    import yaml

    text = "# delibench geo plan: run it with `delibench geo run --plan <this file>`\n" + yaml.safe_dump(plan_to_dict(plan, config), sort_keys=False)
    try:
        Path(path).write_text(text, encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot write plan file {path}: {exc.strerror or exc}") from None


# -- reading ------------------------------------------------------------------------------------


def _map(where: str, value: Any, keys: tuple[str, ...], required: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UsageError(f"{where} must be a mapping, got {type(value).__name__}")
    unknown = [k for k in value if k not in keys]
    if unknown:
        raise UsageError(f"{where}: unknown key {unknown[0]!r}")
    missing = [k for k in required if k not in value]
    if missing:
        raise UsageError(f"{where}: missing key {missing[0]!r}")
    return value


def _int(where: str, value: Any, minimum: int = 0) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UsageError(f"{where} must be a whole number >= {minimum}, got {value!r}")
    return value


def _float(where: str, value: Any, *, optional: bool = False) -> float | None:
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or value != value:
        raise UsageError(f"{where} must be a number >= 0, got {value!r}")
    return float(value)


def _str(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} must be a non-empty string, got {value!r}")
    return value


def _list(where: str, value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise UsageError(f"{where} must be a list, got {type(value).__name__}")
    return value


def _placement(where: str, raw: Any) -> Placement:
    body = _map(where, raw, ("label", "sync", "workers", "data", "predicted"), ("label", "sync", "workers", "data", "predicted"))
    s = _map(f"{where}.sync", body["sync"], ("strategy", "period", "staleness"), ("strategy", "period"))
    sync = SyncChoice(_str(f"{where}.sync.strategy", s["strategy"]), _int(f"{where}.sync.period", s["period"], 1), _int(f"{where}.sync.staleness", s.get("staleness", 1)))
    workers: dict[str, int] = {}
    for i, entry in enumerate(_list(f"{where}.workers", body["workers"])):
        w = _map(f"{where}.workers[{i}]", entry, ("region", "count", "type", "billing", "usd_per_hour", "step_time_s"), ("region", "count"))
        region = _str(f"{where}.workers[{i}].region", w["region"])
        if region in workers:
            raise UsageError(f"{where}.workers: region {region!r} listed twice")
        workers[region] = _int(f"{where}.workers[{i}].count", w["count"], 1)
    if not workers:
        raise UsageError(f"{where}.workers: no workers")
    data = []
    for i, entry in enumerate(_list(f"{where}.data", body["data"])):
        d = _map(f"{where}.data[{i}]", entry, ("shard", "home", "reader", "size_bytes", "mode", "passes"), ("shard", "home", "reader", "size_bytes", "mode"))
        reader = _str(f"{where}.data[{i}].reader", d["reader"])
        if reader not in workers:
            raise UsageError(f"{where}.data[{i}]: shard read in {reader!r}, which has no workers in the plan")
        data.append(
            DataPlacement(
                _str(f"{where}.data[{i}].shard", d["shard"]), _str(f"{where}.data[{i}].home", d["home"]), reader, _int(f"{where}.data[{i}].size_bytes", d["size_bytes"], 1), _str(f"{where}.data[{i}].mode", d["mode"]),
                _float(f"{where}.data[{i}].passes", d.get("passes", 0.0)) or 0.0,  # optional: plans written before the reader's cache was modelled
            )
        )
    pred = _map(f"{where}.predicted", body["predicted"], (*_PREDICTED, "copy_time_s", "link_bytes"), _PREDICTED)
    values: dict[str, Any] = {}
    if "copy_time_s" in pred:  # optional: plans written before the copy was modelled have none
        values["copy_time_s"] = _float(f"{where}.predicted.copy_time_s", pred["copy_time_s"])
    for key in _PREDICTED:
        if key == "meets_deadline":
            if not isinstance(pred[key], bool):
                raise UsageError(f"{where}.predicted.meets_deadline must be true or false")
            values[key] = pred[key]
        elif key in _INT_FIELDS:
            values[key] = _int(f"{where}.predicted.{key}", pred[key])
        elif key != "total_usd":
            values[key] = _float(f"{where}.predicted.{key}", pred[key])
    link_bytes = {}
    for i, entry in enumerate(_list(f"{where}.predicted.link_bytes", pred.get("link_bytes", []))):
        lk = _map(f"{where}.predicted.link_bytes[{i}]", entry, ("src", "dst", "bytes"), ("src", "dst", "bytes"))
        link_bytes[(_str("src", lk["src"]), _str("dst", lk["dst"]))] = _int(f"{where}.predicted.link_bytes[{i}].bytes", lk["bytes"])
    return Placement(label=_str(f"{where}.label", body["label"]), workers=workers, data=tuple(data), sync=sync, link_bytes=link_bytes, **values)


def plan_from_dict(raw: Any, source: str = "<plan>") -> GeoPlan:
    """Validate a parsed plan document.

    Raises:
        UsageError: Anything wrong, in one line that names ``source``.
    """
    keys = ("format", "version", "regions_file", "regions_sha256", "workload", "objective", "deadline_s", "budget_usd", "plan", "baselines")
    try:
        doc = _map("the plan", raw, keys, ("format", "version", "workload", "plan"))
        if doc["format"] != PLAN_FORMAT:
            raise UsageError(f"not a plan file (format {doc['format']!r}, expected {PLAN_FORMAT!r})")
        if doc["version"] != PLAN_VERSION:
            raise UsageError(f"plan version {doc['version']!r} is not supported (this delibench reads version {PLAN_VERSION})")
        w = _map("workload", doc["workload"], ("name", "sample_bytes", "batch_size", "model_bytes", "epochs", "object_bytes", "reader_cache_bytes"), ("name", "sample_bytes", "batch_size", "model_bytes", "epochs"))
        workload = PlanWorkload(
            _str("workload.name", w["name"]), w["sample_bytes"], w["batch_size"], w["model_bytes"], w["epochs"], w.get("object_bytes", 0), w.get("reader_cache_bytes", READER_CACHE_BYTES)
        )
        objective = doc.get("objective", "cost")
        if objective not in ("cost", "time"):
            raise UsageError(f"objective must be cost or time, got {objective!r}")
        sha = doc.get("regions_sha256")
        if sha is not None and (not isinstance(sha, str) or len(sha) != 64):
            raise UsageError("regions_sha256 must be a 64-character hex digest")
        regions_file = doc.get("regions_file") or ""
        if not isinstance(regions_file, str):
            raise UsageError("regions_file must be a path")
        return GeoPlan(
            placement=_placement("plan", doc["plan"]),
            workload=workload,
            objective=objective,
            deadline_s=_float("deadline_s", doc.get("deadline_s"), optional=True),
            budget_usd=_float("budget_usd", doc.get("budget_usd"), optional=True),
            regions_file=regions_file,
            regions_sha256=sha,
            baselines=tuple(_placement(f"baselines[{i}]", b) for i, b in enumerate(_list("baselines", doc.get("baselines") or []))),
        )
    except UsageError as exc:
        raise UsageError(f"{source}: {exc.message}", hint=exc.hint) from None


def load_plan(path: str | Path) -> GeoPlan:
    """Read and validate a plan file (one-line :class:`UsageError` naming it on any problem)."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read plan file {p}: {exc.strerror or exc}", hint="write one with: delibench geo plan --out plan.yaml") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        raise UsageError(f"plan file {p} is not valid YAML{f' at line {mark.line + 1}' if mark is not None else ''}") from None
    return plan_from_dict(raw, source=str(p))


def check_plan_regions(plan: GeoPlan, config: RegionsConfig, *, digest: str | None = None, source: str = "<plan>") -> None:
    """The plan fits ``config``: same file (when both digests are known), known regions and shards, enough accelerators.

    Raises:
        UsageError: One line naming ``source``.
    """
    if digest is not None and plan.regions_sha256 is not None and digest != plan.regions_sha256:
        raise UsageError(f"{source}: the plan was made for a different regions file than {config.source}", hint="re-run delibench geo plan on this file")
    p = plan.placement
    for region, n in p.workers.items():
        if region not in config.names:
            raise UsageError(f"{source}: plan uses region {region!r}, which {config.source} does not have")
        if n > config.region(region).accelerators.count:
            raise UsageError(f"{source}: plan uses {n} workers in {region}; {config.source} has {config.region(region).accelerators.count}")
    homes = {s.name: r.name for r in config.regions for s in r.shards}
    for d in p.data:
        if homes.get(d.shard) != d.home:
            raise UsageError(f"{source}: shard {d.shard!r} is not stored in {d.home} in {config.source}")


def plan_to_run_settings(plan: GeoPlan, *, steps: int | None = None, **overrides: Any) -> GeoRunSpec:
    """The :class:`~delibench.geo.train.GeoRunSpec` that runs ``plan`` (pure).

    The plan sets the strategy, its period (H for ``ma``, K for ``asgd-ga``) and staleness, the
    workers per region (regions-file order is kept from the plan) and the per-worker batch; the
    steps per worker are the plan's unless ``steps`` is given (a plan of many epochs is thousands
    of steps). ``overrides`` pass the run-only settings (``hidden``, ``lr``, ``seed``,
    ``step_time_scale``, ``task``, ``data``, ``val_url``, ...): the data placement is executed by
    the caller, which builds ``data`` from :func:`plan_reading` (copying ``copy``-mode shards first).
    ``batch_size`` overrides the plan's per-worker batch when given. The ``mlp`` task's hidden
    width is sized so that its model is the plan's ``model_bytes`` (:func:`mlp_hidden_for`) unless
    ``hidden`` is given; the ``cnn-jpeg`` model has a fixed size.
    """
    from delibench.geo.train import GeoRunSpec

    p = plan.placement
    sync = p.sync
    kwargs: dict[str, Any] = {
        "strategy": sync.strategy,
        "workers": tuple(p.workers.items()),
        "steps": steps if steps is not None else max(1, p.steps),
        "batch_size": plan.workload.batch_size,
    }
    if sync.strategy == "ma":
        kwargs["period"] = sync.period
    elif sync.strategy == "asgd-ga":
        kwargs["accum"] = sync.period
        kwargs["staleness"] = sync.staleness
    if overrides.get("hidden") is None and overrides.get("task", "mlp") == "mlp":
        kwargs["hidden"] = mlp_hidden_for(plan.workload.model_bytes)
    kwargs.update({k: v for k, v in overrides.items() if v is not None or k not in ("batch_size", "hidden")})
    return GeoRunSpec(**kwargs)


def mlp_hidden_for(model_bytes: int, *, input_dim: int = 32, classes: int = 4) -> int:
    """The hidden width whose ``mlp`` task model (fp32) is closest to ``model_bytes``: the plan's sync size.

    Parameters of the MLP: ``h^2 + (input_dim + classes + 2) h + classes``.
    """
    import math

    params = max(0.0, model_bytes / 4 - classes)
    b = input_dim + classes + 2
    return max(1, round((-b + math.sqrt(b * b + 4 * params)) / 2))


def plan_reading(plan: GeoPlan) -> dict[str, tuple[str, str]]:
    """The plan's data placement as the run executes it: home region -> ``(reader, mode)``.

    A run reads a region's data (its ``data_url``, or its testbed bucket) as one shard, so every
    shard stored in a region must go to one reader with one mode.

    Raises:
        UsageError: The plan splits one region's shards between readers or modes.
    """
    out: dict[str, tuple[str, str]] = {}
    for d in plan.placement.data:
        got = out.setdefault(d.home, (d.reader, d.mode))
        if got != (d.reader, d.mode):
            raise UsageError(
                f"the plan reads {d.home}'s shards in more than one way ({got[1]} in {got[0]}, {d.mode} in {d.reader})",
                hint="geo run reads each region's data as one shard: give the region one shard in the regions file",
            )
    return out


def plan_vs_measured(plan: GeoPlan, result: Any, *, copy_s: float = 0.0) -> list[tuple[str, float, float]]:
    """``(figure, predicted, measured)`` rows for a run of ``plan``: time (copies up front + training), steps, bytes, cost.

    ``result`` is the run's :class:`~delibench.geo.train.GeoResult`; ``copy_s`` the seconds spent
    copying ``copy``-mode shards before training (the planner's ``copy_time_s``, part of its
    ``time_s``; a ``copy_s`` row when the plan copies).
    """
    p = plan.placement
    measured_steps = max((len(r["losses"]) + int(r.get("start_step", 0)) for r in result.rank_results), default=0)
    sync_bytes = sum(result.link_bytes.values())
    data_bytes = sum(n for key, n in result.data_link_bytes.items() if key.split("->")[0] != key.split("->")[-1])
    copies = [("copy_s", p.copy_time_s, copy_s)] if any(d.mode == "copy" for d in p.data) else []
    return [
        ("time_s", p.time_s, copy_s + result.wall_s),
        *copies,
        ("steps", float(p.steps), float(measured_steps)),
        ("sync_bytes", float(p.sync_bytes), float(sync_bytes)),
        ("data_bytes_across", float(p.data_bytes), float(data_bytes)),
        ("compute_usd", p.compute_usd, result.compute_usd),
        ("egress_usd", p.data_egress_usd + p.sync_egress_usd, result.egress_usd),
        ("total_usd", p.total_usd, result.total_usd),
    ]
