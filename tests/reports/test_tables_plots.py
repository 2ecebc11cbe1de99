"""Summary table renderings, the summary sentence, the study export and the figures."""

from __future__ import annotations

import csv
import dataclasses
import io
import json
from pathlib import Path

import pytest

from delibench.errors import UsageError
from delibench.records import Issue
from delibench.reports import plots
from delibench.reports.cost import estimate
from delibench.reports.prices import default_sheet
from delibench.reports.study import STUDY_FORMAT, load_study, pareto_front, parse_study, study_export
from delibench.reports.tables import (
    format_usd,
    records_csv,
    run_label,
    summary_sentence,
    summary_table,
    to_csv,
    to_json,
    to_markdown,
    to_rich,
)


@pytest.fixture
def priced(loader_trio):
    sheet = default_sheet()
    costs = [estimate(r, sheet) for r in loader_trio]
    return [dataclasses.replace(r, cost=c) for r, c in zip(loader_trio, costs)], costs


def test_markdown_csv_json_agree(priced) -> None:
    records, costs = priced
    table = summary_table(records, costs)
    md = to_markdown(table).splitlines()
    assert md[0].startswith("| loader | data wait |") and set(md[1]) <= set("|-:")
    assert len([line for line in md if line.startswith("| ")]) == 1 + len(records)
    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert [r["run_id"] for r in rows] == [r.run_id for r in records]
    assert [float(r["data_wait_fraction"]) for r in rows] == [r.metrics.data_wait_fraction for r in records]
    doc = json.loads(to_json(table))
    assert doc["summary"] == table.summary
    assert [r["usd_per_epoch"] for r in doc["rows"]] == [c.usd_per_epoch for c in costs]
    assert doc["rows"][0]["cache_hit_rate"] is None and doc["rows"][1]["cache_hit_rate"] == records[1].loader_stats.hit_rate


def test_rich_table_renders(priced) -> None:
    from rich.console import Console

    records, costs = priced
    console = Console(record=True, width=200)
    console.print(to_rich(summary_table(records, costs)))
    text = console.export_text()
    assert "bucket" in text and "deli" in text and "data wait" in text
    narrow = Console(record=True, width=80)
    narrow.print(to_rich(summary_table(records, costs), compact=True))
    assert all(len(line) <= 80 for line in narrow.export_text().splitlines())


def test_summary_sentence_compares_best_remote_loader_with_bucket(priced) -> None:
    records, costs = priced
    bucket, deli, disk = records
    ratio = bucket.metrics.data_wait_fraction / deli.metrics.data_wait_fraction
    text = summary_sentence(records, costs)
    assert text.startswith(f"{run_label(deli)} waited ")
    assert f"for bucket: {ratio:.1f}x less data wait" in text
    assert f"{format_usd(costs[1].usd_per_epoch)}/epoch vs {format_usd(costs[0].usd_per_epoch)}/epoch" in text
    assert "local-disk bound" in text
    assert "accelerator utilisation" in summary_sentence([deli], [costs[1]])
    assert summary_sentence([]) == "no runs to summarise"


def test_invalid_runs_are_marked(make_record) -> None:
    record = make_record("bucket", issues=(Issue("invalid", "partial-read", "epoch 0 read 40 of 480 samples"),))
    assert summary_table([record]).rows[0]["status"] == "invalid"


def test_records_csv_has_schema_columns(priced) -> None:
    from delibench.reports.schema import csv_columns

    records, costs = priced
    rows = list(csv.DictReader(io.StringIO(records_csv(records))))
    assert list(rows[0]) == list(csv_columns())
    assert [float(r["cost.usd_per_epoch"]) for r in rows] == [c.usd_per_epoch for c in costs]
    assert rows[2]["spec.loader.kind"] == "disk"


def test_format_usd() -> None:
    assert [format_usd(v) for v in (0, 0.31, 0.0021, 1234.5, None)] == ["$0", "$0.31", "$0.0021", "$1,234.50", "-"]


def _study_doc(n: int = 10) -> dict:
    trials = [{"number": i, "state": "COMPLETE", "values": [1.0 / (i + 1), 0.1 * i], "params": {"prefetch_depth": 2**i}} for i in range(n)]
    trials.append({"number": n, "state": "FAIL", "values": None, "params": {}})
    return {"format": STUDY_FORMAT, "study_name": "s", "objective_names": ["data_wait_fraction", "usd_per_epoch"], "directions": ["minimize", "minimize"], "trials": trials}


