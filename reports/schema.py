"""The RunRecord JSON Schema and CSV columns, both derived from the record dataclasses (one source of truth).

The schema is generated from the type hints of :class:`delibench.records.RunRecord` and the records it
holds; the ``Attributes:`` sections of their docstrings become ``description``. A copy is checked in as
``schema/run-record.v1.json`` and a test compares the two, so every schema change shows up in review.
The CSV header comes from the same field walk, flattened with dots (``metrics.data_wait_fraction``).
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import json
import re
import types
import typing
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.records import RESULT_SCHEMA_VERSION, RunRecord, record_fields, to_dict

__all__ = [
    "SCHEMA_ID",
    "csv_columns",
    "csv_row",
    "field_docs",
    "record_schema",
    "schema_json",
    "validate_record",
]

#: Stable identifier of the current schema document (a URN: nothing is ever fetched).
SCHEMA_ID = f"urn:delibench:schema:run-record:v{RESULT_SCHEMA_VERSION}"

_SCALARS: dict[Any, dict[str, Any]] = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
}


def field_docs(cls: type) -> dict[str, str]:
    """Field descriptions parsed from the ``Attributes:`` section of a Google-style class docstring.

    Args:
        cls: A dataclass.

    Returns:
        ``{field_name: one-line description}`` for the documented fields (continuation lines joined).
    """
    doc = inspect.getdoc(cls) or ""
    docs: dict[str, str] = {}
    in_section = False
    current: str | None = None
    for line in doc.splitlines():
        if re.fullmatch(r"Attributes:\s*", line):
            in_section, current = True, None
            continue
        if not in_section:
            continue
        if line and not line[0].isspace():  # next section (``Args:``) or prose ends the block
            break
        match = re.match(r"^\s{2,8}(\w+)(?:\s*\([^)]*\))?:\s*(.*)$", line)
        if match and match.group(1) in {f.name for f in dataclasses.fields(cls)}:
            current = match.group(1)
            docs[current] = match.group(2).strip()
        elif current and line.strip():
            docs[current] = f"{docs[current]} {line.strip()}".strip()
    return docs


def _summary(cls: type) -> str:
    doc = inspect.getdoc(cls) or cls.__name__
    return doc.split("\n\n", 1)[0].replace("\n", " ").strip()


def _unit_constraints(name: str) -> dict[str, Any]:
    # NOTE: the unit suffixes are a naming rule (STYLE 5.9), so they can carry value ranges too:
    # fractions lie in [0, 1]; durations, sizes, counts and dollars are never negative.
    if name.endswith("_fraction") or name == "accelerator_utilization":
        return {"minimum": 0, "maximum": 1}
    if re.search(r"(_s|_bytes|_count|_usd|_per_s|_per_hour)$", name) or re.search(r"_s_p\d+$", name):
        return {"minimum": 0}
    return {}


def _type_schema(tp: Any, defs: dict[str, Any], name: str = "") -> dict[str, Any]:
    origin = typing.get_origin(tp)
    if tp is Any:
        return {}
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        non_null = [a for a in args if a is not type(None)]
        inner = [_type_schema(a, defs, name) for a in non_null]
        if type(None) in args:
            inner.append({"type": "null"})
        return inner[0] if len(inner) == 1 else {"anyOf": inner}
    if dataclasses.is_dataclass(tp):
        _dataclass_def(tp, defs)
        return {"$ref": f"#/$defs/{tp.__name__}"}
    if origin in (tuple, list):
        args = typing.get_args(tp)
        item = args[0] if args else Any
        return {"type": "array", "items": _type_schema(item, defs, name)}
    if origin in (dict, Mapping) or tp is dict:
        return {"type": "object"}
    if tp in _SCALARS:
        schema = dict(_SCALARS[tp])
        if tp in (int, float):
            schema.update(_unit_constraints(name))
        return schema
    raise TypeError(f"no JSON Schema mapping for type {tp!r} (field {name!r})")


def _dataclass_def(cls: type, defs: dict[str, Any]) -> None:
    if cls.__name__ in defs:
        return
    defs[cls.__name__] = {}  # placeholder first: guards against recursion
    hints = typing.get_type_hints(cls)
    docs = field_docs(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in record_fields(cls):
        prop = _type_schema(hints[f.name], defs, f.name)
        if f.name in docs:
            prop = {"description": docs[f.name], **prop}
        properties[f.name] = prop
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
            required.append(f.name)
    defs[cls.__name__] = {
        "type": "object",
        "description": _summary(cls),
        "properties": properties,
        "required": required,
        "additionalProperties": False,
    }


@functools.lru_cache(maxsize=1)
def _cached_schema() -> str:
    defs: dict[str, Any] = {}
    _dataclass_def(RunRecord, defs)
    root = defs.pop("RunRecord")
    root["properties"]["schema_version"] = {
        "description": "Version of this document's layout; readers migrate older versions and refuse newer ones.",
        "const": RESULT_SCHEMA_VERSION,
    }
    if "schema_version" not in root["required"]:
        root["required"].append("schema_version")
    schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": f"delibench RunRecord v{RESULT_SCHEMA_VERSION}",
        **root,
        "$defs": dict(sorted(defs.items())),
    }
    return json.dumps(schema, sort_keys=False)


def record_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a RunRecord document of the current version.

    Returns:
        A fresh dict (safe to modify).
    """
    return json.loads(_cached_schema())


