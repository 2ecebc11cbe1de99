"""Regions file validation and the one-line exit-2 errors of ``delibench geo``."""

from __future__ import annotations

from pathlib import Path

import pytest

from delibench.cli.app import main
from delibench.errors import UsageError
from delibench.geo.regions import load_regions, parse_regions

EXAMPLE = Path(__file__).resolve().parents[2] / "geo" / "example-regions.yaml"

GOOD = {
    "regions": {
        "a": {"accelerators": {"count": 2, "type": "a100", "usd_per_hour": 4.0, "step_time_s": "100ms"}, "shards": [{"name": "s0", "size_bytes": "1GB"}]},
        "b": {"accelerators": {"count": 1, "usd_per_hour": 3.0, "profile": "v100"}},
    },
    "links": [{"between": ["a", "b"], "rtt_s": "70ms", "bandwidth_bytes_per_s": "100MB", "egress_usd_per_gb": 0.02}],
}


def test_example_file_loads() -> None:
    config = load_regions(EXAMPLE)
    assert len(config.regions) == 3
    assert all(r.shards for r in config.regions)
    link = config.link("ap-northeast", "us-east")
    assert link is config.link("us-east", "ap-northeast")  # symmetric


def test_units_and_profiles_parse() -> None:
    config = parse_regions(GOOD)
    a, b = config.regions
    assert a.accelerators.step_time_s == pytest.approx(0.1)
    assert a.data_bytes == 10**9
    assert b.accelerators.profile == "v100" and b.accelerators.step_time_s > 0
    link = config.link("a", "b")
    assert link.rtt_s == pytest.approx(0.07) and link.bandwidth_bytes_per_s == 1e8
    assert link.transfer_s(1e8) == pytest.approx(0.035 + 1.0)


def _bad(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "regions.yaml"
    path.write_text(text)
    return path


BAD_FILES = {
    "unknown-key": ("regions:\n  a: {accelerators: {count: 1, usd_per_hour: 1, step_time: 1}}\n", "did you mean 'step_time_s'"),
    "missing-link": (
        "regions:\n  a: {accelerators: {count: 1, usd_per_hour: 1, step_time_s: 1}}\n  b: {accelerators: {count: 1, usd_per_hour: 1, step_time_s: 1}}\n",
        "no link between a and b",
    ),
    "not-yaml": ("regions: [a: {\n", "not valid YAML"),
    "not-a-mapping": ("- a\n", "a regions file must be a YAML mapping, got list"),
    "shards-not-a-list": ("regions:\n  a: {accelerators: {count: 1, usd_per_hour: 1, step_time_s: 1}, shards: x}\n", "region 'a': shards must be a list"),
    "shard-unknown-key": (
        "regions:\n  a: {accelerators: {count: 1, usd_per_hour: 1, step_time_s: 1}, shards: [{name: s, size: 1}]}\n",
        "region 'a' shard #0: unknown key 'size'",
    ),
    "links-not-a-list": ("regions:\n  a: {accelerators: {count: 1, usd_per_hour: 1, step_time_s: 1}}\nlinks: x\n", "links must be a list"),
    "negative-price": ("regions:\n  a: {accelerators: {count: 1, usd_per_hour: -1, step_time_s: 1}}\n", "usd_per_hour must be >= 0"),
    "unknown-region-in-link": (
        "regions:\n  a: {accelerators: {count: 1, usd_per_hour: 1, step_time_s: 1}}\n"
        "links: [{between: [a, bb], rtt_s: 1, bandwidth_bytes_per_s: 1, egress_usd_per_gb: 0}]\n",
        "unknown region 'bb'",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_FILES))
def test_bad_regions_file_raises_usage_error(tmp_path: Path, case: str) -> None:
    text, expected = BAD_FILES[case]
    with pytest.raises(UsageError) as info:
        load_regions(_bad(tmp_path, text))
    assert expected in str(info.value)
    assert str(tmp_path / "regions.yaml") in info.value.message


@pytest.mark.parametrize("command", ["run", "compare", "plan"])
@pytest.mark.parametrize("case", ["unknown-key", "missing-link", "not-yaml"])
def test_cli_bad_file_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, case: str) -> None:
    path = _bad(tmp_path, BAD_FILES[case][0])
    assert main(["geo", command, "--regions", str(path)]) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and str(path) in err
    assert "Traceback" not in err


