"""``delibench tune``: search the DELI loader's cache size, prefetch depth, concurrency and eviction with Optuna."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import typer

from delibench.app.outcome import exit_code
from delibench.cli import environment
from delibench.cli.output import console, err_console, print_json
from delibench.errors import UsageError

__all__ = ["register", "show_cmd", "tune_app"]

_TUNE_HELP = """Tune the DELI loader for this environment: each trial is a short measured run (a slice of an epoch).

The study is named after a fingerprint of the environment (dataset, endpoint, measured RTT and bandwidth buckets, compute) and stored in an SQLite file (.delibench/studies.db), so running the same command again resumes it, and two processes can tune one study at once. Use --storage postgresql://... for a team. An analytic model (probe + cache simulator) proposes the first trials when it trusts its predictions; the result records predicted vs measured wait for every trial. Measurements are noisy: the best configurations so far are measured again (--repeat-best) and the recommendation goes by the mean of each configuration's measurements.

Examples:

  delibench tune --data s3://bucket/imgs --workload resnet50 --compute emulated:50ms --trials 20 --mem-budget 8GiB

  delibench tune --data s3://bucket/imgs --workload resnet50 --objective cost --min-au 0.9 --export best.yaml

  delibench tune --data s3://bucket/imgs --workload resnet50 --objective wait,cost --study mystudy

  delibench tune show --study mystudy --json
