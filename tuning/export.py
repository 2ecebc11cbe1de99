"""Reading a finished (or running) study back: best configuration, Pareto front, importances, exports.

Two export formats:

* ``best.yaml``: a loader section ``delibench run --config best.yaml`` accepts, with the study and
  the measured figures as YAML comments (comments, so the run config stays free of unknown keys)::

      loader:
        kind: deli
        cache_size: 256MiB        # an IEC string when exact, else a byte count
        prefetch_depth: 32
        concurrency: 16
        eviction: belady
      num_workers: 2              # only when the study tuned the worker count

* the trials JSON (``TRIALS_SCHEMA`` = ``delibench.study/1``, the format the HTML report's
  tuning-history and Pareto plots read): ``study_name``, ``objective_names``, ``directions`` and
  ``trials`` (``number``, ``state``, ``values``, ``params`` as bytes and counts, ``duration_s``),
  plus the fingerprint, the probe, the recommended trial, the Pareto front, the model's error,
  parameter importances, and per trial the predicted and measured wait, cost and hit rates.

With one objective the recommendation is noise-aware: trials that measured the same configuration
(the tuner's repeats of the leader, or the sampler proposing it again) are pooled, and the
configurations ranked by the mean of their measurements plus one standard error
(:func:`delibench.tuning.tuner.rank_configs`), so a single lucky measurement does not win.
"""

from __future__ import annotations

import math
import statistics
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from delibench.errors import UsageError
from delibench.tuning.guide import pareto_front
from delibench.tuning.space import SearchSpace, TuneConfig
from delibench.tuning.tuner import (
    ATTR_FINGERPRINT,
    ATTR_MIN_AU,
    ATTR_OBJECTIVE,
    ATTR_PROBE,
    ATTR_SETTINGS,
    ATTR_SPACE,
    SOURCE_REPEAT,
    ConfigStats,
    config_stats,
    noise_sd,
    rank_configs,
)
from delibench.yamlfile import read_yaml

__all__ = [
    "TRIALS_SCHEMA",
    "best_trials",
    "importances",
    "model_error",
    "read_best_config",
    "recommended_config",
    "recommended_trial",
    "study_space",
    "trials_document",
    "write_best_yaml",
]

#: Format tag of the trials JSON: the reports' study export (``delibench.reports.study``), whose
#: reader ignores the extra per-trial fields this document adds (predicted vs measured, cost, ...).
TRIALS_SCHEMA = "delibench.study/1"

#: Complete trials needed before parameter importances mean anything.
MIN_TRIALS_FOR_IMPORTANCE = 4


def _complete(study: Any) -> list[Any]:
    from optuna.trial import TrialState

    return [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE and t.values]


def _feasible(study: Any, trial: Any) -> bool:
    min_au = study.user_attrs.get(ATTR_MIN_AU)
    if min_au is None:
        return True
    au = trial.user_attrs.get("accelerator_utilization")
    return au is not None and au >= min_au


def study_space(study: Any) -> SearchSpace:
    """The search space stored with the study.

    Raises:
        UsageError: The study was not created by ``delibench tune``.
    """
    desc = study.user_attrs.get(ATTR_SPACE)
    if desc is None:
        raise UsageError(f"study {study.study_name!r} was not created by delibench tune (no search space stored)")
    return SearchSpace.from_description(desc)


def recommended_config(study: Any) -> ConfigStats | None:
    """Single objective: the configuration to recommend and all its measurements (noise-aware, see the module docstring).

    With ``min_au``, only configurations whose mean utilisation reaches it. None without one, or
    for a two-objective study.
    """
    if len(study.directions) != 1:
        return None
    ranked = rank_configs(config_stats(_complete(study), min_au=study.user_attrs.get(ATTR_MIN_AU)))
    return ranked[0] if ranked else None


def best_trials(study: Any) -> list[Any]:
    """The best complete, feasible trials: for a single objective the first trial of :func:`recommended_config`, for two the Pareto front."""
    if len(study.directions) == 1:
        best = recommended_config(study)
        return [best.first] if best is not None else []
    trials = [t for t in _complete(study) if _feasible(study, t)]
    if not trials:
        return []
    front = pareto_front([(t.values[0], t.values[1]) for t in trials])
    return sorted((trials[i] for i in front), key=lambda t: (t.values[0], t.values[1]))


def recommended_trial(study: Any) -> Any | None:
    """The one trial to export: the best, or on a Pareto front the lowest-wait point."""
    best = best_trials(study)
    return best[0] if best else None


def model_error(study: Any) -> dict[str, Any]:
    """How well the analytic model predicted the measured wait over complete trials, and over those it trusted.

    Returns:
        ``count``, ``mean_abs_error`` (in wait-fraction points), ``max_abs_error``, ``bias``
        (mean of predicted - measured) and ``spearman`` (rank correlation; None below 3 trials or
        when either side is constant), over every trial with a prediction; ``trusted``: the same
        over the trials whose prediction the model trusted (its band within the trust limit), and
        ``untrusted_count`` (trials recorded before the band was stored count in neither).
    """
    trials = [
        t for t in _complete(study)
        if t.user_attrs.get("predicted_wait_fraction") is not None and t.user_attrs.get("measured_wait_fraction") is not None
    ]
    out = _error_figures(trials)
    out["trusted"] = _error_figures([t for t in trials if t.user_attrs.get("predicted_trusted") is True])
    out["untrusted_count"] = sum(t.user_attrs.get("predicted_trusted") is False for t in trials)
    return out


