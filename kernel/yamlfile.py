"""YAML files users write (run configs, price sheets, regions files): read, parse and check in one place.

Every problem is one :class:`~delibench.errors.UsageError` line that names the file, so the CLI can
print it and exit 2: a file that cannot be read, a YAML syntax error (with its line), a document that
is not a mapping, an unknown key (with the closest allowed one as the hint). An empty file is an
empty mapping.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from delibench.errors import UsageError

__all__ = ["check_keys", "expect_mapping", "parse_yaml", "read_yaml"]

#: How a YAML syntax error is named in the message, unless the caller says otherwise.
NOT_VALID = "not valid YAML"


def parse_yaml(text: str, source: str, *, invalid: str = NOT_VALID) -> Any:
    """The document in ``text`` (``yaml.safe_load``).

    Args:
        text: YAML text.
        source: What the text came from (a path); every message starts with it.
        invalid: How the message names a syntax error (``"<source>: <invalid> at line N: <problem>"``).

    Raises:
        UsageError: The text is not valid YAML.
    """
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark is not None else ""
        lines = str(getattr(exc, "problem", None) or exc).strip().splitlines()
        detail = f": {lines[0]}" if lines else ""
        raise UsageError(f"{source}: {invalid}{at}{detail}") from None


def expect_mapping(doc: Any, source: str, what: str) -> Mapping[str, Any]:
    """``doc`` itself when it is a mapping.

    Raises:
        UsageError: ``"<source>: a <what> must be a YAML mapping, got <type>"``.
    """
    if not isinstance(doc, Mapping):
        raise UsageError(f"{source}: a {what} must be a YAML mapping, got {type(doc).__name__}")
    return doc


def read_yaml(path: str | Path, what: str, *, hint: str | None = None, invalid: str = NOT_VALID) -> dict[str, Any]:
    """The mapping in the YAML file ``path`` (``{}`` for an empty file).

    Args:
        path: The file.
        what: What the file is, for the messages (``"config"``, ``"price sheet"``, ``"regions file"``).
        hint: The hint of the "cannot read" error (e.g. where an example file is).
        invalid: How a syntax error is named (see :func:`parse_yaml`).

    Raises:
        UsageError: One line that starts with the path: ``cannot read <what>: <reason>``, a syntax
            error with its line, or ``a <what> must be a YAML mapping``.
    """
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise UsageError(f"{p}: cannot read {what}: {reason}", hint=hint) from None
    doc = parse_yaml(text, str(p), invalid=invalid)
    return dict(expect_mapping({} if doc is None else doc, str(p), what))


def check_keys(doc: Mapping[str, Any], allowed: Iterable[str], where: str) -> None:
    """Refuse a key of ``doc`` that is not ``allowed``.

    Raises:
        UsageError: ``"<where>: unknown key 'k'"``, hinting at the closest allowed key (or listing them).
    """
    names = list(allowed)
    for key in doc:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"allowed keys: {', '.join(names)}"
            raise UsageError(f"{where}: unknown key {key!r}", hint=hint)
