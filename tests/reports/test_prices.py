"""The shipped price catalog (dated, sourced) and user sheets merged over it; bad sheets name their file."""

from __future__ import annotations

import re

import pytest

from delibench.errors import UsageError
from delibench.reports.prices import EGRESS_CLASSES, default_sheet, load_sheet, provider_for_url


def test_shipped_sheet_is_dated_and_sourced() -> None:
    sheet = default_sheet()
    assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", sheet.retrieved_on)
    assert "list prices" in sheet.note.lower() and "change" in sheet.note.lower()
    entries = [*sheet.instances.values(), *sheet.object_stores.values(), *sheet.egress.values(), *sheet.storage.values()]
    for entry in entries:
        assert entry.source and not entry.source.startswith("user price sheet"), entry.key
        assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", entry.retrieved_on), entry.key


def test_shipped_sheet_covers_the_catalog() -> None:
    sheet = default_sheet()
    families = {"aws": ("p4d.", "p5.", "g5.", "g6."), "gcp": ("a2-", "a3-", "g2-"), "azure": ("Standard_ND96asr_v4", "Standard_ND96isr_H100_v5", "Standard_NC4as_T4_v3")}
    for provider, prefixes in families.items():
        for prefix in prefixes:
            assert any(k.startswith(prefix) and v.provider == provider and v.usd_per_hour > 0 for k, v in sheet.instances.items()), prefix
        for cls in EGRESS_CLASSES:
            assert sheet.egress_price(provider, cls).usd_per_gb >= 0
        assert sheet.default_instance(provider).accelerator_count == 1
    s3, gcs = sheet.object_stores["s3-standard"], sheet.object_stores["gcs-standard"]
    assert (s3.get_usd_per_1000, s3.put_usd_per_1000, s3.list_usd_per_1000) == (0.0004, 0.005, 0.005)
    assert (gcs.get_usd_per_1000, gcs.put_usd_per_1000) == (0.0004, 0.005)
    assert sheet.egress["aws/internet"].usd_per_gb == 0.09 and sheet.egress["gcp/internet"].usd_per_gb == 0.12
    assert sheet.egress["aws/same-region"].usd_per_gb == 0 and sheet.egress["aws/cross-region"].usd_per_gb == 0.02
    assert all(p.storage_usd_per_gb_month > 0 for p in sheet.object_stores.values())


def test_user_sheet_overrides_and_extends_by_key(tmp_path) -> None:
    path = tmp_path / "mine.yaml"
    path.write_text(
        "id: negotiated\nretrieved_on: 2026-10-01\n"
        "instances:\n  p4d.24xlarge: {provider: aws, usd_per_hour: 12.5, accelerator_count: 8}\n"
        "  my-box: {provider: aws, usd_per_hour: 3}\n"
        "egress:\n  aws:\n    internet: {usd_per_gb: 0.05}\n"
    )
    base = default_sheet()
    sheet = load_sheet(path)
    assert sheet.id == f"{base.id}+negotiated"
    assert sheet.sources == (*base.sources, str(path))
    assert sheet.instance("p4d.24xlarge").usd_per_hour == 12.5
    assert sheet.instance("p4d.24xlarge").source == "user price sheet mine.yaml"
    assert sheet.instance("p4d.24xlarge").retrieved_on == "2026-10-01"
    assert sheet.instance("my-box").usd_per_hour == 3.0
    assert sheet.egress["aws/internet"].usd_per_gb == 0.05
    assert sheet.egress["aws/cross-region"] == base.egress["aws/cross-region"]  # untouched keys stay
    assert sheet.instance("g5.xlarge") == base.instance("g5.xlarge")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("instances: [1, 2\n", "not valid YAML at line"),
        ("- a\n- b\n", "must be a YAML mapping"),
        ("instance:\n  x: {usd_per_hour: 1}\n", "unknown section(s) ['instance']"),
        ("instances:\n  x: {provider: aws, usd_per_hour: -1}\n", "x.usd_per_hour must be a non-negative number"),
        ("instances:\n  x: {provider: aws, usd_per_hr: 1}\n", "unknown field(s) ['usd_per_hr']"),
        ("instances:\n  x: {usd_per_hour: 1}\n", "entry 'x' is incomplete"),
        ("instances:\n  x: {provider: aws, usd_per_hour: 1, accelerator_count: 0}\n", "accelerator_count must be a positive integer"),
        ("egress:\n  aws: 0.02\n", "egress.aws must map egress classes"),
    ],
)
def test_bad_sheet_names_the_file(tmp_path, text, expected) -> None:
    path = tmp_path / "bad-prices.yaml"
    path.write_text(text)
    with pytest.raises(UsageError) as info:
        load_sheet(path)
    assert info.value.message.startswith(f"{path}: ")
    assert expected in info.value.message


def test_missing_sheet(tmp_path) -> None:
    with pytest.raises(UsageError, match="nope.yaml: cannot read price sheet"):
        load_sheet(tmp_path / "nope.yaml")


def test_provider_for_url() -> None:
    assert [provider_for_url(u) for u in ("s3://b/k", "gs://b/k", "az://c/k", "/local/path", "memory://x")] == ["aws", "gcp", "azure", "aws", "aws"]
    assert provider_for_url("file:///x", default="gcp") == "gcp"
