"""From results to a process exit code: one pure rule for run, compare, tune, demo and bench.

Precedence, most serious first: interrupted (130) > an invalid result (3) > a threshold not met (4)
> success (0). Errors raised before any result exists carry their own code
(:class:`~delibench.errors.DelibenchError.exit_code`).
"""

from __future__ import annotations

from collections.abc import Sequence

from delibench.errors import ExitCode
from delibench.records import RunRecord

__all__ = ["below_min_au", "exit_code", "exit_code_for_records"]


def exit_code(*, interrupted: bool = False, invalid: bool = False, threshold_met: bool = True) -> ExitCode:
    """The exit code of a command that produced results."""
    if interrupted:
        return ExitCode.INTERRUPTED
    if invalid:
        return ExitCode.INVALID_RESULT
    if not threshold_met:
        return ExitCode.THRESHOLD_NOT_MET
    return ExitCode.OK


def below_min_au(records: Sequence[RunRecord], min_au: float | None) -> list[RunRecord]:
    """The records whose accelerator utilisation is below ``min_au`` (none when there is no threshold)."""
    if min_au is None:
        return []
    return [r for r in records if r.metrics.accelerator_utilization < min_au]


def exit_code_for_records(records: Sequence[RunRecord], *, interrupted: bool = False, min_au: float | None = None) -> ExitCode:
    """The exit code of ``run``/``compare``/``demo`` for these records."""
    return exit_code(
        interrupted=interrupted or any(r.status == "interrupted" for r in records),
        invalid=any(not r.valid for r in records),
        threshold_met=not below_min_au(records, min_au),
    )
