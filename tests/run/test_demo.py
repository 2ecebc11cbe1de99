"""``delibench demo`` with tiny parameters: exit 0, results and report written, the testbed stopped afterwards."""

from __future__ import annotations

import json

import psutil
import pytest

from delibench.reports.schema import validate_record

pytestmark = [pytest.mark.s3, pytest.mark.slow, pytest.mark.timeout(300)]


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for p in psutil.process_iter(["pid", "cmdline", "status"]):
        try:
            cmd = " ".join(p.info["cmdline"] or [])
            if text in cmd and p.info["status"] != psutil.STATUS_ZOMBIE:
                found.append(f"{p.info['pid']}: {cmd[:160]}")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def test_demo_smoke(tmp_path, cli_process, no_leftover_processes):
    workdir = tmp_path / "demo"
    res = cli_process(
        "demo", "--samples", "128", "--epochs", "1", "--batch-size", "16", "--step-time", "20ms",
        "--profile", "same-region", "--dir", workdir, "--no-progress", "--num-workers", "1", timeout_s=280,
    )
    assert res.code == 0, res.err
    assert "Traceback" not in res.err and "exception was never retrieved" not in res.err, res.err
    report = workdir / "report.html"
    assert report.is_file() and report.stat().st_size > 10_000
    assert str(report) in res.err.replace("\n", "")
    records = [json.loads(p.read_text()) for p in sorted((workdir / "results").glob("*.json"))]
    assert sorted(r["spec"]["loader"]["kind"] for r in records) == ["bucket", "deli", "disk", "fsspec-cache"]
    for r in records:
        validate_record(r)
        assert r["status"] == "complete" and r["metrics"]["total_samples"] == 128
        assert r["spec"]["link_profile"] == "same-region"
    # the table went to stdout, one row per loader
    for kind in ("bucket", "deli", "disk", "fsspec-cache"):
        assert kind in res.out
    # everything the demo started (SeaweedFS, the link emulator) is gone
    assert not _processes_mentioning(str(workdir)), _processes_mentioning(str(workdir))
