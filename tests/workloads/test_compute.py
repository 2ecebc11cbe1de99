"""Compute backends and ``--compute`` parsing: emulated step times, profiles, bad input."""

from __future__ import annotations

import time

import pytest

from delibench.errors import UsageError
from delibench.records import ComputeSpec
from delibench.workloads.compute import (
    EmulatedCompute,
    GpuProfile,
    load_profiles,
    parse_compute,
    save_profile,
)



@pytest.mark.parametrize(
    ("text", "step"),
    [("emulated:120ms", 0.12), ("emulated:0.25s", 0.25), ("EMULATED:2ms", 0.002), (" emulated:1.5s ", 1.5)],
)
def test_parse_emulated_durations(text, step):
    spec = parse_compute(text)
    assert spec.kind == "emulated" and spec.step_time_s == pytest.approx(step) and spec.profile is None


def test_parse_devices():
    assert parse_compute("cpu") == ComputeSpec(kind="cpu")
    import torch

    assert parse_compute("auto").kind == ("cuda" if torch.cuda.is_available() else "cpu")
    assert parse_compute("auto", resolve_auto=False).kind == "auto"
    if not torch.cuda.is_available():
        with pytest.raises(UsageError, match="no CUDA device"):
            parse_compute("cuda")


@pytest.mark.parametrize(
    "text",
    ["", "gpu", "emulated", "emulated:", "emulated:-3ms", "emulated:0ms", "emulated:12parsecs", "emulated:no such", "cpu:3", "emulated:not-a-profile"],
)
def test_parse_bad_input_is_a_usage_error(text):
    with pytest.raises(UsageError):
        parse_compute(text)


def test_unknown_profile_suggests_a_close_name():
    with pytest.raises(UsageError) as info:
        parse_compute("emulated:resnet50-a10")
    assert "resnet50-a100" in (info.value.hint or "")


def test_shipped_profiles_give_batch_over_throughput():
    profiles = load_profiles()
    a100 = profiles["resnet50-a100"]
    assert a100.workload == "resnet50" and a100.approximate and "DeepLearningExamples" in open(
        __import__("delibench.workloads", fromlist=["x"]).__path__[0] + "/gpu_profiles.yaml"
    ).read()
    spec = parse_compute("emulated:resnet50-a100", batch_size=256)
    assert spec.profile == "resnet50-a100"
    assert spec.step_time_s == pytest.approx(256 / a100.samples_per_s)
    # Scaled to the run's batch size.
    assert parse_compute("emulated:resnet50-a100", batch_size=128).step_time_s == pytest.approx(spec.step_time_s / 2)
    # Every shipped profile names its source.
    assert all(p.source for p in profiles.values())


def test_user_profiles_override_shipped_and_merge(tmp_path):
    path = tmp_path / "p.yaml"
    save_profile(GpuProfile("resnet50-a100", "resnet50", "my A100", 256, 1000.0), path)
    save_profile(GpuProfile("mine", "resnet18", "my GPU", 64, 640.0), path)
    profiles = load_profiles(path)
    assert profiles["resnet50-a100"].samples_per_s == 1000.0  # overrides the shipped estimate
    assert parse_compute("emulated:mine", profiles_path=path).step_time_s == pytest.approx(0.1)
    # The default user file is read without any flag.
    save_profile(GpuProfile("in-home", "resnet18", "x", 10, 100.0))
    assert parse_compute("emulated:in-home").step_time_s == pytest.approx(0.1)


def test_malformed_profiles_are_usage_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles:\n  x:\n    batch_size: 8\n")
    with pytest.raises(UsageError, match="incomplete"):
        load_profiles(bad)
    bad.write_text("profiles:\n  x:\n    batch_size: 8\n    samples_per_s: 10\n    colour: red\n")
    with pytest.raises(UsageError, match="unknown key"):
        load_profiles(bad)
    bad.write_text("profiles: [1, 2\n")
    with pytest.raises(UsageError, match="YAML"):
        load_profiles(bad)
    with pytest.raises(UsageError, match="not found"):
        load_profiles(tmp_path / "missing.yaml")


def test_emulated_compute_holds_its_step_time():
    compute = EmulatedCompute(0.02)
    n = 10
    t0 = time.perf_counter()
    for _ in range(n):
        compute.step(None)
        compute.sync()
    # Back-to-back steps follow one schedule of deadlines: never faster than asked in total
    # (one step may be shorter by the previous step's oversleep, so no per-step bound).
    assert time.perf_counter() - t0 >= n * 0.02
    s = time.perf_counter()
    time.sleep(0.01)  # a gap (the loop waited for data) starts a fresh deadline: a full step again
    s = time.perf_counter()
    compute.step(None)
    assert time.perf_counter() - s >= 0.02
    assert compute.to_device("batch") == "batch"


class _OversleepingClock:
    """A fake clock whose sleep always overshoots by a fixed amount (a loaded machine)."""

    def __init__(self, overshoot_s: float) -> None:
        self.now = 0.0
        self.overshoot_s = overshoot_s

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds + self.overshoot_s


def test_emulated_compute_does_not_drift_when_sleep_overshoots():
    clock = _OversleepingClock(0.004)
    compute = EmulatedCompute(0.010, clock=clock, sleep=clock.sleep)
    n = 100
    for _ in range(n):
        compute.step(None)
    # A naive sleep(0.010) would take 100 * 14 ms; the deadline + credit keeps the mean at 10 ms.
    assert clock.now == pytest.approx(n * 0.010, rel=0.01)


def test_emulated_compute_rejects_negative_time():
    with pytest.raises(UsageError):
        EmulatedCompute(-1.0)
