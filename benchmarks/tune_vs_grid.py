"""How fast does ``delibench tune`` reach the best configuration, and does noise pick its winner? Tuner vs. a repeated grid.

On one environment (SeaweedFS behind an emulated link, an emulated accelerator, a small dataset,
whole short epochs through the lab ``delibench.app.lab``):

1. **The grid**: every configuration of a small search space, each measured ``--repeats`` times
   (passes interleaved with the tuner runs and in a shuffled order, so the machine's drift hits
   everything alike). A configuration's *true* value is the mean of its grid measurements; the
   grid best is the lowest mean.
2. **The tuner**, ``--repeats`` times from scratch (fresh in-memory study, sampler seed ``--seed``
   plus the repeat's index, the same for every variant of a repeat) in four variants, each with
   a budget of ``--trials`` trials:

   * ``TPE``: the sampler alone, the pick being the single best measured value (no repeats);
   * ``TPE + repeats``: the same with the noise-aware incumbent (``repeat_best=2``: each of the
     two best configurations so far is measured a second time, the pick goes by the mean of a
     configuration's measurements plus one standard error);
   * ``model + TPE`` and ``model + TPE + repeats``: the model's best guesses enqueued first
     (``--model-start``, one per cache size as ``delibench tune`` picks them), then the same.
     Where the model does not trust itself here (e.g. the host was busy when probed),
     ``delibench tune`` enqueues nothing and lets TPE explore; this benchmark then enqueues the
     model's best guesses anyway (said in the output), so the variant still measures the model's start.

For each variant it reports, over the repeats, median and spread (min-max) of:

* trials until the tuner's *recommendation* (its own pick from the trials so far) is within 5 %
  of the grid best, and stays there to the end of the budget; "within 5 %" means an accelerator
  utilisation (1 - wait) at least 95 % of the grid best's, i.e. a training step at most ~5 % slower;
* trials until it first *measures* a configuration within 5 % (search speed, before selection);
* the final pick's true (grid-mean) wait and its gap to the grid best;
* how often noise picked a worse configuration: the pick is not within 5 % of the best
  configuration the run itself had measured (it tried a good one and recommended a worse one).

Every number is a measured run through ``delibench.app.session.run``.

Usage::

    .venv/bin/python benchmarks/tune_vs_grid.py [--repeats 3] [--trials 20] [--json out.json] [--txt out.txt]

The default takes about 20 minutes on a 2-core machine (321 short runs; 20.4 min on 2 cores shared
with other work, load 4-14). Results: ``benchmarks/results/tune-vs-grid.txt`` (``--seed 3``: a second,
independent run).
"""

from __future__ import annotations

import argparse
import json
import random
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: "Within 5 %": accelerator utilisation at least this share of the grid best's.
WITHIN = 0.95

VARIANTS = (
    # name, model start, repeat_best
    ("TPE", False, 0),
    ("TPE + repeats", False, 2),
    ("model + TPE", True, 0),
    ("model + TPE + repeats", True, 2),
)


def _within(wait: float, best: float) -> bool:
    return (1.0 - wait) >= WITHIN * (1.0 - best)


def _spread(values: list[float | None], budget: int) -> dict[str, Any]:
    """Median, min and max of per-run figures; None (not reached) counts as budget + 1 and is counted apart."""
    reached = [v for v in values if v is not None]
    filled = [v if v is not None else budget + 1 for v in values]
    return {
        "median": statistics.median(filled) if filled else None,
        "min": min(filled) if filled else None,
        "max": max(filled) if filled else None,
        "not_reached": len(values) - len(reached),
        "values": values,
    }


def _pick_single_best(trials: list[Any]) -> Any | None:
    done = [t for t in trials if t.values]
    return min(done, key=lambda t: (t.values[0], t.user_attrs.get("cache_bytes", 0), t.number)).params if done else None


def _pick_noise_aware(trials: list[Any]) -> Any | None:
    from delibench.tuning.tuner import config_stats, rank_configs

    ranked = rank_configs(config_stats(trials))
    return ranked[0].params if ranked else None


def _model_guesses(predictor: Any, space: Any, k: int) -> list[Any]:
    """The model's ``k`` best guesses for ``wait`` as ``Predictor.best_guesses`` ranks them (lowest predicted wait,
    near-ties to the cheapest, one per cache size), trusted or not."""
    ranked = sorted(predictor.screen(space), key=lambda g: (round(g.prediction.wait_fraction / 0.005), g.config.cache_size_bytes,
                                                            g.config.concurrency, g.config.prefetch_depth))
    picked, seen = [], set()
    for g in ranked:
        if g.config.cache_size_bytes not in seen:
            picked.append(g.config)
            seen.add(g.config.cache_size_bytes)
        if len(picked) == k:
            break
    return picked


