"""Where a bandwidth-bound epoch's time goes: time to the first batch, the link's busy window, the wait per step.

    .venv/bin/python benchmarks/first_batch.py                       # 320 x ~1 MB, cross-continent at 25 MB/s
    .venv/bin/python benchmarks/first_batch.py --concurrency 8,16,64 --samples 640

Starts SeaweedFS behind the link emulator, generates and pushes the dataset (reused from ``--dir``),
then runs the deli loader alone for two epochs per concurrency setting (emulated accelerator,
2 decode workers) and prints, per epoch: the time to the first batch, the epoch's total, when the
first and last GETs of the run's window completed, the rate the link delivered between them, and
the loop's wait at every step. Against ``bytes / bandwidth`` this shows what an epoch loses at its
head (connections, first round trips, the first batch's decode) and its tail (the last batch's
decode and step).

To compare with the code before the batch feed (bytes in the DataLoader's sampler items), run
the same command on a checkout of commit 8be03de: there the first batch waited for
``prefetch_factor x num_workers`` later batches (6.8 s vs 2.7 s at concurrency 16).
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any


def _instrument_fetches(arrivals: list[tuple[float, int]]) -> None:
    """Record (completion time, bytes) of every sample GET of this process."""
    from delibench.loaders import source

    real = source.SampleSource.fetch

    async def fetch(self: Any, idx: int, *args: Any, **kwargs: Any) -> bytes:
        data = await real(self, idx, *args, **kwargs)
        arrivals.append((time.perf_counter(), len(data)))
        return data

    source.SampleSource.fetch = fetch  # type: ignore[method-assign]


def _report(name: str, steps: list[tuple[int, float, float, float]], arrivals: list[tuple[float, int]]) -> None:
    for epoch in sorted({s[0] for s in steps}):
        mine = [s for s in steps if s[0] == epoch]
        end = mine[-1][3]
        first_wait = mine[0][1]
        start = mine[0][3] - mine[0][2] - first_wait
        window = [a for a in arrivals if start <= a[0] <= end]
        line = f"  {name} epoch {epoch}: total {end - start:6.2f} s, first batch {first_wait:5.2f} s"
        if len(window) > 1:
            mb = sum(a[1] for a in window) / 1e6
            span = window[-1][0] - window[0][0]
            line += (f" | {len(window)} GETs, {mb:.0f} MB, first done +{window[0][0] - start:.2f} s, "
                     f"last +{window[-1][0] - start:.2f} s ({mb / span:.1f} MB/s), after the last {end - window[-1][0]:.2f} s")
        print(line)
        print("    wait per step (s): " + " ".join(f"{s[1]:.2f}" for s in mine))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dir", type=Path, default=Path(".delibench/first-batch"), help="dataset and testbed")
    parser.add_argument("--profile", default="cross-continent")
    parser.add_argument("--bandwidth", default="25MB", help="aggregate link bandwidth")
    parser.add_argument("--samples", type=int, default=320)
    parser.add_argument("--size", type=int, default=1_000_000, help="mean JPEG bytes")
    parser.add_argument("--step-time", type=float, default=0.25, help="emulated accelerator seconds per batch of 32")
    parser.add_argument("--concurrency", default="16,64", help="deli concurrency settings to run, comma-separated")
    parser.add_argument("--cache-fraction", type=float, default=0.25)
    args = parser.parse_args()

    from delibench.app.lab import Lab
    from delibench.app.session import compare
    from delibench.records import ComputeSpec, LoaderSpec
    from delibench.testbed.profiles import with_overrides

    profile = with_overrides(args.profile, bandwidth=args.bandwidth)
    arrivals: list[tuple[float, int]] = []
    with Lab.start(args.dir, profile=profile, services=("s3",), detached=False) as lab:
        data = lab.dataset(args.dir / f"data-{args.samples}x{args.size}", "s3://first-batch/data", samples=args.samples,
                           mean_bytes=args.size, seed=0, overwrite=True, log=print)
        manifest = data.manifest
        route = lab.route("s3")
        _instrument_fetches(arrivals)
        print(f"{profile.name} ({profile.summary()}): {len(manifest)} samples, "
              f"{manifest.total_bytes / 1e6:.0f} MB per epoch, {manifest.total_bytes / profile.bandwidth_bytes_per_s:.1f} s "
              f"of link time at full bandwidth; step {args.step_time:g} s per batch of 32")
        for concurrency in (int(c) for c in args.concurrency.split(",")):
            steps: list[tuple[int, float, float, float]] = []
            spec = route.spec(
                data.url, workload="resnet18", batch_size=32, num_workers=2, epochs=2, warmup_steps=0, seed=0,
                loader=LoaderSpec("deli", {"cache_size": int(args.cache_fraction * manifest.total_bytes),
                                           "prefetch_depth": 512, "concurrency": concurrency}),
                compute=ComputeSpec("emulated", args.step_time),
            )
            compare([spec], write=False, price=False,
                    on_step=lambda _n, s: steps.append((s.epoch, s.wait_s, s.compute_s, time.perf_counter())))
            _report(f"deli concurrency {concurrency}", steps, arrivals)
            arrivals.clear()

if __name__ == "__main__":
    main()
