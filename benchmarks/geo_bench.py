"""Geo benchmark: mixed hardware in 3 regions, the real task read through deli, strategies and the planner against measurement.

Three regions joined by the ``cross-region`` link profile (70 ms RTT, 100 MB/s; egress $0.02/GB):
``us-east`` and ``us-west`` with an A100 each, ``eu-west`` with a V100, their step times emulated
by per-step sleeps from the regions file (A100 40 ms, V100 100 ms: 2.5x). Each region's shard of
the synthetic 10-class JPEG dataset (16x16, a few hundred images per region, mostly the region's
own classes: ``--skew``) lives in its own bucket on the testbed (SeaweedFS), read through the
``same-region`` link at home and through ``cross-region`` from another region, by the deli loader.
One worker per region trains the small CNN of ``geo/task.py``; rank 0 measures held-out accuracy
every ``--eval-every`` steps (evaluation time is left out of the clocks).

(a) Asynchrony. Unshared step rates (``no-exchange``: every region alone), synchronous DDP
    (``allreduce``), ASGD-GA with no staleness bound (regions train for the same time, what the
    V100 region needs for DDP's steps, each at its own pace: the A100 regions take ~2.5x the steps), ASGD-GA with bounds S (0 = lockstep; equal steps, as the
    bound holds the fast regions to the slow one's rounds): the fast regions' step rate while the
    slow region trains against their unshared rate, the staleness distribution, and the final validation loss
    against DDP's within ``LOSS_TOLERANCE`` -- which the broken controls (ASGD-GA with the wrong sign,
    no exchange at all) must fail.
(b) The real task to its accuracy targets: seconds and dollars until rank 0's held-out accuracy
    first reaches each ``--target`` for DDP, MA, ASGD-GA and DiLoCo.
(c) The planner (``geo plan``'s model) for this job against the measured run of the same plan,
    and the two practitioner baselines (all data copied to the cheapest single region with DDP;
    DDP across the same regions), each predicted and measured.

    .venv/bin/python benchmarks/geo_bench.py [--json PATH] [--txt PATH] [--quick]

``--part mlp`` runs the older two-region MLP comparison (allreduce vs asgd-ga vs ma).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

from results_io import publish

from delibench.geo.cost import geo_cost_usd
from delibench.geo.planner import COPY_CONCURRENCY, PlanWorkload, copy_time_s, SyncChoice, baselines, evaluate, plan_placement
from delibench.geo.regions import parse_regions
from delibench.geo.task import LOSS_TOLERANCE, matches_reference
from delibench.geo.train import GeoResult, GeoRunSpec, run_geo

RTT_S = 0.070
BANDWIDTH_BYTES_PER_S = 100e6
EGRESS_USD_PER_GB = 0.02
A100_STEP_S = 0.040
V100_STEP_S = 0.100
REGION_NAMES = ("us-east", "us-west", "eu-west")
HARDWARE = {"us-east": ("a100", 4.10, A100_STEP_S), "us-west": ("a100", 3.67, A100_STEP_S), "eu-west": ("v100", 2.48, V100_STEP_S)}


def regions_config(shard_bytes: dict[str, int] | None = None, scale: float = 1.0, store_requests_per_s: float | None = None) -> Any:
    """The benchmark's regions file (as data): one accelerator per region, every pair over the cross-region link.

    ``store_requests_per_s``: every region's store rate, as :func:`probe_store` measured it (one
    SeaweedFS server holds every region's bucket on the testbed); None: no limit.
    """
    regions = {}
    for name in REGION_NAMES:
        kind, price, step = HARDWARE[name]
        step *= scale
        regions[name] = {"accelerators": {"count": 1, "type": kind, "usd_per_hour": price, "step_time_s": step}}
        if store_requests_per_s is not None:
            regions[name]["store_requests_per_s"] = store_requests_per_s
        if shard_bytes:
            regions[name]["shards"] = [{"name": f"{name}-shard", "size_bytes": shard_bytes[name]}]
    links = [
        {"between": [a, b], "rtt_s": RTT_S, "bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S, "egress_usd_per_gb": EGRESS_USD_PER_GB}
        for i, a in enumerate(REGION_NAMES)
        for b in REGION_NAMES[i + 1 :]
    ]
    return parse_regions({"regions": regions, "links": links}, source="geo_bench")


def probe_store(lab: Any, region: str, *, concurrency: int = COPY_CONCURRENCY) -> dict[str, float]:
    """The testbed store's requests per second at the copy's concurrency: GETs, PUTs and the copy's mix.

    The planner's copy model needs the store's own time per request (``store_requests_per_s``),
    which on this small machine is not negligible. Measured the way ``copy_dataset`` makes them,
    with no link in between: ``concurrency`` threads GET every object of ``region``'s shard through
    deli's sample source (the copy's reader), then PUT as many objects of the same size through the
    bucket's filesystem (the copy's writer). A copy does one of each per object, so the rate it
    plans with is their harmonic mean, ``2 / (1/GET + 1/PUT)`` (a stream, GETs only, is then
    charged slightly more than it pays). A short warm-up first opens the connections.
    """
    import concurrent.futures

    from delibench.loaders.source import SampleSource
    from delibench.manifest import read_manifest
    from delibench.storage import resolve

    direct = dict(lab.lab.route(direct=True).storage_options)
    url = lab.urls[region]
    manifest = read_manifest(url, dict(direct))
    n = len(manifest.samples)
    source = SampleSource(url, manifest, dict(direct), io_threads=concurrency, members=False)
    dst = resolve(lab.lab.make_bucket("geo-store-probe") + "/probe", direct)
    fs = dst.filesystem()
    blob = b"\0" * manifest.samples[0].size_bytes
    try:
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            list(pool.map(source.fetch_sync, range(min(n, 2 * concurrency))))  # warm-up: connections
            t0 = time.perf_counter()
            list(pool.map(source.fetch_sync, range(n)))
            get_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            list(pool.map(lambda i: fs.pipe_file(dst.child(f"o{i}"), blob), range(n)))
            put_s = time.perf_counter() - t0
    finally:
        source.close()
    get_rate, put_rate = n / get_s, n / put_s
    return {"objects": n, "object_bytes": len(blob), "concurrency": concurrency, "get_per_s": get_rate, "put_per_s": put_rate, "requests_per_s": 2 / (1 / get_rate + 1 / put_rate)}


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def time_to_target(result: GeoResult, target: float) -> float | None:
    """Seconds (evaluation excluded) until rank 0's held-out accuracy first reached ``target``."""
    return next((t for _, t, _, acc in result.evals if acc >= target), None)


