"""deli over WebDataset tar shards vs deli over per-sample objects vs the webdataset peer, behind a WAN link.

    .venv/bin/python benchmarks/shards.py                                  # cross-region, 640 x ~110 KB, 3 epochs
    .venv/bin/python benchmarks/shards.py --samples 320 --epochs 2 --out /tmp/shards

Starts SeaweedFS behind the link emulator (``--profile``, default ``cross-region``: 70 ms RTT,
100 MB/s), makes a dataset with both layouts (an ImageFolder tree and WebDataset shards of
``--shard-samples``; ``push`` records each sample's shard and offset), and measures, epochs
interleaved, on the ResNet-50 input pipeline with an emulated accelerator:

* ``deli@objects``  — deli reading one object per sample (the usual layout);
* ``deli@members``  — deli reading each sample as a ranged GET of its shard (``source=members``);
* ``deli@shards``   — deli fetching whole shards and slicing samples out (``source=shards``), with
  a shard buffer as big as the cache budget;
* ``deli@members-all`` and ``deli@shards-all`` — the same with a budget that holds the whole
  dataset (whole-shard caching's best case; the shard buffer doubles its memory);
* ``webdataset``    — the peer: streams its share of a shuffled shard list, samples in shard order.

The deli variants share one byte budget (``--cache-fraction`` of the dataset), prefetch depth,
concurrency and Belady eviction. Each row gives the steady-state data-wait fraction, the wait per
epoch, the GETs and bytes the loader counted (the webdataset peer counts one GET per shard opened
and the member bytes it decoded), and the cache hit rate. Writes ``--out``/shards.{txt,json}.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path
from typing import Any


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".delibench/shards-bench"), help="dataset and testbed")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results"), help="where shards.txt and shards.json go")
    parser.add_argument("--profile", default="cross-region")
    parser.add_argument("--samples", type=int, default=640)
    parser.add_argument("--shard-samples", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--step-time", type=float, default=0.25, help="emulated accelerator seconds per batch of 32")
    parser.add_argument("--cache-fraction", type=float, default=0.25, help="deli's byte budget as a share of the dataset")
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--num-workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=1, help="measure every loader this many times (the table shows each)")
    args = parser.parse_args()

    from delibench.app.lab import Lab
    from delibench.app.session import compare
    from delibench.records import ComputeSpec, LoaderSpec

    lines: list[str] = []

    def say(text: str) -> None:
        print(text, flush=True)
        lines.append(text)

    started = time.time()
    with Lab.start(args.dir, profile=args.profile, services=("s3",)) as lab:
        data = lab.dataset(args.dir / f"data-{args.samples}-{args.shard_samples}", "s3://shards-bench/data", samples=args.samples,
                           layout="both", shard_samples=args.shard_samples, seed=0, reuse=True, log=print)
        manifest = data.manifest
        route = lab.route("s3")
        total = manifest.total_bytes
        shard_bytes = sum(s.size_bytes for s in manifest.shards)
        budget = int(args.cache_fraction * total)
        say(f"{route.profile.name} ({route.profile.summary()}); {len(manifest)} samples, {total / 1e6:.1f} MB, "
            f"{len(manifest.shards)} shards of {args.shard_samples} ({shard_bytes / 1e6:.1f} MB); member index recorded: "
            f"{manifest.has_member_index}")
        say(f"ResNet-50 input pipeline, {args.num_workers} decode workers, emulated step {args.step_time:g} s per batch of 32, "
            f"{args.epochs} epochs interleaved; deli budget {budget / 1e6:.1f} MB ({args.cache_fraction:.0%}), "
            f"prefetch_depth 256, concurrency {args.concurrency}, eviction belady")
        common = {"cache_size": budget, "prefetch_depth": 256, "concurrency": args.concurrency}
        loaders = [
            LoaderSpec("deli", {**common, "source": "objects"}, label="deli@objects"),
            LoaderSpec("deli", {**common, "source": "members"}, label="deli@members"),
            LoaderSpec("deli", {**common, "source": "shards"}, label="deli@shards"),
            LoaderSpec("deli", {**common, "source": "members", "cache_size": total}, label="deli@members-all"),
            LoaderSpec("deli", {**common, "source": "shards", "cache_size": shard_bytes}, label="deli@shards-all"),
            LoaderSpec("webdataset", label="webdataset"),
        ]
        specs = [
            route.spec(data.url, workload="resnet50", batch_size=32, num_workers=args.num_workers, epochs=args.epochs,
                       seed=0, loader=loader, compute=ComputeSpec("emulated", args.step_time))
            for loader in loaders
        ]
        runs = []
        for repeat in range(args.repeats):
            print(f"repeat {repeat + 1} of {args.repeats}", flush=True)
            runs.append((repeat, compare(specs, write=False, price=False, manifests={data.url: manifest})))
        probe = _latency_probe(lab.route("s3", direct=True), data.url, manifest)

    rows: list[dict[str, Any]] = []
    for (repeat, records), spec in ((run, spec) for run in runs for spec in specs):
        record = records[specs.index(spec)]
        m, s = record.metrics, record.loader_stats
        epochs = sorted((e for e in m.epochs if e.rank == 0), key=lambda e: e.epoch)
        lookups = (s.cache_hits or 0) + (s.cache_misses or 0)
        rows.append({
            "repeat": repeat,
            "loader": spec.loader.label,
            "options": spec.loader.options,
            "status": record.status,
            "data_wait_fraction": m.data_wait_fraction,
            "wait_s_per_epoch": [round(e.wait_s, 3) for e in epochs],
            "epoch_wall_s": [round(e.wall_s, 3) for e in epochs],
            "gets": s.requests_count,
            "gets_per_epoch": s.requests_count / args.epochs,
            "bytes_read": s.bytes_read_remote,
            "bytes_per_epoch_over_dataset": s.bytes_read_remote / args.epochs / total,
            "cache_hit_rate": (s.cache_hits or 0) / lookups if lookups else None,
            "fetch_latency_s_p50": s.fetch_latency_s_p50,
            "throughput_samples_per_s": m.throughput_samples_per_s,
        })
    say("")
    say(f"{'loader':<17} {'run':>3} {'wait frac':>9} {'wait s per epoch':>24} {'GETs':>6} {'GETs/ep':>8} {'MB read':>8} {'x data/ep':>9} {'hits':>5} {'p50 GET':>8}")
    for r in rows:
        waits = " ".join(f"{w:.1f}" for w in r["wait_s_per_epoch"])
        hits = "-" if r["cache_hit_rate"] is None else f"{r['cache_hit_rate']:.0%}"
        p50 = "-" if r["fetch_latency_s_p50"] is None else f"{r['fetch_latency_s_p50'] * 1000:.0f}ms"
        say(f"{r['loader']:<17} {r['repeat'] + 1:>3} {r['data_wait_fraction']:>9.3f} {waits:>24} {r['gets']:>6} {r['gets_per_epoch']:>8.0f} "
            f"{r['bytes_read'] / 1e6:>8.1f} {r['bytes_per_epoch_over_dataset']:>9.2f} {hits:>5} {p50:>8}")
    say("")
    say("GETs and bytes are what each loader counted: deli counts every request it sent (retries included) and the bytes")
    say("received; the webdataset peer counts one GET per shard it opened and the image bytes it decoded (its reads")
    say("of a whole shard also carry the .cls members and tar headers). 'x data/ep' is bytes per epoch / dataset bytes.")
    say("")
    say("median data-wait fraction over the runs: " + ", ".join(
        f"{label} {statistics.median(r['data_wait_fraction'] for r in rows if r['loader'] == label):.3f}"
        for label in dict.fromkeys(r["loader"] for r in rows)))
    say(f"one GET at a time, no link (the store alone), median of {probe['count']} each: object {probe['object_ms']:.1f} ms, "
        f"ranged member of a shard {probe['member_ms']:.1f} ms")
    say(f"took {time.time() - started:.0f} s on {platform.node()} ({platform.processor() or platform.machine()})")

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "shards.txt").write_text("\n".join(lines) + "\n")
    doc = {"command": "benchmarks/shards.py", "args": {k: str(v) for k, v in vars(args).items()},
           "profile": route.profile.name, "samples": len(manifest), "dataset_bytes": total, "shards": len(manifest.shards),
           "shard_bytes": shard_bytes, "cache_budget_bytes": budget, "direct_get_probe": probe, "rows": rows}
    (args.out / "shards.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out / 'shards.txt'} and {args.out / 'shards.json'}")


def _latency_probe(route: Any, url: str, manifest: Any, count: int = 150) -> dict[str, Any]:
    """Median time of one GET of a sample as its own object and as a ranged read of its shard, one
    request at a time, alternating, straight to the store (no link emulator): what the store adds."""
    from delibench.loaders.source import SampleSource

    sources = {name: SampleSource(url, manifest, route.storage_options, lean_http=True, members=(name == "member"))
               for name in ("object", "member")}
    times: dict[str, list[float]] = {name: [] for name in sources}
    try:
        for i in range(min(count, len(manifest))):
            for name, source in sources.items():
                t = time.perf_counter()
                source.fetch_sync(i)
                times[name].append(time.perf_counter() - t)
    finally:
        for source in sources.values():
            source.close()
    return {"count": len(times["object"]), **{f"{n}_ms": statistics.median(v) * 1000 for n, v in times.items()}}


if __name__ == "__main__":
    main()
