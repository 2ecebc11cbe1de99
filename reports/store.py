"""The results store: versioned RunRecord JSON files (+ per-step CSV sidecars), migrations and run ids.

Layout (asv / pytest-benchmark style): ``<root>/<run_id>.json`` and, when steps were kept,
``<root>/<run_id>.steps.csv``. Every file carries ``schema_version``; older files are upgraded on read
through the ``update_to_N`` chain, newer files are refused (asv's rule: never guess at a future layout).
"""

from __future__ import annotations

import csv
import dataclasses
import datetime as _dt
import hashlib
import io
import json
import os
import tempfile
import typing
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.records import RESULT_SCHEMA_VERSION, RunRecord, RunSpec, StepSample, from_dict, to_dict

__all__ = [
    "DEFAULT_RESULTS_DIR",
    "MIGRATIONS",
    "ResultStore",
    "STEPS_SUFFIX",
    "load_file",
    "load_record",
    "load_records",
    "migrate",
    "new_run_id",
    "read_steps_csv",
    "record_json",
    "spec_hash",
    "update_to_1",
    "write_steps_csv",
]

#: Where results go unless ``--results-dir`` / ``ResultStore(root=...)`` says otherwise.
DEFAULT_RESULTS_DIR = ".delibench/results"
#: Suffix of the per-step sidecar written next to ``<run_id>.json``.
STEPS_SUFFIX = ".steps.csv"

_STEP_FIELDS = tuple(f.name for f in dataclasses.fields(StepSample))


def update_to_1(data: dict[str, Any]) -> dict[str, Any]:
    """Upgrade a version-0 document: records written before versioning carried no ``schema_version`` key.

    Version 0 is "no ``schema_version`` key at all"; the fields were already those of version 1, so
    the upgrade only stamps the version. Later migrations (``update_to_2`` ...) rename or fill fields.
    """
    out = dict(data)
    out["schema_version"] = 1
    return out


#: ``{target_version: function}``; ``migrate`` applies them in order from the file's version upward.
MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {1: update_to_1}


def migrate(
    data: dict[str, Any],
    *,
    source: str | Path = "<record>",
    target: int = RESULT_SCHEMA_VERSION,
    migrations: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] | None = None,
) -> dict[str, Any]:
    """Bring a parsed record document up to ``target`` through the ``update_to_N`` chain.

    Args:
        data: The parsed JSON object.
        source: The file it came from (named in errors).
        target: The version to reach (the current one by default).
        migrations: The chain to use (``MIGRATIONS`` by default; tests pass their own).

    Returns:
        The upgraded document (a new dict; ``data`` is not changed).

    Raises:
        UsageError: The document is newer than ``target``, has a malformed version, or no migration
            path exists.
    """
    chain = MIGRATIONS if migrations is None else migrations
    version = data.get("schema_version", 0)
    if isinstance(version, bool) or not isinstance(version, int) or version < 0:
        raise UsageError(f"{source}: schema_version must be a non-negative integer, got {version!r}")
    if version > target:
        raise UsageError(
            f"{source}: written by a newer delibench (schema_version {version}, this one reads up to {target})",
            hint="upgrade delibench (pip install -U delibench) to read it",
        )
    out = dict(data)
    for step in range(version + 1, target + 1):
        if step not in chain:
            raise UsageError(f"{source}: no migration from schema_version {step - 1} to {step}")
        out = chain[step](out)
        out["schema_version"] = step
    return out


