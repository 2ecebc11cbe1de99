"""Specs validate themselves (before any I/O), storage options are data, and one rule maps results to exit codes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from delibench.app.outcome import below_min_au, exit_code, exit_code_for_records
from delibench.app.session import run
from delibench.errors import ExitCode, SpecError, UsageError
from delibench.records import ComputeSpec, LoaderSpec, RunSpec, to_dict
from delibench.storage import resolve, s3_endpoint_options, storage_options_from_env

GOOD = dict(dataset_url="s3://no-such-bucket/imgs", workload="mnist-cnn", loader=LoaderSpec("deli"), compute=ComputeSpec("emulated", 0.01))


@pytest.mark.parametrize(
    ("field", "value", "problem"),
    [
        ("epochs", 0, "must be at least 1, got 0"),
        ("batch_size", 0, "must be at least 1, got 0"),
        ("num_workers", -1, "must not be negative, got -1"),
        ("warmup_steps", -2, "must not be negative, got -2"),
        ("max_steps_per_epoch", 0, "must be at least 1"),
        ("dataset_url", "  ", "must be a URL or path"),
        ("epochs", 1.5, "must be a whole number"),
        ("storage_options", "endpoint", "must be a mapping"),
    ],
)
def test_a_bad_field_is_named_before_any_io(field: str, value: object, problem: str) -> None:
    # The bucket does not exist and no endpoint is configured: reaching any I/O would fail otherwise.
    with pytest.raises(SpecError) as info:
        run(RunSpec(**{**GOOD, field: value}))
    assert info.value.field == field and info.value.exit_code == ExitCode.USAGE_ERROR
    assert str(info.value).startswith(f"RunSpec.{field} {problem}")


def test_cross_field_and_nested_specs_validate() -> None:
    with pytest.raises(SpecError, match="RunSpec.warmup_epochs must be less than epochs"):
        RunSpec(**GOOD, epochs=2, warmup_epochs=2)
    with pytest.raises(SpecError, match="ComputeSpec.step_time_s is required for emulated"):
        ComputeSpec("emulated")
    with pytest.raises(SpecError, match="ComputeSpec.kind must be one of"):
        ComputeSpec("tpu")
    with pytest.raises(SpecError, match="LoaderSpec.kind must name a loader"):
        LoaderSpec("")


def test_spec_error_reads_as_a_flag_error_on_the_command_line() -> None:
    from delibench.cli.environment import as_flag_error

    with pytest.raises(SpecError) as info:
        RunSpec(**GOOD, epochs=0)
    worded = as_flag_error(info.value)
    assert isinstance(worded, UsageError) and str(worded) == "--epochs must be at least 1, got 0"


def test_storage_options_travel_as_data_and_are_never_written() -> None:
    options = {**s3_endpoint_options("http://127.0.0.1:9"), "key": "AKIA-ID", "secret": "s3cr3t"}
    spec = RunSpec(**GOOD, storage_options=options)
    assert resolve(spec.dataset_url, spec.storage_options).storage_options == options
    text = json.dumps(to_dict(spec))
    assert "s3cr3t" not in text and "storage_options" not in text
    assert "s3cr3t" not in repr(spec)
    # Equal runs stay equal whatever the credentials (the store hashes specs).
    assert spec == dataclasses.replace(spec, storage_options={})


def test_resolve_reads_no_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:1")
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", "http://127.0.0.1:2")
    assert resolve("s3://bucket/p").storage_options == {}
    assert resolve("gs://bucket/p").storage_options == {}
    env = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1", "STORAGE_EMULATOR_HOST": "http://127.0.0.1:2"}
    assert storage_options_from_env("s3", env)["client_kwargs"] == {"endpoint_url": "http://127.0.0.1:1"}
    assert storage_options_from_env("gs", env)["endpoint_url"] == "http://127.0.0.1:2"
    assert storage_options_from_env("s3", {"AWS_ENDPOINT_URL_S3": "http://a:1", "AWS_ENDPOINT_URL": "http://b:2"})["client_kwargs"] == {"endpoint_url": "http://a:1"}
    assert storage_options_from_env("file", env) == {}


def test_exit_code_precedence() -> None:
    assert exit_code() == ExitCode.OK
    assert exit_code(threshold_met=False) == ExitCode.THRESHOLD_NOT_MET
    assert exit_code(invalid=True, threshold_met=False) == ExitCode.INVALID_RESULT
    assert exit_code(interrupted=True, invalid=True, threshold_met=False) == ExitCode.INTERRUPTED
    assert exit_code_for_records([]) == ExitCode.OK and below_min_au([], 0.9) == []
