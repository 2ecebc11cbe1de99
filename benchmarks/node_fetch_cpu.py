"""The ceiling of one node-service event loop: fetch throughput and CPU per GB / per 1,000 GETs (issue 15).

    .venv/bin/python benchmarks/node_fetch_cpu.py                                   # 16 KB, 110 KB, 1 MB; --nproc 4 and 2
    .venv/bin/python benchmarks/node_fetch_cpu.py --sizes 110k --nproc 4 --out /tmp/nfc
    .venv/bin/python benchmarks/node_fetch_cpu.py --sizes 110k --nproc 4 --fetch-processes 1,2 --no-no-verify-run \
        --out benchmarks/results --name node-fetch-cpu-processes            # one loop vs two fetch processes

The node service (``loaders/node/``) fetches for every local rank on ONE asyncio event loop. The
cross-region runs of ``node_scope.py`` are link-bound (service CPU 1.7-3.1 s over 65-106 s), so they
say nothing about how much that loop can move. Here the link is gone: SeaweedFS (the lab,
``delibench.app.lab``, profile ``local``) is reached directly over loopback, the compute is
``emulated:1ms`` per batch (0 ms is refused; the loader is the bottleneck), the node cache is twice the dataset, 1 epoch,
1 decode worker per rank, through the ordinary CLI path (``delibench run --loader deli:scope=node``). ``prefetch_depth`` is each rank's
whole share by default, so the service's walk never waits for the ranks to consume: on 2 cores the
ranks' JPEG decoding is slower than the fetch, and with deli's default window (256) the loop would
idle, gated by consumption, and show its cost but not its ceiling (``--prefetch-depth 256`` shows that).

Every object is read once directly before the runs, so the store serves from the page cache. While a
run goes, a sampler (every 0.1 s) reads the CPU time of the node service process (and of each of its
threads: the busiest is the event loop), of the SeaweedFS server's process tree, and of the whole box.
The *fetch interval* is the span in which the server works (its CPU rate above a quarter of its peak,
smoothed over 0.5 s): a GET costs the server CPU and nothing else does, so the interval excludes the
service's start-up (imports, manifest, arena) and the ranks' start-up and tear-down. Reported per run:

* fetch throughput: the loader's bytes and GETs (its own counts) over the fetch interval;
* the service's CPU-seconds in the interval, per GB fetched and per 1,000 GETs, and as a fraction of
  one core; its whole-life CPU too (start-up included);
* the server's and the whole box's CPU in the interval, so it is plain who had the 2 cores;
* with ``--fetch-processes N`` (deli ``fetch_processes``, N > 1): the service's CPU is its main
  process (table, cache, arena, the ranks' requests; the busiest thread is its event loop) plus its
  N fetch processes (each its own loop doing the GETs); both are reported apart and summed.

The summary fits ``service CPU = a x GETs + b x GB`` over the one-loop runs (least squares) and
extrapolates (labelled as such) to the node demand at which one loop would need a whole core, and sets
runs that differ only in ``--fetch-processes`` side by side. Writes ``--out``/``--name``.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

CLK = os.sysconf("SC_CLK_TCK")

#: name -> (preset, image side or None for the preset's variable shapes, target mean bytes or None, samples, batch size)
SIZES: dict[str, tuple[str, int | None, int | None, int, int]] = {
    "16k": ("imagenet", 160, 16_000, 4000, 32),
    "110k": ("imagenet", None, None, 2000, 32),
    "1m": ("imagenet", 1024, 1_000_000, 320, 8),
}


def _threads(pid: int) -> dict[int, float]:
    """CPU seconds of each thread of ``pid`` (utime + stime from /proc)."""
    out: dict[int, float] = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out[int(tid)] = (int(fields[11]) + int(fields[12])) / CLK
        except (OSError, IndexError, ValueError):
            pass
    return out


def _tree_cpu(proc: Any) -> float:
    import psutil

    total = 0.0
    try:
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return total


def _sample(root_pid: int, server_pid: int, stop: threading.Event, ticks: list[dict[str, Any]], svc: dict[str, Any]) -> None:
    """Every 0.1 s: time, service CPU (and per thread), server tree CPU, box busy CPU."""
    import psutil

    root = psutil.Process(root_pid)
    server = psutil.Process(server_pid)
    while not stop.is_set():
        if svc.get("pid") is None:
            try:
                for p in root.children(recursive=True):
                    try:
                        cmd = p.cmdline()
                        if "delibench.loaders.node" in cmd and "--fetch" not in cmd:
                            svc["pid"], svc["proc"] = p.pid, p
                            break
                    except psutil.NoSuchProcess:
                        pass
            except psutil.NoSuchProcess:
                break
        tick: dict[str, Any] = {"t": time.perf_counter(), "server": _tree_cpu(server)}
        box = psutil.cpu_times()
        tick["box_busy"] = box.user + box.system + getattr(box, "nice", 0) + getattr(box, "irq", 0) + getattr(box, "softirq", 0)
        if svc.get("proc") is not None:
            try:
                t = svc["proc"].cpu_times()
                tick["service"] = t.user + t.system
                tick["threads"] = _threads(svc["pid"])
                svc["last"] = tick["service"]
                svc["last_threads"] = tick["threads"]
                fetchers = svc.setdefault("fetchers", {})
                for child in svc["proc"].children():
                    if child.pid not in fetchers:
                        try:
                            if "--fetch" in child.cmdline():
                                fetchers[child.pid] = child
                        except psutil.NoSuchProcess:
                            pass
                cpu = svc.setdefault("fetcher_cpu", {})
                for pid, child in fetchers.items():
                    try:
                        t = child.cpu_times()
                        cpu[pid] = t.user + t.system
                    except psutil.NoSuchProcess:
                        pass
                tick["fetchers"] = sum(cpu.values())
            except psutil.NoSuchProcess:
                pass
        ticks.append(tick)
        stop.wait(0.1)


def _interval(ticks: list[dict[str, Any]]) -> tuple[int, int]:
    """Indices (first, last) of the span in which the server's CPU rate, smoothed over 0.5 s, is above a quarter of its peak."""
    rates = []
    for i in range(len(ticks)):
        j = max(0, i - 5)
        dt = ticks[i]["t"] - ticks[j]["t"]
        rates.append((ticks[i]["server"] - ticks[j]["server"]) / dt if dt > 0 else 0.0)
    peak = max(rates, default=0.0)
    busy = [i for i, r in enumerate(rates) if r > 0.25 * peak]
    if not busy:
        return 0, len(ticks) - 1
    # a smoothed rate at i covers (i-5, i]: the span starts 5 ticks before the first busy one
    return max(0, busy[0] - 5), busy[-1]


