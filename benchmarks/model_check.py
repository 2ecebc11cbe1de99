"""Does the tuner's analytic wait model hold? Its prediction against measurement over a matrix of environments.

Each cell is one environment: an emulated link in front of one SeaweedFS (RTT, bandwidth), a
generated dataset (small or large JPEGs), a workload (its real decoder) and an emulated
accelerator (step time x batch). In each cell the probe runs exactly as ``delibench tune`` runs it
(``prepare_tuning``), and a set of DELI configurations is measured with the tuner's own trial run
(``runner_evaluator``: 2 whole epochs, the last one's wait fraction): caches from none through about
a third of the dataset to more than all of it, and concurrency/prefetch depth below and above the
bandwidth-delay product (what Little's law says must be in flight). Per cell it prints every
config's predicted and measured wait, the bound the model names, whether the model trusts its own
prediction, the mean absolute error and the Spearman rank correlation.

Usage::

    .venv/bin/python benchmarks/model_check.py                      # all cells, ~10 min on 2 cores
    .venv/bin/python benchmarks/model_check.py --cells latency --repeats 1
    .venv/bin/python benchmarks/model_check.py --replay benchmarks/results/model-check.json   # re-predict, no runs

``--replay`` recomputes the predictions of a saved run with the current model (the measurements,
probe numbers and simulated miss rates are kept in the JSON), so a model change can be judged
against the very same measurements.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

#: The matrix. ``conc_depth``: (concurrency, prefetch depth) pairs; ``caches``: cache size as a
#: fraction of the dataset's bytes; ``workers``: DataLoader decode workers to try.
CELLS: dict[str, dict[str, Any]] = {
    # Small samples far away: one GET is all round trip; the in-flight count decides.
    # Demand 16 / 0.1 s = 160 samples/s; at 40 ms, 6.4 GETs must be in flight.
    "latency": dict(
        rtt_ms=40.0, bandwidth_mbps=100.0, per_conn_mbps=0.0, samples=256, sample_kb=32.0, image=None,
        workload="cifar-resnet50", batch=16, step_ms=100.0, workers=(2,),
        conc_depth=((2, 4), (4, 4), (4, 32), (8, 8), (32, 128)), caches=(0.0, 0.3, 1.5),
    ),
    # Large samples on a thin link: bytes decide; depth/concurrency only need to cover the BDP.
    # Demand 8 / 0.1 s = 80 samples/s x 160 kB = 12.8 MB/s against a 10 MB/s link.
    "bandwidth": dict(
        rtt_ms=10.0, bandwidth_mbps=10.0, per_conn_mbps=0.0, samples=128, sample_kb=160.0, image=None,
        workload="resnet50", batch=8, step_ms=100.0, workers=(2,),
        conc_depth=((1, 2), (4, 8), (16, 64)), caches=(0.0, 0.3, 1.5),
    ),
    # The environment of issue 18: 36 ms, 116 MB/s, 38 kB JPEGs, 100 ms steps of 32 (320 samples/s,
    # 11.5 GETs in flight needed); the old model predicted 0.000 for configs that measured up to 0.31.
    "issue18": dict(
        rtt_ms=36.0, bandwidth_mbps=116.0, per_conn_mbps=0.0, samples=320, sample_kb=38.0, image=None,
        workload="cifar-resnet50", batch=32, step_ms=100.0, workers=(2,),
        conc_depth=((4, 4), (8, 16), (32, 128)), caches=(0.0, 0.3, 1.5),
    ),
    # A near, fast link and a heavy decode (224 px RandomResizedCrop of ~110 kB JPEGs): the CPU decides.
    # Demand 16 / 0.05 s = 320 samples/s, well above what 2 cores decode.
    "cpu": dict(
        rtt_ms=2.0, bandwidth_mbps=0.0, per_conn_mbps=0.0, samples=192, sample_kb=110.0, image=None,
        workload="resnet50", batch=16, step_ms=50.0, workers=(0, 1, 2),
        conc_depth=((16, 64),), caches=(0.0, 1.5),
    ),
}


def _spearman(xs: list[float], ys: list[float]) -> float | None:
    from scipy.stats import spearmanr

    if len(xs) < 3 or len(set(xs)) < 2 or len(set(ys)) < 2:
        return None
    return float(spearmanr(xs, ys).statistic)


def _configs(cell: dict[str, Any], dataset_bytes: int) -> list[Any]:
    from delibench.tuning.space import TuneConfig

    out = []
    for frac in cell["caches"]:
        for conc, depth in cell["conc_depth"]:
            for w in cell["workers"]:
                out.append(TuneConfig(cache_size_bytes=int(frac * dataset_bytes), prefetch_depth=depth, concurrency=conc,
                                      eviction="belady", num_workers=w))
    return out


def _predict(entry: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """The current model's prediction for one saved measurement."""
    from delibench.tuning.model import Demand, predict_wait
    from delibench.tuning.probe import ProbeResult
    from delibench.tuning.space import TuneConfig

    fields = {f.name: entry["probe"][f.name] for f in dataclasses.fields(ProbeResult) if f.name in entry["probe"]}
    fields["pipeline_samples_per_s"] = tuple(tuple(p) for p in fields.get("pipeline_samples_per_s") or ())
    probe = ProbeResult(**fields)
    demand = Demand(**entry["demand"])
    config = TuneConfig(**cfg["config"])
    p = predict_wait(config, probe.link_estimate(), demand, cfg["miss_rate"])
    return {"wait": p.wait_fraction, "bound": p.bound, "trusted": p.trusted, "why": p.uncertain_reason, "prediction": p}