def test_study_parse_and_pareto(tmp_path) -> None:
    doc = _study_doc(4)
    doc["trials"].append({"number": 9, "values": [0.6, 0.35], "params": {}})  # dominated by trial 1 (0.5, 0.1)
    study = parse_study(doc)
    assert len(study.trials) == 6 and len(study.completed) == 5
    assert sorted(t.number for t in pareto_front(study)) == [0, 1, 2, 3]
    path = tmp_path / "study.json"
    path.write_text(json.dumps(doc))
    assert load_study(path) == study
    bad = dict(doc, directions=["minimize"])
    with pytest.raises(UsageError, match="x.json: not a delibench study export: directions"):
        parse_study(bad, source="x.json")
    path.write_text("{")
    with pytest.raises(UsageError, match="study.json: corrupt study export"):
        load_study(path)


def test_study_export_from_a_real_optuna_study() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(directions=["minimize", "minimize"], sampler=optuna.samplers.RandomSampler(seed=0))
    study.optimize(lambda t: (t.suggest_float("x", 0, 1), 1 - t.suggest_float("y", 0, 1)), n_trials=6)
    doc = study_export(study, ["data_wait_fraction", "usd_per_epoch"])
    parsed = parse_study(json.loads(json.dumps(doc)))
    assert [t.values for t in parsed.trials] == [tuple(t.values) for t in study.trials]
    assert {t.number for t in pareto_front(parsed)} == {t.number for t in study.best_trials}


def test_figures_draw_only_when_data_exists(priced, make_record) -> None:
    records, costs = priced
    study = parse_study(_study_doc())
    figures = {
        "wait": plots.plot_wait_fraction(records),
        "timeline": plots.plot_wait_timeline(records),
        "throughput": plots.plot_throughput(records),
        "cache": plots.plot_cache(records),
        "cost": plots.plot_cost_breakdown(records, costs),
        "history": plots.plot_tuning_history(study),
        "pareto": plots.plot_pareto(study),
    }
    for name, fig in figures.items():
        png = plots.figure_png(fig)
        assert png.startswith(b"\x89PNG") and len(png) > 5000, name
    bare = dataclasses.replace(make_record("bucket"), timeline=())
    assert plots.plot_wait_timeline([bare]) is None
    assert plots.plot_cache([bare]) is None  # no cache lookups
    assert plots.plot_cost_breakdown([bare], [None]) is None
    single = parse_study(dict(_study_doc(), objective_names=["w"], directions=["minimize"], trials=[{"number": 0, "values": [0.2]}]))
    assert plots.plot_pareto(single) is None and plots.plot_tuning_history(single) is not None


# --------------------------------------------------------------------------- slowest rank; failed runs


def _whole_figures(table, text: str, compact: bool) -> bool:
    """Every figure of the rendered columns stands whole on one line of ``text`` (none folded at the terminal's width)."""
    from delibench.reports.tables import COMPACT_KEYS

    keys = {c.key for c in table.columns}
    if compact:  # a comparison's wait cut takes the p90's place
        cut = any(row.get("wait_time_reduction") is not None for row in table.rows)
        keys = set(COMPACT_KEYS) - {"wait_s_p90"} | {"wait_time_reduction"} if cut else set(COMPACT_KEYS)
        if all(row["status"] == "complete" for row in table.rows):
            keys.discard("status")
    shown = [c for c in table.columns if c.key != "error" and c.key in keys]
    lines = text.splitlines()
    for row in table.rows:
        cells = [c.fmt(row.get(c.key)) for c in shown if c.fmt(row.get(c.key)) not in ("-", "")]
        if not any(all(f" {v} " in line for v in cells) for line in lines):
            return False
    return True


def _two_rank_record(make_record):
    """A 2-rank record whose figures come from ``summarize`` over a timeline where the ranks are slow at different steps."""
    from delibench.measure import summarize

    base = make_record("deli", wait_s=0.01, seed=4)
    steps = [
        dataclasses.replace(s, rank=rank, wait_s=s.wait_s + (0.2 if s.step % 2 == rank else 0.0))
        for rank in (0, 1) for s in base.timeline
    ]
    metrics = summarize(steps, warmup_steps=base.spec.warmup_steps, world_size=2, bytes_per_sample=110_000)
    spec = dataclasses.replace(base.spec, world_size=2)
    return dataclasses.replace(base, spec=spec, metrics=metrics, timeline=tuple(steps))