def _at(ticks: list[dict[str, Any]], i: int, key: str) -> float:
    """``key`` at tick i, or at the nearest tick that has it (the service appears a little after the run starts)."""
    for k in [*range(i, len(ticks)), *range(i - 1, -1, -1)]:
        if key in ticks[k]:
            return ticks[k][key]
    return 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".delibench/node-fetch-cpu"), help="datasets and testbed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where node-fetch-cpu.txt and .json go")
    parser.add_argument("--sizes", default="16k,110k,1m", help=f"comma-separated, of: {', '.join(SIZES)}")
    parser.add_argument("--nproc", default="4,2", help="comma-separated rank counts")
    parser.add_argument("--num-workers", type=int, default=1, help="decode workers per rank")
    parser.add_argument("--compute", default="emulated:1ms", help="--compute of every run (0 ms is refused)")
    parser.add_argument("--concurrency", type=int, default=32, help="deli concurrency (GETs in flight per local rank)")
    parser.add_argument("--prefetch-depth", default="all",
                        help="deli prefetch_depth: 'all' (each rank's whole share, so the walk never waits for the ranks to consume: the "
                             "fetch runs at the service's own pace) or a number (256 is deli's default: fetching gated by consumption)")
    parser.add_argument("--no-verify-run", action=argparse.BooleanOptionalAction, default=True,
                        help="one more run per size (largest --nproc) with deli verify=false: the sha256 check's share of the CPU")
    parser.add_argument("--fetch-processes", default="1",
                        help="comma-separated deli fetch_processes values to run side by side (1: the service's own loop GETs; N > 1: N fetch processes)")
    parser.add_argument("--name", default="node-fetch-cpu", help="result file stem under --out")
    parser.add_argument("--samples-scale", type=float, default=1.0, help="multiply every size's sample count")
    parser.add_argument("--demand-gbps", type=float, default=2.2, help="node demand (GB/s) to extrapolate to")
    parser.add_argument("--demand-sample-kb", type=float, default=110.0, help="mean sample size of that demand")
    args = parser.parse_args()

    import psutil

    from delibench.app.lab import Lab
    from delibench.storage import resolve

    from results_io import Transcript

    transcript = Transcript()
    say = transcript.say

    runs: list[dict[str, Any]] = []
    started = time.time()
    sizes = [s for s in args.sizes.split(",") if s]
    nprocs = [int(x) for x in args.nproc.split(",") if x]
    fps = [x.strip() for x in args.fetch_processes.split(",") if x.strip()]
    with Lab.start(args.dir, profile="local", services=("s3",)) as lab:
        direct = lab.route("s3", direct=True)
        options = direct.storage_options
        server_pid = lab.server_pid("s3")
        assert server_pid is not None
        env = dict(os.environ, AWS_ENDPOINT_URL=direct.endpoint_url, AWS_ACCESS_KEY_ID=options["key"],
                   AWS_SECRET_ACCESS_KEY=options["secret"], COLUMNS="200", NO_COLOR="1")
        say(f"node service fetch ceiling: SeaweedFS direct on loopback (no link emulator), {os.cpu_count()} CPUs shared by the "
            f"store, the service, the ranks and their decode workers; deli:scope=node, cache 2x the dataset, prefetch_depth {args.prefetch_depth} (per rank), concurrency "
            f"{args.concurrency} per rank, {args.compute} compute, 1 epoch, {args.num_workers} decode worker(s) per rank, shuffle order")
        for size in sizes:
            preset, side, mean, samples, batch = SIZES[size]
            samples = int(samples * args.samples_scale)
            name = f"data-{size}-{samples}"
            make = {"preset": preset, "seed": 0}
            if side:
                make["image_size"] = (side, side)
            if mean:
                make["mean_bytes"] = mean
            data = lab.dataset(args.dir / name, f"s3://node-fetch-cpu/{name}", samples=samples, reuse=True, log=print, **make)
            manifest = data.manifest
            total, n = manifest.total_bytes, len(manifest)
            loc = resolve(data.url, options)
            fs = loc.filesystem()
            keys = [loc.child(e.key) for e in manifest.samples]
            for i in range(0, len(keys), 100):  # warm the store's page cache: no run pays for its cold disk
                fs.cat(keys[i : i + 100])
            cache = f"{max(64 * 2**20, 2 * total) // 2**20}MiB"
            combos = [(p, True) for p in nprocs] + ([(max(nprocs), False)] if args.no_verify_run else [])
            for nproc, verify, fp in [(p, v, f) for p, v in combos for f in fps]:
                depth = -(-n // nproc) if args.prefetch_depth == "all" else int(args.prefetch_depth)
                out_dir = args.dir / "results" / f"{size}-n{nproc}{'' if verify else '-noverify'}-fp{fp}"
                cmd = [sys.executable, "-m", "delibench", "run", "--data", data.url,
                       "--loader", f"deli:cache_size={cache},scope=node,concurrency={args.concurrency},prefetch_depth={depth}" + f",fetch_processes={fp}" + ("" if verify else ",verify=false"), "--workload", "mnist-cnn",
                       "--compute", args.compute, "--batch-size", str(batch), "--num-workers", str(args.num_workers),
                       "--epochs", "1", "--warmup-steps", "1", "--nproc", str(nproc), "--json", "--no-diagnose", "--no-progress",
                       "--results-dir", str(out_dir)]
                t0 = time.perf_counter()
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
                stop, ticks, svc = threading.Event(), [], {}
                sampler = threading.Thread(target=_sample, args=(proc.pid, server_pid, stop, ticks, svc), daemon=True)
                sampler.start()
                out, err = proc.communicate()
                stop.set()
                sampler.join()
                wall = time.perf_counter() - t0
                if proc.returncode != 0:
                    say(f"{size} --nproc {nproc}: exit {proc.returncode}\n{err[-2000:]}")
                    continue
                doc = json.loads(out)
                m, ls = doc["metrics"], doc.get("loader_stats") or {}
                gets, nbytes = ls.get("requests_count") or 0, ls.get("bytes_read_remote") or 0
                a, b = _interval(ticks)
                dt = ticks[b]["t"] - ticks[a]["t"]
                main_cpu = _at(ticks, b, "service") - _at(ticks, a, "service")
                fetch_cpu = _at(ticks, b, "fetchers") - _at(ticks, a, "fetchers")
                svc_cpu = main_cpu + fetch_cpu
                server_cpu = ticks[b]["server"] - ticks[a]["server"]
                box_cpu = ticks[b]["box_busy"] - ticks[a]["box_busy"]
                th_b = next((t["threads"] for t in reversed(ticks[: b + 1]) if "threads" in t), {})
                th_a = next((t["threads"] for t in ticks[a:] if "threads" in t), {})
                per_thread = sorted(((th_b.get(k, 0) - th_a.get(k, 0)) for k in th_b), reverse=True)
                loop_share = per_thread[0] / main_cpu if per_thread and main_cpu > 0 else None
                gb = nbytes / 1e9
                row = {
                    "size": size, "nproc": nproc, "verify": verify, "fetch_processes": fp, "samples": n, "dataset_bytes": total, "mean_sample_bytes": total / n,
                    "batch_size": batch, "cache": cache, "prefetch_depth": depth, "gets": gets, "bytes": nbytes,
                    "fetch_interval_s": round(dt, 2), "samples_per_s": gets / dt, "mb_per_s": nbytes / 1e6 / dt,
                    "service_cpu_s": round(svc_cpu, 3), "service_cores": svc_cpu / dt,
                    "service_cpu_s_per_gb": svc_cpu / gb if gb else None, "service_cpu_s_per_1k_gets": svc_cpu / gets * 1000 if gets else None,
                    "service_busiest_thread_share": loop_share,
                    "main_cpu_s": round(main_cpu, 3), "main_cores": main_cpu / dt, "main_cpu_s_per_gb": main_cpu / gb if gb else None,
                    "main_loop_cpu_s": per_thread[0] if per_thread else None,
                    "main_loop_cpu_s_per_gb": per_thread[0] / gb if per_thread and gb else None,
                    "fetch_processes_cpu_s": round(fetch_cpu, 3), "fetch_processes_seen": len(svc.get("fetchers", {})),
                    "service_top_thread_cpu_s": [round(x, 3) for x in per_thread[:4]], "service_threads": len(th_b),
                    "service_cpu_s_whole_life": svc.get("last"),
                    "server_cpu_s": round(server_cpu, 3), "server_cores": server_cpu / dt,
                    "server_cpu_s_per_1k_gets": server_cpu / gets * 1000 if gets else None,
                    "box_cores_busy": box_cpu / dt,
                    "data_wait_fraction": m.get("data_wait_fraction"), "fetch_latency_s_p50": ls.get("fetch_latency_s_p50"),
                    "fetch_latency_s_p95": ls.get("fetch_latency_s_p95"), "late_samples": ls.get("late_samples"),
                    "run_throughput_samples_per_s": m.get("throughput_samples_per_s"), "wall_s": round(wall, 1),
                    "run_wall_s": m.get("wall_s"), "ticks": len(ticks),
                }
                runs.append(row)
                fp_text = "" if fp == "1" else (f" fetch_processes={fp}: main {main_cpu:.2f} s = {row['main_cores']:.2f} core "
                                                 f"({_f(row['main_cpu_s_per_gb'], 2)} s/GB, its loop thread {_f(row['main_loop_cpu_s_per_gb'], 2)} s/GB) "
                                                 f"+ {row['fetch_processes_seen']} fetch processes {fetch_cpu:.2f} s;")
                say(f"{size:>4s} (mean {total / n / 1e3:6.1f} KB, {n} samples, {total / 1e6:.0f} MB) --nproc {nproc}{'' if verify else ' verify=false'}{fp_text} "
                    f"{gets} GETs in a {dt:.1f} s fetch interval = {row['samples_per_s']:.0f} samples/s, {row['mb_per_s']:.1f} MB/s; "
                    f"service CPU {svc_cpu:.2f} s = {row['service_cores']:.2f} core ({_f(loop_share, 2)} of it on the busiest thread; top threads {', '.join(f'{x:.2f}' for x in per_thread[:3])} s), "
                    f"{_f(row['service_cpu_s_per_gb'], 2)} s/GB, {_f(row['service_cpu_s_per_1k_gets'], 3)} s/1k GETs "
                    f"(whole life {_f(svc.get('last'), 2)} s); SeaweedFS {row['server_cores']:.2f} core "
                    f"({_f(row['server_cpu_s_per_1k_gets'], 3)} s/1k GETs); box {row['box_cores_busy']:.2f} of {os.cpu_count()} cores busy; "
                    f"data-wait {_f(row['data_wait_fraction'])}, GET p50 {_f(row['fetch_latency_s_p50'] and row['fetch_latency_s_p50'] * 1e3, 1)} ms; "
                    f"run {wall:.0f} s")
    fit = _summary(runs, args, say)
    args.out.mkdir(parents=True, exist_ok=True)
    transcript.write(args.out / f"{args.name}.txt")
    (args.out / f"{args.name}.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "command": " ".join(sys.argv), "platform": platform.platform(),
        "cpus": os.cpu_count(), "load_avg_at_end": os.getloadavg(), "elapsed_s": round(time.time() - started, 1),
        "runs": runs, "fit": fit,
    }, indent=2) + "\n")


