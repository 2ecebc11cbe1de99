"""The HTML report opens in real headless Chromium: every figure decodes, no console errors, no network.

Skipped only when no Chromium binary exists (CI installs it: ``apt-get install -y chromium``).
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from delibench.reports import build_report
from delibench.reports.study import STUDY_FORMAT

CHROMIUM = next((p for p in (shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome")) if p), None)
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="no chromium binary on PATH (install with: apt-get install -y chromium)")

# Injected into a copy of the report (the report itself ships no script): counts the images that decoded.
PROBE = """<script>
window.addEventListener('load', () => {
  const imgs = Array.from(document.images);
  document.body.setAttribute('data-images', String(imgs.length));
  document.body.setAttribute('data-images-ok', String(imgs.filter(i => i.complete && i.naturalWidth > 0).length));
  document.body.setAttribute('data-remote', String(performance.getEntriesByType('resource').filter(e => !e.name.startsWith('data:')).length));
});
</script>"""


def _chromium(tmp_path: Path, url: str, *extra: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    args = [
        CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        f"--user-data-dir={tmp_path / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        "--virtual-time-budget=10000", *extra, url,
    ]  # fmt: skip
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=tmp_path)


def _probe(tmp_path: Path, html: str) -> tuple[dict[str, str], list[str]]:
    page = tmp_path / "probe.html"
    page.write_text(html.replace("</body>", PROBE + "</body>"))
    proc = _chromium(tmp_path, page.as_uri(), "--dump-dom")
    body = re.search(r"<body([^>]*)>", proc.stdout)
    assert body, f"chromium printed no DOM (rc={proc.returncode}): {proc.stderr[-2000:]}"
    attrs = dict(re.findall(r'(data-[\w-]+)="([^"]*)"', body.group(1)))
    console = [line for line in proc.stderr.splitlines() if ":CONSOLE" in line]
    return attrs, console


def test_probe_detects_broken_images_and_console_errors(tmp_path) -> None:
    """Negative control: the checks below would catch a bad page."""
    bad = '<!DOCTYPE html><html><body><img src="data:image/png;base64,AAAA"><script>missing_fn()</script></body></html>'
    attrs, console = _probe(tmp_path, bad)
    assert attrs["data-images"] == "1" and attrs["data-images-ok"] == "0"
    assert any("missing_fn" in line for line in console)


def test_html_report_renders_in_chromium(tmp_path, loader_trio) -> None:
    study = {
        "format": STUDY_FORMAT, "study_name": "tune", "objective_names": ["data_wait_fraction", "usd_per_epoch"],
        "directions": ["minimize", "minimize"],
        "trials": [{"number": i, "values": [0.5 / (i + 1), 0.001 * (i + 1)], "params": {"prefetch_depth": 2**i}} for i in range(8)],
    }  # fmt: skip
    out = tmp_path / "report.html"
    report = build_report(loader_trio, html=out, study=study, project_epochs=90)
    html = out.read_text()
    assert "http://" not in html.replace("http://127.0.0.1", "") and "https://" not in html  # self-contained
    assert report.summary in html
    expected = {"wait-fraction", "wait-timeline", "throughput", "cache", "cost", "tuning-history", "pareto"}
    assert set(re.findall(r'data-figure="([\w-]+)"', html)) == expected

    attrs, console = _probe(tmp_path, html)
    assert attrs["data-images"] == str(len(expected))
    assert attrs["data-images-ok"] == attrs["data-images"], "some figure did not decode"
    assert attrs["data-remote"] == "0", "the report fetched something"
    assert console == [], f"console messages: {console}"

    shot = tmp_path / "report.png"
    proc = _chromium(tmp_path, out.as_uri(), f"--screenshot={shot}", "--window-size=1200,2400")
    assert shot.exists() and shot.read_bytes().startswith(b"\x89PNG"), proc.stderr[-2000:]