def spec_hash(spec: RunSpec) -> str:
    """8 hex characters identifying a RunSpec (sha256 of its canonical JSON)."""
    text = json.dumps(to_dict(spec), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def new_run_id(spec: RunSpec, now: _dt.datetime | None = None) -> str:
    """``<UTC yyyymmddThhmmssZ>-<spec hash>``: sorts by time, and says which runs share a configuration.

    Args:
        spec: The resolved inputs of the run.
        now: The start time (aware or naive UTC); defaults to the current time.
    """
    moment = now or _dt.datetime.now(_dt.timezone.utc)
    if moment.tzinfo is not None:
        moment = moment.astimezone(_dt.timezone.utc)
    return f"{moment:%Y%m%dT%H%M%SZ}-{spec_hash(spec)}"


def record_json(record: RunRecord) -> str:
    """The document text of ``record`` (validated; 2-space indent, trailing newline)."""
    from delibench.reports.schema import validate_record

    data = to_dict(record)
    validate_record(data, source=f"record {record.run_id}")
    return json.dumps(data, indent=2) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as fh:
            fh.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_steps_csv(path: str | Path, steps: Iterable[StepSample]) -> Path:
    """Write per-step samples as CSV (header = StepSample field names) atomically."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(_STEP_FIELDS)
    for s in steps:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in (getattr(s, n) for n in _STEP_FIELDS)])
    out = Path(path)
    _atomic_write(out, buf.getvalue())
    return out


def read_steps_csv(path: str | Path) -> tuple[StepSample, ...]:
    """Read a ``.steps.csv`` sidecar back into StepSamples.

    Raises:
        UsageError: Missing file, wrong header or a value that is not a number; names the file and line.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{p}: cannot read step file: {exc.strerror or exc}") from None
    rows = csv.reader(io.StringIO(text))
    header = next(rows, None)
    if header is None or tuple(header[: len(_STEP_FIELDS) - 1]) != _STEP_FIELDS[:-1]:
        raise UsageError(f"{p}: not a delibench step file (header {header!r})", hint=f"expected columns {', '.join(_STEP_FIELDS)}")
    kinds = typing.get_type_hints(StepSample)
    out = []
    for lineno, row in enumerate(rows, start=2):
        if not row:
            continue
        try:
            values = {name: (int(v) if kinds[name] is int else float(v)) for name, v in zip(header, row)}
        except (ValueError, KeyError) as exc:
            raise UsageError(f"{p}:{lineno}: bad step row {row!r}: {exc}") from None
        out.append(StepSample(**values))
    return tuple(out)


def read_json_file(p: Path, what: str, *, hint: str | None = None) -> Any:
    """The JSON document in ``p``; an unreadable or corrupt file is a one-line UsageError naming it.

    Args:
        p: The file.
        what: What the file should be, for the message (``result file``, ``study export``).
        hint: Shown under a corrupt-file error.
    """
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"{p}: cannot read {what}: {exc.strerror or exc}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise UsageError(
            f"{p}: corrupt {what} (not JSON: {exc.msg} at line {exc.lineno} column {exc.colno})", hint=hint
        ) from None


def _read_json(p: Path) -> Any:
    return read_json_file(p, "result file", hint="delete it or re-run the benchmark that wrote it")


def _record_from_data(data: Any, source: str, folder: Path, *, with_steps: bool) -> RunRecord:
    from delibench.reports.schema import validate_record

    if not isinstance(data, dict):
        raise UsageError(f"{source}: not a delibench result (expected a JSON object, got {type(data).__name__})")
    data = migrate(data, source=source)
    validate_record(data, source=source)
    try:
        record = from_dict(RunRecord, data)
    except (TypeError, ValueError) as exc:  # the schema should have caught it; keep the promise of naming the file
        raise UsageError(f"{source}: invalid run record: {exc}") from None
    if with_steps and not record.timeline and record.steps_path:
        sidecar = Path(record.steps_path)
        sidecar = sidecar if sidecar.is_absolute() else folder / sidecar
        if sidecar.exists():
            record = dataclasses.replace(record, timeline=read_steps_csv(sidecar))
    return record


def load_record(path: str | Path, *, with_steps: bool = True) -> RunRecord:
    """Read, migrate and validate one result file.

    Args:
        path: A ``<run_id>.json`` file.
        with_steps: Fill ``timeline`` from the ``steps_path`` sidecar when the record holds none.

    Raises:
        UsageError: Unreadable, corrupt, newer-version or schema-violating file; the message names it.
    """
    p = Path(path)
    return _record_from_data(_read_json(p), str(p), p.parent, with_steps=with_steps)