def usd_to(result: GeoResult, config: Any, seconds: float | None) -> float | None:
    """Dollars until ``seconds``: every worker billed for that time, egress prorated by time."""
    if seconds is None:
        return None
    usage = {name: n * seconds for name, n in result.spec["workers"]}
    share = min(1.0, seconds / result.wall_s) if result.wall_s else 1.0
    return geo_cost_usd(config, usage, {}).compute_usd + result.egress_usd * share


def window_rates(result: GeoResult, slow: str = "eu-west") -> dict[str, float]:
    """Each region's steps per second while the slow region was still training (up to its last step).

    Once the slow region has finished, a bounded ASGD-GA no longer waits for it; counting only the
    steps taken while it ran measures what the bound costs.
    """
    ranks = result.rank_results
    slow_end = max(r["steps_s"] for r in ranks if r["region"] == slow)
    rates: dict[str, list[float]] = {}
    for r in ranks:
        window = min(slow_end, r["steps_s"])
        done = sum(1 for t in r["step_end_s"] if t <= window + 1e-9)
        rates.setdefault(r["region"], []).append(done / window if window > 0 else 0.0)
    return {k: sum(v) / len(v) for k, v in rates.items()}


def _staleness_summary(values: tuple[int, ...]) -> dict[str, Any]:
    if not values:
        return {"count": 0}
    xs = sorted(values)
    q = lambda p: xs[min(len(xs) - 1, int(p * (len(xs) - 1) + 0.5))]  # noqa: E731
    hist = Counter(min(x, 99) for x in xs)
    buckets = {"0": 0, "1-2": 0, "3-8": 0, "9-32": 0, ">32": 0}
    for x, n in hist.items():
        key = "0" if x == 0 else "1-2" if x <= 2 else "3-8" if x <= 8 else "9-32" if x <= 32 else ">32"
        buckets[key] += n
    return {"count": len(xs), "p50": q(0.5), "p90": q(0.9), "max": xs[-1], "mean": sum(xs) / len(xs), "buckets": buckets}