"""

tune_app = typer.Typer(help=_TUNE_HELP, rich_markup_mode=None, invoke_without_command=True, no_args_is_help=False)

_PANEL_DATA = "Data and workload"
_PANEL_SEARCH = "Search"
_PANEL_OUT = "Study and output"


def _default_mem_budget() -> int:
    import psutil

    return int(psutil.virtual_memory().total // 2)


def _parse_objective(text: str) -> str:
    from delibench.tuning.tuner import OBJECTIVES

    normalized = ",".join(p.strip().lower() for p in text.split(",") if p.strip())
    if normalized == "cost,wait":
        normalized = "wait,cost"
    if normalized not in OBJECTIVES:
        raise UsageError(f"unknown --objective {text!r}", hint="use wait, cost or wait,cost")
    return normalized


class _Display:
    """Per-trial progress on stderr: a rich bar on a terminal, one line per trial otherwise (none with --json)."""

    def __init__(self, total: int, enabled: bool, quiet: bool) -> None:
        self.total = total
        self.quiet = quiet
        self.progress = None
        self.task = None
        self.done = 0
        if enabled:
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self.progress = Progress(
                TextColumn("[bold]tuning[/]"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.description}"),
                TimeElapsedColumn(), console=err_console, transient=True,
            )
            self.task = self.progress.add_task("", total=total)

    def __enter__(self) -> _Display:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def __call__(self, study: Any, trial: Any) -> None:
        """Optuna callback after each trial."""
        self.done += 1
        ua = trial.user_attrs
        measured = ua.get("measured_wait_fraction")
        predicted = ua.get("predicted_wait_fraction")
        line = (
            f"trial {trial.number} [{trial.state.name.lower()}] {ua.get('label', '')}"
            + (f" wait={measured:.3f}" if measured is not None else "")
            + (f" (model {predicted:.3f})" if predicted is not None else "")
            + (f" [{ua.get('source')}]" if ua.get("source") == "model" else "")
            + (f" [repeat of trial {ua.get('repeat_of')}]" if ua.get("source") == "repeat" else "")
        )
        if self.progress is not None and self.task is not None:
            self.progress.update(self.task, advance=1, description=line)
            self.progress.console.print(line, highlight=False)
        elif not self.quiet:
            err_console.print(line, highlight=False)


@tune_app.callback()
def tune_cmd(
    ctx: typer.Context,
    data: str = typer.Option(None, "--data", "-d", help="Dataset root with a delibench manifest (s3://, gs://, path).", rich_help_panel=_PANEL_DATA),
    workload: str = typer.Option(None, "--workload", "-w", help="Workload name (see 'delibench list workloads').", rich_help_panel=_PANEL_DATA),
    compute: str = typer.Option("auto", "--compute", help="cpu, cuda, auto, emulated:<time> (e.g. emulated:50ms) or emulated:<profile>. Emulated compute also feeds the model.", rich_help_panel=_PANEL_DATA),
    batch_size: int = typer.Option(None, "--batch-size", "-b", help="Samples per step (default: the workload's).", rich_help_panel=_PANEL_DATA),
    num_workers: int = typer.Option(2, "--num-workers", help="DataLoader workers of every trial (unless --tune-workers).", rich_help_panel=_PANEL_DATA),
    trials: int = typer.Option(20, "--trials", "-n", help="Trials to run in this invocation (added to the study's).", rich_help_panel=_PANEL_SEARCH),
    mem_budget: str = typer.Option(None, "--mem-budget", help="Largest cache to try, e.g. 8GiB (default: half the host's RAM).", rich_help_panel=_PANEL_SEARCH),
    objective: str = typer.Option("wait", "--objective", help="wait (data-wait fraction), cost ($/epoch), or wait,cost (Pareto front).", rich_help_panel=_PANEL_SEARCH),
    min_au: float = typer.Option(None, "--min-au", help="Constraint: accelerator utilisation >= this (e.g. 0.9); with --objective cost: the cheapest config that keeps the accelerator busy.", rich_help_panel=_PANEL_SEARCH),
    steps_per_trial: int = typer.Option(40, "--steps-per-trial", help="Steps of each epoch a trial measures (0 = whole epochs).", rich_help_panel=_PANEL_SEARCH),
    epochs_per_trial: int = typer.Option(2, "--epochs-per-trial", help="Epochs per trial; the last one (warm cache) is the objective.", rich_help_panel=_PANEL_SEARCH),
    warmup_steps: int = typer.Option(3, "--warmup-steps", help="Steps excluded at the start of each trial.", rich_help_panel=_PANEL_SEARCH),
    tune_workers: bool = typer.Option(False, "--tune-workers", help="Also search num_workers in {0,1,2,4} (capped at the CPU count).", rich_help_panel=_PANEL_SEARCH),
    model_start: int = typer.Option(3, "--model-start", help="Enqueue the analytic model's N best guesses first (0: off).", rich_help_panel=_PANEL_SEARCH),
    repeat_best: int = typer.Option(2, "--repeat-best", help="Measure each of the K best configurations so far a second time (noise-aware pick: by the mean of each configuration's measurements plus one standard error; 0: off). Repeats count towards --trials.", rich_help_panel=_PANEL_SEARCH),
    seed: int = typer.Option(0, "--seed", help="Seed of the sampler order (every trial) and of TPE.", rich_help_panel=_PANEL_SEARCH),
    timeout: float = typer.Option(None, "--timeout", help="Stop starting trials after this many seconds.", rich_help_panel=_PANEL_SEARCH),
    storage: str = typer.Option(None, "--storage", help="SQLAlchemy URL of the study database (default: sqlite:///.delibench/studies.db).", rich_help_panel=_PANEL_OUT),
    study: str = typer.Option(None, "--study", help="Study name (default: deli-<dataset id>-<fingerprint hash>).", rich_help_panel=_PANEL_OUT),
    export: Path = typer.Option(None, "--export", help="Write the best loader config here (YAML for 'delibench run --config').", dir_okay=False, rich_help_panel=_PANEL_OUT),
    trials_json: Path = typer.Option(None, "--trials-json", help="Write every trial (params, values, predicted vs measured) as JSON.", dir_okay=False, rich_help_panel=_PANEL_OUT),
    results_dir: str = typer.Option(None, "--results-dir", help="Where each trial's RunRecord goes (default: .delibench/results).", rich_help_panel=_PANEL_OUT),
    link_profile: str = typer.Option(None, "--link-profile", help="Name of the emulated link in the path, recorded with each trial.", rich_help_panel=_PANEL_OUT),
    as_json: bool = typer.Option(False, "--json", help="Print the study's trials document (JSON) on stdout.", rich_help_panel=_PANEL_OUT),
    no_progress: bool = typer.Option(False, "--no-progress", help="No progress bar.", rich_help_panel=_PANEL_OUT),
) -> None:
    if ctx.invoked_subcommand is not None:
        return
    from delibench.units import parse_bytes
    from delibench.workloads.compute import parse_compute

    if not data or not workload:
        missing = " and ".join(f for f, v in (("--data", data), ("--workload", workload)) if not v)
        raise UsageError(f"delibench tune needs {missing}", hint="e.g. delibench tune --data s3://bucket/imgs --workload resnet50 --compute emulated:50ms")
    if trials < 1:
        raise UsageError(f"--trials must be at least 1, got {trials}")
    if steps_per_trial < 0:
        raise UsageError(f"--steps-per-trial must not be negative, got {steps_per_trial}")
    if repeat_best < 0:
        raise UsageError(f"--repeat-best must not be negative, got {repeat_best}")
    if timeout is not None and timeout <= 0:
        raise UsageError(f"--timeout must be positive, got {timeout}")
    objective_name = _parse_objective(objective)
    budget = parse_bytes(mem_budget) if mem_budget is not None else _default_mem_budget()
    compute_spec = parse_compute(compute, batch_size=batch_size, profiles_path=environment.profiles_path())

    from delibench.app.session import run as run_trial
    from delibench.tuning.api import prepare_tuning
    from delibench.tuning.export import recommended_trial, trials_document, write_best_yaml
    from delibench.tuning.tuner import check_storage_url

    check_storage_url(storage)  # NOTE: a typo must not cost a link probe first
    err_console.print("probing the link and screening the search space ...", highlight=False)
    session = prepare_tuning(
        data,
        workload,
        run=run_trial,
        storage_options=environment.storage_options_for(data),
        compute=compute_spec,
        mem_budget_bytes=budget,
        objective=objective_name,
        min_au=min_au,
        storage=storage,
        study_name=study,
        batch_size=batch_size,
        num_workers=num_workers,
        steps_per_trial=steps_per_trial or None,
        epochs_per_trial=epochs_per_trial,
        warmup_steps=warmup_steps,
        seed=seed,
        tune_workers=tune_workers,
        model_start=model_start,
        results_dir=results_dir,
        link_profile=link_profile,
        sampler_seed=seed,
    )
    session.tuner.repeat_best = repeat_best
    p = session.probe
    err_console.print(
        f"study [bold]{session.tuner.study_name}[/] ({len(session.tuner.study.trials)} trial(s) so far); "
        f"link: GET {p.rtt_s * 1000:.1f} ms, {p.bandwidth_bytes_per_s / 1e6:.1f} MB/s"
        + (f", decode {p.decode_samples_per_s:.0f} samples/s/process" if p.decode_samples_per_s else "")
        + f"; space: {session.space.size()} configs",
        highlight=False,
    )
    err_console.print(_model_line(session, model_start), highlight=False)
    show_bar = not as_json and not no_progress and sys.stderr.isatty()
    with _Display(trials, enabled=show_bar, quiet=as_json) as display:
        session.tuner.optimize(trials, timeout_s=timeout, callbacks=[display])

    study_obj = session.tuner.study
    if export is not None:
        write_best_yaml(study_obj, export)
        err_console.print(f"best config written to {export}; use it with: delibench run --config {export} --data {data}", highlight=False)
    doc = trials_document(study_obj)
    if trials_json is not None:
        _write_json(doc, trials_json)
    if as_json:
        print_json(doc)
    else:
        _print_summary(doc)
    if min_au is not None and recommended_trial(study_obj) is None:
        err_console.print(f"[yellow]no trial reached accelerator utilisation >= {min_au}[/]", highlight=False)
        raise typer.Exit(int(exit_code(threshold_met=False)))


def _model_line(session: Any, model_start: int) -> str:
    """Whether the analytic model proposed the first trials, and why (``session.model_note``)."""
    if session.predictor is None:
        return "model: none (the step time is unknown: give --compute emulated:<time>); the sampler chooses every trial"
    note = f" ({session.model_note})" if session.model_note else ""
    if session.guesses:
        return f"model: proposes the first {len(session.guesses)} trial(s){note}"
    if not session.model_trusted:
        return f"model: not trusted here{note}; it proposes no trial, the sampler explores from the first (predictions are still recorded)"
    if model_start == 0:
        return f"model: trusted{note}, but --model-start 0: it proposes no trial"
    return f"model: trusted{note}; its best guesses are already in the study"


def _write_json(doc: dict[str, Any], path: Path) -> None:
    import json

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2) + "\n")


def _fmt(v: Any, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _print_summary(doc: dict[str, Any]) -> None:
    """Best config (or Pareto front), model error and importances, for people."""
    from rich.table import Table

    from delibench.units import format_bytes

    counts = doc["counts"]
    console.print(
        f"study [bold]{doc['study_name']}[/]: objective {doc['objective']}"
        + (f", min AU {doc['min_au']}" if doc.get("min_au") is not None else "")
        + f"; trials: {', '.join(f'{k} {v}' for k, v in counts.items())}",
        highlight=False,
    )
    best = [t for t in doc["trials"] if t["pareto"]]
    if not best:
        console.print("no complete (feasible) trial yet", highlight=False)
    else:
        title = "Pareto front (wait vs cost)" if doc.get("pareto_front") is not None else "Best configuration"
        table = Table(title=title)
        measurements = (doc.get("recommended") or {}).get("measurements") or {}
        for col in ("trial", "cache", "depth", "conc", "eviction", "workers", "runs", "wait (measured)", "wait (model)", "AU", "cost"):
            table.add_column(col, justify="right" if col not in ("eviction",) else "left")
        for t in best:
            c = t["params"] or {}
            cost = t.get("cost_value")
            cost_text = "-" if cost is None else (f"${cost:.4f}/epoch" if t.get("cost_unit") == "usd_per_epoch" else f"{format_bytes(cost)} cache")
            table.add_row(
                str(t["number"]),
                format_bytes(c.get("cache_size_bytes", 0)) if c.get("cache_size_bytes") else "none",
                str(c.get("prefetch_depth", "-")),
                str(c.get("concurrency", "-")),
                str(c.get("eviction", "-")),
                "-" if c.get("num_workers") is None else str(c["num_workers"]),
                *_measured_cells(t, measurements if doc.get("pareto_front") is None else {}),
                cost_text,
            )
        console.print(table)
        if doc.get("cost_unit") == "cache_bytes":
            console.print("cost: the runs carried no price estimate, so cache bytes stand in for cost", highlight=False)
    _print_repeats(doc)
    err = doc.get("model_error") or {}
    if err.get("count"):
        trusted = err.get("trusted") or {}
        if trusted.get("count") == err["count"]:
            head = f"model: mean |predicted - measured| wait = {_error_text(err)} (every prediction trusted)"
        elif trusted.get("count"):
            head = (f"model: mean |predicted - measured| wait = {_error_text(trusted)} where it trusted its prediction; "
                    f"{_error_text(err)} with the {err['count'] - trusted['count']} other(s)")
        else:
            head = f"model: mean |predicted - measured| wait = {_error_text(err)}; it trusted none of these predictions"
        untrusted = err.get("untrusted_count") or 0
        console.print(head + (f" ({untrusted} untrusted: band too wide)" if untrusted and trusted.get("count") else ""), highlight=False)
    imp = doc.get("importances")
    if imp:
        console.print("importance: " + ", ".join(f"{k} {v:.2f}" for k, v in imp.items()), highlight=False)
    elif imp is None and counts.get("complete", 0):
        console.print("importance: needs at least 4 complete trials", highlight=False)


def _error_text(err: dict[str, Any]) -> str:
    return (
        f"{err['mean_abs_error']:.3f} over {err['count']} trial(s) (max {err['max_abs_error']:.3f}, bias {err['bias']:+.3f}"
        + (f", rank correlation {err['spearman']:.2f}" if err.get("spearman") is not None else "")
        + ")"
    )


def _measured_cells(t: dict[str, Any], measurements: dict[str, Any]) -> tuple[str, str, str, str]:
    """The ``runs``, ``wait (measured)``, ``wait (model)`` and ``AU`` cells: means (± sd) over every measurement of the recommended config."""
    model = _fmt(t.get("predicted_wait_fraction"))
    if measurements.get("n", 1) > 1 and t["number"] in measurements.get("trials", ()):
        waits = [w for w in measurements.get("waits") or () if w is not None]
        if waits:
            mean = sum(waits) / len(waits)
            sd = (sum((w - mean) ** 2 for w in waits) / (len(waits) - 1)) ** 0.5 if len(waits) > 1 else None
            return str(measurements["n"]), f"{mean:.3f}" + (f" ±{sd:.3f}" if sd is not None else ""), model, f"{1 - mean:.3f}"
    return "1", _fmt(t.get("measured_wait_fraction")), model, _fmt(t.get("accelerator_utilization"))


def _print_repeats(doc: dict[str, Any]) -> None:
    """The configurations measured more than once, and the noise between their measurements."""
    noise = doc.get("noise") or {}
    repeated = noise.get("measured_more_than_once") or []
    if not repeated:
        if noise.get("rule"):
            console.print("repeats: none yet (every configuration measured once: the pick is the single best value)", highlight=False)
        return
    console.print(
        f"repeats: {noise.get('repeat_trials', 0)} trial(s) re-measured one of the best configurations; noise between "
        f"measurements of one configuration: sd {_fmt(noise.get('pooled_sd'))}; the pick goes by {noise.get('rule')}",
        highlight=False,
    )
    for c in repeated:
        values = ", ".join(f"{v:.3f}" for v in c["values"])
        console.print(f"  {c['label']}: {c['n']} runs (trials {', '.join(map(str, c['trials']))}): {values}; mean {c['mean']:.3f}", highlight=False)


@tune_app.command("show")
def show_cmd(
    study: str = typer.Option(None, "--study", help="Study name (default: the most recently started study in the storage)."),
    storage: str = typer.Option(None, "--storage", help="SQLAlchemy URL (default: sqlite:///.delibench/studies.db)."),
    as_json: bool = typer.Option(False, "--json", help="Print the trials document (JSON) on stdout."),
    export: Path = typer.Option(None, "--export", help="Write the best loader config here (YAML).", dir_okay=False),
) -> None:
    """Show a study: best config (or Pareto front), model error, parameter importances (with >= 4 complete trials).

    Example: delibench tune show --study deli-3f2a9c1b04de-1a2b3c4d --json
    """
    import optuna

    from delibench.tuning.export import trials_document, write_best_yaml
    from delibench.tuning.tuner import open_storage, quiet_optuna

    quiet_optuna()
    store = open_storage(storage)
    summaries = optuna.get_all_study_summaries(store, include_best_trial=False)
    if not summaries:
        raise UsageError("no study in the storage yet", hint="run 'delibench tune --data ... --workload ...' first")
    names = [s.study_name for s in summaries]
    if study is None:
        latest = max(summaries, key=lambda s: (s.datetime_start is not None, s.datetime_start.timestamp() if s.datetime_start else 0.0))
        study = latest.study_name
        if len(summaries) > 1 and not as_json:
            err_console.print(f"showing the latest study of {len(summaries)}: {study} (others: {', '.join(n for n in names if n != study)})", highlight=False)
    elif study not in names:
        import difflib

        close = difflib.get_close_matches(study, names, n=1)
        raise UsageError(f"no study named {study!r}", hint=f"did you mean {close[0]!r}?" if close else f"studies: {', '.join(names)}")
    loaded = optuna.load_study(study_name=study, storage=store)
    doc = trials_document(loaded)
    if export is not None:
        write_best_yaml(loaded, export)
        err_console.print(f"best config written to {export}", highlight=False)
    if as_json:
        print_json(doc)
    else:
        _print_summary(doc)


def register(app: typer.Typer) -> None:
    """Add ``tune`` (and ``tune show``) to the root app."""
    app.add_typer(tune_app, name="tune")
