"""Local runs (disk/memory loaders, local or memory:// datasets) pay no GET or egress dollars."""

from __future__ import annotations

import dataclasses

import pytest

from delibench.records import LoaderSpec
from delibench.reports.cost import estimate, is_local, price_inputs, project
from delibench.reports.prices import default_sheet


def _counted(record, *, kind: str, url: str):
    """The record with the file reads a local loader counts in the same meter as a bucket loader."""
    stats = dataclasses.replace(record.loader_stats, requests_count=50_000, bytes_read_remote=3 * 2**30)
    spec = dataclasses.replace(record.spec, dataset_url=url, loader=LoaderSpec(kind=kind, options={}))
    return dataclasses.replace(record, loader_stats=stats, spec=spec)


@pytest.mark.parametrize(
    ("kind", "url"),
    [("disk", "/data/imgs"), ("disk", "s3://bench/imgs"), ("memory", "s3://bench/imgs"), ("bucket", "/data/imgs"),
     ("bucket", "file:///data/imgs"), ("deli", "memory://ds/imgs")],
)
def test_local_runs_pay_no_requests_or_egress(make_record, kind, url) -> None:
    record = _counted(make_record(), kind=kind, url=url)
    sheet = default_sheet()
    assert is_local(record)
    cost = estimate(record, sheet)
    assert cost.requests_usd == 0 and cost.egress_usd == 0
    assert cost.compute_usd > 0 and cost.total_usd == pytest.approx(cost.compute_usd)
    proj = project(record, epochs=10, sheet=sheet)
    assert proj.requests_usd == 0 and proj.egress_usd == 0
    assert price_inputs(record, sheet).local


@pytest.mark.parametrize(("kind", "url"), [("bucket", "s3://bench/imgs"), ("deli", "gs://bench/imgs")])
def test_cloud_runs_still_pay_requests_and_egress(make_record, kind, url) -> None:
    record = _counted(make_record(), kind=kind, url=url)
    assert not is_local(record)
    cost = estimate(record, default_sheet())
    assert cost.requests_usd > 0 and cost.egress_usd > 0