def _analyse(study: Any, space: Any, truth: dict[Any, float], best: float, noise_aware: bool, budget: int) -> dict[str, Any]:
    """Per-prefix recommendation, trials to within 5 %, final pick and selection error of one tuner run."""
    from optuna.trial import TrialState

    trials = sorted(study.get_trials(deepcopy=False), key=lambda t: t.number)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.values]
    pick_fn = _pick_noise_aware if noise_aware else _pick_single_best
    rec_true: list[float | None] = []
    for k in range(1, len(trials) + 1):
        params = pick_fn([t for t in complete if t.number < k])
        rec_true.append(None if params is None else truth[space.from_params(params)])
    # Reached when the recommendation is within 5 % from trial k to the end of the budget.
    reach = None
    for k in range(len(rec_true), 0, -1):
        if rec_true[k - 1] is None or not _within(rec_true[k - 1], best):
            break
        reach = k
    tried_true = [truth[space.from_params(t.params)] for t in complete]
    first_tried = next((t.number + 1 for t in complete if _within(truth[space.from_params(t.params)], best)), None)
    final = rec_true[-1] if rec_true else None
    best_tried = min(tried_true) if tried_true else None
    final_params = pick_fn(complete)
    return {
        "trials": len(trials),
        "complete": len(complete),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "repeats": sum(t.user_attrs.get("source") == "repeat" for t in trials),
        "model_trials": sum(t.user_attrs.get("source") == "model" for t in trials),
        "trials_to_within_5pct": reach,
        "first_tried_within_5pct": first_tried,
        "pick": space.from_params(final_params).label if final_params else None,
        "pick_true_wait": final,
        "pick_gap": None if final is None else final - best,
        "pick_within_5pct": final is not None and _within(final, best),
        "best_tried_true_wait": best_tried,
        "noise_picked_worse": final is not None and best_tried is not None and not _within(final, best_tried),
        "measured": [
            {"number": t.number, "label": t.user_attrs.get("label"), "source": t.user_attrs.get("source"),
             "state": t.state.name, "value": t.values[0] if t.values else None,
             "true": truth[space.from_params(t.params)] if t.params else None}
            for t in trials
        ],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--sample-kb", type=float, default=8.0, help="Mean sample size in kB (96x96 JPEGs).")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=8.0, help="Link bandwidth in MB/s.")
    parser.add_argument("--step-ms", type=float, default=30.0, help="Emulated step time.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3, help="Grid measurements per config, and tuner runs per variant.")
    parser.add_argument("--trials", type=int, default=20, help="Trial budget of each tuner run.")
    parser.add_argument("--seed", type=int, default=0, help="Seed of the first repeat (sampler seed and grid order); repeat r uses seed + r.")
    parser.add_argument("--model-start", type=int, default=3, help="Model guesses enqueued first by the model-guided variants.")
    parser.add_argument("--depths", default="4,8,16", help="Prefetch depths of the space.")
    parser.add_argument("--concurrencies", default="2,4,8", help="Concurrencies of the space.")
    parser.add_argument("--cache-levels", type=int, default=2, help="Non-zero cache sizes (halving from the budget).")
    parser.add_argument("--evictions", default="belady", help="Eviction policies of the space.")
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here too.")
    parser.add_argument("--txt", type=Path, default=None, help="Write the printed report here too.")
    args = parser.parse_args(argv)

    import optuna

    from delibench.app.lab import Lab
    from delibench.app.session import run
    from delibench.records import ComputeSpec
    from delibench.testbed.profiles import LinkProfile
    from delibench.tuning.api import prepare_tuning
    from delibench.tuning.tuner import Tuner, runner_evaluator

    lines: list[str] = []

    def say(line: str = "") -> None:
        lines.append(line)
        print(line, flush=True)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    cmd = "python benchmarks/tune_vs_grid.py" + ("" if not (argv if argv is not None else sys.argv[1:]) else " " + shlex.join(argv if argv is not None else sys.argv[1:]))
    say(f"command: {cmd}")
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="delibench-tune-bench-"))
    profile = LinkProfile(name="bench", rtt_s=args.rtt_ms / 1000, bandwidth_bytes_per_s=args.bandwidth_mbps * 1e6)
    with Lab.start(tmp, profile=profile, services=("s3",), detached=True) as lab:
        data = lab.dataset(tmp / "imgs", "s3://tune-bench/imgs", samples=args.samples, classes=4, preset="imagenet",
                           image_size=(96, 96), mean_bytes=int(args.sample_kb * 1000), seed=7)
        url, manifest, route = data.url, data.manifest, lab.route("s3")

        # A cache budget below the dataset's size, so hit rates matter.
        budget = 1 << max(10, (manifest.total_bytes // 2).bit_length() - 1)
        overrides = dict(
            cache_levels=args.cache_levels,
            prefetch_depths=tuple(int(v) for v in args.depths.split(",")),
            concurrencies=tuple(int(v) for v in args.concurrencies.split(",")),
            evictions=tuple(args.evictions.split(",")),
        )
        base = prepare_tuning(
            url, "cifar-resnet50", storage=optuna.storages.InMemoryStorage(), study_name="probe", model_start=0,
            compute=ComputeSpec(kind="emulated", step_time_s=args.step_ms / 1000), mem_budget_bytes=budget,
            batch_size=args.batch_size, num_workers=0, steps_per_trial=None, epochs_per_trial=2, warmup_steps=2,
            write_records=False, link_profile=route.profile.name, storage_options=route.storage_options, run=run,
            space_overrides=overrides,
        )
        space, settings, predictor = base.space, base.settings, base.predictor
        evaluate = runner_evaluator(settings, run)
        p = base.probe
        say(
            f"environment: {args.samples} samples ({manifest.total_bytes / 1e3:.0f} kB), link rtt {args.rtt_ms:g} ms "
            f"{args.bandwidth_mbps:g} MB/s (probe: GET {p.rtt_s * 1000:.1f} ms, {p.bandwidth_bytes_per_s / 1e6:.1f} MB/s"
            f"{'' if p.bandwidth_resolved else ' lower bound'}), step {args.step_ms:g} ms x batch {args.batch_size}, "
            f"2 whole epochs per trial (the second one measured), cache budget {budget / 1024:.0f} KiB"
        )
        say(f"space: {space.size()} configs (cache {[c // 1024 for c in space.cache_sizes]} KiB, depth {list(space.prefetch_depths)}, "
            f"concurrency {list(space.concurrencies)}, {'/'.join(space.evictions)}); {args.repeats} repeats; tuner budget {args.trials} trials")
        guesses = _model_guesses(predictor, space, args.model_start)
        say(f"model: {'trusted' if base.model_trusted else 'NOT trusted'} here ({base.model_note}): "
            + ("the model-guided variants enqueue its best guesses first, as delibench tune does"
               if base.model_trusted else "delibench tune would enqueue nothing; the model-guided variants here enqueue its best guesses anyway")
            + f": {', '.join(g.label for g in guesses)}")

        configs = list(space.grid())
        grid: dict[Any, list[float]] = {c: [] for c in configs}
        runs: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in VARIANTS}
        seconds: dict[str, float] = {"grid": 0.0, **{name: 0.0 for name, _, _ in VARIANTS}}
        studies: dict[tuple[str, int], Any] = {}
        for r in range(args.repeats):
            order = list(configs)
            random.Random(args.seed + r).shuffle(order)  # spread the machine's drift over the whole space
            t0 = time.perf_counter()
            for i, config in enumerate(order):
                m = evaluate(config, lambda _s: None, lambda: False)
                grid[config].append(m.wait_fraction)
                log(f"  grid pass {r + 1}/{args.repeats} {i + 1:3d}/{len(order)} {config.label}: wait {m.wait_fraction:.3f}")
            seconds["grid"] += time.perf_counter() - t0
            for name, guided, repeat in VARIANTS:
                t0 = time.perf_counter()
                tuner = Tuner(settings, space, storage=optuna.storages.InMemoryStorage(), study_name=f"{name}-{r}",
                              predictor=predictor, evaluate=evaluate, sampler_seed=args.seed + r, repeat_best=repeat)
                if guided:
                    for g in guesses:
                        tuner.study.enqueue_trial(space.to_params(g), user_attrs={"source": "model"}, skip_if_exists=True)

                def progress(study: Any, trial: Any, name: str = name) -> None:
                    ua = trial.user_attrs
                    v = trial.values[0] if trial.values else None
                    log(f"  {name} run {r + 1} trial {trial.number + 1:2d} [{ua.get('source')}] {ua.get('label')}: "
                        + (f"wait {v:.3f}" if v is not None else trial.state.name.lower()))

                tuner.optimize(args.trials, callbacks=[progress])
                seconds[name] += time.perf_counter() - t0
                studies[(name, r)] = tuner.study

        truth = {c: statistics.fmean(v) for c, v in grid.items()}
        ranked = sorted(configs, key=lambda c: truth[c])
        best = truth[ranked[0]]
        good = [c for c in configs if _within(truth[c], best)]
        for (name, r), study in studies.items():
            noise_aware = dict((n, rep) for n, _, rep in VARIANTS)[name] > 0
            runs[name].append(_analyse(study, space, truth, best, noise_aware, args.trials))

        sds = [statistics.stdev(v) for v in grid.values() if len(v) > 1]
        spreads = [max(v) - min(v) for v in grid.values() if len(v) > 1]
        say()
        say(f"grid: {len(configs)} configs x {args.repeats} measurements in {seconds['grid']:.0f} s; best (lowest mean) "
            f"{ranked[0].label}: wait {best:.3f} (runs {', '.join(f'{v:.3f}' for v in grid[ranked[0]])}); "
            f"{len(good)} config(s) within 5 % (wait <= {1 - WITHIN * (1 - best):.3f}); median config {statistics.median(truth.values()):.3f}, "
            f"worst {truth[ranked[-1]]:.3f}")
        if sds:
            say(f"noise: sd between measurements of one config: median {statistics.median(sds):.3f}, max {max(sds):.3f}; "
                f"largest spread (max - min) {max(spreads):.3f}")
        say("grid, best first (mean, then each measurement):")
        for c in ranked[: min(8, len(ranked))]:
            say(f"  {c.label:52s} {truth[c]:.3f}  [{', '.join(f'{v:.3f}' for v in grid[c])}]" + ("  within 5 %" if c in good else ""))

        say()
        say(f"{'variant':24s} {'trials to within 5 %':>22s} {'first tried':>16s} {'pick: true wait':>19s} {'gap':>15s} "
            f"{'pick within 5 %':>16s} {'noise picked worse':>19s} {'repeats':>8s} {'time':>6s}")
        summary: dict[str, Any] = {}
        for name, _, _ in VARIANTS:
            rs = runs[name]
            reach = _spread([x["trials_to_within_5pct"] for x in rs], args.trials)
            first = _spread([x["first_tried_within_5pct"] for x in rs], args.trials)
            picks = [x["pick_true_wait"] for x in rs if x["pick_true_wait"] is not None]
            gaps = [x["pick_gap"] for x in rs if x["pick_gap"] is not None]
            summary[name] = {
                "trials_to_within_5pct": reach,
                "first_tried_within_5pct": first,
                "pick_true_wait": {"median": statistics.median(picks), "min": min(picks), "max": max(picks)} if picks else None,
                "pick_gap": {"median": statistics.median(gaps), "min": min(gaps), "max": max(gaps)} if gaps else None,
                "pick_within_5pct": sum(x["pick_within_5pct"] for x in rs),
                "noise_picked_worse": sum(x["noise_picked_worse"] for x in rs),
                "repeat_trials_median": statistics.median(x["repeats"] for x in rs),
                "runs": len(rs),
                "seconds": round(seconds[name], 1),
            }

            def fmt(s: dict[str, Any]) -> str:
                text = f"{s['median']:g} [{s['min']:g}-{s['max']:g}]"
                return text + (f" ({s['not_reached']}x never)" if s["not_reached"] else "")

            say(f"{name:24s} {fmt(reach):>22s} {fmt(first):>16s} "
                + (f"{statistics.median(picks):.3f} [{min(picks):.3f}-{max(picks):.3f}]" if picks else "-").rjust(19)
                + " " + (f"{statistics.median(gaps):+.3f} [{max(gaps):+.3f}]" if gaps else "-").rjust(15)
                + f" {summary[name]['pick_within_5pct']:>9d} of {len(rs)} {summary[name]['noise_picked_worse']:>12d} of {len(rs)}"
                + f" {summary[name]['repeat_trials_median']:>8g} {seconds[name]:5.0f}s")
        say()
        say("Columns: median [min-max] over the runs. 'trials to within 5 %': trials until the run's own pick (single best value")
        say("for TPE and model + TPE, noise-aware mean for '+ repeats') is within 5 % of the grid best and stays so to the end of the")
        say(f"budget ({args.trials + 1} = not within the budget). 'first tried': the first trial that measured a config within 5 %.")
        say("'pick: true wait': the grid mean of the final pick; 'gap': its median (worst) distance to the grid best. 'noise picked")
        say("worse': runs whose pick is not within 5 % of the best config that run had itself measured. 'repeats': median trials")
        say("of the budget spent re-measuring the best configurations.")
        say(f"total {time.perf_counter() - started:.0f} s")

        doc = {
            "command": cmd,
            "settings": vars(args) | {"json": str(args.json) if args.json else None, "txt": str(args.txt) if args.txt else None},
            "probe": {"rtt_s": p.rtt_s, "bandwidth_bytes_per_s": p.bandwidth_bytes_per_s},
            "model": {"trusted": base.model_trusted, "note": base.model_note, "guesses": [g.label for g in guesses]},
            "space_size": len(configs),
            "grid": {c.label: {"mean": truth[c], "runs": grid[c]} for c in ranked},
            "grid_best": {"label": ranked[0].label, "wait": best},
            "within_5pct": [c.label for c in good],
            "summary": summary,
            "runs": runs,
        }
        if args.json:
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(doc, indent=2) + "\n")
        if args.txt:
            args.txt.parent.mkdir(parents=True, exist_ok=True)
            args.txt.write_text("\n".join(lines) + "\n")
        return 0


if __name__ == "__main__":
    sys.exit(main())
