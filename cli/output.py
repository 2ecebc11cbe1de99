"""Consoles and output helpers shared by every command: results on stdout, people-facing text on stderr."""

from __future__ import annotations

import json
import sys
from typing import Any

from rich.console import Console

from delibench.records import to_dict

__all__ = ["console", "err_console", "print_json"]

#: Results (tables, JSON) go to stdout.
console = Console(soft_wrap=True)
#: Progress, logs, warnings and errors go to stderr.
err_console = Console(stderr=True, soft_wrap=True)


def print_json(obj: Any) -> None:
    """Print exactly one JSON document on stdout (records are converted with ``to_dict``)."""
    sys.stdout.write(json.dumps(to_dict(obj), indent=2, sort_keys=False) + "\n")
    sys.stdout.flush()
