"""deli's node service (``scope=node``) against one cache per rank (``scope=rank``), 4 ranks on one VM.

    .venv/bin/python benchmarks/node_scope.py                       # 4 ranks, cross-region link, 3 epochs
    .venv/bin/python benchmarks/node_scope.py --samples 800 --out /tmp/node-scope

Starts SeaweedFS (the lab, ``delibench.app.lab``) with a link emulator in front of it in this process
(``--profile``, default ``cross-region``), which counts every request that crosses it. Then runs
``delibench run --nproc 4`` (emulated compute, 1 decode worker per rank, shuffle order, 3 epochs) for:

* ``node``      deli scope=node, a node cache larger than the dataset;
* ``rank``      deli scope=rank, the same cache_size for each rank (today's deli);
* ``node-30``   deli scope=node with a node cache of 30 % of the dataset (default prefetch depth): its
  hit rate against the simulator's Belady figure over the union of the node's ranks,
  :func:`delibench.tuning.scale.replay_node_cache` with the dataset's real sizes. A hit is a lookup
  that needs no GET (the service's own count: the sample was cached, or a rank's window held it).
  The replay models what the service does: each rank looks samples up ``service_window`` ahead of
  its next batch, and what a window holds is outside the cache's budget until its batch is handed
  out, so the figure to meet is the windowed replay's. The cache-only replay (``window=0``) is
  printed beside it: the service beats it by the samples the windows let the cache keep at each
  epoch's end (about (ranks - 1) x batch size per epoch in lockstep);
* ``bucket``    no cache at all: the memory the same processes need without any cache.

Every object is read once directly (no link) before the first run, so no run pays for the store's
cold disk. Per run: GETs counted at the link (less the manifest reads) and by the loaders, the data-wait
fraction (and the slowest rank's), the cache hit rate, and the peak memory of the job: the sum of
every process's USS (ranks, their decode workers, the node service) sampled every 0.2 s, plus the
resident size of the node service's ``/dev/shm`` arena (an upper bound: arena pages only the service
maps are in its USS too); the peaks of the USS sum, of the arena and of the service's USS are given
apart as well. Writes ``--out``/node-scope.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any


def _shm_bytes() -> int:
    total = 0
    for name in os.listdir("/dev/shm"):
        if name.startswith("delibench-node-"):
            try:
                total += os.stat(os.path.join("/dev/shm", name)).st_blocks * 512
            except OSError:
                pass
    return total


def _sample_memory(pid: int, stop: threading.Event, peak: dict[str, int]) -> None:
    import psutil

    try:
        root = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return
    while not stop.is_set():
        uss = service = 0
        try:
            procs = root.children(recursive=True)
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                mem = p.memory_full_info().uss
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            uss += mem
            try:
                if "delibench.loaders.node" in " ".join(p.cmdline()):
                    service += mem
                    times = p.cpu_times()
                    peak["service_cpu_s"] = times.user + times.system  # one event loop: does one thread keep up?
                    peak["service_threads"] = p.num_threads()
            except psutil.NoSuchProcess:
                pass
        shm = _shm_bytes()
        for key, value in (("total", uss + shm), ("uss", uss), ("shm", shm), ("service_uss", service)):
            peak[key] = max(peak.get(key, 0), value)
        stop.wait(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".delibench/node-scope-bench"), help="dataset and testbed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where node-scope.txt and .json go")
    parser.add_argument("--profile", default="cross-region")
    parser.add_argument("--nproc", type=int, default=4)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--mean-bytes", type=int, default=60000)
    parser.add_argument("--image-size", type=int, default=224, help="square JPEGs of this side")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--step", default="emulated:60ms", help="--compute of every run")
    parser.add_argument("--cache-size", default="256MiB", help="the large cache (node: per node; rank: per rank)")
    parser.add_argument("--small-fraction", type=float, default=0.3)
    parser.add_argument("--small-depth", type=int, default=None,
                        help="prefetch_depth of the node-30 run (default: deli's, 256); the replay is told the same window")
    parser.add_argument("--skip", default="", help="comma-separated runs to leave out")
    parser.add_argument("--repeats", type=int, default=2, help="node and rank runs each, alternating")
    args = parser.parse_args()

    from delibench.app.lab import Lab
    from delibench.loaders.sampler import epoch_order
    from delibench.testbed.link import LinkEmulator

    from results_io import Transcript

    transcript = Transcript()
    say = transcript.say

    results: dict[str, Any] = {}
    started = time.time()
    with Lab.start(args.dir, profile="local", services=("s3",)) as lab:
        name = f"data-{args.samples}-{args.image_size}-{args.mean_bytes}"
        data = lab.dataset(args.dir / name, f"s3://node-scope/{name}", samples=args.samples, preset="imagenet",
                           image_size=(args.image_size, args.image_size), mean_bytes=args.mean_bytes, seed=0, reuse=True, log=print)
        manifest = data.manifest
        direct = lab.route("s3", direct=True)
        host, port = direct.endpoint_url.split("//", 1)[1].split(":")
        link = LinkEmulator(host, int(port), args.profile).start()
        options = direct.storage_options
        env = dict(os.environ, AWS_ENDPOINT_URL=link.endpoint_url, AWS_ACCESS_KEY_ID=options["key"],
                   AWS_SECRET_ACCESS_KEY=options["secret"], DELIBENCH_LINK_PROFILE=link.profile.name,
                   COLUMNS="200", NO_COLOR="1")
        # Read every object once, directly (no link), so that no measured run pays for the store's
        # cold disk: without this the first run of a set was the slowest whichever scope it was.
        from delibench.storage import resolve

        loc = resolve(data.url, options)
        fs = loc.filesystem()
        keys = [loc.child(e.key) for e in manifest.samples]
        for i in range(0, len(keys), 200):
            fs.cat(keys[i : i + 200])
        total = manifest.total_bytes
        small = int(args.small_fraction * total)
        n = len(manifest)
        say(f"{link.profile.name} link; {n} samples, {total / 1e6:.1f} MB (mean {total / n / 1e3:.1f} KB); --nproc {args.nproc}, "
            f"{args.step} per batch of {args.batch_size}, 1 decode worker per rank, shuffle order, {args.epochs} epochs; "
            f"{os.cpu_count()} CPUs")
        runs = [(name, loader) for _ in range(args.repeats) for name, loader in (
            ("node", f"deli:cache_size={args.cache_size},scope=node"),
            ("rank", f"deli:cache_size={args.cache_size},scope=rank"),
        )] + [("node-30", f"deli:cache_size={small},scope=node" + (f",prefetch_depth={args.small_depth}" if args.small_depth else "")),
           ("bucket", "bucket")]
        skip = set(filter(None, args.skip.split(",")))
        for name, loader in runs:
            if name in skip:
                continue
            before = link.stats().requests
            out_dir = args.dir / "results" / name
            cmd = [sys.executable, "-m", "delibench", "run", "--data", data.url, "--loader", loader, "--workload", "mnist-cnn",
                   "--compute", args.step, "--batch-size", str(args.batch_size), "--num-workers", "1", "--epochs", str(args.epochs),
                   "--warmup-steps", "2", "--nproc", str(args.nproc), "--json", "--no-diagnose", "--no-progress",
                   "--results-dir", str(out_dir)]
            t0 = time.perf_counter()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
            stop, peak = threading.Event(), {}
            sampler = threading.Thread(target=_sample_memory, args=(proc.pid, stop, peak), daemon=True)
            sampler.start()
            out, err = proc.communicate()
            stop.set()
            sampler.join()
            wall = time.perf_counter() - t0
            if proc.returncode != 0:
                say(f"{name}: exit {proc.returncode}\n{err[-2000:]}")
                continue
            doc = json.loads(out)
            m, ls = doc["metrics"], doc.get("loader_stats") or {}
            link_gets = link.stats().requests - before - args.nproc  # each rank reads the manifest once
            hits, misses = ls.get("cache_hits", 0), ls.get("cache_misses", 0)
            per_rank_peaks = [(r.get("loader_stats") or {}).get("cache_peak_bytes", 0) for r in m.get("ranks", [])]
            row = {
                # the bytes the caches held at their peak: the node's arena in /dev/shm, or every rank's own cache
                "cache_bytes": peak.get("shm") if "scope=node" in loader else sum(per_rank_peaks),
                "loader": loader, "link_gets": link_gets, "loader_gets": ls.get("requests_count"),
                "data_wait_fraction": m.get("data_wait_fraction"), "slowest_rank_wait_fraction": m.get("slowest_rank_wait_fraction"),
                "wait_s_per_epoch": _per_epoch_wait(m), "hit_rate": hits / (hits + misses) if hits + misses else None,
                "peak_bytes": peak.get("total"), "peak_uss_bytes": peak.get("uss"), "peak_shm_bytes": peak.get("shm"),
                "service_uss_bytes": peak.get("service_uss"), "service_cpu_s": peak.get("service_cpu_s"),
                "wall_s": round(wall, 1), "samples": m.get("total_samples"),
                "invalid": [i["code"] for i in doc.get("issues", []) if i["severity"] == "invalid"],
            }
            results.setdefault(name, []).append(row)
            say(f"{name:8s} GETs at link {link_gets:6d} (loader {row['loader_gets']}), data-wait {_f(row['data_wait_fraction'])} "
                f"(slowest rank {_f(row['slowest_rank_wait_fraction'])}), hit rate {_f(row['hit_rate'])}, cache held "
                f"{_mb(row['cache_bytes'])}, peak memory "
                f"{_mb(row['peak_bytes'])} (USS {_mb(row['peak_uss_bytes'])} + shm {_mb(row['peak_shm_bytes'])}; service USS "
                f"{_mb(row['service_uss_bytes'])}, service CPU {_f(row['service_cpu_s'])} s), {row['wall_s']} s{' INVALID ' + str(row['invalid']) if row['invalid'] else ''}")
        link.stop()
        if "node-30" in results:
            results["node-30"] = results["node-30"][0]
            from delibench.loaders.deli import DeliOptions
            from delibench.loaders.node import service_window
            from delibench.tuning.scale import replay_node_cache

            window = service_window(DeliOptions(prefetch_depth=args.small_depth), args.batch_size)
            orders = [[epoch_order(n, e, 0, r, args.nproc) for e in range(args.epochs + 1)] for r in range(args.nproc)]
            sizes = [s.size_bytes for s in manifest.samples]

            def replay(window: int, batch: int) -> float:
                misses, lookups = replay_node_cache(orders, sizes, small, "belady", window=window, batch_size=batch)
                return 1 - sum(misses) / sum(lookups)

            simulated, cache_only = replay(window, args.batch_size), replay(0, 1)
            measured = results["node-30"]["hit_rate"]
            results["node-30"].update(simulated_hit_rate=simulated, simulated_window=window, simulated_hit_rate_cache_only=cache_only,
                                      points_apart=round(abs(measured - simulated) * 100, 2))
            say(f"node-30: cache {small / 1e6:.1f} MB ({args.small_fraction:.0%}); hit rate {_f(measured)} measured vs {_f(simulated)} "
                f"simulated (Belady over the node's union, each rank's window of {window} samples: "
                f"tuning.scale.replay_node_cache(window={window}, batch_size={args.batch_size})): {abs(measured - simulated) * 100:.1f} points "
                f"apart; the cache alone (window=0) replays {_f(cache_only)}")
    if "node" in results and "rank" in results:
        def med(name: str, key: str) -> float:
            return statistics.median(r[key] for r in results[name])

        base = results["bucket"][0]["peak_bytes"] if results.get("bucket") else None
        node_gets, rank_gets = med("node", "link_gets"), med("rank", "link_gets")
        say(f"summary (median of {args.repeats} runs each):")
        say(f"  GETs: node {node_gets:.0f} = {node_gets / n:.2f}x the dataset; rank {rank_gets:.0f} = {rank_gets / n:.2f}x "
            f"({rank_gets / max(1, node_gets):.2f}x node's)")
        say(f"  cache held: node {_mb(med('node', 'cache_bytes'))} (one cache: the dataset, {_mb(total)}, in /dev/shm) vs rank "
            f"{_mb(med('rank', 'cache_bytes'))} (4 caches); node service process USS {_mb(med('node', 'service_uss_bytes'))}")
        if base:
            say(f"  peak memory of the job (USS sum + arena): node {_mb(med('node', 'peak_bytes'))}, rank {_mb(med('rank', 'peak_bytes'))}, "
                f"bucket (no cache) {_mb(base)}")
        say(f"  data-wait: node {_f(med('node', 'data_wait_fraction'))} vs rank {_f(med('rank', 'data_wait_fraction'))}; slowest rank "
            f"{_f(med('node', 'slowest_rank_wait_fraction'))} vs {_f(med('rank', 'slowest_rank_wait_fraction'))}")
    args.out.mkdir(parents=True, exist_ok=True)
    transcript.write(args.out / "node-scope.txt")
    (args.out / "node-scope.json").write_text(json.dumps({
        "args": {k: str(v) for k, v in vars(args).items()}, "samples": n, "dataset_bytes": total,
        "platform": platform.platform(), "cpus": os.cpu_count(), "elapsed_s": round(time.time() - started, 1), "runs": results,
    }, indent=2) + "\n")


def _per_epoch_wait(metrics: dict[str, Any]) -> list[float]:
    per: dict[int, float] = {}
    for e in metrics.get("epochs", []):
        per[e["epoch"]] = max(per.get(e["epoch"], 0.0), e.get("wait_s", 0.0))  # the slowest rank's
    return [round(per[k], 3) for k in sorted(per)]


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def _mb(x: int | None) -> str:
    return "-" if x is None else f"{x / 2**20:.0f} MiB"


if __name__ == "__main__":
    main()
