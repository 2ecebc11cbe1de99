"""Every command's ``--help`` renders (no Rich markup error), reflows to the terminal, and shows no escape characters."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import typer
from typer.testing import CliRunner

from delibench.cli.app import app
from delibench.cli.helptext import reflow


def _paths(command: Any, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    paths = [prefix]
    if hasattr(command, "commands"):
        for name, sub in command.commands.items():
            paths += _paths(sub, prefix + (name,))
    return paths


EXAMPLE = Path(__file__).resolve().parents[2] / "geo" / "example-regions.yaml"
PATHS = _paths(typer.main.get_command(app))


@pytest.mark.parametrize("path", PATHS, ids=lambda p: " ".join(p) or "delibench")
def test_help_renders_at_80_columns(path: tuple[str, ...]) -> None:
    result = CliRunner().invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
    assert result.exit_code == 0, result.output
    assert "Usage:" in result.output
    assert "\\[" not in result.output  # escaped markup must render as the bracket, not the escape


def test_help_of_an_option_with_brackets_keeps_them() -> None:
    result = CliRunner().invoke(app, ["geo", "run", "--help"], env={"COLUMNS": "200"}, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert "ADDRESS[/IFNAME]" in result.output


def test_reflow_joins_prose_and_keeps_items_and_indented_blocks() -> None:
    text = """First line
    of the summary.

    A paragraph wrapped
    in the source.

    - an item
      continued
    - another

        delibench run --loader deli
        delibench report
    """
    assert reflow(text) == (
        "First line of the summary.\n\nA paragraph wrapped in the source.\n\n- an item continued\n- another\n\n"
        "    delibench run --loader deli\n    delibench report"
    )


def test_reflow_starts_a_new_line_for_prose_after_an_indented_block() -> None:
    assert reflow("Summary.\n\nRun:\n    delibench demo\nthen read\nthe report.") == "Summary.\n\nRun:\n    delibench demo\nthen read the report."


def test_reflow_keeps_a_click_no_rewrap_paragraph() -> None:
    assert reflow("Summary.\n\n\b\nkeep\nthese lines") == "Summary.\n\n\b\nkeep\nthese lines"



def test_an_error_hint_with_brackets_is_printed_as_written() -> None:
    """The hint names ``ADDRESS[/IFNAME]``: read as Rich markup, that closing tag would crash the error printer."""
    proc = subprocess.run(
        [sys.executable, "-m", "delibench", "geo", "run", "--regions", str(EXAMPLE), "--print-commands", "--hosts", "garbage"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr
    assert "region=ADDRESS[/IFNAME]" in proc.stderr
