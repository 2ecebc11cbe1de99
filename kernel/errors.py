"""The exception hierarchy: every error a user can cause or meet, with its exit code."""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "DelibenchError",
    "ExitCode",
    "FetchError",
    "RuntimeFailure",
    "SpecError",
    "UsageError",
    "ValidityError",
]


class ExitCode(IntEnum):
    """Process exit codes, documented in ``delibench --help``."""

    OK = 0
    RUNTIME_ERROR = 1
    USAGE_ERROR = 2
    INVALID_RESULT = 3
    THRESHOLD_NOT_MET = 4
    INTERRUPTED = 130


class DelibenchError(Exception):
    """Base of every error meant for the user: the CLI prints ``message`` (and ``hint``) on one line.

    Args:
        message: What went wrong, in one sentence, without secrets.
        hint: What the user can do about it (optional).
    """

    exit_code: ExitCode = ExitCode.RUNTIME_ERROR

    def __init__(self, message: str, *, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(DelibenchError):
    """Bad flag, value, URL, file or profile: the user must change the command (exit 2)."""

    exit_code = ExitCode.USAGE_ERROR


class SpecError(UsageError):
    """A spec field holds a bad value: raised by the specs' own validation, before any I/O (exit 2).

    The message names the field as Python code writes it (``RunSpec.epochs``); the CLI, which knows
    which flag set which field, rewrites it with :meth:`for_flag`.

    Args:
        spec: The spec's class name (``RunSpec``).
        field: The field's name (``epochs``).
        problem: What is wrong with the value (``must be at least 1, got 0``).
    """

    def __init__(self, spec: str, field: str, problem: str, *, hint: str | None = None) -> None:
        super().__init__(f"{spec}.{field} {problem}", hint=hint)
        self.spec = spec
        self.field = field
        self.problem = problem

    def for_flag(self, flag: str) -> UsageError:
        """The same error worded for the command line (``--epochs must be at least 1, got 0``)."""
        return UsageError(f"{flag} {self.problem}", hint=self.hint)


class RuntimeFailure(DelibenchError):
    """The command was right but something failed while running it (exit 1)."""

    exit_code = ExitCode.RUNTIME_ERROR


class FetchError(RuntimeFailure):
    """A sample could not be read from storage; names the key and the (credential-free) URL.

    Args:
        key: The sample's key relative to the dataset root.
        url: The object's URL with any credentials removed.
        cause: The underlying error's one-line description.
    """

    def __init__(self, key: str, url: str, cause: str, *, hint: str | None = None) -> None:
        super().__init__(f"could not fetch sample {key!r} from {url}: {cause}", hint=hint)
        self.key = key
        self.url = url
        self.cause = cause


class ValidityError(DelibenchError):
    """The run finished but its result must not be trusted (partial read, too few steps) (exit 3)."""

    exit_code = ExitCode.INVALID_RESULT
