"""How a benchmark script writes what it measured: the report on stdout, and optionally the same
report (with the command that produced it on top) and the raw figures as strict JSON.

Imported by the scripts beside it (``python benchmarks/<script>.py`` puts this folder on sys.path).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

__all__ = ["Transcript", "finite", "publish"]


def finite(o: Any) -> Any:
    """``o`` with NaN and infinities as None (strict JSON), keys as strings."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [finite(v) for v in o]
    return o


def publish(script: str, report: str, figures: dict[str, Any], *, txt: str | None, json_path: str | None) -> None:
    """Print ``report``; write it to ``txt`` and ``figures`` to ``json_path`` (each with the command line)."""
    command = f"$ .venv/bin/python benchmarks/{script} " + " ".join(sys.argv[1:])
    print(report)
    if txt:
        Path(txt).write_text(command + "\n\n" + report + "\n")
    if json_path:
        Path(json_path).write_text(json.dumps(finite({"command": command, **figures}), indent=2, default=str) + "\n")


class Transcript:
    """Lines printed as a benchmark runs (flushed at once: runs take minutes), kept for its ``.txt`` file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def say(self, text: str) -> None:
        print(text, flush=True)
        self.lines.append(text)

    def write(self, path: Path) -> None:
        path.write_text("\n".join(self.lines) + "\n")