def _row(name: str, r: GeoResult) -> dict[str, Any]:
    return {
        "run": name,
        "strategy": r.strategy,
        "wall_s": r.wall_s,
        "val_loss": r.val_loss,
        "val_accuracy": r.val_accuracy,
        "step_rate": window_rates(r),
        "staleness": _staleness_summary(r.staleness),
        "sync_bytes": r.cross_region_bytes,
        "data_link_bytes": r.data_link_bytes,
        "compute_usd": r.compute_usd,
        "egress_usd": r.egress_usd,
        "total_usd": r.total_usd,
        "evals": [list(e) for e in r.evals],
    }


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    from delibench.app.geo_lab import GeoLab

    t_bench = time.perf_counter()
    work = Path(args.workdir)
    out: dict[str, Any] = {"settings": {k: v for k, v in vars(args).items() if k not in ("json", "txt", "workdir")}}
    with GeoLab.start(work, REGION_NAMES, samples_per_region=args.samples, held_out=args.held_out, skew=args.skew, seed=args.seed) as lab:
        from delibench.manifest import read_manifest

        shard_bytes = {r: sum(s.size_bytes for s in read_manifest(p).samples) for r, p in lab.shards.shards.items()}
        store = probe_store(lab, REGION_NAMES[0])
        _say(f"store probe: {store['get_per_s']:.0f} GETs/s, {store['put_per_s']:.0f} PUTs/s at {store['concurrency']} in flight -> store_requests_per_s {store['requests_per_s']:.0f}")
        out["store"] = store
        config = regions_config(shard_bytes, args.scale, store["requests_per_s"])
        no_store = regions_config(shard_bytes, args.scale)
        workload = PlanWorkload("cnn-jpeg", sample_bytes=lab.shards.sample_bytes, batch_size=args.batch, model_bytes=3_962 * 4, epochs=args.epochs)
        out["data"] = {"samples": lab.shards.samples, "classes_of": lab.shards.classes_of, "shard_bytes": shard_bytes, "sample_bytes": lab.shards.sample_bytes, "held_out": args.held_out, "skew": args.skew}
        home = lab.sources()
        workers = tuple((r, 1) for r in REGION_NAMES)
        ddp_model = evaluate(config, workload, dict(workers), {f"{r}-shard": (r, "local") for r in REGION_NAMES}, SyncChoice("allreduce", 1, 0), label="multi-region DDP")
        steps = ddp_model.steps
        # Regions at their own pace train for the same time: what the V100 region needs for DDP's
        # steps; every worker stops at the first step past it (the step counts are only caps).
        cap = round(2 * steps * V100_STEP_S / A100_STEP_S)
        equal_time = {"region_steps": tuple((r, cap) for r in REGION_NAMES), "time_budget_s": steps * V100_STEP_S * args.scale}
        common = dict(workers=workers, batch_size=args.batch, lr=args.lr, task="cnn-jpeg", data=home, val_url=lab.shards.held_out, val_samples=args.held_out, eval_every=args.eval_every, seed=args.seed, accum=args.accum, period=args.period)
        runs: dict[str, GeoResult] = {}

        def run(name: str, copied: dict[str, int] | None = None, **kw: Any) -> GeoResult:
            spec = GeoRunSpec(**{**common, "steps": steps, **kw})
            t0 = time.perf_counter()
            r = run_geo(config, spec, timeout_s=900, copied=copied)
            _say(f"{name}: wall {r.wall_s:.1f} s (+{time.perf_counter() - t0 - r.wall_s:.1f} s start), val loss {r.val_loss:.3f}, acc {r.val_accuracy:.3f}, rates {', '.join(f'{k} {v:.1f}/s' for k, v in r.region_step_rate.items())}")
            runs[name] = r
            return r

        # (a) asynchrony on mixed hardware
        run("no-exchange", strategy="no-exchange", **equal_time)
        run("ddp", strategy="allreduce")
        run("asgd-ga", strategy="asgd-ga", staleness=None, **equal_time)
        for s in args.bounds:
            # held to S rounds ahead of the slow region, the fast ones cannot use the extra time: equal steps
            run(f"asgd-ga S={s}", strategy="asgd-ga", staleness=s)
        run("asgd-ga wrong sign", strategy="asgd-ga-wrong-sign", staleness=None, **equal_time)
        unshared = window_rates(runs["no-exchange"])
        ddp = runs["ddp"]
        a_rows = []
        for name in ["ddp", "asgd-ga", *[f"asgd-ga S={s}" for s in args.bounds], "asgd-ga wrong sign", "no-exchange"]:
            r = runs[name]
            rates = window_rates(r)
            fast = {k: rates[k] / unshared[k] if unshared[k] else float("nan") for k in ("us-east", "us-west")}
            a_rows.append({
                **_row(name, r),
                "fast_rate_vs_unshared": fast,
                "fast_within_10pct": all(v >= 0.9 for v in fast.values()),  # NaN (no unshared rate): False
                "matches_ddp_loss": matches_reference(r.val_loss, ddp.val_loss),
            })
        out["a"] = {"unshared_rate": unshared, "tolerance": LOSS_TOLERANCE, "ddp_val_loss": ddp.val_loss, "rows": a_rows}

        # (b) the real task to its accuracy target
        run("ma", strategy="ma")
        run("diloco", strategy="diloco")
        b_rows = []
        for name, label in (("ddp", "DDP (allreduce)"), ("ma", f"MA H={args.period}"), ("asgd-ga", f"ASGD-GA K={args.accum}"), ("diloco", f"DiLoCo H={args.period}")):
            r = runs[name]
            to = {str(target): {"seconds": time_to_target(r, target), "usd": usd_to(r, config, time_to_target(r, target))} for target in args.target}
            b_rows.append({"run": label, "to_target": to, "final_accuracy": r.val_accuracy, "final_val_loss": r.val_loss, "wall_s": r.wall_s, "total_usd": r.total_usd, "best_accuracy": max((e[3] for e in r.evals), default=float("nan"))})
        out["b"] = {"targets": args.target, "rows": b_rows}

        # (c) the planner against the measured run of the same plan, and the baselines
        sync = SyncChoice("asgd-ga", args.accum, 1)
        plan = plan_placement(config, workload, sync=sync, objective="time")
        base_single, base_multi = baselines(config, workload, plan)
        c_rows = []
        for placement in (plan, base_single, base_multi):
            reading = {d.home: (d.reader, d.mode) for d in placement.data}
            # As `geo run --plan` does: copy-mode shards are copied into the reader's bucket first
            # (timed, their bytes priced), then read there; streamed ones are read across by deli.
            data = lab.sources(reading, copy_up_front=True)
            copies = [c for c in lab.copies if any(d.mode == "copy" and (d.home, d.reader) == (c.home, c.reader) for d in placement.data)]
            copy_s = sum(c.seconds for c in copies)
            copied = {f"{c.home}->{c.reader}": c.nbytes for c in copies}
            ws = tuple(placement.workers.items())
            kw: dict[str, Any] = {"strategy": placement.sync.strategy, "workers": ws, "data": data, "steps": placement.steps}
            if placement.sync.strategy == "asgd-ga":
                kw.update(accum=placement.sync.period, staleness=placement.sync.staleness)
            name = f"plan {placement.label}"
            same = next((n for n, r in runs.items() if placement.label == "multi-region DDP" and n == "ddp" and r.spec["steps"] == placement.steps and len(ws) == 3), None)
            r = runs[same] if same else run(name, copied=copied, **kw)
            measured_s = copy_s + r.wall_s
            measured_usd = r.total_usd
            c_rows.append({
                "placement": placement.label,
                "workers": placement.workers,
                "data": {d.shard: f"{d.reader} ({d.mode})" for d in placement.data},
                "sync": f"{placement.sync.strategy} P={placement.sync.period}",
                "steps": placement.steps,
                "predicted_s": placement.time_s,
                "predicted_copy_s": placement.copy_time_s,
                # the same copies under the model without the store's time per request (before it was counted)
                "predicted_copy_s_without_store": sum(copy_time_s(no_store, d.home, d.reader, d.size_bytes, workload.stored_object_bytes) for d in placement.data if d.mode == "copy"),
                "copy_s": copy_s,
                "copied_objects": sum(lab.shards.samples[c.home] for c in copies),
                "measured_train_s": r.wall_s,
                "remote_read_bytes": {k: v for k, v in r.data_link_bytes.items() if k.split("->")[0] != k.split("->")[1]},
                "predicted_data_bytes": placement.data_bytes,
                "measured_s": measured_s,
                "time_error": measured_s / placement.time_s - 1,
                "predicted_usd": placement.total_usd,
                "measured_usd": measured_usd,
                "usd_error": measured_usd / placement.total_usd - 1,
                "val_accuracy": r.val_accuracy,
                "val_loss": r.val_loss,
                "seconds_to_target": {str(t): time_to_target(r, t) for t in args.target},
            })
        out["c"] = {"objective": "time", "sync": f"asgd-ga K={args.accum} S=1", "epochs": args.epochs, "rows": c_rows}
    out["bench_s"] = time.perf_counter() - t_bench
    return out




