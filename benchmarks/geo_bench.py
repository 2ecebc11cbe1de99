"""Geo benchmark: allreduce vs asgd-ga vs ma across two regions joined by a 70 ms, 100 MB/s WAN link.

Runs real multi-process training (3 gloo workers: 2 in ``us-east``, 1 in ``eu-west``) with each
step padded to 100 ms (an emulated accelerator) and prints per strategy: wall time, speed-up,
sync time, cross-region bytes, cost (accelerator time at list price + egress) and held-out
accuracy, plus the simple model ``steps * (step_time + rtt + bytes_per_link / bandwidth)`` for
allreduce as a check of the emulation.

    .venv/bin/python benchmarks/geo_bench.py [--steps 60] [--hidden 1024] [--json]
"""

from __future__ import annotations

import argparse
import json

from delibench.cli.geo import _print_results
from delibench.cli.output import console
from delibench.geo.regions import parse_regions
from delibench.geo.train import GeoRunSpec, run_geo

RTT_S = 0.070
BANDWIDTH_BYTES_PER_S = 100e6
STEP_TIME_S = 0.100

REGIONS = parse_regions(
    {
        "regions": {
            "us-east": {"accelerators": {"count": 8, "type": "a100", "usd_per_hour": 4.10, "step_time_s": STEP_TIME_S}},
            "eu-west": {"accelerators": {"count": 4, "type": "a100", "usd_per_hour": 3.67, "step_time_s": STEP_TIME_S}},
        },
        "links": [{"between": ["us-east", "eu-west"], "rtt_s": RTT_S, "bandwidth_bytes_per_s": BANDWIDTH_BYTES_PER_S, "egress_usd_per_gb": 0.02}],
    },
    source="geo_bench",
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--period", type=int, default=8)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--staleness", type=int, default=1)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workers = (("us-east", 2), ("eu-west", 1))
    runs = [
        ("allreduce", {}),
        ("asgd-ga", {"accum": args.accum, "staleness": args.staleness}),
        ("asgd-ga", {"accum": args.accum, "staleness": 0}),
        ("ma", {"period": args.period}),
    ]
    results = [run_geo(REGIONS, GeoRunSpec(strategy=s, workers=workers, steps=args.steps, hidden=args.hidden, **kw), timeout_s=600) for s, kw in runs]
    if args.json:
        print(json.dumps([r.to_dict() for r in results], indent=2))
        return
    _print_results(results)
    base = results[0]
    per_link = base.link_bytes["us-east->eu-west"] / base.cross_region_collectives
    predicted = args.steps * (STEP_TIME_S + RTT_S + per_link / BANDWIDTH_BYTES_PER_S)
    console.print(
        f"{base.param_count:,} parameters; WAN {RTT_S * 1000:.0f} ms RTT, {BANDWIDTH_BYTES_PER_S / 1e6:.0f} MB/s "
        f"(communication-level emulation). allreduce wall {base.wall_s:.2f} s vs model "
        f"steps*(step+rtt+bytes/bw) = {predicted:.2f} s."
    )


if __name__ == "__main__":
    main()
