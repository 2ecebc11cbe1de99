"""The tuning entry point for Python users and the CLI: probe, fingerprint, screen, then tune.

Example::

    from delibench import ComputeSpec
    from delibench.tuning.api import prepare_tuning

    session = prepare_tuning("s3://bucket/imgs", "resnet50", compute=ComputeSpec("emulated", 0.12),
                             mem_budget_bytes=8 * 2**30)
    session.tuner.optimize(20)
    session.export_best("best.yaml")
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.manifest import Manifest
from delibench.records import ComputeSpec
from delibench.tuning.fingerprint import Fingerprint, fingerprint
from delibench.tuning.guide import Guess, Predictor
from delibench.tuning.model import Demand
from delibench.tuning.probe import ProbeResult, probe_environment
from delibench.tuning.simulator import CacheSimulator
from delibench.tuning.space import SearchSpace, TuneConfig
from delibench.tuning.tuner import (
    ATTR_FINGERPRINT,
    ATTR_MIN_AU,
    ATTR_OBJECTIVE,
    ATTR_PROBE,
    ATTR_SPACE,
    RunFunction,
    TuneSettings,
    Tuner,
    check_storage_url,
    open_storage,
    runner_evaluator,
)

__all__ = ["TuningSession", "find_study", "measure_pipeline", "prepare_tuning"]


def measure_pipeline(settings: TuneSettings, workers: tuple[int, ...], samples: int, run: RunFunction,
                     *, steps: int = 10, warmup_steps: int = 3) -> tuple[tuple[int, float], ...]:
    """Samples/s of the no-fetch pipeline (decode, collate, hand-over to the loop) for each worker count.

    One short run per count with the ``memory`` loader (samples read into RAM first) and a 1 ms
    emulated step, through the same ``run`` as the trials: what the decode rate alone misses (for
    224 px images on 2 cores the hand-over costs more than the decode) is in the figure. DS-Analyzer
    measures the prep rate the same way. A run that fails leaves its count out (the model then
    falls back to the probe's decode rate and says it is less sure).
    """
    from delibench.records import ComputeSpec, LoaderSpec, RunSpec

    out = []
    for w in workers:
        spec = RunSpec(
            dataset_url=settings.dataset_url,
            workload=settings.workload,
            loader=LoaderSpec("memory", {"sample_count": max(1, min(samples, (steps + 1) * settings.batch_size))}),
            compute=ComputeSpec("emulated", 0.001),
            batch_size=settings.batch_size,
            num_workers=w,
            epochs=1,
            warmup_steps=warmup_steps,
            seed=settings.seed,
            max_steps_per_epoch=steps,
            link_profile=settings.link_profile,
            storage_options=settings.storage_options,
        )
        try:
            record = run(spec, write=False)
            rate = float(record.metrics.throughput_samples_per_s)
        except Exception:  # noqa: BLE001 - a measurement for the model, not the tuning itself
            continue
        if rate > 0 and math.isfinite(rate):
            out.append((w, rate))
    return tuple(out)


def find_study(storage: Any, fp: Fingerprint, search: dict[str, Any] | None = None) -> str | None:
    """The name of a stored study whose fingerprint matches ``fp`` and whose search settings equal ``search``.

    The study with the most trials wins; None when there is none.
    """
    import optuna

    prefix = f"deli-{fp.dataset_id}-"
    search = search or {}
    candidates = [
        s
        for s in optuna.get_all_study_summaries(storage, include_best_trial=False)
        if s.study_name.startswith(prefix)
        and fp.matches(s.user_attrs.get(ATTR_FINGERPRINT) or {})
        and all(s.user_attrs.get(k) == v for k, v in search.items())
    ]
    if not candidates:
        return None
    return max(candidates, key=lambda s: (s.n_trials, s.study_name)).study_name


@dataclass
class TuningSession:
    """Everything one ``delibench tune`` invocation set up.

    Attributes:
        tuner: The tuner (its ``study`` is loaded or created).
        settings: How trials run.
        space: The search space.
        manifest: The dataset's manifest.
        probe: The link probe's numbers.
        fingerprint: The environment fingerprint (names the study unless one was given).
        predictor: The analytic model (None when the step time is unknown, e.g. real compute).
        guesses: The model's guesses enqueued before the sampler's own.
        model_trusted: Whether the model was trusted to pick first trials here (False: none were
            enqueued and the sampler explores from the start; predictions are still recorded).
        model_note: Why (one line), or "" without a model.
    """

    tuner: Tuner
    settings: TuneSettings
    space: SearchSpace
    manifest: Manifest
    probe: ProbeResult
    fingerprint: Fingerprint
    predictor: Predictor | None
    guesses: list[Guess]
    model_trusted: bool = False
    model_note: str = ""

    def export_best(self, path: str | Path) -> TuneConfig:
        """Write ``best.yaml`` (see :func:`delibench.tuning.export.write_best_yaml`)."""
        from delibench.tuning.export import write_best_yaml

        return write_best_yaml(self.tuner.study, path)


def prepare_tuning(
    dataset_url: str,
    workload: str,
    *,
    compute: ComputeSpec,
    mem_budget_bytes: int,
    objective: str = "wait",
    min_au: float | None = None,
    storage: Any = None,
    study_name: str | None = None,
    batch_size: int | None = None,
    num_workers: int = 2,
    steps_per_trial: int | None = 40,
    epochs_per_trial: int = 2,
    warmup_steps: int = 3,
    seed: int = 0,
    tune_workers: bool = False,
    model_start: int = 3,
    results_dir: str | None = None,
    write_records: bool = True,
    link_profile: str | None = None,
    sampler_seed: int | None = 0,
    space_overrides: dict[str, Any] | None = None,
    storage_options: dict[str, Any] | None = None,
    run: RunFunction,
    probe_pipeline: bool = True,
) -> TuningSession:
    """Probe the environment, name the study after its fingerprint, build the space and the model, open the study.

    Args:
        dataset_url: Dataset root (with a delibench manifest).
        workload: Workload name (its decoder is timed by the probe).
        compute: Compute backend of the trials; ``emulated`` also gives the model its step time.
        mem_budget_bytes: Largest cache to try.
        objective: ``wait``, ``cost`` or ``wait,cost``.
        min_au: Constraint on accelerator utilisation, or None.
        storage: SQLAlchemy URL, Optuna storage, or None for the default SQLite file.
        study_name: Study name; default: the fingerprint's.
        batch_size: Samples per step (default: the workload's).
        num_workers: DataLoader workers of every trial (unless ``tune_workers``).
        steps_per_trial: Steps per epoch a trial measures (None: whole epochs).
        epochs_per_trial: Epochs per trial (>= 2 lets the cache warm up before the measured epoch).
        warmup_steps: Steps excluded from each trial's figures.
        seed: Sampler and model seed of every trial.
        tune_workers: Add ``num_workers`` in ``{0, 1, 2, 4}`` (capped at the CPU count) to the space.
        model_start: How many of the model's best guesses to enqueue first (0: none).
        results_dir: Where trial RunRecords go.
        write_records: Write trial RunRecords.
        storage_options: fsspec options that reach the dataset (endpoint, client options).
        run: Runs one trial: the session's ``run`` (``delibench.app.session.run``).
        link_profile: Link-emulation profile name to record with each run.
        sampler_seed: TPE seed.
        space_overrides: Extra :class:`SearchSpace` fields (e.g. ``cache_levels``, ``concurrencies``).
        probe_pipeline: Measure the no-fetch pipeline (the ``memory`` loader, a near-zero step)
            once per worker count through ``run``, for the wait model (a few seconds each).

    Raises:
        UsageError: Bad inputs (unknown workload, no manifest, bad budget, ...).
        FetchError: The probe could not read the dataset.
    """
    from delibench.manifest import read_manifest
    from delibench.workloads.models import get_workload

    if model_start < 0:
        raise UsageError(f"--model-start must not be negative, got {model_start}")
    if storage is None or isinstance(storage, str):
        check_storage_url(storage)  # NOTE: before the manifest read and the probe, which take seconds
    storage_options = dict(storage_options or {})
    manifest = read_manifest(dataset_url, storage_options)
    wl = get_workload(workload, num_classes=len(manifest.classes))
    batch = batch_size or wl.default_batch_size
    probe = probe_environment(dataset_url, manifest, decode=wl.decoder(), storage_options=storage_options)
    fp = fingerprint(
        dataset_id=manifest.dataset_id,
        dataset_url=dataset_url,
        workload=wl.name,
        compute=compute,
        batch_size=batch,
        world_size=1,
        mean_sample_bytes=manifest.mean_sample_bytes,
        probe=probe,
        storage_options=storage_options,
    )
    workers_choices: tuple[int, ...] = ()
    if tune_workers:
        workers_choices = tuple(sorted({w for w in (0, 1, 2, 4) if w <= max(probe.cpu_count, 1)}))
    space = SearchSpace(
        mem_budget_bytes=mem_budget_bytes,
        dataset_bytes=manifest.total_bytes,
        num_workers_choices=workers_choices,
        **(space_overrides or {}),
    )
    settings = TuneSettings(
        dataset_url=dataset_url,
        workload=wl.name,
        compute=compute,
        batch_size=batch,
        num_workers=num_workers,
        seed=seed,
        steps_per_trial=steps_per_trial,
        epochs_per_trial=epochs_per_trial,
        warmup_steps=warmup_steps,
        objective=objective,
        min_au=min_au,
        link_profile=link_profile,
        results_dir=results_dir,
        write_records=write_records,
        storage_options=storage_options,
    )
    predictor = None
    if compute.step_time_s and probe_pipeline:
        probe = replace(probe, pipeline_samples_per_s=measure_pipeline(
            settings, workers_choices or (num_workers,), len(manifest), run))
    if compute.step_time_s:
        simulator = CacheSimulator(
            [s.size_bytes for s in manifest.samples],
            epochs=epochs_per_trial,
            seed=seed,
            max_samples_per_epoch=None if steps_per_trial is None else steps_per_trial * batch,
            ranks=(0,),
        )
        epoch_steps = -(-len(manifest) // batch)
        steps = epoch_steps if steps_per_trial is None else min(steps_per_trial, epoch_steps)
        predictor = Predictor(probe.link_estimate(), Demand(batch, compute.step_time_s, num_workers, steps), simulator)
    store = open_storage(storage) if storage is None or isinstance(storage, str) else storage
    search = {ATTR_OBJECTIVE: objective, ATTR_MIN_AU: min_au, ATTR_SPACE: space.describe()}
    tuner = Tuner(
        settings,
        space,
        storage=store,
        study_name=study_name or find_study(store, fp, search) or fp.study_name(search),
        predictor=predictor,
        evaluate=runner_evaluator(settings, run),
        sampler_seed=sampler_seed,
        study_attrs={ATTR_FINGERPRINT: fp.as_dict(), ATTR_PROBE: asdict(probe)},
    )
    trusted, note = predictor.assess(space) if predictor is not None else (False, "")
    # NOTE: an untrusted model enqueues nothing (``best_guesses`` returns no guesses then), so the
    # sampler explores instead; it still predicts every trial, to record predicted against measured.
    guesses = tuner.seed_with_model(model_start) if predictor is not None and trusted else []
    return TuningSession(tuner, settings, space, manifest, probe, fp, predictor, guesses, trusted, note)