def format_report(out: dict[str, Any]) -> str:
    s = out["settings"]
    lines = []
    d = out["data"]
    lines.append(f"Regions: us-east A100 ({A100_STEP_S * 1000:.0f} ms/step, $4.10/h), us-west A100 ($3.67/h), eu-west V100 ({V100_STEP_S * 1000:.0f} ms/step, $2.48/h); "
                 f"every pair: cross-region link ({RTT_S * 1000:.0f} ms RTT, {BANDWIDTH_BYTES_PER_S / 1e6:.0f} MB/s, ${EGRESS_USD_PER_GB}/GB). One worker per region.")
    if "store" in out:
        st = out["store"]
        lines.append(f"Store (the testbed's SeaweedFS, every region's bucket), probed with no link at {st['concurrency']} in flight ({st['objects']} objects of {st['object_bytes']} B): "
                     f"{st['get_per_s']:.0f} GETs/s, {st['put_per_s']:.0f} PUTs/s: the regions file's store_requests_per_s = {st['requests_per_s']:.0f} (their harmonic mean: a copy does one of each).")
    lines.append(f"Data: {sum(d['samples'].values())} training images 16x16 (~{d['sample_bytes']} B) in 3 region buckets {d['samples']}, "
                 f"{int(s['skew'] * 100)} % of each from its own classes {d['classes_of']}; held-out {d['held_out']} (every class). "
                 f"CNN 3,962 parameters, SGD lr {s['lr']}, batch {s['batch']}/worker.")
    a = out["a"]
    lines.append("")
    lines.append("(a) Asynchrony. Step rates are counted while the V100 region trains. Unshared step rates (no exchange): " + ", ".join(f"{k} {v:.1f}/s" for k, v in a["unshared_rate"].items())
                 + f". Loss tolerance vs DDP: {a['tolerance'] * 100:.0f} % of DDP's val loss {a['ddp_val_loss']:.3f}.")
    lines.append(f"{'run':<22}{'us-east/s':>10}{'us-west/s':>10}{'eu-west/s':>10}{'fast vs unshared':>18}{'staleness p50/p90/max':>23}{'val loss':>10}{'acc':>7}{'  same loss as DDP':>19}")
    for r in a["rows"]:
        rate = r["step_rate"]
        fast = r["fast_rate_vs_unshared"]
        st = r["staleness"]
        stale = f"{st['p50']}/{st['p90']}/{st['max']}" if st.get("count") else "-"
        lines.append(f"{r['run']:<22}{rate.get('us-east', 0):>10.1f}{rate.get('us-west', 0):>10.1f}{rate.get('eu-west', 0):>10.1f}"
                     f"{min(fast.values()) * 100:>17.0f}%{stale:>23}{r['val_loss']:>10.3f}{r['val_accuracy']:>7.3f}{'yes' if r['matches_ddp_loss'] else 'NO':>19}")
    for r in a["rows"]:
        if r["staleness"].get("count"):
            lines.append(f"  staleness of {r['run']}: {r['staleness']['buckets']} (rounds behind, per applied update; mean {r['staleness']['mean']:.1f})")
    b = out["b"]
    lines.append("")
    lines.append("(b) The real task to held-out accuracy targets (10 classes; chance 10 %): seconds and US cents until rank 0 first measures the target "
                 "(every worker billed for that time, egress prorated), evaluated every " + str(s["eval_every"]) + " steps:")
    head = "".join(f"{'to ' + format(t * 100, '.0f') + ' %':>12}{'cents':>9}" for t in b["targets"])
    lines.append(f"{'strategy':<18}{head}{'best acc':>10}{'final acc':>11}{'final loss':>12}{'wall':>8}{'$ total':>10}")
    for r in b["rows"]:
        cells = ""
        for t in b["targets"]:
            x = r["to_target"][str(t)]
            cells += (f"{x['seconds']:>10.1f} s{x['usd'] * 100:>9.4f}" if x["seconds"] is not None else f"{'not reached':>12}{'-':>9}")
        lines.append(f"{r['run']:<18}{cells}{r['best_accuracy']:>10.3f}{r['final_accuracy']:>11.3f}{r['final_val_loss']:>12.3f}{r['wall_s']:>7.1f}s{r['total_usd'] * 100:>9.4f}c")
    c = out["c"]
    lines.append("")
    lines.append(f"(c) Planner ({c['epochs']} epochs, objective time, sync {c['sync']}) against the measured run of the same placement (c = US cents):")
    lines.append(f"{'placement':<34}{'steps':>6}{'pred s':>8}{'meas s':>8}{'err':>7}{'pred c':>9}{'meas c':>9}{'err':>7}{'acc':>7}  data")
    for r in c["rows"]:
        copy = f"; remote reads {sum(r['remote_read_bytes'].values()) / 1e3:.0f} kB (planned {r['predicted_data_bytes'] / 1e3:.0f} kB)" if r["predicted_data_bytes"] else ""
        lines.append(f"{r['placement']:<34}{r['steps']:>6}{r['predicted_s']:>8.1f}{r['measured_s']:>8.1f}{r['time_error'] * 100:>6.0f}%{r['predicted_usd'] * 100:>9.4f}{r['measured_usd'] * 100:>9.4f}{r['usd_error'] * 100:>6.0f}%{r['val_accuracy']:>7.3f}  {r['data']}{copy}")
    for r in c["rows"]:
        if r.get("copied_objects"):
            lines.append(f"  {r['placement']}: copied {r['copied_objects']} objects up front in {r['copy_s']:.2f} s (planner: {r['predicted_copy_s']:.2f} s; {r.get('predicted_copy_s_without_store', float('nan')):.2f} s without the store's time, "
                         f"{COPY_CONCURRENCY} threads, each a round trip and the store's time for a GET and a PUT per object), then trained {r['measured_train_s']:.1f} s")
    lines.append("")
    lines.append(f"Benchmark took {out['bench_s']:.0f} s.")
    return "\n".join(lines)