def schema_json() -> str:
    """The schema as the text of the checked-in ``schema/run-record.vN.json`` (2-space indent, newline)."""
    return json.dumps(record_schema(), indent=2) + "\n"


@functools.lru_cache(maxsize=1)
def _validator() -> Any:
    import jsonschema

    schema = record_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _path_text(path: Any) -> str:
    parts = []
    for part in path:
        if isinstance(part, int):
            parts.append(f"[{part}]")
        else:
            parts.append(f".{part}" if parts else str(part))
    return "".join(parts) or "(document root)"


def validate_record(data: Any, *, source: str | Path | None = None) -> None:
    """Check a RunRecord document (a dict from JSON) against the current schema.

    Args:
        data: The parsed JSON document, already migrated to the current version.
        source: The file it came from, named in the error.

    Raises:
        UsageError: The document does not match; the message names the file and the failing path.
    """
    import jsonschema

    errors = sorted(_validator().iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
    if not errors:
        return
    best = jsonschema.exceptions.best_match(errors)
    where = f"{source}: " if source is not None else ""
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    raise UsageError(
        f"{where}invalid run record at {_path_text(best.absolute_path)}: {best.message}{more}",
        hint="the file was edited or written by an incompatible tool; re-run the benchmark to regenerate it",
    )


def _walk(tp: Any, prefix: str) -> Iterator[tuple[str, Any]]:
    """Yield ``(dotted_name, type)`` of the CSV-able leaves below a dataclass type."""
    hints = typing.get_type_hints(tp)
    for f in record_fields(tp):
        ftp = hints[f.name]
        name = f"{prefix}{f.name}"
        args = [a for a in typing.get_args(ftp) if a is not type(None)]
        if typing.get_origin(ftp) in (typing.Union, types.UnionType) and len(args) == 1:
            ftp = args[0]
        if dataclasses.is_dataclass(ftp):
            yield from _walk(ftp, name + ".")
            continue
        if typing.get_origin(ftp) in (tuple, list):
            (item, *_) = typing.get_args(ftp) or (Any,)
            if dataclasses.is_dataclass(item):
                continue  # NOTE: per-step/epoch/rank arrays live in the JSON and the steps sidecar, not in a flat row
        yield name, ftp


def csv_columns() -> tuple[str, ...]:
    """The CSV header of a one-row-per-run export, in schema field order.

    Nested records are flattened with dots (``metrics.data_wait_fraction``, ``spec.loader.kind``);
    arrays of records (timeline, per-epoch and per-rank figures, issues) are left out; dicts and
    lists of scalars are written as JSON text.
    """
    return tuple(name for name, _ in _walk(RunRecord, ""))


def csv_row(record: RunRecord) -> dict[str, Any]:
    """One flat CSV row for ``record``, keyed by :func:`csv_columns` (missing nested records give blanks)."""
    data = to_dict(record)
    row: dict[str, Any] = {}
    for name in csv_columns():
        value: Any = data
        for part in name.split("."):
            value = value.get(part) if isinstance(value, dict) else None
        if isinstance(value, (dict, list)):
            value = json.dumps(value, sort_keys=True)
        row[name] = "" if value is None else value
    return row