def _summarise(cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    from delibench.tuning.guide import assess_predictions

    rows = []
    for entry in cells:
        preds = [_predict(entry, c) for c in entry["configs"]]
        for c, p in zip(entry["configs"], preds):
            c["predicted"] = round(p["wait"], 4)
            c["bound"] = p["bound"]
            c["trusted"] = p["trusted"]
            c["why"] = p["why"]
        measured = [statistics.fmean(c["measured"]) for c in entry["configs"]]
        predicted = [p["wait"] for p in preds]
        trusted = [i for i, p in enumerate(preds) if p["trusted"]]
        spread = max((max(c["measured"]) - min(c["measured"]) for c in entry["configs"]), default=0.0)

        def stats(idx: list[int]) -> tuple[float | None, float | None]:
            if not idx:
                return None, None
            mae = statistics.fmean(abs(predicted[i] - measured[i]) for i in idx)
            return mae, _spearman([predicted[i] for i in idx], [measured[i] for i in idx])

        mae, rho = stats(list(range(len(measured))))
        tmae, trho = stats(trusted)
        rows.append({"cell": entry["cell"], "configs": len(measured), "mae": mae, "spearman": rho,
                     "max_abs_error": max(abs(p - m) for p, m in zip(predicted, measured)),
                     "trusted_configs": len(trusted), "trusted_mae": tmae, "trusted_spearman": trho,
                     "max_repeat_spread": spread,
                     "tuner_uses_model": assess_predictions([p["prediction"] for p in preds])[0],
                     "tuner_note": assess_predictions([p["prediction"] for p in preds])[1],
                     "passes": mae is not None and mae <= 0.05 and (rho is None or rho >= 0.8)})
    return rows


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "-" if v is None else format(v, spec)


def _report(doc: dict[str, Any]) -> str:
    lines = [f"command: {doc['command']}", ""]
    for entry in doc["cells"]:
        p = entry["probe"]
        e = entry["env"]
        lines.append(
            f"cell {entry['cell']}: link rtt {e['rtt_ms']:g} ms, {e['bandwidth_mbps'] or 'unlimited'} MB/s; "
            f"{entry['samples']} samples, {entry['dataset_bytes'] / 1e6:.1f} MB (mean {p['mean_sample_bytes'] / 1e3:.0f} kB); "
            f"{e['workload']} batch {entry['demand']['batch_size']} step {entry['demand']['step_time_s'] * 1000:g} ms "
            f"(demand {entry['demand']['batch_size'] / entry['demand']['step_time_s']:.0f}/s)")
        lines.append(
            f"  probe: GET {p['rtt_s'] * 1000:.1f} ms, {p['bandwidth_bytes_per_s'] / 1e6:.1f} MB/s"
            f"{'' if p['bandwidth_resolved'] else ' (lower bound)'}, {p['objects_per_s']:.0f} obj/s at "
            f"{p.get('ceiling_in_flight') or 32} in flight, decode {_fmt(p['decode_samples_per_s'], '.0f')}/s per process, "
            f"{p['cpu_count']} CPUs; no-fetch pipeline "
            + (", ".join(f"{w} workers {r:.0f}/s" for w, r in p.get("pipeline_samples_per_s") or []) or "not measured"))
        lines.append(f"  {'config':58s} {'miss':>5s} {'measured':>15s} {'pred':>6s} {'err':>7s}  bound      trust")
        for c in entry["configs"]:
            m = c["measured"]
            mean = statistics.fmean(m)
            spread = f"{mean:.3f}" + (f" ±{(max(m) - min(m)) / 2:.3f}" if len(m) > 1 else "")
            trust = "yes" if c["trusted"] else f"no ({c['why']})"
            lines.append(f"  {c['label']:58s} {c['miss_rate']:5.2f} {spread:>15s} {c['predicted']:6.3f} "
                         f"{c['predicted'] - mean:+7.3f}  {c['bound']:10s} {trust}")
        lines.append("")
    lines.append(f"{'cell':10s} {'n':>3s} {'MAE':>6s} {'max':>6s} {'rank r':>7s}   {'trusted':>7s} {'MAE':>6s} {'rank r':>7s}  "
                 f"{'repeat spread':>13s}  {'target (MAE<=0.05, r>=0.8)':26s}  tuner enqueues the model's guesses?")
    for r in doc["summary"]:
        lines.append(f"{r['cell']:10s} {r['configs']:3d} {_fmt(r['mae']):>6s} {_fmt(r['max_abs_error']):>6s} "
                     f"{_fmt(r['spearman'], '.2f'):>7s}   {r['trusted_configs']:7d} {_fmt(r['trusted_mae']):>6s} "
                     f"{_fmt(r['trusted_spearman'], '.2f'):>7s}  {_fmt(r['max_repeat_spread']):>13s}  "
                     f"{'met' if r['passes'] else 'MISSED':26s}  {'yes' if r['tuner_uses_model'] else 'no'}: {r['tuner_note']}")
    return "\n".join(lines)


def _measure(args: argparse.Namespace) -> dict[str, Any]:
    import optuna

    from delibench.app.lab import Lab
    from delibench.app.session import run
    from delibench.records import ComputeSpec
    from delibench.testbed.profiles import LinkProfile
    from delibench.tuning.api import measure_pipeline, prepare_tuning
    from delibench.tuning.tuner import runner_evaluator

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="delibench-model-check-"))
    out: list[dict[str, Any]] = []
    with Lab.start(workdir, profile="local", services=("s3",), detached=True) as lab:
        for name in args.cells:
            cell = CELLS[name]
            t0 = time.perf_counter()
            profile = LinkProfile(name=f"check-{name}", rtt_s=cell["rtt_ms"] / 1000,
                                  bandwidth_bytes_per_s=cell["bandwidth_mbps"] * 1e6,
                                  per_connection_bandwidth_bytes_per_s=cell["per_conn_mbps"] * 1e6)
            make: dict[str, Any] = dict(classes=4, preset="imagenet", mean_bytes=int(cell["sample_kb"] * 1000), seed=11)
            if cell["image"]:
                make["image_size"] = cell["image"]
            data = lab.dataset(workdir / f"data-{name}", f"s3://model-check/{name}", samples=cell["samples"], reuse=True, **make)
            route = lab.link(profile)
            time.sleep(2.0)  # let the new link emulator's start-up pass: the probe reads how busy the host is
            session = prepare_tuning(
                data.url, cell["workload"], compute=ComputeSpec("emulated", cell["step_ms"] / 1000),
                mem_budget_bytes=2 * data.manifest.total_bytes, storage=optuna.storages.InMemoryStorage(),
                study_name=f"check-{name}", batch_size=cell["batch"], num_workers=max(cell["workers"]),
                steps_per_trial=None, epochs_per_trial=2, warmup_steps=1, model_start=0, write_records=False,
                link_profile=profile.name, storage_options=route.storage_options, run=run, probe_pipeline=False,
            )
            # The no-fetch pipeline for every worker count of the cell (prepare_tuning measures the run's own only).
            pipeline = measure_pipeline(session.settings, tuple(cell["workers"]), len(data.manifest), run)
            evaluate = runner_evaluator(session.settings, run)
            predictor = session.predictor
            assert predictor is not None
            configs = _configs(cell, data.manifest.total_bytes)
            rows = [{"config": dataclasses.asdict(c), "label": c.label, "miss_rate": predictor.miss_rate(c), "measured": [],
                     "hit_rate": []} for c in configs]
            for rep in range(args.repeats):
                # Every config once per round, the order reversed on odd rounds: drift hits all alike.
                order = list(range(len(configs)))
                if rep % 2:
                    order.reverse()
                for i in order:
                    m = evaluate(configs[i], lambda _s: None, lambda: False)
                    rows[i]["measured"].append(round(m.wait_fraction, 4))
                    rows[i]["hit_rate"].append(m.hit_rate)
                    print(f"  {name} r{rep} {configs[i].label}: wait {m.wait_fraction:.3f} (sim miss {rows[i]['miss_rate']:.2f})",
                          file=sys.stderr, flush=True)
            out.append({
                "cell": name,
                "env": {k: cell[k] for k in ("rtt_ms", "bandwidth_mbps", "per_conn_mbps", "sample_kb", "workload")},
                "samples": len(data.manifest), "dataset_bytes": data.manifest.total_bytes,
                "probe": {**dataclasses.asdict(session.probe), "pipeline_samples_per_s": [list(p) for p in pipeline]},
                "demand": {"batch_size": cell["batch"], "step_time_s": cell["step_ms"] / 1000, "num_workers": max(cell["workers"]),
                           "steps_per_epoch": -(-len(data.manifest) // cell["batch"])},
                "configs": rows, "seconds": round(time.perf_counter() - t0, 1),
            })
    return {"cells": out}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cells", default=",".join(CELLS), help=f"comma-separated, of: {', '.join(CELLS)}")
    parser.add_argument("--repeats", type=int, default=2, help="measurements of every config (interleaved rounds)")
    parser.add_argument("--dir", default=None, help="work directory (testbed, datasets); default: a temp dir")
    parser.add_argument("--json", type=Path, default=None, help="write the figures here")
    parser.add_argument("--txt", type=Path, default=None, help="write the printed table here")
    parser.add_argument("--replay", type=Path, default=None, help="re-predict a saved JSON with the current model (no runs)")
    args = parser.parse_args(argv)
    args.cells = [c.strip() for c in args.cells.split(",") if c.strip()]
    unknown = [c for c in args.cells if c not in CELLS]
    if unknown:
        parser.error(f"unknown cells {unknown}; choose from {', '.join(CELLS)}")

    command = "python benchmarks/model_check.py " + " ".join(argv if argv is not None else sys.argv[1:])
    if args.replay:
        doc = json.loads(args.replay.read_text())
        doc["replayed_by"] = command.strip()
    else:
        doc = _measure(args)
        doc["command"] = command.strip()
    doc["summary"] = _summarise(doc["cells"])
    text = _report(doc)
    print(text)
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1) + "\n")
    if args.txt:
        args.txt.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
