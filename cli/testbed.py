"""``delibench testbed``: run a local S3/GCS stand-in behind an emulated WAN link, detached."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import typer

from delibench.cli.output import console, err_console, print_json

__all__ = ["register", "testbed_app"]

testbed_app = typer.Typer(
    name="testbed",
    help=(
        "A local cloud for benchmarks: SeaweedFS (S3) and fake-gcs-server (GCS) behind a link emulator "
        "(latency, bandwidth, faults).\n\n"
        "Example: delibench testbed up --profile cross-region && eval \"$(delibench testbed env)\""
    ),
    no_args_is_help=True,
)

_DIR_HELP = "Data and state directory of the testbed."
_DEFAULT_DIR = Path(".delibench") / "testbed"


def _profile_table_line(profile_dict: dict) -> str:
    from delibench.testbed.profiles import LinkProfile

    profile = LinkProfile(**profile_dict)
    return f"{profile.name} ({profile.summary()})"


@testbed_app.command("up")
def up_cmd(
    data_dir: Path = typer.Option(_DEFAULT_DIR, "--dir", help=_DIR_HELP, file_okay=False),
    profile: str = typer.Option("local", "--profile", "-p", help="Link profile: local, same-region, cross-region, cross-continent, flaky-cross-region."),
    rtt: str = typer.Option(None, "--rtt", help="Override the round-trip time, e.g. 40ms."),
    bandwidth: str = typer.Option(None, "--bandwidth", help="Override the aggregate bandwidth per second, e.g. 50MB (0 = unlimited)."),
    per_connection: str = typer.Option(None, "--per-connection-bandwidth", help="Override the per-connection bandwidth, e.g. 20MB."),
    services: str = typer.Option("s3,gcs", "--services", help="Comma-separated: s3, gcs."),
    as_json: bool = typer.Option(False, "--json", help="Print the testbed's state as JSON on stdout."),
) -> None:
    """Start the object stores and link emulators in the background; they run until 'down'.

    Starting twice is harmless: a running testbed is reported, not duplicated.

    Example: delibench testbed up --profile cross-region --rtt 40ms --bandwidth 50MB
    """
    from delibench.testbed.profiles import with_overrides
    from delibench.testbed.testbed import Testbed, _validate_services, stop_detached, testbed_status

    link_profile = with_overrides(profile, rtt=rtt, bandwidth=bandwidth, per_connection_bandwidth=per_connection)
    wanted = _validate_services(services)
    state, statuses = testbed_status(data_dir)
    if state is not None:
        if statuses and all(s.running for s in statuses):
            err_console.print(f"a testbed is already running in {data_dir} (profile {_profile_table_line(state.profile)}); "
                              "use 'delibench testbed down' first to change it", highlight=False)
            _show(state, as_json)
            return
        dead = ", ".join(s.name for s in statuses if not s.running)
        err_console.print(f"[yellow]the previous testbed in {data_dir} had stopped parts ({dead}); cleaning it up[/]", highlight=False)
        stop_detached(data_dir)
    err_console.print(f"starting {', '.join(wanted)} with link profile {link_profile.name} ({link_profile.summary()}) ...", highlight=False)
    bed = Testbed.start(data_dir, profile=link_profile, services=wanted, detached=True)
    _show(bed.state, as_json)
    if not as_json:
        err_console.print(f'use it: eval "$(delibench testbed env --dir {shlex.quote(str(data_dir))})"', highlight=False)


def _show(state, as_json: bool) -> None:  # noqa: ANN001 - TestbedState, imported lazily
    if as_json:
        print_json({**state.to_json(), "env": state.env()})
        return
    from rich.table import Table

    table = Table(title="delibench testbed", show_header=True)
    table.add_column("service")
    table.add_column("endpoint (through the link)")
    table.add_column("direct")
    if state.s3_url:
        table.add_row("s3", state.s3_url, state.s3_direct_url)
    if state.gcs_url:
        table.add_row("gcs", state.gcs_url, state.gcs_direct_url)
    console.print(table)
    console.print(f"profile: {_profile_table_line(state.profile)}", highlight=False)
    console.print(f"data: {state.data_dir}", highlight=False)


@testbed_app.command("down")
def down_cmd(
    data_dir: Path = typer.Option(_DEFAULT_DIR, "--dir", help=_DIR_HELP, file_okay=False),
    purge: bool = typer.Option(False, "--purge", help="Also delete the stored objects and logs."),
) -> None:
    """Stop exactly the processes 'up' started (SIGTERM, then SIGKILL) and remove their sockets.

    Example: delibench testbed down --dir .delibench/testbed
    """
    import shutil

    from delibench.testbed.testbed import STATE_FILE, read_state, stop_detached

    state = read_state(data_dir)
    if state is None:
        err_console.print(f"no testbed is running in {data_dir}", highlight=False)
    else:
        statuses = stop_detached(data_dir)
        console.print(f"stopped {len(statuses)} processes of the testbed in {state.data_dir}", highlight=False)
    if purge and data_dir.exists():
        if (data_dir / STATE_FILE).exists():
            return
        shutil.rmtree(data_dir, ignore_errors=True)
        console.print(f"removed {data_dir}", highlight=False)


@testbed_app.command("status")
def status_cmd(
    data_dir: Path = typer.Option(_DEFAULT_DIR, "--dir", help=_DIR_HELP, file_okay=False),
    as_json: bool = typer.Option(False, "--json", help="Print the status as JSON on stdout."),
) -> None:
    """Show whether the testbed runs; exit 1 if none runs or any of its processes has stopped.

    Example: delibench testbed status --json
    """
    from delibench.errors import RuntimeFailure
    from delibench.testbed.testbed import testbed_status

    state, statuses = testbed_status(data_dir)
    healthy = state is not None and all(s.running for s in statuses)
    if as_json:
        print_json(
            {
                "running": healthy,
                "state": state.to_json() if state else None,
                "processes": [{"name": s.name, "pid": s.pid, "running": s.running, "detail": s.detail} for s in statuses],
            }
        )
    elif state is None:
        console.print(f"no testbed in {data_dir}", highlight=False)
    else:
        _show(state, False)
        for s in statuses:
            mark = "[green]running[/]" if s.running else f"[red]{s.detail}[/]"
            console.print(f"  {s.name} (pid {s.pid}): {mark}", highlight=False)
    if state is None:
        raise typer.Exit(1)
    if not healthy:
        dead = ", ".join(s.name for s in statuses if not s.running)
        raise RuntimeFailure(f"testbed in {data_dir} is broken: {dead} not running", hint="see the log named above; 'delibench testbed down' then 'up' restarts it")


@testbed_app.command("env")
def env_cmd(
    data_dir: Path = typer.Option(_DEFAULT_DIR, "--dir", help=_DIR_HELP, file_okay=False),
    shell: str = typer.Option("bash", "--shell", help="Output format: bash (also zsh/sh), fish or json."),
) -> None:
    """Print the environment variables that point clients (s3fs, gcsfs, boto3, delibench) at the testbed.

    Example: eval "$(delibench testbed env)"
    """
    from delibench.errors import UsageError
    from delibench.testbed.testbed import Testbed

    fmt = shell.strip().lower()
    if fmt not in ("bash", "zsh", "sh", "fish", "json"):
        raise UsageError(f"unknown shell {shell!r}", hint="use bash, fish or json")
    env = Testbed.attach(data_dir).env
    if fmt == "json":
        print(json.dumps(env, indent=2))
    elif fmt == "fish":
        for key, value in env.items():
            print(f"set -gx {key} {shlex.quote(value)};")
    else:
        for key, value in env.items():
            print(f"export {key}={shlex.quote(value)}")


@testbed_app.command("profiles")
def profiles_cmd(as_json: bool = typer.Option(False, "--json", help="Print the profiles as JSON.")) -> None:
    """List the link profiles with their figures and sources.

    Example: delibench testbed profiles
    """
    import dataclasses

    from delibench.testbed.profiles import PROFILES

    if as_json:
        print_json([dataclasses.asdict(p) for p in PROFILES.values()])
        return
    from rich.table import Table

    table = Table(show_header=True)
    for col in ("profile", "figures", "stands for", "source"):
        table.add_column(col)
    for p in PROFILES.values():
        table.add_row(p.name, p.summary(), p.description, p.source)
    console.print(table)


def register(app: typer.Typer) -> None:
    """Add the ``testbed`` command group to the root app."""
    app.add_typer(testbed_app, name="testbed")
