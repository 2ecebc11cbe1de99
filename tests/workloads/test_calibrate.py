"""``delibench calibrate`` on this CPU writes a profile that ``--compute emulated:<name>`` then resolves."""

from __future__ import annotations

import json

import pytest
import yaml

from delibench.cli.app import main
from delibench.workloads.calibration import calibrate
from delibench.workloads.compute import load_profiles, parse_compute
from delibench.workloads.models import get_workload



def test_calibrate_cli_writes_a_profile_that_emulation_resolves(tmp_path, capsys):
    out = tmp_path / "profiles.yaml"
    argv = ["calibrate", "--workload", "mnist-cnn", "--batch-size", "8", "--steps", "3", "--warmup", "1", "--device", "cpu", "--out", str(out), "--json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["name"] == "mnist-cnn-cpu" and printed["path"] == str(out)
    doc = yaml.safe_load(out.read_text())
    entry = doc["profiles"]["mnist-cnn-cpu"]
    assert entry["workload"] == "mnist-cnn" and entry["batch_size"] == 8 and entry["precision"] == "fp32"
    assert entry["accelerator"].startswith("CPU") and "calibrate" in entry["source"]
    spec = parse_compute("emulated:mnist-cnn-cpu", profiles_path=out)
    assert spec.kind == "emulated" and spec.profile == "mnist-cnn-cpu"
    assert spec.step_time_s == pytest.approx(entry["step_time_s"], rel=1e-3) and spec.step_time_s > 0
    # A second calibration under another name merges into the same file.
    assert main(argv[:-1] + ["--name", "other"]) == 0
    assert {"mnist-cnn-cpu", "other"} <= set(load_profiles(out))


def test_calibrate_saves_to_the_user_profiles_file_by_default(tmp_path, capsys):
    assert main(["calibrate", "-w", "mnist-cnn", "-b", "4", "--steps", "2", "--warmup", "0", "--device", "cpu", "--name", "home"]) == 0
    assert (tmp_path / "config" / "delibench" / "profiles.yaml").is_file()
    assert parse_compute("emulated:home").step_time_s > 0
    assert "emulated:home" in capsys.readouterr().out


def test_calibrate_bad_input_is_a_usage_error(tmp_path, capsys):
    assert main(["calibrate", "--workload", "nope", "--device", "cpu"]) == 2
    assert main(["calibrate", "--workload", "mnist-cnn", "--steps", "0", "--device", "cpu"]) == 2
    assert main(["calibrate", "--workload", "mnist-cnn", "--device", "tpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "error:" in err


def test_calibrate_function_times_real_steps():
    profile = calibrate(get_workload("mnist-cnn"), batch_size=4, steps=2, warmup_steps=0, device="cpu", name="x")
    assert profile.name == "x" and profile.batch_size == 4 and profile.samples_per_s > 0
    assert profile.step_time_s() == pytest.approx(4 / profile.samples_per_s)
