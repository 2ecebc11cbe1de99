"""Summary table renderings, the summary sentence, the study export and the figures."""

from __future__ import annotations

import csv
import dataclasses
import io
import json

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
