"""Test helper: code blocks of README.md, so a test runs what the README shows."""

from __future__ import annotations

import re
from pathlib import Path

__all__ = ["README", "readme_python_block"]

README = Path(__file__).resolve().parents[1] / "README.md"


def readme_python_block(heading: str) -> str:
    """The first ``python`` block of the README section that starts with the line ``heading``.

    The section ends at the next ``## `` heading.
    """
    text = README.read_text()
    section = text[text.index(heading) :]
    section = section[: section.index("\n## ")]
    match = re.search(r"```python\n(.*?)```", section, re.S)
    assert match, "no python block in the README section"
    return match.group(1)