def _error_figures(trials: list[Any]) -> dict[str, Any]:
    pairs = [(t.user_attrs["predicted_wait_fraction"], t.user_attrs["measured_wait_fraction"]) for t in trials]
    if not pairs:
        return {"count": 0, "mean_abs_error": None, "max_abs_error": None, "bias": None, "spearman": None}
    errors = [p - m for p, m in pairs]
    rho = None
    if len(pairs) >= 3 and len({p for p, _ in pairs}) > 1 and len({m for _, m in pairs}) > 1:
        from scipy.stats import spearmanr

        value = float(spearmanr([p for p, _ in pairs], [m for _, m in pairs]).statistic)
        rho = None if math.isnan(value) else value
    return {
        "count": len(pairs),
        "mean_abs_error": statistics.fmean(abs(e) for e in errors),
        "max_abs_error": max(abs(e) for e in errors),
        "bias": statistics.fmean(errors),
        "spearman": rho,
    }


def importances(study: Any) -> dict[str, float] | None:
    """Parameter importances (PED-ANOVA) of the first objective; None with fewer than 4 complete trials."""
    import optuna

    complete = _complete(study)
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None
    # NOTE: PED-ANOVA (Optuna's default) needs no scikit-learn; it scores how much each parameter
    # matters for reaching LOW values of the target, which is what every objective here wants.
    evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="PedAnovaImportanceEvaluator computes", category=UserWarning)
            return dict(
                optuna.importance.get_param_importances(study, evaluator=evaluator, target=lambda t: t.values[0])
                if len(complete[0].values) > 1
                else optuna.importance.get_param_importances(study, evaluator=evaluator)
            )
    except (RuntimeError, ValueError, ZeroDivisionError):
        return None  # e.g. every trial had the same parameters or the same value


def _trial_doc(study: Any, trial: Any, front: set[int]) -> dict[str, Any]:
    ua = trial.user_attrs
    return {
        "number": trial.number,
        "state": trial.state.name,
        "params": {k: v for k, v in (ua.get("config") or {}).items() if v is not None},
        "optuna_params": dict(trial.params),
        "label": ua.get("label"),
        "values": list(trial.values) if trial.values else None,
        "source": ua.get("source"),
        "repeat_of": ua.get("repeat_of"),
        "predicted_wait_fraction": ua.get("predicted_wait_fraction"),
        "predicted_bound": ua.get("predicted_bound"),
        "predicted_low": ua.get("predicted_low"),
        "predicted_high": ua.get("predicted_high"),
        "predicted_trusted": ua.get("predicted_trusted"),
        "predicted_uncertain_reason": ua.get("predicted_uncertain_reason"),
        "measured_wait_fraction": ua.get("measured_wait_fraction"),
        "accelerator_utilization": ua.get("accelerator_utilization"),
        "epoch_wait_fractions": ua.get("epoch_wait_fractions"),
        "sim_miss_rate": ua.get("sim_miss_rate"),
        "hit_rate": ua.get("hit_rate"),
        "cost_value": ua.get("cost_value"),
        "cost_unit": ua.get("cost_unit"),
        "cost_usd_per_epoch": ua.get("cost_usd_per_epoch"),
        "cache_bytes": ua.get("cache_bytes"),
        "feasible": _feasible(study, trial) if trial.values else None,
        "pareto": trial.number in front,
        "run_id": ua.get("run_id"),
        "duration_s": ua.get("duration_s"),
        "pid": ua.get("pid"),
        "started_at": trial.datetime_start.isoformat() if trial.datetime_start else None,
        "completed_at": trial.datetime_complete.isoformat() if trial.datetime_complete else None,
        "intermediate_values": {str(k): v for k, v in sorted(trial.intermediate_values.items())},
    }


