"""The root ``delibench`` command: global options, the command groups, and error -> exit-code handling."""

from __future__ import annotations

import importlib
import os
import sys
import traceback

import typer
from rich.markup import escape

from delibench import __version__
from delibench.cli.output import err_console
from delibench.cli.environment import as_flag_error, rank
from delibench.cli.helptext import reflow_app
from delibench.errors import DelibenchError, ExitCode, SpecError

__all__ = ["app", "entry", "main"]

EPILOG = (
    "Exit codes: 0 success; 1 runtime error (storage unreachable, loader crashed); "
    "2 bad usage or input; 3 run finished but is invalid; 4 a threshold was not met; "
    "130 interrupted (partial results are still written).  "
    "Example: delibench demo"
)

app = typer.Typer(
    name="delibench",
    help=(
        "Measure how long training waits for data in S3/GCS buckets, and remove that wait "
        "with a cached-prefetch (DELI) loader.\n\n"
        "Start with 'delibench demo': it runs everything locally against an embedded object store "
        "behind an emulated WAN link."
    ),
    epilog=EPILOG,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    rich_markup_mode="rich",
)

# Command groups in workflow order (asv's command_order): each module exposes ``register(app)``.
_COMMAND_MODULES = (
    "delibench.cli.demo",
    "delibench.cli.testbed",
    "delibench.cli.data",
    "delibench.cli.run",
    "delibench.cli.calibrate",
    "delibench.cli.tune",
    "delibench.cli.advise",
    "delibench.cli.scale",
    "delibench.cli.report",
    "delibench.cli.geo",
    "delibench.cli.listing",
    "delibench.cli.bench",
)


def _version_callback(value: bool) -> None:
    if value:
        typer.echo(f"delibench {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version_callback, is_eager=True, help="Print the version and exit."),
    debug: bool = typer.Option(False, "--debug", help="Show full tracebacks for errors (may reveal paths; never credentials)."),
) -> None:
    if debug:
        os.environ["DELIBENCH_DEBUG"] = "1"


for _name in _COMMAND_MODULES:
    try:
        _module = importlib.import_module(_name)
    except ModuleNotFoundError as _exc:  # a group not built yet must not break the others
        if _exc.name != _name:
            raise
        continue
    _module.register(app)
reflow_app(app)


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point: runs the app and maps errors to exit codes with one-line messages.

    Click's standalone mode handles usage errors (exit 2) and ``--help``; a DelibenchError raised by a
    command becomes one red line (plus a hint) and its exit code; anything unexpected becomes one line
    too, unless ``--debug`` (or ``DELIBENCH_DEBUG=1``) asks for the traceback.
    """
    try:
        app(args=argv, prog_name="delibench", standalone_mode=True)
    except SystemExit as exc:
        code = exc.code
        return code if isinstance(code, int) else (0 if code is None else 1)
    except DelibenchError as exc:
        if os.environ.get("DELIBENCH_DEBUG"):
            raise
        if isinstance(exc, SpecError):
            exc = as_flag_error(exc)
        err_console.print(f"[bold red]error:[/] {escape(exc.message)}", highlight=False, soft_wrap=True, markup=True)
        if exc.hint:
            err_console.print(f"[dim]hint: {escape(exc.hint)}[/]", highlight=False, soft_wrap=True)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        err_console.print("[yellow]interrupted[/]")
        return int(ExitCode.INTERRUPTED)
    except Exception as exc:
        if os.environ.get("DELIBENCH_DEBUG"):
            raise
        err_console.print(f"[bold red]error:[/] unexpected {type(exc).__name__}: {escape(str(exc))}", highlight=False, soft_wrap=True)
        err_console.print("[dim]hint: re-run with --debug for the traceback, and report it[/]")
        return int(ExitCode.RUNTIME_ERROR)
    return 0


def entry() -> None:
    """The ``delibench`` command and ``python -m delibench``: :func:`main`, then exit with its code.

    A rank of a distributed job (torchrun's ``WORLD_SIZE`` > 1, ``--nproc``) leaves with ``os._exit``
    once its output is flushed: interpreter teardown of a gloo group whose peer left mid-collective
    aborts now and then in PyTorch 2.x ("terminate called without an active exception", SIGABRT).
    That would turn the rank's one-line error and exit code into a crash the launcher takes for a
    signal, and an NCCL group in that state can block teardown outright. Everything the rank had to
    say (records, reports to rank 0) is written before :func:`main` returns.
    """
    if rank().world_size <= 1:
        sys.exit(main())
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - --debug re-raises: print it here, then still skip teardown
        traceback.print_exc()
        code = int(ExitCode.RUNTIME_ERROR)
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (| head) must not send the rank through teardown
            pass
    os._exit(code)


if __name__ == "__main__":
    entry()
