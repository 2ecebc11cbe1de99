"""How close does ``delibench tune`` get to the best configuration, and how fast? Tuner vs. exhaustive grid.

On one environment (SeaweedFS behind an emulated link, an emulated accelerator, a small dataset) it
measures every configuration of a discretised search space (the grid), then runs the tuner on the
same space: TPE alone for 20 trials (its best after 10 and after 20) and the model-guided start
for 8 trials. For each, it prints the tuner's pick, that pick's value in the grid, the grid's best,
the gap (regret) and the pick's rank in the grid; and the analytic model's error over the whole
grid. Every number is a measured run through ``delibench.app.session.run``.

Usage::

    .venv/bin/python benchmarks/tune_vs_grid.py [--samples 96] [--rtt-ms 20] [--bandwidth-mbps 2] [--json out.json]

It takes a few minutes on a 2-core machine (about 110 short runs).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any


def _measure_grid(space: Any, settings: Any, evaluate: Any) -> dict[Any, float]:
    configs = list(space.grid())
    random.Random(0).shuffle(configs)  # spread slow drift of the machine over the whole space
    values = {}
    for i, config in enumerate(configs):
        m = evaluate(config, lambda _s: None, lambda: False)
        values[config] = m.wait_fraction
        print(f"  grid {i + 1:3d}/{len(configs)} {config.label}: wait {m.wait_fraction:.3f}", file=sys.stderr, flush=True)
    return values


def _best_prefix(study: Any, space: Any, n: int) -> Any:
    from optuna.trial import TrialState

    done = [t for t in study.get_trials() if t.state == TrialState.COMPLETE and t.number < n]
    best = min(done, key=lambda t: t.values[0])
    return space.from_params(best.params), best.values[0], f"{min(n, len(study.trials))} ({len(done)} done)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--sample-kb", type=float, default=8.0, help="Mean sample size in kB (96x96 JPEGs).")
    parser.add_argument("--rtt-ms", type=float, default=20.0)
    parser.add_argument("--bandwidth-mbps", type=float, default=2.0, help="Link bandwidth in MB/s.")
    parser.add_argument("--step-ms", type=float, default=30.0, help="Emulated step time.")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--json", type=Path, default=None, help="Write the figures here too.")
    args = parser.parse_args(argv)

    import optuna

    from delibench.app.lab import Lab
    from delibench.app.session import run
    from delibench.records import ComputeSpec
    from delibench.testbed.profiles import LinkProfile
    from delibench.tuning.api import prepare_tuning
    from delibench.tuning.tuner import runner_evaluator

    tmp = Path(tempfile.mkdtemp(prefix="delibench-tune-bench-"))
    profile = LinkProfile(name="bench", rtt_s=args.rtt_ms / 1000, bandwidth_bytes_per_s=args.bandwidth_mbps * 1e6)
    with Lab.start(tmp, profile=profile, services=("s3",), detached=False) as lab:
        data = lab.dataset(tmp / "imgs", "s3://tune-bench/imgs", samples=args.samples, classes=4, preset="imagenet",
                           image_size=(96, 96), mean_bytes=int(args.sample_kb * 1000), seed=7)
        url, manifest, route = data.url, data.manifest, lab.route("s3")

        # A cache budget below the dataset's size, so hit rates (and LRU vs Belady) matter.
        budget = 1 << max(10, (manifest.total_bytes // 2).bit_length() - 1)
        common: dict[str, Any] = dict(
            compute=ComputeSpec(kind="emulated", step_time_s=args.step_ms / 1000),
            mem_budget_bytes=budget,
            batch_size=args.batch_size,
            num_workers=0,
            steps_per_trial=None,  # whole epochs: the second one sees a warm cache
            epochs_per_trial=2,
            warmup_steps=2,
            write_records=False,
            link_profile=route.profile.name,
            storage_options=route.storage_options,
            run=run,
            space_overrides=dict(cache_levels=2, prefetch_depths=(4, 8, 16, 32), concurrencies=(2, 4, 8, 16)),
        )

        def session(study: str, model_start: int, seed: int) -> Any:
            return prepare_tuning(url, "cifar-resnet50", storage=optuna.storages.InMemoryStorage(), study_name=study,
                                  model_start=model_start, sampler_seed=seed, **common)

        base = session("grid", 0, 0)
        space, settings = base.space, base.settings
        p = base.probe
        print(
            f"environment: {args.samples} samples ({manifest.total_bytes / 1e3:.0f} kB), link rtt {args.rtt_ms:g} ms "
            f"{args.bandwidth_mbps:g} MB/s (probe: GET {p.rtt_s * 1000:.1f} ms, {p.bandwidth_bytes_per_s / 1e6:.1f} MB/s"
            f"{'' if p.bandwidth_resolved else ' lower bound'}), step {args.step_ms:g} ms x batch {args.batch_size}, "
            f"cache budget {budget / 1024:.0f} KiB; space: {space.size()} configs",
            flush=True,
        )
        t0 = time.perf_counter()
        grid = _measure_grid(space, settings, runner_evaluator(settings, run))
        grid_s = time.perf_counter() - t0
        ranked = sorted(grid, key=lambda c: grid[c])
        grid_best = ranked[0]

        def row(name: str, config: Any, tuner_value: float, trials: int, seconds: float) -> dict[str, Any]:
            return {
                "run": name,
                "trials": trials,
                "seconds": round(seconds, 1),
                "pick": config.label,
                "pick_wait_in_tuner": round(tuner_value, 4),
                "pick_wait_in_grid": round(grid[config], 4),
                "grid_best_wait": round(grid[grid_best], 4),
                "gap": round(grid[config] - grid[grid_best], 4),
                "rank_in_grid": ranked.index(config) + 1,
            }

        rows = []
        t0 = time.perf_counter()
        tpe = session("tpe", 0, 0)
        tpe.tuner.optimize(20)
        tpe_s = time.perf_counter() - t0
        for n in (10, 20):
            cfg, val, k = _best_prefix(tpe.tuner.study, space, n)
            rows.append(row(f"TPE, first {n} trials", cfg, val, k, tpe_s * n / 20))
        t0 = time.perf_counter()
        guided = session("guided", 3, 0)
        guided.tuner.optimize(8)
        cfg, val, k = _best_prefix(guided.tuner.study, space, 8)
        rows.append(row("model start + TPE, 8 trials", cfg, val, k, time.perf_counter() - t0))

        predictor = base.predictor
        preds = {c: predictor.guess(c).prediction.wait_fraction for c in grid}
        from scipy.stats import spearmanr

        model_pick = min(grid, key=lambda c: (round(preds[c] / 0.005), c.cache_size_bytes, c.concurrency, c.prefetch_depth))
        rows.append(row("model alone (0 trials)", model_pick, preds[model_pick], "0", 0.0))
        model = {
            "mean_abs_error": round(statistics.fmean(abs(preds[c] - grid[c]) for c in grid), 4),
            "bias": round(statistics.fmean(preds[c] - grid[c] for c in grid), 4),
            "spearman": round(float(spearmanr([preds[c] for c in grid], [grid[c] for c in grid]).statistic), 3),
        }

        print(f"\ngrid: {len(grid)} configs measured in {grid_s:.0f} s; best {grid_best.label}: wait {grid[grid_best]:.3f}; "
              f"median config {statistics.median(grid.values()):.3f}, worst {grid[ranked[-1]]:.3f}")
        print(f"{'run':32s} {'trials':>12s} {'time':>6s} {'wait(tuner)':>11s} {'wait(grid)':>10s} {'gap':>7s} {'rank':>5s}  pick")
        for r in rows:
            print(f"{r['run']:32s} {str(r['trials']):>12s} {r['seconds']:5.0f}s {r['pick_wait_in_tuner']:11.3f} "
                  f"{r['pick_wait_in_grid']:10.3f} {r['gap']:+7.3f} {r['rank_in_grid']:5d}  {r['pick']}")
        print(f"model over the grid: mean |predicted - measured| {model['mean_abs_error']:.3f}, bias {model['bias']:+.3f}, "
              f"rank correlation {model['spearman']:.2f}")
        if args.json:
            args.json.write_text(json.dumps({"rows": rows, "model": model, "grid": {c.label: v for c, v in grid.items()}}, indent=2))
        return 0

if __name__ == "__main__":
    sys.exit(main())
