"""The benchmark's output: a plain-text table per cell, from a result or its saved JSON."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

from delibench.app.bench.bound import wait_reduction_at_bound
from delibench.app.bench.matrix import PEER_VARIANTS, peer_family

if TYPE_CHECKING:
    from delibench.app.bench.cell import CellResult

__all__ = ["format_peer_table", "format_table"]


def format_table(result: CellResult | dict[str, Any]) -> str:
    """A plain-text table of one cell: throughput, wait, efficiency, reduction, ratio vs best peer."""
    data = result if isinstance(result, dict) else result.to_json()
    figs = data["figures"]
    by = {f["loader"]: f for f in figs}
    peer_rates = [f["throughput_per_s"] for f in figs if peer_family(f["loader"])]
    best_peer = max(peer_rates) if peer_rates else None
    cell = data["cell"]
    bounds = data["bounds"]
    lines = [
        f"{cell['name']} [{cell['regime']}]  bound per epoch: "
        + ", ".join(f"e{b['epoch']} {b['samples_per_s']:.0f}/s ({b['binds']}, miss {b['miss_rate']:.2f})" for b in bounds),
        f"  accel {bounds[0]['accelerator_per_s']:.0f}/s  cpu {bounds[0]['cpu_per_s']:.0f}/s  "
        f"link {_num(bounds[0]['link_per_s'])}/s  store {_num(bounds[0]['store_per_s'])}/s (cold)  "
        f"no-fetch pipeline " + "/".join(_num(b.get("pipeline_per_s")) for b in bounds) + "/s  "
        f"ceilings: " + ", ".join(f"{c['endpoint']} {c['objects_per_s']:.0f} obj/s" for c in data["ceilings"])
        + f"  load {data['load_average'][0]:.1f}",
        f"  per epoch, on top of the fetch terms: fill {bounds[0].get('fill_s', 0.0):.2f} s before the first byte "
        f"(later epochs {bounds[-1].get('fill_s', 0.0):.2f} s), drain {bounds[0].get('drain_s', 0.0):.2f} s after the last",
        f"  {'loader':18s} {'samples/s':>9s} {'wait':>6s} {'eff':>6s} {'wait-red':>8s} {'red@bound':>9s} {'stall-red':>9s} "
        f"{'vs peer':>7s} {'cpu ms/smp':>10s} {'GETs':>6s}",
    ]
    bucket = by.get("bucket")
    for f in figs:
        red = f["wait_reduction_vs_bucket"]
        reachable = wait_reduction_at_bound(f, bucket)
        stall = f.get("fetch_stall_removed")
        ratio = f["throughput_per_s"] / best_peer if best_peer else None
        cpu = sum((f["cpu_s_per_sample"] or {}).get(k, 0.0) for k in ("main", "workers")) * 1000
        lines.append(
            f"  {f['loader'] + ('*' if f['sliced'] else ''):18s} {f['throughput_per_s']:9.1f} {f['wait_fraction']:6.1%} "
            f"{f['efficiency']:6.1%} {('' if red is None else f'{red:.1%}'):>8s} "
            f"{('' if reachable is None else f'{reachable:.1%}'):>9s} {('' if stall is None else f'{stall:.1%}'):>9s} "
            f"{('' if ratio is None else f'{ratio:.2f}x'):>7s} "
            f"{cpu:10.2f} {f['requests']:6d}"
        )
    mem = data.get("memory") or {}
    if mem:
        lines.append(
            f"  memory (deli alone): peak {mem['peak_rss_bytes'] / 2**20:.0f} MiB, baseline {mem['baseline_rss_bytes'] / 2**20:.0f} MiB, "
            f"cache {mem['cache_size_bytes'] / 2**20:.0f} MiB (peak used {mem['cache_peak_bytes'] / 2**20:.0f}), "
            f"allowed {(mem['cache_size_bytes'] + mem['fixed_overhead_allowed_bytes']) / 2**20:.0f} MiB: "
            + ("within" if mem["within_budget"] else "OVER")
        )
    lines.extend(format_peer_table(data))
    for note in data.get("notes", []):
        lines.append(f"  note: {note}")
    return "\n".join(lines)


def format_peer_table(data: dict[str, Any]) -> list[str]:
    """The peer table of a cell: every peer configuration that ran, grouped by project with its
    best (highest throughput) first, and deli's ratios against each; empty without deli or peers.

    ``deli x`` is deli's throughput over the peer's; ``wait /`` the peer's data wait per sample
    over deli's (how many times longer the accelerator waits on that peer).
    """
    figs = data["figures"]
    deli = next((f for f in figs if f["loader"] == "deli"), None)
    peers = [f for f in figs if peer_family(f["loader"])]
    if deli is None or not peers:
        return []
    families: dict[str, list[dict[str, Any]]] = {}
    for f in sorted(peers, key=lambda f: -f["throughput_per_s"]):
        families.setdefault(peer_family(f["loader"]) or "", []).append(f)
    lines = [
        "  peers, each project's best configuration first (deli x: deli's samples/s over the peer's; "
        "wait /: the peer's wait per sample over deli's)",
        f"  {'peer':30s} {'samples/s':>9s} {'wait':>6s} {'ms/smp':>7s} {'warm-up':>7s} {'deli x':>7s} {'wait /':>7s}  configuration",
    ]
    deli_wait = _wait_per_sample(deli)
    for family in sorted(families, key=lambda k: -families[k][0]["throughput_per_s"]):
        for rank, f in enumerate(families[family]):
            ratio = deli["throughput_per_s"] / f["throughput_per_s"] if f["throughput_per_s"] else math.inf
            wait_ratio = _wait_per_sample(f) / deli_wait if deli_wait > 0 else math.inf
            how = PEER_VARIANTS[f["loader"]].how if f["loader"] in PEER_VARIANTS else ""
            name = ("best " if rank == 0 else "  ") + f["loader"] + ("*" if f.get("sliced") else "")
            lines.append(
                f"  {name:30s} {f['throughput_per_s']:9.1f} {f['wait_fraction']:6.1%} {_wait_per_sample(f) * 1000:7.2f} "
                f"{f.get('warmup_s', 0.0):6.1f}s {_ratio(ratio):>7s} {_ratio(wait_ratio):>7s}  {how}"
            )
    lines.append(f"  {'deli':30s} {deli['throughput_per_s']:9.1f} {deli['wait_fraction']:6.1%} {deli_wait * 1000:7.2f} "
                 f"{deli.get('warmup_s', 0.0):6.1f}s")
    return lines


def _wait_per_sample(f: dict[str, Any]) -> float:
    """Seconds the accelerator waited per delivered sample (wait fraction / throughput)."""
    if f.get("wait_s_per_sample") is not None:
        return float(f["wait_s_per_sample"])
    return f["wait_fraction"] / f["throughput_per_s"] if f["throughput_per_s"] else math.inf


def _ratio(x: float) -> str:
    return "inf" if not math.isfinite(x) else f"{x:.2f}x"


def _num(x: float | None) -> str:
    return "inf" if x is None or not math.isfinite(x) else f"{x:.0f}"
