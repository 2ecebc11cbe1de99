"""``delibench report``: exports parse back, errors are one line naming the file with exit 2."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from delibench.cli.app import main
from delibench.errors import ExitCode
from delibench.records import RESULT_SCHEMA_VERSION, RunRecord, from_dict
from delibench.reports import build_report
from delibench.reports.schema import csv_columns, validate_record
from delibench.reports.store import ResultStore


@pytest.fixture
def results_dir(tmp_path, loader_trio) -> Path:
    store = ResultStore(tmp_path / "results")
    for record in loader_trio:
        store.write(record)
    return store.root


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["report", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_table_on_stdout(capsys, results_dir) -> None:
    code, out, err = _run(capsys, str(results_dir))
    assert code == ExitCode.OK, err
    assert "bucket" in out and "deli" in out and "less data wait" in out


def test_json_is_one_document_of_valid_records(capsys, results_dir, loader_trio) -> None:
    code, out, err = _run(capsys, str(results_dir), "--json", "--instance", "p4d.24xlarge")
    assert code == ExitCode.OK, err
    docs = json.loads(out)  # exactly one JSON document on stdout
    assert len(docs) == len(loader_trio)
    for doc in docs:
        validate_record(doc)
        record = from_dict(RunRecord, doc)
        assert record.cost is not None and record.cost.price_sheet_id.endswith(":p4d.24xlarge:cross-region")
    assert {d["spec"]["loader"]["kind"] for d in docs} == {"bucket", "deli", "disk"}


def test_csv_and_md_files_and_stdout(capsys, tmp_path, results_dir) -> None:
    md = tmp_path / "out" / "r.md"
    code, out, err = _run(capsys, str(results_dir), "--csv", "-", "--md", str(md), "--egress", "internet")
    assert code == ExitCode.OK, err
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == list(csv_columns()) and len(rows) == 3
    assert all(r["cost.price_sheet_id"].endswith(":internet") for r in rows)
    text = md.read_text()
    assert text.startswith("# delibench report") and "| loader |" in text and "less data wait" in text
    assert f"wrote md: {md}" in err


def test_two_stdout_exports_are_refused(capsys, results_dir) -> None:
    code, _, err = _run(capsys, str(results_dir), "--csv", "-", "--md", "-")
    assert code == ExitCode.USAGE_ERROR and "only one export can go to stdout" in err
    code, _, err = _run(capsys, str(results_dir), "--csv", "-", "--json")
    assert code == ExitCode.USAGE_ERROR


def _one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error: "), err
    assert "Traceback" not in err
    return lines[0]


def test_corrupt_file_exit_2_names_file(capsys, results_dir) -> None:
    bad = results_dir / "zz-broken.json"
    bad.write_text('{"run_id": ')
    code, out, err = _run(capsys, str(results_dir), "--md", "-")
    assert code == ExitCode.USAGE_ERROR and out == ""
    assert str(bad) in _one_line_error(err) and "corrupt result file" in err


def test_mixed_schema_versions_exit_2_names_newer_file(capsys, tmp_path, results_dir) -> None:
    newer = json.loads(next(results_dir.glob("*.json")).read_text())
    newer["schema_version"] = RESULT_SCHEMA_VERSION + 1
    path = tmp_path / "from-the-future.json"
    path.write_text(json.dumps(newer))
    old = Path(__file__).parent / "data" / "v0-bucket.json"
    code, _, err = _run(capsys, str(old), str(results_dir), str(path))
    assert code == ExitCode.USAGE_ERROR
    line = _one_line_error(err)
    assert str(path) in line and f"schema_version {RESULT_SCHEMA_VERSION + 1}" in line


def test_bad_prices_and_instance(capsys, tmp_path, results_dir) -> None:
    prices = tmp_path / "p.yaml"
    prices.write_text("instances: {x: {usd_per_hour: -3, provider: aws}}\n")
    code, _, err = _run(capsys, str(results_dir), "--prices", str(prices))
    assert code == ExitCode.USAGE_ERROR and str(prices) in _one_line_error(err)
    code, _, err = _run(capsys, str(results_dir), "--instance", "p4d.24xlarg")
    assert code == ExitCode.USAGE_ERROR and "did you mean p4d.24xlarge" in err
    code, _, err = _run(capsys, str(tmp_path / "missing"))
    assert code == ExitCode.USAGE_ERROR and "no such result file" in err


def test_help_has_examples(capsys) -> None:
    code = main(["report", "--help"])
    out, _ = capsys.readouterr()
    assert code == 0 and "Examples:" in out and "--html" in out and "--prices" in out


def test_console_script_exit_code(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("[]")
    proc = subprocess.run([sys.executable, "-m", "delibench", "report", str(bad)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert str(bad) in proc.stderr and "Traceback" not in proc.stderr


def test_build_report_api_returns_model(tmp_path, loader_trio) -> None:
    stdout = io.StringIO()
    report = build_report(loader_trio, md="-", json=tmp_path / "r.json", stdout=stdout)
    assert report.written == {"md": "-", "json": str(tmp_path / "r.json")}
    assert stdout.getvalue().startswith("# delibench report")
    assert report.summary in stdout.getvalue()
    assert all(r.cost == c for r, c in zip(report.records, report.costs))
    assert report.savings is not None and report.savings.best_label.startswith("deli")


def test_a_failed_run_is_reported_failed_with_its_reason(capsys, tmp_path, loader_trio) -> None:
    import dataclasses

    from delibench.records import Issue

    failed = dataclasses.replace(
        loader_trio[1], status="failed", error="rank 1: RuntimeError: CUDA out of memory",
        issues=(Issue("invalid", "failed", "the run failed: rank 1: RuntimeError: CUDA out of memory"),),
    )
    store = ResultStore(tmp_path / "results")
    for record in (loader_trio[0], failed):
        store.write(record)
    code, out, err = _run(capsys, str(store.root), "--md", str(tmp_path / "r.md"))
    assert code == ExitCode.OK, err
    assert "invalid" not in out
    # the compact table (a test's console is narrow) says failed; the reason follows it on its own line
    assert [line for line in out.splitlines() if line.startswith("deli(") and line.endswith(" failed: rank 1: RuntimeError: CUDA out of memory")]
    md = (tmp_path / "r.md").read_text()
    assert "| failed | rank 1: RuntimeError: CUDA out of memory |" in md


def test_a_record_from_before_the_disk_counters_still_reports(capsys, tmp_path) -> None:
    """A result file written before LoaderStats had disk counters (the checked-in v1 file, which also
    predates samples_requested) loads with them at 0, and the table has no disk column for it."""
    old = Path(__file__).parent / "data" / "v1-bucket.json"
    assert "disk_hits" not in json.loads(old.read_text())["loader_stats"]
    code, out, err = _run(capsys, str(old), "--md", "-")
    assert code == ExitCode.OK, err
    assert "bucket" in out and "disk hits" not in out and "disk peak" not in out
    code, out, err = _run(capsys, str(old), "--json")
    assert code == ExitCode.OK, err
    (doc,) = json.loads(out)
    validate_record(doc)  # written back out with the new fields, still valid
    assert (doc["loader_stats"]["disk_hits"], doc["loader_stats"]["disk_peak_bytes"]) == (0, 0)