def test_cli_missing_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["geo", "plan", "--regions", str(tmp_path / "nope.yaml")]) == 2
    assert "cannot read regions file" in capsys.readouterr().err


def test_old_files_load_with_the_new_fields_defaulted() -> None:
    """No provider, billing or storage fields: hourly billing, the link's price both ways, S3 Standard storage."""
    config = parse_regions(GOOD)
    assert all(r.accelerators.billing == "hourly" and r.provider is None for r in config.regions)
    assert config.egress_usd_per_gb("a", "b") == config.egress_usd_per_gb("b", "a") == 0.02
    assert config.storage_usd_per_gb_month("a") == 0.023


def test_example_file_prices_cross_cloud_per_sender() -> None:
    config = load_regions(EXAMPLE)
    assert config.region("eu-west").provider == "gcp"
    assert (config.egress_usd_per_gb("us-east", "eu-west"), config.egress_usd_per_gb("eu-west", "us-east")) == (0.09, 0.12)
    assert config.egress_usd_per_gb("us-east", "ap-northeast") == 0.02
    assert config.storage_usd_per_gb_month("eu-west") == 0.020


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (lambda raw: raw["regions"]["a"]["accelerators"].update(billing="monthly"), "billing must be one of hourly, per_second"),
        (lambda raw: raw["links"][0].update(egress_usd_per_gb={"a": 0.02}), "lacks b"),
        (lambda raw: raw["links"][0].update(egress_usd_per_gb={"a": 0.02, "b": 0.1, "c": 1}), "not an end of this link"),
        (lambda raw: raw["regions"]["a"].update(storage_usd_per_gb_month=-1), "storage_usd_per_gb_month must be >= 0"),
    ],
)
def test_new_fields_are_validated(edit, expected: str) -> None:  # noqa: ANN001
    import copy

    raw = copy.deepcopy(GOOD)
    edit(raw)
    with pytest.raises(UsageError, match=expected):
        parse_regions(raw)


def test_store_rate_parses_and_defaults_to_no_limit() -> None:
    """``store_requests_per_s`` beside ``data_url``: 800 requests/s is 1.25 ms of the store per request; absent, no limit (0 s)."""
    import copy

    raw = copy.deepcopy(GOOD)
    raw["regions"]["a"]["store_requests_per_s"] = 800
    a, b = parse_regions(raw).regions
    assert a.store_requests_per_s == 800.0 and a.store_request_s == pytest.approx(0.00125)
    assert b.store_requests_per_s is None and b.store_request_s == 0.0


@pytest.mark.parametrize(("value", "expected"), [(0, "store_requests_per_s must be > 0, got 0"), (-5, "must be > 0"), ("fast", "must be a number, got 'fast'"), (True, "must be a number")])
def test_bad_store_rate_is_a_one_line_usage_error(tmp_path: Path, capsys: pytest.CaptureFixture[str], value: object, expected: str) -> None:
    import copy

    import yaml

    raw = copy.deepcopy(GOOD)
    raw["regions"]["a"]["store_requests_per_s"] = value
    with pytest.raises(UsageError, match=expected) as info:
        parse_regions(raw)
    assert "\n" not in info.value.message and "region 'a'" in info.value.message
    path = tmp_path / "regions.yaml"
    path.write_text(yaml.safe_dump(raw))
    assert main(["geo", "plan", "--regions", str(path)]) == 2
    err = capsys.readouterr().err
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "store_requests_per_s" in error_lines[0] and str(path) in error_lines[0]
    assert "Traceback" not in err
