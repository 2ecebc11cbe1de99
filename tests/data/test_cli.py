"""``delibench data ...`` through the real entry point: JSON on stdout, one-line errors, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from delibench.cli.app import main


def _run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["data", *args])
    out, err = capsys.readouterr()
    return code, out, err


def _assert_one_line_error(err: str, needle: str) -> None:
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines and lines[0].startswith("error:") and needle in lines[0]
    assert all(line.startswith(("error:", "hint:")) for line in lines), err


def test_make_push_info_index_with_json(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, "make", str(tmp_path / "ds"), "--samples", "24", "--classes", "4", "--mean-size", "8KB",
                        "--layout", "both", "--shard-samples", "10", "--seed", "5", "--json")
    assert code == 0
    made = json.loads(out)
    assert (made["samples"], made["classes"], made["shards"], made["seed"]) == (24, 4, 3, 5)
    assert 0.75 < made["mean_sample_bytes"] / 8000 < 1.25

    code, out, _ = _run(capsys, "push", str(tmp_path / "ds"), "memory://cli-test/ds", "--concurrency", "4", "--json")
    assert code == 0
    pushed = json.loads(out)
    assert pushed["samples"] == 24 and pushed["dataset_id"] == made["dataset_id"] and pushed["objects_per_s"] > 0

    code, out, _ = _run(capsys, "info", "memory://cli-test/ds", "--json")
    assert code == 0
    info = json.loads(out)
    assert (info["samples"], info["classes"], info["shards"], info["source"]) == (24, 4, 3, "generated")

    code, out, _ = _run(capsys, "index", "memory://cli-test/ds", "--json")
    assert code == 0 and json.loads(out)["dataset_id"] == made["dataset_id"]


def test_human_output_goes_to_stdout(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    code, out, _ = _run(capsys, "make", str(tmp_path / "ds"), "--samples", "6", "--classes", "2", "--preset", "mnist")
    assert code == 0 and out.startswith("made 6 images in 2 classes")
    code, out, _ = _run(capsys, "info", str(tmp_path / "ds"))
    assert code == 0 and "28x28" in out and "generated" in out


@pytest.mark.parametrize(
    ("args", "exit_code", "needle"),
    [
        (["push", "/nonexistent/delibench-src", "s3://some-bucket/x"], 2, "source directory not found"),
        (["push", "{ds}", "ftp://x"], 2, "unsupported URL scheme"),
        (["info", "{tmp}"], 2, "no dataset manifest"),
        (["index", "{tmp}"], 2, "no images found"),
        (["make", "{tmp}/new", "--mean-size", "10kb"], 2, "unknown size unit"),
        (["make", "{tmp}/new", "--preset", "coco"], 2, "unknown preset"),
        (["make", "{tmp}/new", "--image-size", "big"], 2, "HEIGHTxWIDTH"),
        (["make", "{ds}"], 2, "already holds a dataset"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, args: list[str], exit_code: int, needle: str
) -> None:
    ds = tmp_path / "ds"
    if "{ds}" in args:
        main(["data", "make", str(ds), "--samples", "4", "--classes", "2", "--mean-size", "4KB", "--json"])
    args = [a.replace("{tmp}", str(tmp_path)).replace("{ds}", str(ds)) for a in args]
    code, _, err = _run(capsys, *args)
    assert code == exit_code
    _assert_one_line_error(err, needle)


def test_unreachable_endpoint_is_a_runtime_failure_exit_1(capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    main(["data", "make", str(tmp_path / "ds"), "--samples", "4", "--classes", "2", "--mean-size", "4KB", "--json"])
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    code, _, err = _run(capsys, "push", str(tmp_path / "ds"), "s3://some-bucket/x")
    assert code == 1
    _assert_one_line_error(err, "cannot reach the s3 endpoint")


@pytest.mark.parametrize("command", ["make", "push", "index", "info"])
def test_every_command_help_has_an_example(capsys: pytest.CaptureFixture[str], command: str) -> None:
    code, out, _ = _run(capsys, command, "--help")
    assert code == 0 and "Example: delibench data " + command in " ".join(out.split())


def test_installed_entry_point_exits_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "delibench", "data", "push", str(tmp_path / "missing"), "memory://x/y"],
        capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 2 and proc.stdout == ""
    _assert_one_line_error(proc.stderr, "source directory not found")