def _summary(runs: list[dict[str, Any]], args: argparse.Namespace, say: Any) -> dict[str, Any]:
    """Fit service CPU = a*GETs + b*GB over the runs; extrapolate to the demand (labelled)."""
    say("summary:")
    fits = {}
    for verify in (True, False):
        rows = [r for r in runs if r["gets"] and r["service_cpu_s"] > 0 and r["verify"] == verify and r["fetch_processes"] == "1"]
        if rows:
            say(f"  {'deli default (verify=true: sha256 of every sample)' if verify else 'verify=false'}:")
            fits["verify" if verify else "no_verify"] = _fit(rows, args, say)
    groups: dict[tuple[str, int, bool], list[dict[str, Any]]] = {}
    for r in runs:
        groups.setdefault((r["size"], r["nproc"], r["verify"]), []).append(r)
    for (size, nproc, verify), rows in groups.items():
        if len({r["fetch_processes"] for r in rows}) < 2:
            continue
        say(f"  {size} --nproc {nproc}{'' if verify else ' verify=false'}, side by side:")
        for r in rows:
            loop = r["main_loop_cpu_s_per_gb"] if r["fetch_processes"] != "1" else (r["service_top_thread_cpu_s"] or [0])[0] / (r["bytes"] / 1e9)
            say(f"    fetch_processes={r['fetch_processes']}: {r['mb_per_s']:.1f} MB/s ({r['samples_per_s']:.0f} GETs/s); service main process "
                f"{_f(r['main_cpu_s_per_gb'], 2)} s/GB (its event loop thread {loop:.2f} s/GB) + fetch processes "
                f"{r['fetch_processes_cpu_s'] / (r['bytes'] / 1e9):.2f} s/GB = {_f(r['service_cpu_s_per_gb'], 2)} s/GB in all; "
                f"SeaweedFS {r['server_cores']:.2f} core, box {r['box_cores_busy']:.2f} cores busy")
    return fits


