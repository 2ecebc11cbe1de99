"""The study export: a tiny JSON format for tuning histories (Optuna trials), read by the report's plots.

Format (``"format": "delibench.study/1"``)::

    {
      "format": "delibench.study/1",
      "study_name": "tune-imgs",
      "objective_names": ["data_wait_fraction", "usd_per_epoch"],
      "directions": ["minimize", "minimize"],
      "trials": [
        {"number": 0, "state": "COMPLETE", "values": [0.31, 0.42],
         "params": {"cache_size_bytes": 1073741824, "prefetch_depth": 8}, "duration_s": 12.5}
      ]
    }

``values`` has one number per objective (``null`` or absent for trials that did not complete).
:func:`study_export` writes this from an Optuna study; :func:`load_study` reads and checks it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import UsageError

__all__ = [
    "STUDY_FORMAT",
    "StudyExport",
    "TrialPoint",
    "load_study",
    "pareto_front",
    "parse_study",
    "study_export",
]

#: The ``format`` tag of version 1 of the study export.
STUDY_FORMAT = "delibench.study/1"
_DIRECTIONS = ("minimize", "maximize")


@dataclass(frozen=True, slots=True)
class TrialPoint:
    """One trial.

    Attributes:
        number: Trial number (Optuna's ``trial.number``).
        state: ``COMPLETE``, ``PRUNED``, ``FAIL`` or ``RUNNING``.
        values: One value per objective, or None when the trial did not complete.
        params: The sampled parameters.
        duration_s: Wall time of the trial, when known.
    """

    number: int
    state: str
    values: tuple[float, ...] | None
    params: Mapping[str, Any] = field(default_factory=dict)
    duration_s: float | None = None


@dataclass(frozen=True, slots=True)
class StudyExport:
    """A study's objectives and trials.

    Attributes:
        study_name: Name of the study.
        objective_names: One name per objective (``data_wait_fraction``, ``usd_per_epoch``, ...).
        directions: ``minimize`` or ``maximize``, one per objective.
        trials: The trials, in number order.
    """

    study_name: str
    objective_names: tuple[str, ...]
    directions: tuple[str, ...]
    trials: tuple[TrialPoint, ...]

    @property
    def completed(self) -> tuple[TrialPoint, ...]:
        """Trials with values."""
        return tuple(t for t in self.trials if t.values is not None)


def parse_study(doc: Any, *, source: str = "<study>") -> StudyExport:
    """Check a parsed study document and build a :class:`StudyExport`.

    Raises:
        UsageError: Wrong format tag, mismatched objective counts or bad values; names ``source``.
    """
    def bad(msg: str) -> UsageError:
        return UsageError(f"{source}: not a delibench study export: {msg}", hint=f"expected format {STUDY_FORMAT!r} (see delibench.reports.study)")

    if not isinstance(doc, Mapping):
        raise bad("expected a JSON object")
    if doc.get("format") != STUDY_FORMAT:
        raise bad(f"format is {doc.get('format')!r}")
    names = doc.get("objective_names")
    directions = doc.get("directions")
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise bad("objective_names must be a non-empty list of strings")
    if not isinstance(directions, list) or len(directions) != len(names) or any(d not in _DIRECTIONS for d in directions):
        raise bad(f"directions must list {len(names)} of {' / '.join(_DIRECTIONS)}")
    raw_trials = doc.get("trials")
    if not isinstance(raw_trials, list):
        raise bad("trials must be a list")
    trials = []
    for i, t in enumerate(raw_trials):
        if not isinstance(t, Mapping) or not isinstance(t.get("number", i), int):
            raise bad(f"trials[{i}] must be an object with an integer number")
        values = t.get("values")
        if values is not None:
            if not isinstance(values, list) or len(values) != len(names):
                raise bad(f"trials[{i}].values must have {len(names)} number(s)")
            if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in values):
                raise bad(f"trials[{i}].values must be finite numbers")
            values = tuple(float(v) for v in values)
        params = t.get("params", {})
        if not isinstance(params, Mapping):
            raise bad(f"trials[{i}].params must be an object")
        duration = t.get("duration_s")
        trials.append(TrialPoint(int(t.get("number", i)), str(t.get("state", "COMPLETE" if values else "FAIL")), values, dict(params), duration if isinstance(duration, (int, float)) else None))
    trials.sort(key=lambda t: t.number)
    return StudyExport(str(doc.get("study_name", Path(source).stem)), tuple(names), tuple(directions), tuple(trials))


def load_study(path: str | Path) -> StudyExport:
    """Read a study export file.

    Raises:
        UsageError: Missing file, corrupt JSON or wrong format; the message names the file.
    """
    from delibench.reports.store import read_json_file

    p = Path(path)
    return parse_study(read_json_file(p, "study export"), source=str(p))


def study_export(study: Any, objective_names: Sequence[str] | None = None) -> dict[str, Any]:
    """The export document of an ``optuna.Study`` (duck-typed: ``study_name``, ``directions``, ``trials``).

    Args:
        study: An Optuna study.
        objective_names: Names of the objectives (default: ``study.metric_names`` or ``objective_<i>``).
    """
    directions = [getattr(d, "name", str(d)).lower() for d in study.directions]
    names = list(objective_names or getattr(study, "metric_names", None) or [f"objective_{i}" for i in range(len(directions))])
    trials = []
    for t in study.trials:
        state = getattr(t.state, "name", str(t.state))
        duration = t.duration.total_seconds() if getattr(t, "duration", None) is not None else None
        values = list(t.values) if state == "COMPLETE" and t.values is not None else None
        trials.append({"number": t.number, "state": state, "values": values, "params": dict(t.params), "duration_s": duration})
    return {"format": STUDY_FORMAT, "study_name": study.study_name, "objective_names": names, "directions": directions, "trials": trials}


def pareto_front(study: StudyExport) -> tuple[TrialPoint, ...]:
    """Completed trials that no other completed trial dominates (every objective at least as good, one better)."""
    sign = [1.0 if d == "minimize" else -1.0 for d in study.directions]

    def key(t: TrialPoint) -> tuple[float, ...]:
        assert t.values is not None
        return tuple(s * v for s, v in zip(sign, t.values))

    done = study.completed
    front = []
    for t in done:
        kt = key(t)
        dominated = any(
            all(a <= b for a, b in zip(key(o), kt)) and any(a < b for a, b in zip(key(o), kt)) for o in done if o is not t
        )
        if not dominated:
            front.append(t)
    return tuple(front)
