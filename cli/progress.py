"""Live progress of measured runs on stderr, and the Ctrl-C handling that lets a run save what it measured."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from types import FrameType
from typing import Any

from delibench.cli.output import err_console
from delibench.cli import environment
from delibench.records import StepSample

__all__ = ["StopFlag", "StepProgress", "stop_on_signals"]


class StopFlag:
    """Set by the first SIGINT/SIGTERM: the run ends after the step in flight and saves its results.

    A second SIGINT raises KeyboardInterrupt at once (the loop still keeps what it measured).
    """

    def __init__(self) -> None:
        self._event = threading.Event()
        self.signal_name: str | None = None

    def __call__(self) -> bool:
        return self._event.is_set()

    def set(self, name: str) -> None:
        """Ask the run to stop."""
        self.signal_name = name
        self._event.set()


@contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """Route SIGINT and SIGTERM to ``flag`` for the duration of the block (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    owner = os.getpid()

    def handler(signum: int, _frame: FrameType | None) -> None:
        if os.getpid() != owner:
            # A forked DataLoader worker inherits this handler and, in a terminal, the same Ctrl-C:
            # the process that owns the run decides; the worker keeps serving batches until then.
            return
        name = signal.Signals(signum).name
        if flag() and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.set(name)
        if environment.rank().is_main:  # every rank gets the signal; one of them tells the user
            err_console.print(f"[yellow]{name}: stopping after this step and saving what was measured (Ctrl-C again to stop now)[/]")

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


class StepProgress:
    """A rich progress bar per loader: steps done, samples/s and the running data-wait fraction.

    Disabled (a no-op) when stderr is not a terminal or when the user asked for ``--json`` /
    ``--no-progress``, so logs and pipes stay clean.
    """

    def __init__(self, totals: dict[str, int | None], *, enabled: bool) -> None:
        self.enabled = enabled and err_console.is_terminal
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._wait: dict[str, float] = dict.fromkeys(totals, 0.0)
        self._busy: dict[str, float] = dict.fromkeys(totals, 0.0)
        self._totals = totals

    def __enter__(self) -> StepProgress:
        if self.enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._progress = Progress(
                TextColumn("[bold]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeElapsedColumn(),
                console=err_console,
                transient=False,
            )
            self._progress.__enter__()
            for name, total in self._totals.items():
                self._tasks[name] = self._progress.add_task(name, total=total, info="")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._progress is not None:
            self._progress.__exit__(*exc)

    def on_step(self, name: str, step: StepSample) -> None:
        """Advance ``name``'s bar by one step."""
        if self._progress is None:
            return
        self._wait[name] += step.wait_s
        self._busy[name] += step.wait_s + step.compute_s
        busy = self._busy[name]
        frac = self._wait[name] / busy if busy else 0.0
        info = f"epoch {step.epoch} · data wait {frac:5.1%}"
        self._progress.update(self._tasks[name], advance=1, info=info)

    def callback(self) -> Callable[[str, StepSample], None] | None:
        """The ``on_step`` to pass to the runner, or None when disabled."""
        return self.on_step if self.enabled else None


def is_interactive() -> bool:
    """True when stderr is a terminal."""
    return sys.stderr.isatty()