def test_the_slowest_rank_wait_stands_beside_the_per_rank_figures_only_for_more_than_one_rank(make_record) -> None:
    from rich.console import Console

    single = make_record("bucket", wait_s=0.06, seed=1)
    multi = _two_rank_record(make_record)
    m = multi.metrics
    # each rank waits 0.2 s on every other step, the job on every step: the job's figure is the larger one
    assert m.slowest_rank_wait_fraction > m.data_wait_fraction

    alone = summary_table([single])
    assert "slowest_rank_wait_fraction" not in [c.key for c in alone.columns]
    table = summary_table([single, multi])
    keys = [c.key for c in table.columns]
    assert keys.index("slowest_rank_wait_fraction") == keys.index("data_wait_fraction") + 1
    assert keys.index("slowest_rank_wait_s_p90") == keys.index("wait_s_p90") + 1
    assert table.rows[0]["slowest_rank_wait_fraction"] is None  # one rank: no such figure
    assert table.rows[1]["slowest_rank_wait_fraction"] == m.slowest_rank_wait_fraction
    assert table.rows[1]["slowest_rank_wait_s_p90"] == m.slowest_rank_wait_s_p90

    rows = list(csv.DictReader(io.StringIO(to_csv(table))))
    assert rows[0]["slowest_rank_wait_fraction"] == "" and float(rows[1]["slowest_rank_wait_fraction"]) == m.slowest_rank_wait_fraction
    assert json.loads(to_json(table))["rows"][1]["slowest_rank_wait_s_p90"] == m.slowest_rank_wait_s_p90
    md = to_markdown(table).splitlines()
    assert "| data wait | slowest rank wait |" in md[0] and f"| {m.slowest_rank_wait_fraction:.2f} |" in md[3]
    for width, compact in ((200, False), (80, True)):
        console = Console(record=True, width=width)
        console.print(to_rich(table, compact=compact, caption=False))
        text = console.export_text()
        assert "slowest" in text and f"{m.slowest_rank_wait_fraction:.2f}" in text
        assert _whole_figures(table, text, compact)

    # the per-run CSV export (every schema column) carries the same figures, and the checked-in schema names them
    from delibench.reports.schema import csv_columns

    schema = json.loads((Path(__file__).parents[2] / "schema" / "run-record.v1.json").read_text())
    for name in ("slowest_rank_wait_s", "slowest_rank_wait_fraction", "slowest_rank_wait_s_p90", "aligned_steps"):
        assert f"metrics.{name}" in csv_columns() and name in schema["$defs"]["RunMetrics"]["properties"]
    (row,) = csv.DictReader(io.StringIO(records_csv([multi])))
    assert float(row["metrics.slowest_rank_wait_fraction"]) == m.slowest_rank_wait_fraction


def test_the_html_report_lists_the_slowest_rank_wait_of_a_multi_rank_run(make_record, tmp_path) -> None:
    from delibench.reports import build_report

    multi = _two_rank_record(make_record)
    report = build_report([make_record("bucket", wait_s=0.06, seed=1), multi], html=tmp_path / "r.html")
    page = (tmp_path / "r.html").read_text()
    results = page.split("<h2>Results</h2>", 1)[1].split("<h2>", 1)[0]
    assert "slowest rank wait" in results and "slowest rank p90" in results
    assert f">{multi.metrics.slowest_rank_wait_fraction:.2f}<" in results
    assert report.table.rows[1]["slowest_rank_wait_fraction"] == multi.metrics.slowest_rank_wait_fraction


def test_failed_and_interrupted_runs_are_not_called_invalid(make_record) -> None:
    from rich.console import Console

    invalid = make_record("bucket", seed=1, issues=(Issue("invalid", "partial-read", "epoch 0 read 40 of 480 samples"),))
    failed = dataclasses.replace(
        make_record("deli", seed=2, issues=(Issue("invalid", "failed", "the run failed: GET s3://bench/imgs/k7 failed for good"),)),
        status="failed", error="GET s3://bench/imgs/k7 failed for good",
    )
    stopped = dataclasses.replace(make_record("disk", seed=3, issues=(Issue("invalid", "interrupted", "stopped"),)), status="interrupted")
    table = summary_table([invalid, failed, stopped])
    assert [r["status"] for r in table.rows] == ["invalid", "failed", "interrupted"]
    assert [r["error"] for r in table.rows] == [None, "GET s3://bench/imgs/k7 failed for good", None]
    assert "error" in [c.key for c in table.columns]
    assert "error" not in [c.key for c in summary_table([invalid]).columns]
    (row,) = [r for r in csv.DictReader(io.StringIO(to_csv(table))) if r["status"] == "failed"]
    assert row["error"] == "GET s3://bench/imgs/k7 failed for good"
    narrow = Console(record=True, width=80)
    narrow.print(to_rich(table, compact=True, caption=False))
    text = narrow.export_text()
    assert "failed" in text and "interrupted" in text and _whole_figures(table, text, True)
    wide = Console(record=True, width=220)
    wide.print(to_rich(table))
    assert "GET s3://bench/imgs/k7 failed for good" in wide.export_text()