def trials_document(study: Any) -> dict[str, Any]:
    """The trials JSON document of a study (``TRIALS_SCHEMA``), for ``tune show --json`` and reports."""
    best = best_trials(study)
    front = {t.number for t in best}
    rec = best[0] if best else None
    trials = study.get_trials(deepcopy=False)
    recommended = _trial_doc(study, rec, front) if rec is not None else None
    stats = config_stats(_complete(study)) if len(study.directions) == 1 else []
    chosen = recommended_config(study)
    if recommended is not None and chosen is not None:
        recommended["measurements"] = _measurements(chosen)
    units = {t.user_attrs.get("cost_unit") for t in trials if t.user_attrs.get("cost_unit")}
    objective = str(study.user_attrs.get(ATTR_OBJECTIVE, "wait"))
    cost_name = "usd_per_epoch" if units == {"usd_per_epoch"} else "cache_bytes" if units == {"cache_bytes"} else "cost"
    names = {"wait": ["data_wait_fraction"], "cost": [cost_name], "wait,cost": ["data_wait_fraction", cost_name]}
    return {
        "format": TRIALS_SCHEMA,
        "study_name": study.study_name,
        "objective": objective,
        "objective_names": names.get(objective, [f"objective_{i}" for i in range(len(study.directions))]),
        "directions": [d.name.lower() for d in study.directions],
        "min_au": study.user_attrs.get(ATTR_MIN_AU),
        "cost_unit": next(iter(units)) if len(units) == 1 else (sorted(units) or None),
        "fingerprint": study.user_attrs.get(ATTR_FINGERPRINT),
        "probe": study.user_attrs.get(ATTR_PROBE),
        "settings": study.user_attrs.get(ATTR_SETTINGS),
        "space": study.user_attrs.get(ATTR_SPACE),
        "counts": _counts(trials),
        "recommended": recommended,
        "noise": {
            "repeat_trials": sum(t.user_attrs.get("source") == SOURCE_REPEAT for t in trials),
            "pooled_sd": noise_sd(stats),
            "rule": "mean + pooled sd / sqrt(measurements)" if len(study.directions) == 1 else None,
            "measured_more_than_once": [_measurements(c) for c in rank_configs(stats) if c.n > 1],
        },
        "pareto_front": [t.number for t in best] if len(study.directions) > 1 else None,
        "model_error": model_error(study),
        "importances": importances(study),
        "trials": [_trial_doc(study, t, front) for t in trials],
    }


def _measurements(c: ConfigStats) -> dict[str, Any]:
    return {
        "label": c.first.user_attrs.get("label"),
        "n": c.n,
        "mean": c.mean,
        "sd": c.sd,
        "values": list(c.values),
        "waits": [t.user_attrs.get("measured_wait_fraction") for t in c.trials],
        "trials": [t.number for t in c.trials],
    }


def _counts(trials: Sequence[Any]) -> dict[str, int]:
    out: dict[str, int] = {}
    for t in trials:
        out[t.state.name.lower()] = out.get(t.state.name.lower(), 0) + 1
    out["total"] = len(trials)
    return out


def write_best_yaml(study: Any, path: str | Path) -> TuneConfig:
    """Write the recommended configuration as ``best.yaml`` (see the module docstring).

    Raises:
        UsageError: The study has no complete (feasible) trial yet.
    """
    trial = recommended_trial(study)
    if trial is None:
        hint = "lower --min-au or run more --trials" if study.user_attrs.get(ATTR_MIN_AU) else "run more --trials"
        raise UsageError(f"study {study.study_name!r} has no complete feasible trial to export", hint=hint)
    config = study_space(study).from_params(trial.params)
    doc: dict[str, Any] = {"loader": config.to_yaml_loader()}
    if config.num_workers is not None:
        doc["num_workers"] = config.num_workers
    ua = trial.user_attrs
    predicted = ua.get("predicted_wait_fraction")
    chosen = recommended_config(study)
    if chosen is not None and chosen.n > 1:
        value = f"{chosen.mean:.6g} (mean of {chosen.n} measurements, trials {', '.join(str(t.number) for t in chosen.trials)})"
        waits = [t.user_attrs.get("measured_wait_fraction") for t in chosen.trials]
        waits = [w for w in waits if w is not None]
        measured = f"# measured data_wait_fraction {sum(waits) / len(waits):.4f} (mean; {', '.join(f'{w:.4f}' for w in waits)})" if waits else "# measured data_wait_fraction -"
    else:
        value = ", ".join(f"{v:.6g}" for v in trial.values)
        measured = f"# measured data_wait_fraction {ua.get('measured_wait_fraction', float('nan')):.4f}"
    header = [
        f"# delibench tune: study {study.study_name}, trial {trial.number}",
        f"# objective {study.user_attrs.get(ATTR_OBJECTIVE)} = {value}"
        + (f" ({ua.get('cost_unit')})" if ua.get("cost_unit") and "cost" in str(study.user_attrs.get(ATTR_OBJECTIVE)) else ""),
        measured + (f", predicted {predicted:.4f}" if predicted is not None else ""),
        "# use: delibench run --config best.yaml --data URL --workload W",
    ]
    text = "\n".join(header) + "\n" + yaml.safe_dump(doc, sort_keys=False)
    path = Path(path)
    if path.parent and not path.parent.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return config


def read_best_config(path: str | Path) -> tuple[TuneConfig, dict[str, Any]]:
    """Read a ``best.yaml`` back: the loader configuration and the other top-level keys.

    Raises:
        UsageError: One line naming the file: it cannot be read, is not valid YAML, is not a
            mapping, or has no ``loader:`` mapping.
    """
    doc = read_yaml(path, "tuned config")
    if not isinstance(doc.get("loader"), Mapping):
        raise UsageError(f"{path}: no 'loader:' mapping")
    rest = {k: v for k, v in doc.items() if k != "loader"}
    config = TuneConfig.from_mapping(doc["loader"])
    if "num_workers" in rest and config.num_workers is None:
        from dataclasses import replace

        config = replace(config, num_workers=int(rest["num_workers"]))
    return config, rest
