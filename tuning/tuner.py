"""The Optuna-driven tuner: each trial is a short measured run of the DELI loader through the session (``delibench.app.session.run``, handed in by the caller).

Studies live in an RDB storage (SQLite file ``.delibench/studies.db`` by default, any SQLAlchemy
URL otherwise) and are opened with ``load_if_exists=True``: running the same command again resumes
the study, and several processes (machines, with a server database) can tune one study at once.
SQLite with a busy timeout serves two or three processes on one machine; use PostgreSQL or MySQL
(``--storage postgresql://...``) for a team.

Objectives: ``wait`` (minimise the measured data-wait fraction), ``cost`` (minimise $ per epoch
from the run's cost estimate, or, when runs carry no cost, the cache bytes as a proxy: say which
in the output), ``wait,cost`` (both: a Pareto front), each optionally with the constraint
``accelerator utilisation >= min_au`` (Optuna ``constraints_func``): ``--objective cost --min-au 0.9``
asks for the cheapest configuration that keeps the accelerator 90 % busy (the constraint is set
per trial with ``Trial.set_constraint``, which the TPE sampler takes into account).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import RuntimeFailure, SpecError, UsageError
from delibench.records import ComputeSpec, RunRecord, RunSpec, StepSample
from delibench.storage import redact_text
from delibench.tuning.guide import Guess, Predictor
from delibench.tuning.space import SearchSpace, TuneConfig

__all__ = [
    "DEFAULT_REPEAT_AFTER",
    "DEFAULT_REPEAT_BEST",
    "DEFAULT_STORAGE",
    "OBJECTIVES",
    "SOURCE_REPEAT",
    "ConfigStats",
    "Measurement",
    "TuneSettings",
    "Tuner",
    "check_storage_url",
    "config_stats",
    "noise_sd",
    "open_storage",
    "params_key",
    "rank_configs",
    "study_lock",
]

#: Where studies live unless ``--storage`` says otherwise (relative to the working directory).
DEFAULT_STORAGE = "sqlite:///.delibench/studies.db"
#: Accepted ``--objective`` values.
OBJECTIVES = ("wait", "cost", "wait,cost")
#: Seconds a SQLite writer waits for another process's lock before failing.
SQLITE_BUSY_TIMEOUT_S = 120
#: Seconds to wait for a server database's connection before saying it cannot be reached.
DB_CONNECT_TIMEOUT_S = 10
#: Seconds a process waits for another's study lock (held while it enqueues the model's guesses).
DB_LOCK_TIMEOUT_S = 120
#: How ``--storage`` names a PostgreSQL study database (psycopg 3 driver).
POSTGRES_EXAMPLE = "postgresql+psycopg://user:password@host:5432/db"

# Study attribute names (read back by ``tune show`` and the exports).
ATTR_SPACE = "delibench.space"
ATTR_OBJECTIVE = "delibench.objective"
ATTR_MIN_AU = "delibench.min_au"
ATTR_FINGERPRINT = "delibench.fingerprint"
ATTR_SETTINGS = "delibench.settings"
ATTR_PROBE = "delibench.probe"
#: Default of ``--repeat-best``: how many of the best configurations so far are kept measured at least twice.
DEFAULT_REPEAT_BEST = 2
#: Measurements each of the ``repeat_best`` best configurations gets.
REPEAT_MEASUREMENTS = 2
#: Complete trials before the tuner starts re-measuring the best configurations (TPE's random start-up trials).
DEFAULT_REPEAT_AFTER = 5
#: ``source`` user attribute of a trial that re-measures an earlier trial's configuration.
SOURCE_REPEAT = "repeat"

#: Study system attribute: how many Tuner instances have opened the study (each takes the next index).
ATTR_WORKERS = "delibench.workers"

#: Signature of what runs one trial: config, per-step callback, stop flag -> measurement.
Evaluator = Callable[[TuneConfig, Callable[[StepSample], None], Callable[[], bool]], "Measurement"]


@dataclass(frozen=True, slots=True)
class TuneSettings:
    """How every trial runs (what stays fixed while the loader's knobs move).

    Attributes:
        dataset_url: Dataset root.
        workload: Workload name.
        compute: Compute backend (e.g. ``ComputeSpec("emulated", 0.05)``).
        batch_size: Samples per step.
        num_workers: DataLoader workers (unless the space tunes them).
        seed: Sampler/model seed, the same for every trial so orders are comparable.
        world_size: Ranks.
        steps_per_trial: Steps of each epoch a trial measures (a slice), or None for whole epochs.
        epochs_per_trial: Epochs per trial; with 2 or more, the objective is the last epoch, when
            the cache is warm.
        warmup_steps: Steps excluded from the measured fraction.
        objective: ``wait``, ``cost`` or ``wait,cost``.
        min_au: Constraint: accelerator utilisation must reach this, or None.
        link_profile: Link-emulation profile recorded with each run.
        results_dir: Where trial RunRecords go (None: the runner's default).
        write_records: Write each trial's RunRecord.
        storage_options: fsspec options that reach the dataset (see ``RunSpec.storage_options``).
    """

    dataset_url: str
    workload: str
    compute: ComputeSpec = field(default_factory=lambda: ComputeSpec(kind="emulated", step_time_s=0.05))
    batch_size: int = 32
    num_workers: int = 2
    seed: int = 0
    world_size: int = 1
    steps_per_trial: int | None = 40
    epochs_per_trial: int = 2
    warmup_steps: int = 3
    objective: str = "wait"
    min_au: float | None = None
    link_profile: str | None = None
    results_dir: str | None = None
    write_records: bool = True
    storage_options: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, metadata={"secret": True})

    def __post_init__(self) -> None:
        def require(ok: bool, name: str, problem: str, hint: str | None = None) -> None:
            if not ok:
                raise SpecError("TuneSettings", name, problem, hint=hint)

        require(self.objective in OBJECTIVES, "objective", f"must be one of {', '.join(OBJECTIVES)}, got {self.objective!r}")
        require(self.min_au is None or 0.0 < self.min_au <= 1.0, "min_au", f"must lie in (0, 1], got {self.min_au}")
        require(self.steps_per_trial is None or self.steps_per_trial >= 1, "steps_per_trial", f"must be at least 1, got {self.steps_per_trial}")
        require(
            self.steps_per_trial is None or self.steps_per_trial > self.warmup_steps or self.epochs_per_trial > 1,
            "steps_per_trial",
            f"{self.steps_per_trial} leaves nothing to measure after {self.warmup_steps} warm-up steps",
        )
        require(self.epochs_per_trial >= 1, "epochs_per_trial", f"must be at least 1, got {self.epochs_per_trial}")
        require(self.batch_size >= 1, "batch_size", f"must be at least 1, got {self.batch_size}")
        require(self.warmup_steps >= 0, "warmup_steps", f"must not be negative, got {self.warmup_steps}")

    @property
    def directions(self) -> list[str]:
        """Optuna directions of the objective."""
        return ["minimize"] * len(self.objective.split(","))

    def run_spec(self, config: TuneConfig, label: str | None = None) -> RunSpec:
        """The RunSpec of one trial of ``config``."""
        return RunSpec(
            dataset_url=self.dataset_url,
            workload=self.workload,
            loader=config.to_loader_spec(label=label),
            compute=self.compute,
            batch_size=self.batch_size,
            num_workers=self.num_workers if config.num_workers is None else config.num_workers,
            epochs=self.epochs_per_trial,
            warmup_steps=self.warmup_steps,
            seed=self.seed,
            world_size=self.world_size,
            max_steps_per_epoch=self.steps_per_trial,
            link_profile=self.link_profile,
            storage_options=self.storage_options,
        )


@dataclass(frozen=True, slots=True)
class Measurement:
    """What one trial measured (from its RunRecord).

    Attributes:
        wait_fraction: Data-wait fraction of the last epoch (warm cache), else of the run.
        accelerator_utilization: ``1 - wait_fraction``.
        cost_usd_per_epoch: From the record's cost estimate, or None.
        hit_rate: Cache hit rate over the run, or None.
        run_id: The trial's RunRecord id.
        run_wait_fraction: The run's own steady-state fraction (all epochs).
        epoch_wait_fractions: Per-epoch fractions.
        valid: False when the record carries an ``invalid`` issue.
    """

    wait_fraction: float
    accelerator_utilization: float
    cost_usd_per_epoch: float | None = None
    hit_rate: float | None = None
    run_id: str | None = None
    run_wait_fraction: float | None = None
    epoch_wait_fractions: tuple[float, ...] = ()
    valid: bool = True

    @classmethod
    def from_record(cls, record: RunRecord) -> Measurement:
        """Read a trial's figures from its RunRecord (the bottleneck rank's last epoch)."""
        m = record.metrics
        rank = m.bottleneck_rank
        epochs = sorted((e for e in m.epochs if e.rank == rank and e.steps > 0), key=lambda e: e.epoch)
        wait = epochs[-1].data_wait_fraction if epochs else m.data_wait_fraction
        return cls(
            wait_fraction=wait,
            accelerator_utilization=1.0 - wait,
            cost_usd_per_epoch=record.cost.usd_per_epoch if record.cost is not None else None,
            hit_rate=record.loader_stats.hit_rate,
            run_id=record.run_id,
            run_wait_fraction=m.data_wait_fraction,
            epoch_wait_fractions=tuple(e.data_wait_fraction for e in epochs),
            valid=record.valid,
        )


def params_key(params: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """A hashable key of a trial's parameters: trials with equal keys measured the same configuration."""
    return tuple(sorted((str(k), v) for k, v in params.items()))


def _trial_params(trial: Any) -> dict[str, Any]:
    # NOTE: a WAITING trial (and a RUNNING one that has not suggested yet) carries its parameters
    # as Optuna's ``fixed_params`` system attribute, not yet as ``params``.
    return dict(trial.system_attrs.get("fixed_params") or trial.params)


@dataclass(frozen=True, slots=True)
class ConfigStats:
    """Every complete measurement of one configuration in a study (the first objective's values).

    Attributes:
        params: The Optuna parameters of the configuration.
        trials: Its complete trials, in trial-number order (the first is the original measurement).
        values: Their first objective values (the wait fraction for ``wait``), in the same order.
        utilizations: Their measured accelerator utilisations (None where not recorded).
    """

    params: dict[str, Any]
    trials: tuple[Any, ...]
    values: tuple[float, ...]
    utilizations: tuple[float | None, ...] = ()

    @property
    def n(self) -> int:
        """Measurements."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """Mean of the measurements."""
        return sum(self.values) / len(self.values)

    @property
    def sd(self) -> float | None:
        """Sample standard deviation of the measurements (None below 2)."""
        if self.n < 2:
            return None
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in self.values) / (self.n - 1))

    @property
    def mean_utilization(self) -> float | None:
        """Mean accelerator utilisation over the measurements that recorded it."""
        known = [u for u in self.utilizations if u is not None]
        return sum(known) / len(known) if known else None

    @property
    def first(self) -> Any:
        """The configuration's first complete trial (it names the configuration in exports)."""
        return self.trials[0]

    @property
    def cache_bytes(self) -> int:
        """Cache size of the configuration (the cheaper one wins ties)."""
        return int(self.first.user_attrs.get("cache_bytes") or 0)

    def score(self, noise: float | None) -> float:
        """Pessimistic estimate: mean plus one standard error, ``noise / sqrt(n)`` (the mean when noise is unknown).

        A single lucky measurement of a configuration scores worse than the same mean measured
        several times: the recommendation goes to what repeats, not to what was measured low once.
        """
        return self.mean + (noise or 0.0) / math.sqrt(self.n)


def config_stats(trials: Iterable[Any], *, min_au: float | None = None) -> list[ConfigStats]:
    """Group complete trials (single objective) by configuration; with ``min_au``, keep the configurations whose mean utilisation reaches it."""
    from optuna.trial import TrialState

    groups: dict[tuple[tuple[str, Any], ...], list[Any]] = {}
    for t in sorted(trials, key=lambda t: t.number):
        if t.state == TrialState.COMPLETE and t.values:
            groups.setdefault(params_key(t.params), []).append(t)
    out = [
        ConfigStats(
            params=dict(ts[0].params),
            trials=tuple(ts),
            values=tuple(float(t.values[0]) for t in ts),
            utilizations=tuple(t.user_attrs.get("accelerator_utilization") for t in ts),
        )
        for ts in groups.values()
    ]
    if min_au is not None:
        out = [c for c in out if c.mean_utilization is not None and c.mean_utilization >= min_au]
    return out


def noise_sd(stats: Sequence[ConfigStats]) -> float | None:
    """Pooled standard deviation between measurements of one configuration (None without any repeat)."""
    dof = sum(c.n - 1 for c in stats)
    if dof < 1:
        return None
    return math.sqrt(sum((c.n - 1) * (c.sd or 0.0) ** 2 for c in stats) / dof)


def rank_configs(stats: Sequence[ConfigStats]) -> list[ConfigStats]:
    """Configurations best first, noise-aware: by :meth:`ConfigStats.score` under the pooled noise, then mean, cache size, first trial.

    Without repeats (every configuration measured once) this is the single best value, as before.
    """
    noise = noise_sd(stats)
    return sorted(stats, key=lambda c: (c.score(noise), c.mean, c.cache_bytes, c.first.number))


def leaders(stats: Sequence[ConfigStats], k: int) -> list[ConfigStats]:
    """The ``k`` configurations with the lowest means: the ones to re-measure.

    By the plain mean, not the pessimistic score: a newcomer measured low once is among them at
    once, gets its repeat, and only then can it become the recommendation.
    """
    return sorted(stats, key=lambda c: (c.mean, c.cache_bytes, c.first.number))[:k]


def check_storage_url(url: str | None) -> str:
    """Check that ``url`` (default :data:`DEFAULT_STORAGE`) is an SQLAlchemy URL whose backend is installed.

    Cheap and offline (nothing is opened), so a typo in ``--storage`` fails before the link is
    probed and the dataset is read, not after. A bare ``postgresql://`` URL means psycopg 3
    (``postgresql+psycopg://``) when psycopg2, SQLAlchemy's default PostgreSQL driver, is missing.

    Returns:
        The URL to open.

    Raises:
        UsageError: Not an SQLAlchemy URL, an unknown database dialect, or a missing driver.
    """
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    url = url or DEFAULT_STORAGE
    hint = f"e.g. sqlite:///studies.db or {POSTGRES_EXAMPLE}"
    try:
        parsed = make_url(url)
    except (sqlalchemy.exc.ArgumentError, ValueError) as exc:
        raise UsageError(f"--storage {_redact_db(url)!r} is not a database URL", hint=hint) from exc
    if parsed.drivername == "postgresql" and not _importable("psycopg2") and _importable("psycopg"):
        parsed = parsed.set(drivername="postgresql+psycopg")
        url = parsed.render_as_string(hide_password=False)
    try:
        parsed.get_dialect().import_dbapi()
    except sqlalchemy.exc.NoSuchModuleError as exc:
        raise UsageError(f"--storage {_redact_db(url)!r}: unknown database {parsed.drivername!r}", hint=hint) from exc
    except ImportError as exc:
        install = "pip install 'psycopg[binary]'" if parsed.get_backend_name() == "postgresql" else "pip install the database driver"
        raise UsageError(
            f"--storage {_redact_db(url)!r}: the {parsed.drivername} driver is not installed ({exc})",
            hint=f"{install}, or use sqlite:///studies.db",
        ) from exc
    return url


def open_storage(url: str | None = None) -> Any:
    """An Optuna RDB storage for ``url`` (default :data:`DEFAULT_STORAGE`), creating a SQLite file's folder.

    SQLite gets a busy timeout so two processes on one machine can share the file; for more
    writers, or processes on several machines, use a server database (PostgreSQL URL): a server
    that cannot be reached or refuses the login is a usage error, said in one line.

    Raises:
        UsageError: Not an SQLAlchemy URL, or the database cannot be reached or opened.
    """
    import optuna
    import sqlalchemy.exc

    url = check_storage_url(url)
    engine_kwargs: dict[str, Any] = {}
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).expanduser().parent.mkdir(parents=True, exist_ok=True)
        engine_kwargs = {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}}
    elif url.startswith("postgresql"):
        # NOTE: pre-ping drops a pooled connection the server closed (restart, idle timeout)
        # instead of failing a trial on it; a dead host fails in seconds, not TCP's minutes.
        engine_kwargs = {"pool_pre_ping": True, "connect_args": {"connect_timeout": DB_CONNECT_TIMEOUT_S}}
        _check_reachable(url, engine_kwargs)
    last: Exception | None = None
    for attempt in range(5):
        try:
            return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs)
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as exc:
            # NOTE: two processes creating the schema at once race on CREATE TABLE (PostgreSQL:
            # a unique violation on pg_type, or "already exists"); retry, the winner's tables load.
            last = exc
            time.sleep(0.2 * (attempt + 1))
        except (sqlalchemy.exc.ArgumentError, ModuleNotFoundError, ValueError) as exc:
            raise UsageError(f"cannot open study storage {_redact_db(url)}: {_db_error(exc, url)}") from exc
    raise RuntimeFailure(f"cannot open study storage {_redact_db(url)}: {_db_error(last, url)}")