def _fit(rows: list[dict[str, Any]], args: argparse.Namespace, say: Any) -> dict[str, Any] | None:
    say(f"  the service used at most {max(r['service_cores'] for r in rows):.2f} of a core while fetching; its busiest thread "
        f"(the event loop) held {min(r['service_busiest_thread_share'] or 0 for r in rows):.0%}-"
        f"{max(r['service_busiest_thread_share'] or 0 for r in rows):.0%} of its CPU")
    fit = None
    if len({r["size"] for r in rows}) >= 2:
        import numpy as np

        x = np.array([[r["gets"] / 1000, r["bytes"] / 1e9] for r in rows])
        y = np.array([r["service_cpu_s"] for r in rows])
        (a, b), *_ = np.linalg.lstsq(x, y, rcond=None)
        pred = x @ np.array([a, b])
        worst = float(np.max(np.abs(pred - y) / y))
        fit = {"cpu_s_per_1k_gets": float(a), "cpu_s_per_gb": float(b), "worst_relative_error": worst}
        say(f"  fit over {len(rows)} runs: service CPU = {a:.3f} s per 1,000 GETs + {b:.3f} s per GB (worst run off by {worst:.0%})")
        demand_gets = args.demand_gbps * 1e9 / (args.demand_sample_kb * 1e3)
        cores = a * demand_gets / 1000 + b * args.demand_gbps
        per_core_gets = 1000 / (a + b * args.demand_sample_kb * 1e3 / 1e9) if a + b > 0 else None
        fit.update(demand_gbps=args.demand_gbps, demand_sample_kb=args.demand_sample_kb, demand_gets_per_s=demand_gets,
                   demand_cores=cores, one_core_gets_per_s=per_core_gets,
                   one_core_gbps=per_core_gets * args.demand_sample_kb * 1e3 / 1e9 if per_core_gets else None)
        say(f"  EXTRAPOLATION (from these loopback, plain-HTTP, CPU-contended runs, not measured at that rate): "
            f"{args.demand_gbps} GB/s of {args.demand_sample_kb:.0f} KB samples = {demand_gets:,.0f} GETs/s would cost one "
            f"event loop {cores:.1f} cores; one core (the most one loop can use) runs out at ~{per_core_gets:,.0f} GETs/s "
            f"= ~{fit['one_core_gbps']:.2f} GB/s of {args.demand_sample_kb:.0f} KB samples")
    return fit


def _f(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


if __name__ == "__main__":
    main()
