"""Help text that reflows at any terminal width.

Typer's ``rich`` markup mode keeps the single line breaks of a docstring's later paragraphs, so text
wrapped at 100 columns in the source comes out as ragged half-lines in an 80-column terminal. The
docstrings stay readable in the source; :func:`reflow` joins each prose paragraph into one line
before Typer sees it (as click's plain formatter and Markdown would), and keeps what is laid out on
purpose: list items, indented blocks and paragraphs marked with click's ``\\b``.

Help is plain text, not Rich markup: ``region=ADDRESS[/IFNAME]`` or ``list[str]`` in a help string
would otherwise be read as a tag (an unmatched closing tag makes ``--help`` itself crash), so
:func:`reflow_app` escapes every command's and option's help.
"""

from __future__ import annotations

import inspect
import re
from typing import Any

from rich.markup import escape
from typer.models import ParameterInfo

__all__ = ["reflow", "reflow_app"]

_ITEM = re.compile(r"^(?:[-*•]\s|\d+[.)]\s)")


def reflow(text: str | None) -> str | None:
    """Join the wrapped lines of each prose paragraph of ``text``; keep items, indents and ``\\b`` blocks."""
    if not text:
        return text
    paragraphs = []
    for paragraph in inspect.cleandoc(text).split("\n\n"):
        if paragraph.startswith("\b"):
            paragraphs.append(paragraph)
            continue
        lines: list[str] = []
        in_item = in_block = False
        for line in paragraph.splitlines():
            if _ITEM.match(line):
                lines.append(line.rstrip())
                in_item, in_block = True, False
            elif line[:1].isspace() and not in_item:
                lines.append(line.rstrip())  # an indented block (a command, a table): as written
                in_block = True
            elif lines and not in_block:
                lines[-1] = f"{lines[-1]} {line.strip()}"
            else:
                lines.append(line.strip())  # the paragraph's first line, or prose after an indented block
                in_block = False
        paragraphs.append("\n".join(lines))
    return "\n\n".join(paragraphs)


def _plain(text: str | None) -> str | None:
    return escape(text) if text else text


def _escape_parameters(callback: Any) -> None:
    for parameter in inspect.signature(callback).parameters.values():
        if isinstance(parameter.default, ParameterInfo):
            parameter.default.help = _plain(parameter.default.help)


def reflow_app(app: Any) -> None:
    """Reflow and escape the help of ``app``, its commands, their options and its groups (recursively), in place."""
    app.info.help = _plain(reflow(app.info.help))
    if app.registered_callback and app.registered_callback.callback:
        _escape_parameters(app.registered_callback.callback)
    for command in app.registered_commands:
        doc = command.help or (command.callback.__doc__ if command.callback else None)
        command.help = _plain(reflow(doc))
        if command.callback:
            _escape_parameters(command.callback)
    for group in app.registered_groups:
        group.help = _plain(reflow(group.help))
        reflow_app(group.typer_instance)
