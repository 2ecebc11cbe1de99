"""``merge_loader_stats``: one LoaderStats for a multi-rank run; every field merged by its rule.

Counters are summed over ranks, peaks and latency percentiles are the worst rank's, the lead is
the ranks' mean. The check over every field catches a counter added to LoaderStats but not to the
merge, which would read 0 in every multi-rank record while single-rank records carry it.
"""

from __future__ import annotations

import dataclasses
import re

from delibench.app.session import merge_loader_stats
from delibench.records import LoaderStats

#: Fields that are not summed: the worst rank's (peaks, percentiles) or the mean (lead).
WORST = {"cache_peak_bytes", "prefetch_peak_bytes", "disk_peak_bytes", "fetch_latency_s_p50", "fetch_latency_s_p95", "fetch_latency_s_p99"}
MEAN = {"prefetch_lead_mean"}


def _stats(base: int) -> LoaderStats:
    """Every field set, to ``base + its position`` (tuples: one key per rank), so no field is at its default."""
    values: dict[str, object] = {}
    for i, f in enumerate(dataclasses.fields(LoaderStats)):
        if f.name == "skipped_keys":
            values[f.name] = (f"rank{base}/k",)
        elif f.type in ("float | None", float):
            values[f.name] = float(base + i)
        else:
            values[f.name] = base + i
    return LoaderStats(**values)  # type: ignore[arg-type]


def test_every_peak_and_percentile_is_the_worst_ranks() -> None:
    """A new ``*_peak_*`` or ``*_pNN`` field summed over ranks would claim a peak no rank reached."""
    names = {f.name for f in dataclasses.fields(LoaderStats)}
    assert {n for n in names if "peak" in n or re.search(r"_p\d+$", n)} == WORST


def test_every_field_is_merged_by_its_rule() -> None:
    a, b = _stats(1), _stats(100)
    merged = merge_loader_stats([a, None, b])  # a rank that reported nothing is left out
    for f in dataclasses.fields(LoaderStats):
        x, y, got = getattr(a, f.name), getattr(b, f.name), getattr(merged, f.name)
        if f.name == "skipped_keys":
            assert got == x + y
        elif f.name in WORST:
            assert got == max(x, y), f.name
        elif f.name in MEAN:
            assert got == (x + y) / 2, f.name
        else:
            assert got == x + y, f"{f.name}: a counter must be summed over ranks (got {got}, ranks {x} and {y})"


def test_the_disk_tier_counters_of_two_ranks() -> None:
    """Rank scope: two tiers, hits and errors add up, the peak is the fuller tier's (each within its own
    budget, so the merged peak stays within one rank's disk_cache_size)."""
    merged = merge_loader_stats([
        LoaderStats(cache_hits=50, disk_hits=30, disk_peak_bytes=4000, disk_write_errors=1),
        LoaderStats(cache_hits=40, disk_hits=10, disk_peak_bytes=6000, disk_corrupt_count=2),
    ])
    assert (merged.cache_hits, merged.disk_hits, merged.disk_peak_bytes) == (90, 40, 6000)
    assert (merged.disk_write_errors, merged.disk_corrupt_count) == (1, 2)
    assert merge_loader_stats([LoaderStats(disk_hits=3)]) == LoaderStats(disk_hits=3)
    assert merge_loader_stats([None]) == LoaderStats()