def load_file(path: str | Path, *, with_steps: bool = True) -> list[RunRecord]:
    """Read a result file holding one record, or a JSON list of records (``delibench report --json``).

    Raises:
        UsageError: As :func:`load_record`; list items are named ``file[i]``.
    """
    p = Path(path)
    data = _read_json(p)
    if isinstance(data, list):
        if not data:
            raise UsageError(f"{p}: empty list, no run records in it")
        return [_record_from_data(item, f"{p}[{i}]", p.parent, with_steps=with_steps) for i, item in enumerate(data)]
    return [_record_from_data(data, str(p), p.parent, with_steps=with_steps)]


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    files: list[Path] = []
    for raw in paths:
        p = Path(raw)
        if p.is_dir():
            files.extend(sorted(q for q in p.rglob("*.json") if not q.name.startswith(".")))
        elif p.exists():
            files.append(p)
        else:
            raise UsageError(f"{p}: no such result file or directory")
    return files


def load_records(paths: Iterable[str | Path], *, with_steps: bool = True) -> list[RunRecord]:
    """Read result files and directories (searched recursively for ``*.json``), in the given order.

    A file may hold one record or a JSON list of them (the ``--json`` export).

    Raises:
        UsageError: A path does not exist, holds no result, or any file is bad (named in the message).
    """
    given = list(paths)
    files = _expand(given)
    if not files:
        raise UsageError(f"no result files in {', '.join(map(str, given)) or '(nothing given)'}", hint="run 'delibench run' first, or pass <run_id>.json files")
    return [record for f in files for record in load_file(f, with_steps=with_steps)]


class ResultStore:
    """Reads and writes RunRecords under one directory.

    Args:
        root: The results directory (created on first write).

    Thread safety: writes are atomic (temp file + rename), so concurrent writers never leave a
    half-written file; two writers of the same run id overwrite each other (last one wins).
    """

    def __init__(self, root: str | Path = DEFAULT_RESULTS_DIR) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"ResultStore(root={str(self.root)!r})"

    def path_for(self, run_id: str) -> Path:
        """The JSON path of ``run_id`` (whether or not it exists)."""
        if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
            raise UsageError(f"not a run id: {run_id!r}")
        return self.root / f"{run_id}.json"

    def write(
        self,
        record: RunRecord,
        *,
        steps: Sequence[StepSample] | None = None,
        keep_timeline: bool = False,
    ) -> Path:
        """Write ``record`` (validated) as ``<root>/<run_id>.json``.

        Args:
            record: The result.
            steps: Per-step samples for the ``.steps.csv`` sidecar; defaults to ``record.timeline``.
            keep_timeline: Also keep the timeline inside the JSON (default: sidecar only, so the
                summary file stays small).

        Returns:
            The JSON path. When steps were written, the stored record's ``steps_path`` names the sidecar
            relative to the JSON file, so the directory can be moved as a whole.
        """
        json_path = self.path_for(record.run_id)
        to_store = record
        samples = tuple(steps) if steps is not None else record.timeline
        sidecar = self.root / f"{record.run_id}{STEPS_SUFFIX}"
        if samples:
            to_store = dataclasses.replace(to_store, steps_path=sidecar.name, timeline=samples if keep_timeline else ())
        text = record_json(to_store)  # validate before touching the disk: a bad record leaves no files
        if samples:
            write_steps_csv(sidecar, samples)
        _atomic_write(json_path, text)
        return json_path

    def read(self, run_id_or_path: str | Path, *, with_steps: bool = True) -> RunRecord:
        """Read one record by run id or by path (see :func:`load_record`)."""
        p = Path(run_id_or_path)
        if p.suffix != ".json":
            p = self.path_for(str(run_id_or_path))
        return load_record(p, with_steps=with_steps)

    def paths(self) -> list[Path]:
        """Result files directly under the root, oldest run id first (run ids start with the UTC time)."""
        if not self.root.is_dir():
            return []
        return sorted(p for p in self.root.glob("*.json") if not p.name.startswith("."))

    def run_ids(self) -> list[str]:
        """The stored run ids, oldest first."""
        return [p.stem for p in self.paths()]

    def records(self, *, with_steps: bool = False) -> list[RunRecord]:
        """Every stored record, oldest first (a bad file raises UsageError naming it)."""
        return [load_record(p, with_steps=with_steps) for p in self.paths()]

    def latest(self, *, with_steps: bool = True) -> RunRecord:
        """The newest record.

        Raises:
            UsageError: The store is empty.
        """
        paths = self.paths()
        if not paths:
            raise UsageError(f"no results in {self.root}", hint="run 'delibench run' or 'delibench demo' first")
        return load_record(paths[-1], with_steps=with_steps)
