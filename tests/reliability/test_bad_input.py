"""Every command with malformed arguments: exit code 2, an ``error`` line on stderr, no traceback.

Table-driven, in-process through ``delibench.cli.app.main`` (fast), plus a few real subprocesses.
Cases that fail here are bugs in the command's owner's module; see the ids.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from delibench.cli.app import main
from delibench.loaders.testing import Corpus

RUN_TAIL = ["--compute", "emulated:1ms", "--max-steps", "1", "--num-workers", "0", "--no-diagnose", "--no-progress"]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory, rel_local: Corpus) -> dict[str, str]:
    """Malformed inputs on disk, and a valid local dataset."""
    root = tmp_path_factory.mktemp("bad-input")
    out = {"data": rel_local.url, "dir": str(root)}
    samples = {
        "bad_yaml": "loaders: [deli\n  cache_size: : :\n",
        "unknown_key_yaml": "loaders:\n  - kind: deli\nfrobnicate: 3\n",
        "regions_bad_yaml": "regions: {us-east: [\n",
        "regions_unknown_key": "regions:\n  us-east:\n    accelerators: {count: 1, type: a100, usd_per_hour: 4}\n    wormholes: 3\n",
        "corrupt_json": '{"schema_version": 1, "run_id": ',
        "prices_bad": "s3: {get_per_1000: [\n",
    }
    for name, text in samples.items():
        path = root / f"{name}.{'json' if 'json' in name else 'yaml'}"
        path.write_text(text)
        out[name] = str(path)
    (root / "results").mkdir()
    Path(root / "results" / "broken.json").write_text("[1, 2")
    out["results_dir"] = str(root / "results")
    out["good_result"] = str(Path(__file__).parents[1] / "reports" / "data" / "v1-bucket.json")
    out["regions"] = str(Path(__file__).parents[2] / "geo" / "example-regions.yaml")
    out["empty_dir"] = str(root / "empty")
    return out


TUNE = ["--workload", "resnet18", "--compute", "emulated:1ms", "--trials", "1", "--no-progress"]

#: case id -> (argv template, text the error line must contain: the *right* error).
CASES: dict[str, tuple[list[str], str]] = {
    # data
    "data-make-negative-samples": (["data", "make", "{dir}/m1", "--samples", "-5"], '-5'),
    "data-make-bad-size": (["data", "make", "{dir}/m2", "--mean-size", "12XB"], 'XB'),
    "data-make-bad-preset": (["data", "make", "{dir}/m3", "--preset", "nope"], 'nope'),
    "data-make-bad-image-size": (["data", "make", "{dir}/m4", "--image-size", "12by3"], '12by3'),
    "data-push-missing-src": (["data", "push", "{dir}/does-not-exist", "memory://x"], 'not found'),
    "data-push-ftp": (["data", "push", "{data}", "ftp://host/x"], 'ftp'),
    "data-push-bad-bucket": (["data", "push", "{data}", "s3://Bad_Bucket!!/x"], 'bucket name'),
    "data-info-ftp": (["data", "info", "ftp://host/x"], 'ftp'),
    "data-info-missing": (["data", "info", "{dir}/does-not-exist"], 'manifest'),
    "data-info-corrupt-manifest": (["data", "info", "{corrupt_dir}"], 'manifest'),
    "data-index-ftp": (["data", "index", "ftp://host/x"], 'ftp'),
    "data-index-missing": (["data", "index", "{dir}/does-not-exist"], 'not found'),
    # run / compare
    "run-ftp": (["run", "--data", "ftp://host/x", "--loader", "deli", *RUN_TAIL], 'ftp'),
    "run-bad-bucket": (["run", "--data", "s3://Bad_Bucket!!/x", "--loader", "deli", *RUN_TAIL], 'bucket name'),
    "run-cache-12XB": (["run", "--data", "{data}", "--loader", "deli:cache_size=12XB", *RUN_TAIL], "XB"),
    "run-cache-negative": (["run", "--data", "{data}", "--loader", "deli:cache_size=-5", *RUN_TAIL], 'negative'),
    "run-unknown-loader": (["run", "--data", "{data}", "--loader", "nope", *RUN_TAIL], 'nope'),
    "run-bad-on-error": (["run", "--data", "{data}", "--loader", "deli:on_error=ignore", *RUN_TAIL], 'on_error'),
    "run-bad-hedge": (["run", "--data", "{data}", "--loader", "deli:hedge_after=soon", *RUN_TAIL], 'hedge_after'),
    "run-bad-retries": (["run", "--data", "{data}", "--loader", "bucket:retries=-2", *RUN_TAIL], 'retries'),
    "run-bad-compute": (["run", "--data", "{data}", "--loader", "deli", "--compute", "warp", "--max-steps", "1"], 'warp'),
    "run-negative-compute": (["run", "--data", "{data}", "--loader", "deli", "--compute", "emulated:-3ms", "--max-steps", "1"], '-3ms'),
    "run-negative-batch": (["run", "--data", "{data}", "--loader", "deli", "--batch-size", "-1", *RUN_TAIL], 'batch'),
    "run-bad-order": (["run", "--data", "{data}", "--loader", "deli", "--order", "sideways", *RUN_TAIL], 'sideways'),
    "run-config-bad-yaml": (["run", "--data", "{data}", "--config", "{bad_yaml}", *RUN_TAIL], 'yaml'),
    "run-config-unknown-key": (["run", "--data", "{data}", "--config", "{unknown_key_yaml}", *RUN_TAIL], 'frobnicate'),
    "run-config-missing": (["run", "--data", "{data}", "--config", "{dir}/nope.yaml", *RUN_TAIL], 'nope.yaml'),
    "run-no-manifest": (["run", "--data", "{empty_dir}", "--loader", "deli", *RUN_TAIL], 'manifest'),
    "compare-ftp": (["compare", "--data", "ftp://host/x", "--loader", "deli", "--loader", "bucket", *RUN_TAIL], 'ftp'),
    "compare-cache-12XB": (["compare", "--data", "{data}", "--loader", "deli:cache_size=12XB", "--loader", "bucket", *RUN_TAIL], "XB"),
    # tune
    "tune-ftp": (["tune", "--data", "ftp://host/x", *TUNE], 'ftp'),
    "tune-mem-12XB": (["tune", "--data", "{data}", "--mem-budget", "12XB", *TUNE], "XB"),
    "tune-bad-objective": (["tune", "--data", "{data}", "--objective", "speed", *TUNE], 'speed'),
    "tune-negative-trials": (["tune", "--data", "{data}", *TUNE, "--trials", "-1"], 'trials'),
    # report
    "report-corrupt-json": (["report", "{corrupt_json}"], 'corrupt'),
    "report-missing": (["report", "{dir}/nope.json"], 'nope.json'),
    "report-dir-with-corrupt": (["report", "{results_dir}"], 'corrupt'),
    "report-bad-egress": (["report", "{good_result}", "--egress", "moon"], 'moon'),
    "report-bad-prices": (["report", "{good_result}", "--prices", "{prices_bad}"], 'prices_bad'),
    # testbed
    "testbed-up-bad-profile": (["testbed", "up", "--dir", "{dir}/tb", "--profile", "nope"], 'nope'),
    "testbed-up-bad-rtt": (["testbed", "up", "--dir", "{dir}/tb", "--rtt", "fast"], 'fast'),
    "testbed-up-bad-bandwidth": (["testbed", "up", "--dir", "{dir}/tb", "--bandwidth", "12XB"], 'XB'),
    "testbed-up-bad-service": (["testbed", "up", "--dir", "{dir}/tb", "--services", "s3,ftp"], 'ftp'),
    # geo
    "geo-run-bad-yaml": (["geo", "run", "--regions", "{regions_bad_yaml}", "--steps", "1"], 'yaml'),
    "geo-run-unknown-key": (["geo", "run", "--regions", "{regions_unknown_key}", "--steps", "1"], 'wormholes'),
    "geo-run-missing": (["geo", "run", "--regions", "{dir}/nope.yaml", "--steps", "1"], 'nope.yaml'),
    "geo-run-bad-sync": (["geo", "run", "--regions", "{regions}", "--sync", "telepathy"], 'telepathy'),
    "geo-plan-bad-yaml": (["geo", "plan", "--regions", "{regions_bad_yaml}"], 'yaml'),
    "geo-plan-bad-deadline": (["geo", "plan", "--regions", "{regions}", "--deadline", "soon"], 'soon'),
    "geo-plan-bad-objective": (["geo", "plan", "--regions", "{regions}", "--objective", "vibes"], 'vibes'),
    # calibrate / list
    "calibrate-bad-workload": (["calibrate", "--workload", "nope", "--steps", "1"], 'nope'),
    "calibrate-bad-device": (["calibrate", "--device", "tpu", "--steps", "1"], 'tpu'),
    "calibrate-negative-steps": (["calibrate", "--steps", "-1"], 'steps'),
    "list-unknown": (["list", "nope"], 'nope'),
}


def _argv(template: list[str], files: dict[str, str]) -> list[str]:
    return [part.format(**files) for part in template]


@pytest.fixture(scope="module")
def corrupt_dataset(files: dict[str, str]) -> str:
    from delibench.manifest import MANIFEST_NAME

    path = Path(files["dir"]) / "corrupt-ds"
    path.mkdir(exist_ok=True)
    (path / MANIFEST_NAME).write_text("{not json")
    return str(path)


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_exits_2_with_one_error_line(case: str, files: dict[str, str], corrupt_dataset: str,
                                               capfd: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    monkeypatch.delenv("DELIBENCH_DEBUG", raising=False)
    template, expected = CASES[case]
    argv = _argv(template, {**files, "corrupt_dir": corrupt_dataset})
    code = main(argv)
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, f"{case}: traceback shown"
    assert "error" in err.lower(), f"{case}: no error line on stderr: {err[-300:]!r}"
    assert code == 2, f"{case}: exit {code}, expected 2; stderr: {err.strip()[-300:]!r}"
    assert expected.lower() in err.lower(), f"{case}: the error is not about {expected!r}: {err.strip()[-300:]!r}"


@pytest.mark.parametrize(
    "argv",
    [
        ["run", "--data", "ftp://host/x", "--loader", "deli", *RUN_TAIL],
        ["report", "{corrupt_json}"],
        ["testbed", "up", "--dir", "{dir}/tb2", "--profile", "nope"],
    ],
    ids=["run-ftp", "report-corrupt", "testbed-bad-profile"],
)
def test_bad_input_in_a_real_process(argv: list[str], files: dict[str, str]) -> None:
    proc = subprocess.run([sys.executable, "-m", "delibench", *_argv(argv, files)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr[-400:]
    assert "error" in proc.stderr.lower() and "Traceback" not in proc.stderr + proc.stdout


def test_cases_cover_every_command() -> None:
    covered = {" ".join(c[:2]) if c[0] in ("data", "testbed", "geo") else c[0] for c, _ in CASES.values()}
    for command in ("data make", "data push", "data info", "data index", "run", "compare", "tune", "report",
                    "testbed up", "geo run", "geo plan", "calibrate", "list"):
        assert command in covered, command
    assert json.dumps(sorted(covered))