def mlp_comparison() -> None:
    """The older two-region MLP comparison (allreduce vs asgd-ga vs ma)."""
    config = parse_regions(
        {
            "regions": {
                "us-east": {"accelerators": {"count": 8, "type": "a100", "usd_per_hour": 4.10, "step_time_s": 0.1}},
                "eu-west": {"accelerators": {"count": 4, "type": "a100", "usd_per_hour": 3.67, "step_time_s": 0.1}},
            },
            "links": [{"between": ["us-east", "eu-west"], "rtt_s": RTT_S, "bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S, "egress_usd_per_gb": 0.02}],
        },
        source="geo_bench",
    )
    workers = (("us-east", 2), ("eu-west", 1))
    for strategy, kw in (("allreduce", {}), ("asgd-ga", {"staleness": 1}), ("asgd-ga", {"staleness": 0}), ("ma", {})):
        r = run_geo(config, GeoRunSpec(strategy=strategy, workers=workers, steps=60, hidden=1024, **kw), timeout_s=600)
        print(f"{strategy:<10} {kw!s:<18} wall {r.wall_s:6.2f} s  sync {r.sync_s_mean:6.2f} s  bytes {r.cross_region_bytes / 1e6:7.1f} MB  ${r.total_usd:.4f}  acc {r.val_accuracy:.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=("all", "mlp"), default="all")
    parser.add_argument("--samples", type=int, default=400, help="training images per region")
    parser.add_argument("--held-out", type=int, default=300)
    parser.add_argument("--skew", type=float, default=0.7, help="share of a region's images from its own classes")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--lr", type=float, default=0.1)
    parser.add_argument("--accum", type=int, default=4, help="ASGD-GA K")
    parser.add_argument("--period", type=int, default=8, help="MA/DiLoCo H")
    parser.add_argument("--bounds", type=lambda t: [int(x) for x in t.split(",")], default=[0, 1, 4], help="ASGD-GA staleness bounds S to price")
    parser.add_argument("--target", type=lambda t: [float(x) for x in t.split(",")], default=[0.35, 0.42], help="held-out accuracy targets")
    parser.add_argument("--eval-every", type=int, default=8, help="a multiple of --accum and --period: models are evaluated at round boundaries")
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies every step time in the regions file (0.5: a quicker run)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workdir", default=None, help="keep the testbed and data here (default: a temporary directory, removed)")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--txt", default=None, help="write the report here (with the command on top)")
    args = parser.parse_args()
    if args.part == "mlp":
        mlp_comparison()
        return
    with tempfile.TemporaryDirectory(prefix="delibench-geo-bench-") as tmp:
        if args.workdir is None:
            args.workdir = tmp
        out = run_benchmark(args)
    publish("geo_bench.py", format_report(out), out, txt=args.txt, json_path=args.json)


if __name__ == "__main__":
    main()