def _check_reachable(url: str, engine_kwargs: dict[str, Any]) -> None:
    """Connect once to a server database so that a wrong host, port, login or database is one clear line."""
    import sqlalchemy
    import sqlalchemy.exc

    engine = sqlalchemy.create_engine(url, **engine_kwargs)
    try:
        with engine.connect():
            pass
    except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError) as exc:
        raise UsageError(
            f"cannot reach study database {_redact_db(url)}: {_db_error(exc, url)}",
            hint="check host, port, user and database name (is the server running and reachable from here?)",
        ) from exc
    finally:
        engine.dispose()


def _db_error(exc: BaseException | None, url: str) -> str:
    """The driver's own first words about ``exc`` on one line, with no credential of ``url`` in them."""
    from sqlalchemy.engine import make_url

    orig = getattr(exc, "orig", None) or exc
    lines = [line.strip() for line in str(orig).splitlines() if line.strip()]
    text = " ".join(lines[:2]) if lines else type(orig).__name__
    text = redact_text(text)
    password = make_url(url).password
    if password:
        text = text.replace(str(password), "REDACTED")
    return text


def _importable(module: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(module) is not None


def _redact_db(url: str) -> str:
    from delibench.storage import redact

    return redact(url)


def claim_worker_index(storage: Any, study_name: str) -> int:
    """This process's number among those that opened ``study_name`` in ``storage``: 0, 1, 2, ... (atomic under :func:`study_lock`)."""
    backend = getattr(storage, "_backend", storage)
    with study_lock(backend, study_name):
        study_id = backend.get_study_id_from_name(study_name)
        index = int(backend.get_study_system_attrs(study_id).get(ATTR_WORKERS, 0))
        backend.set_study_system_attr(study_id, ATTR_WORKERS, index + 1)
    return index


@contextlib.contextmanager
def study_lock(storage: Any, study_name: str, timeout_s: float = DB_LOCK_TIMEOUT_S) -> Iterator[None]:
    """Hold a lock named after ``study_name`` that every process sharing ``storage`` sees.

    Optuna's ``enqueue_trial(skip_if_exists=True)`` reads the trials and then inserts: two processes
    seeding one study at once both see no such trial and both enqueue it. Under this lock the check
    and the insert of one process happen before the other's. PostgreSQL: a session advisory lock;
    MySQL: ``GET_LOCK``; a SQLite file: ``flock`` on ``<file>.lock`` beside it; anything else
    (in-memory storage: one process) needs none.

    Raises:
        RuntimeFailure: The lock was not granted within ``timeout_s``.
    """
    import sqlalchemy
    import sqlalchemy.exc

    storage = getattr(storage, "_backend", storage)  # Optuna's cache wrapper around an RDBStorage
    engine = getattr(storage, "engine", None)
    backend = engine.url.get_backend_name() if engine is not None else ""
    key = f"delibench.study:{study_name}"
    if backend == "postgresql":
        # A stable signed 64-bit key (Python's hash() differs between processes).
        lock_id = int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big", signed=True)
        with engine.connect() as conn:
            # NOTE: lock_timeout local to this transaction bounds the wait; the lock itself outlives it.
            conn.execute(sqlalchemy.text("SELECT set_config('lock_timeout', :ms, true)"), {"ms": str(int(timeout_s * 1000))})
            try:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_lock(:k)"), {"k": lock_id})
            except sqlalchemy.exc.OperationalError as exc:
                raise RuntimeFailure(f"study {study_name!r}: lock not granted within {timeout_s:.0f} s") from exc
            conn.commit()
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT pg_advisory_unlock(:k)"), {"k": lock_id})
                conn.commit()
    elif backend in ("mysql", "mariadb"):
        with engine.connect() as conn:
            got = conn.execute(sqlalchemy.text("SELECT GET_LOCK(:k, :t)"), {"k": key[:64], "t": int(timeout_s)}).scalar()
            if got != 1:
                raise RuntimeFailure(f"study {study_name!r}: lock not granted within {timeout_s:.0f} s")
            try:
                yield
            finally:
                conn.execute(sqlalchemy.text("SELECT RELEASE_LOCK(:k)"), {"k": key[:64]})
    elif backend == "sqlite" and engine.url.database not in (None, "", ":memory:"):
        try:
            import fcntl
        except ImportError:  # NOTE: Windows: no flock; SQLite there serves one process anyway
            yield
            return
        with open(f"{engine.url.database}.lock", "a+b") as fh:
            deadline = time.monotonic() + timeout_s
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise RuntimeFailure(f"study {study_name!r}: lock not granted within {timeout_s:.0f} s") from None
                    time.sleep(0.05)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
    else:
        yield


def quiet_optuna() -> None:
    """Silence Optuna's per-trial INFO logging and experimental-feature warnings (we print our own)."""
    import optuna

    optuna.logging.set_verbosity(logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


class _StepReporter:
    """Turns the runner's per-step samples into Optuna intermediate values and a prune flag.

    Only the measured (last) epoch is reported, as the running wait fraction of that epoch at
    each of its steps: the same quantity as the objective, so the pruner compares like with like
    (the cold first epoch would say little about a cache).
    """

    def __init__(self, trial: Any, warmup_steps: int, last_epoch: int, enabled: bool) -> None:
        self.trial = trial
        self.warmup_steps = warmup_steps
        self.last_epoch = last_epoch
        self.enabled = enabled
        self.pruned = False
        self.steps = 0
        self.wait_s = 0.0
        self.total_s = 0.0

    def on_step(self, sample: StepSample) -> None:
        self.steps += 1
        if sample.rank != 0 or sample.epoch != self.last_epoch or (sample.epoch == 0 and sample.step < self.warmup_steps):
            return
        self.wait_s += sample.wait_s
        self.total_s += sample.wait_s + sample.compute_s
        if not self.enabled or self.total_s <= 0 or self.pruned:
            return
        self.trial.report(self.wait_s / self.total_s, sample.step)
        if self.trial.should_prune():
            self.pruned = True

    def should_stop(self) -> bool:
        return self.pruned


#: The session's ``run`` (``delibench.app.session.run``): the tuner is a part and never imports the
#: application layer, so whoever builds the tuner hands it the function that runs a trial.
RunFunction = Callable[..., RunRecord]


def runner_evaluator(settings: TuneSettings, run: RunFunction) -> Evaluator:
    """The real evaluator: one measured run through the session's ``run`` per trial."""

    def evaluate(config: TuneConfig, on_step: Callable[[StepSample], None], should_stop: Callable[[], bool]) -> Measurement:
        record = run(
            settings.run_spec(config, label=config.label),
            results_dir=settings.results_dir,
            on_step=on_step,
            should_stop=should_stop,
            write=settings.write_records,
        )
        return Measurement.from_record(record)

    return evaluate


class Tuner:
    """Tunes the DELI loader's knobs for one environment with an Optuna study.

    Args:
        settings: How trials run, and the objective.
        space: The search space.
        storage: An SQLAlchemy URL, an Optuna storage object (``optuna.storages.InMemoryStorage()``
            in tests), or None for :data:`DEFAULT_STORAGE`.
        study_name: The study (normally ``Fingerprint.study_name``).
        predictor: The analytic model; None disables predictions and model-guided starts.
        evaluate: Runs one trial: :func:`runner_evaluator` over the session's ``run`` (tests pass a fake).
        sampler_seed: Seed of the TPE sampler.
        prune: Stop hopeless trials early (single-objective ``wait`` only: Optuna cannot prune
            multi-objective studies, and for ``cost`` the running wait is not the objective).
        study_attrs: Extra study attributes to store (fingerprint, probe numbers).
        repeat_best: Noise-aware incumbent (single objective): after each trial, any of the
            ``repeat_best`` configurations with the lowest means so far that has been measured
            fewer than ``repeat_measurements`` times is measured again (0: never). A lucky single
            measurement then gets a second one before it can win (and an unlucky one of a good
            configuration, while it is among the best, gets its second chance), and the
            recommendation (:func:`rank_configs`) goes by the mean of each configuration's
            measurements. Repeats count towards ``optimize``'s trials.
        repeat_measurements: Measurements each of those configurations gets.
        repeat_after: Complete trials before the first repeat (the sampler's random start).

    Raises:
        UsageError: The stored study has other objectives or another search space, or a
            negative ``repeat_best``/``repeat_after``.
    """

    def __init__(
        self,
        settings: TuneSettings,
        space: SearchSpace,
        *,
        storage: Any = None,
        study_name: str,
        predictor: Predictor | None = None,
        evaluate: Evaluator,
        sampler_seed: int | None = 0,
        prune: bool = True,
        study_attrs: dict[str, Any] | None = None,
        repeat_best: int = DEFAULT_REPEAT_BEST,
        repeat_after: int = DEFAULT_REPEAT_AFTER,
        repeat_measurements: int = REPEAT_MEASUREMENTS,
    ) -> None:
        import optuna

        quiet_optuna()
        self.settings = settings
        self.space = space
        self.predictor = predictor
        self.evaluate = evaluate
        self.prune = prune and settings.objective == "wait"
        self.repeat_best = repeat_best
        self.repeat_after = repeat_after
        if repeat_measurements < 1:
            raise UsageError(f"repeat_measurements must be at least 1, got {repeat_measurements}")
        self.repeat_measurements = repeat_measurements
        self._trials_left = 0
        # NOTE: constraints go through ``trial.set_constraint`` (Optuna 5), which TPE reads itself.
        # constant_liar: processes sharing a study do not all propose the point another is running.
        self.sampler = optuna.samplers.TPESampler(seed=sampler_seed, n_startup_trials=5, constant_liar=True)
        pruner = (
            optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3)
            if self.prune
            else optuna.pruners.NopPruner()
        )
        self.storage = open_storage(storage) if storage is None or isinstance(storage, str) else storage
        self.study = _create_study(self.storage, study_name, settings.directions, self.sampler, pruner)
        # NOTE: every Tuner on one study (another VM, a rerun) draws from its own seed: the same seed
        # would propose the same random start points in each process. The first keeps sampler_seed.
        self.worker_index = claim_worker_index(self.storage, self.study_name)
        if self.worker_index and sampler_seed is not None:
            self.sampler = optuna.samplers.TPESampler(seed=sampler_seed + 7919 * self.worker_index, n_startup_trials=5, constant_liar=True)
            self.study.sampler = self.sampler
        self._check_or_store_attrs(study_attrs or {})

    # ------------------------------------------------------------------ study bookkeeping
    @property
    def repeat_best(self) -> int:
        """How many of the best configurations so far are re-measured (0: no repeats)."""
        return self._repeat_best

    @repeat_best.setter
    def repeat_best(self, value: int) -> None:
        if value < 0:
            raise UsageError(f"--repeat-best must not be negative, got {value}")
        self._repeat_best = int(value)

    @property
    def repeat_after(self) -> int:
        """Complete trials before the first repeat."""
        return self._repeat_after

    @repeat_after.setter
    def repeat_after(self, value: int) -> None:
        if value < 0:
            raise UsageError(f"repeat_after must not be negative, got {value}")
        self._repeat_after = int(value)

    @property
    def study_name(self) -> str:
        """The study's name."""
        return str(self.study.study_name)

    def _check_or_store_attrs(self, extra: dict[str, Any]) -> None:
        attrs = self.study.user_attrs
        stored_obj = attrs.get(ATTR_OBJECTIVE)
        if stored_obj is not None and stored_obj != self.settings.objective:
            raise UsageError(
                f"study {self.study_name!r} optimises {stored_obj!r}, not {self.settings.objective!r}",
                hint="pass the same --objective, or a new --study name",
            )
        stored_space = attrs.get(ATTR_SPACE)
        if stored_space is not None and stored_space != self.space.describe():
            raise UsageError(
                f"study {self.study_name!r} was created with another search space (e.g. another --mem-budget)",
                hint="pass the same options, or a new --study name",
            )
        stored_min_au = attrs.get(ATTR_MIN_AU)
        if ATTR_MIN_AU in attrs and stored_min_au != self.settings.min_au:
            raise UsageError(
                f"study {self.study_name!r} uses --min-au {stored_min_au}, not {self.settings.min_au}",
                hint="pass the same --min-au, or a new --study name",
            )
        wanted = {
            ATTR_OBJECTIVE: self.settings.objective,
            ATTR_SPACE: self.space.describe(),
            ATTR_MIN_AU: self.settings.min_au,
            ATTR_SETTINGS: _settings_attr(self.settings),
            **extra,
        }
        for key, value in wanted.items():
            if key not in attrs:
                self.study.set_user_attr(key, value)

    # ------------------------------------------------------------------ model-guided start
    def seed_with_model(self, k: int = 3) -> list[Guess]:
        """Enqueue the model's ``k`` best guesses (skipped if already tried or queued).

        Returns:
            The guesses enqueued (empty without a predictor).
        """
        if self.predictor is None or k < 1:
            return []
        guesses = self.predictor.best_guesses(self.space, self.settings.objective, k=k, min_au=self.settings.min_au)
        # NOTE: under the study lock, so processes seeding one study at once enqueue each guess once.
        with study_lock(self.storage, self.study_name):
            for g in guesses:
                self.study.enqueue_trial(self.space.to_params(g.config), user_attrs={"source": "model"}, skip_if_exists=True)
        return guesses

    # ------------------------------------------------------------------ noise-aware incumbent
    def enqueue_repeat(self) -> Any | None:
        """Enqueue one more measurement of one of the best configurations so far, when one is due.

        Due when the study has a single objective and ``repeat_after`` complete trials, for the
        first (lowest mean) of the ``repeat_best`` best configurations (among those whose mean
        utilisation meets ``min_au``) that has fewer than ``repeat_measurements`` measurements
        and none waiting or running. Under the study lock, so processes sharing a study enqueue
        each repeat once: a second process sees the first one's repeat waiting (or running) and
        leaves it.

        Returns:
            The :class:`ConfigStats` of the configuration re-measured, or None.
        """
        from optuna.trial import TrialState

        if self.repeat_best < 1 or len(self.settings.directions) != 1:
            return None
        with study_lock(self.storage, self.study_name):
            trials = self.study.get_trials(deepcopy=False)
            complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
            if len(complete) < max(1, self.repeat_after):
                return None
            pending = {params_key(_trial_params(t)) for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
            due = [
                c for c in leaders(config_stats(complete, min_au=self.settings.min_au), self.repeat_best)
                if c.n < self.repeat_measurements and params_key(c.params) not in pending
            ]
            if not due:
                return None
            top = due[0]
            self.study.enqueue_trial(
                dict(top.params),
                user_attrs={"source": SOURCE_REPEAT, "repeat_of": top.first.number, "repeat_index": top.n},
                skip_if_exists=False,
            )
        return top

    def _after_trial(self, study: Any, trial: Any) -> None:
        """Optuna callback: re-measure one of the best configurations if due (see :meth:`enqueue_repeat`) and this process runs another trial.

        After this process's last trial nothing is enqueued: a repeat left waiting would be
        nobody's (a resumed study runs it first).
        """
        self._trials_left -= 1
        if self._trials_left > 0:
            self.enqueue_repeat()

    # ------------------------------------------------------------------ trials
    def objective(self, trial: Any) -> float | tuple[float, ...]:
        """Optuna objective: suggest, predict, measure, and store both in the trial's attributes."""
        import optuna

        config = self.space.suggest(trial)
        trial.set_user_attr("config", config.as_dict())
        trial.set_user_attr("label", config.label)
        trial.set_user_attr("pid", os.getpid())
        if "source" not in trial.user_attrs:
            trial.set_user_attr("source", "sampler")
        if self.predictor is not None:
            guess = self.predictor.guess(config)
            p = guess.prediction
            trial.set_user_attr("predicted_wait_fraction", p.wait_fraction)
            trial.set_user_attr("predicted_bound", p.bound)
            # The model's band (optimistic .. pessimistic probe readings) and whether it trusts itself.
            trial.set_user_attr("predicted_low", p.low)
            trial.set_user_attr("predicted_high", p.high)
            trial.set_user_attr("predicted_trusted", bool(p.trusted))
            trial.set_user_attr("predicted_uncertain_reason", p.uncertain_reason)
            trial.set_user_attr("sim_miss_rate", guess.miss_rate)
        # NOTE: a repeat is never pruned: it is there to measure a leading configuration once more, in full.
        repeat = trial.user_attrs.get("source") == SOURCE_REPEAT
        reporter = _StepReporter(trial, self.settings.warmup_steps, self.settings.epochs_per_trial - 1, self.prune and not repeat)
        start = time.perf_counter()
        measurement = self.evaluate(config, reporter.on_step, reporter.should_stop)
        trial.set_user_attr("duration_s", time.perf_counter() - start)
        trial.set_user_attr("measured_wait_fraction", measurement.wait_fraction)
        trial.set_user_attr("accelerator_utilization", measurement.accelerator_utilization)
        trial.set_user_attr("run_wait_fraction", measurement.run_wait_fraction)
        trial.set_user_attr("epoch_wait_fractions", list(measurement.epoch_wait_fractions))
        trial.set_user_attr("hit_rate", measurement.hit_rate)
        trial.set_user_attr("run_id", measurement.run_id)
        trial.set_user_attr("cost_usd_per_epoch", measurement.cost_usd_per_epoch)
        trial.set_user_attr("cache_bytes", config.cache_size_bytes)
        if self.settings.min_au is not None:
            shortfall = self.settings.min_au - measurement.accelerator_utilization
            trial.set_user_attr("au_shortfall", shortfall)
            trial.set_constraint("min_au", shortfall)  # <= 0: feasible
        if reporter.pruned:
            raise optuna.TrialPruned(f"pruned at step {reporter.steps}: running wait above the median")
        if not measurement.valid:
            raise RuntimeFailure(f"trial run {measurement.run_id} is invalid (see its issues)")
        cost, unit = self._cost(measurement, config)
        trial.set_user_attr("cost_value", cost)
        trial.set_user_attr("cost_unit", unit)
        if self.settings.objective == "wait":
            return measurement.wait_fraction
        if self.settings.objective == "cost":
            return cost
        return measurement.wait_fraction, cost

    def _cost(self, m: Measurement, config: TuneConfig) -> tuple[float, str]:
        # NOTE: without a price sheet the cache's bytes stand in for cost; the unit is stored with
        # every trial and printed, so nobody mistakes bytes for dollars.
        if m.cost_usd_per_epoch is not None and math.isfinite(m.cost_usd_per_epoch):
            return float(m.cost_usd_per_epoch), "usd_per_epoch"
        return float(config.cache_size_bytes), "cache_bytes"

    def optimize(
        self,
        n_trials: int,
        *,
        timeout_s: float | None = None,
        callbacks: Iterable[Callable[[Any, Any], None]] = (),
        catch: Sequence[type[BaseException]] = (RuntimeFailure,),
    ) -> None:
        """Run ``n_trials`` more trials in this process (runtime failures mark a trial failed and go on).

        With ``repeat_best``, some of them re-measure one of the best configurations (``source``
        ``repeat``, ``repeat_of`` the trial first measuring it): the budget stays ``n_trials``.

        Raises:
            UsageError: ``n_trials < 1``.
        """
        if n_trials < 1:
            raise UsageError(f"--trials must be at least 1, got {n_trials}")
        self._trials_left = n_trials
        self.enqueue_repeat()  # NOTE: a resumed study's best may be due a repeat before any new trial
        self.study.optimize(
            self.objective,
            n_trials=n_trials,
            timeout=timeout_s,
            callbacks=[self._after_trial, *callbacks],
            catch=tuple(catch),
            show_progress_bar=False,
        )


def _settings_attr(settings: TuneSettings) -> dict[str, Any]:
    d = asdict(settings)
    d["compute"] = asdict(settings.compute)
    d.pop("results_dir", None)
    return d


def _create_study(storage: Any, name: str, directions: list[str], sampler: Any, pruner: Any) -> Any:
    import optuna
    import sqlalchemy.exc

    for attempt in range(5):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=name,
                directions=directions,
                sampler=sampler,
                pruner=pruner,
                load_if_exists=True,
            )
        except ValueError as exc:
            # Loading a study whose directions differ.
            raise UsageError(f"study {name!r} exists with other objectives: {exc}", hint="use a new --study name") from exc
        except (sqlalchemy.exc.OperationalError, sqlalchemy.exc.IntegrityError):
            # NOTE: two processes creating the same study at once: one wins, the other retries and loads it.
            time.sleep(0.2 * (attempt + 1))
    return optuna.load_study(storage=storage, study_name=name, sampler=sampler, pruner=pruner)