# --------------------------------------------------------------------------- disk cache tier


def _disk_record(make_record, *, seed: int = 2, hits: int = 0, peak: int = 0, write_errors: int = 0):
    """A deli record whose loader asked for a disk tier, with these disk counters (run-level and rank 0's)."""
    record = make_record("deli", seed=seed, hit_rate_epoch2=0.8,
                         options={"cache_tier": "disk", "cache_size": "16KiB", "disk_cache_size": "1MiB"})
    stats = dataclasses.replace(record.loader_stats, disk_hits=hits, disk_peak_bytes=peak, disk_write_errors=write_errors)
    ranks = tuple(dataclasses.replace(r, loader_stats=stats) for r in record.metrics.ranks)
    spec = dataclasses.replace(record.spec, loader=dataclasses.replace(record.spec.loader, label="deli-disk"))  # fits 80 columns
    return dataclasses.replace(record, spec=spec, loader_stats=stats, metrics=dataclasses.replace(record.metrics, ranks=ranks))


def test_the_disk_tier_columns_appear_only_for_runs_that_had_one(make_record, loader_trio) -> None:
    """No run with a disk tier: no disk column. One with: its hits and peak, '-' for the others (not 0,
    which would claim they had a tier that served nothing); write errors only when one failed."""
    keys = [c.key for c in summary_table(loader_trio).columns]
    assert not {"disk_hits", "disk_peak_bytes", "disk_write_errors"} & set(keys)

    disk = _disk_record(make_record, hits=1234, peak=700 * 1024)
    table = summary_table([loader_trio[0], disk])
    keys = [c.key for c in table.columns]
    assert keys.index("disk_hits") == keys.index("miss_rate") + 1 and keys.index("disk_peak_bytes") == keys.index("disk_hits") + 1
    assert "disk_write_errors" not in keys
    assert (table.rows[0]["disk_hits"], table.rows[0]["disk_peak_bytes"]) == (None, None)
    assert (table.rows[1]["disk_hits"], table.rows[1]["disk_peak_bytes"]) == (1234, 700 * 1024)
    md = to_markdown(table).splitlines()
    assert "| disk hits | disk peak |" in md[0] and "| 1,234 | 700.0 KiB |" in md[3] and "| - | - |" in md[2]
    assert json.loads(to_json(table))["rows"][1]["disk_hits"] == 1234
    from rich.console import Console

    narrow = Console(record=True, width=80)  # the compact table keeps the hits
    narrow.print(to_rich(table, compact=True, caption=False))
    text = narrow.export_text()
    assert "1,234" in text and _whole_figures(table, text, True)

    idle = _disk_record(make_record, seed=3)  # asked for, never used: 0 hits shown, not hidden
    assert summary_table([idle]).rows[0]["disk_hits"] == 0
    broken = _disk_record(make_record, seed=4, hits=3, peak=4096, write_errors=1)
    table = summary_table([disk, broken])
    assert [r["disk_write_errors"] for r in table.rows] == [None, 1]
    assert "disk write errors" in to_markdown(table).splitlines()[0]


def test_the_disk_counters_are_schema_columns(make_record) -> None:
    """The record's CSV (every schema column) carries the disk counters of any run, 0 without a tier."""
    rows = list(csv.DictReader(io.StringIO(records_csv([make_record("bucket", seed=1), _disk_record(make_record, hits=9, peak=2048)]))))
    assert [(r["loader_stats.disk_hits"], r["loader_stats.disk_peak_bytes"]) for r in rows] == [("0", "0"), ("9", "2048")]
    assert rows[1]["loader_stats.disk_write_errors"] == rows[1]["loader_stats.disk_corrupt_count"] == "0"
