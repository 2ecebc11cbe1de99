"""Secrets never reach output, result files or reports: a planted key, ``user:password@`` URLs and
presigned-style query strings, through a real ``delibench run`` against SeaweedFS, a failing fetch,
and ``delibench report --html``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from delibench.storage import resolve

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SECRET = "PLANTED-s3cr3t-7c1fd0a9"
PASSWORD = "PLANTED-passw0rd-91ab"
SIGNATURE = "PLANTED-signature-55e2"


def _cli(args: list[str], env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "delibench", *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=240)


def _leaks(text: str) -> list[str]:
    return [s for s in (SECRET, PASSWORD, SIGNATURE) if s in text]


def test_no_secret_in_output_results_or_report(s3_bucket: str, s3_server: Any, tmp_path: Path) -> None:
    env = {**os.environ, "AWS_SECRET_ACCESS_KEY": SECRET, "AWS_ENDPOINT_URL": s3_server.endpoint_url, "COLUMNS": "200"}
    env.pop("DELIBENCH_DEBUG", None)
    results = tmp_path / "results"
    outputs: list[str] = []

    def run(args: list[str], *, ok: bool) -> subprocess.CompletedProcess[str]:
        proc = _cli(args, env, tmp_path)
        outputs.append(f"{proc.stdout}\n{proc.stderr}")  # not argv: it holds the planted values
        assert "Traceback" not in proc.stdout + proc.stderr
        if ok:  # 3: the run finished but is too short to be valid, which is fine here
            assert proc.returncode in (0, 3), proc.stderr[-500:]
        else:
            assert proc.returncode != 0
        return proc

    url = f"{s3_bucket}/ds"
    run(["data", "make", str(tmp_path / "imgs"), "--samples", "12", "--classes", "2", "--preset", "cifar"], ok=True)
    run(["data", "push", str(tmp_path / "imgs"), url], ok=True)
    run(["run", "--data", url, "--loader", "deli", "--compute", "emulated:10ms", "--max-steps", "3", "--batch-size", "2",
         "--warmup-steps", "0", "--num-workers", "0", "--no-diagnose", "--json", "--results-dir", str(results)], ok=True)

    # A failing fetch: one object gone, the run stops with a FetchError naming its key and URL.
    from delibench.manifest import read_manifest

    loc = resolve(url)
    gone = read_manifest(url).samples[3].key
    loc.filesystem().rm_file(loc.child(gone))
    failed = run(["run", "--data", url, "--loader", "deli", "--compute", "emulated:10ms", "--batch-size", "2",
                  "--warmup-steps", "0", "--num-workers", "0", "--no-diagnose", "--results-dir", str(results)], ok=False)
    assert gone in failed.stderr

    # Credentials in the URL itself, and a presigned-style query.
    bucket = s3_bucket.removeprefix("s3://")
    run(["run", "--data", f"s3://user:{PASSWORD}@{bucket}/ds", "--loader", "deli", "--compute", "emulated:10ms",
         "--max-steps", "1", "--results-dir", str(results)], ok=False)
    run(["data", "info", f"{url}?X-Amz-Signature={SIGNATURE}&X-Amz-Credential={SECRET}"], ok=False)

    html = tmp_path / "report.html"
    run(["report", str(results), "--html", str(html)], ok=True)

    texts = {"output": "\n".join(outputs), "report.html": html.read_text(errors="replace")}
    files = list(results.rglob("*"))
    assert any(p.suffix == ".json" for p in files), "the run wrote no result file"
    for path in files:
        if path.is_file():
            texts[str(path)] = path.read_text(errors="replace")
    leaked = {name: _leaks(text) for name, text in texts.items() if _leaks(text)}
    assert not leaked, f"secrets found in: {sorted(leaked)}"
