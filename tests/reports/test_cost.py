"""Golden cost-model cases computed by hand, component by component, plus projection and savings."""

from __future__ import annotations

import dataclasses
import math

import pytest

from delibench.errors import UsageError
from delibench.reports.cost import estimate, instances_needed, price_inputs, project, savings
from delibench.reports.prices import default_sheet, load_sheet

GIB = 2**30  # the billed GB (delibench.units.BYTES_PER_BILLED_GB): sheet prices are per 2^30 bytes

SHEET_YAML = """
id: golden
retrieved_on: "2026-01-01"
defaults:
  provider: aws
  instance: {aws: test-vm}
  object_store: {aws: test-store}
instances:
  test-vm: {provider: aws, usd_per_hour: 2.0, accelerator_count: 4}
object_stores:
  test-store: {provider: aws, get_usd_per_1000: 0.0004}
egress:
  aws:
    same-region: {usd_per_gb: 0.0}
    cross-region: {usd_per_gb: 0.02}
    internet: {usd_per_gb: 0.09}
"""


@pytest.fixture
def golden_sheet(tmp_path):
    path = tmp_path / "golden.yaml"
    path.write_text(SHEET_YAML)
    return load_sheet(path, base=False)


def _with(record, *, wall_s=1800.0, requests=250_000, remote_bytes=5 * GIB, wait=0.25, samples=20_000, dataset=10_000, world_size=1, url=None):
    metrics = dataclasses.replace(record.metrics, wall_s=wall_s, data_wait_fraction=wait, accelerator_utilization=1 - wait, total_samples=samples)
    stats = dataclasses.replace(record.loader_stats, requests_count=requests, bytes_read_remote=remote_bytes)
    spec = dataclasses.replace(record.spec, world_size=world_size, dataset_url=url or record.spec.dataset_url)
    return dataclasses.replace(record, metrics=metrics, loader_stats=stats, spec=spec, dataset_sample_count=dataset)


def test_instance_component(golden_sheet, make_record) -> None:
    # 1800 s on a $2.00/h VM = $1.00
    cost = estimate(_with(make_record(), requests=0, remote_bytes=0), golden_sheet)
    assert cost.compute_usd == pytest.approx(1.00)
    assert cost.requests_usd == 0 and cost.egress_usd == 0
    assert cost.total_usd == pytest.approx(1.00)
    assert cost.instance_usd_per_hour == 2.0


def test_request_component(golden_sheet, make_record) -> None:
    # 250,000 GETs at $0.0004 per 1,000 = $0.10
    cost = estimate(_with(make_record(), wall_s=0.0, remote_bytes=0), golden_sheet)
    assert cost.requests_usd == pytest.approx(0.10)
    assert cost.total_usd == pytest.approx(0.10)


@pytest.mark.parametrize(("egress_class", "usd"), [("same-region", 0.0), ("cross-region", 0.10), ("internet", 0.45)])
def test_egress_component(golden_sheet, make_record, egress_class, usd) -> None:
    # 5 GiB at $0.00 / $0.02 / $0.09 per GB
    cost = estimate(_with(make_record(), wall_s=0.0, requests=0), golden_sheet, egress_class=egress_class)
    assert cost.egress_usd == pytest.approx(usd)
    assert cost.price_sheet_id == f"golden:test-vm:{egress_class}"


def test_total_idle_and_per_epoch(golden_sheet, make_record) -> None:
    # $1.00 + $0.10 + $0.10 = $1.20; idle = 0.25 x $1.00; 20,000 samples = 2 epochs of 10,000 -> $0.60/epoch
    cost = estimate(_with(make_record()), golden_sheet)
    assert cost.total_usd == pytest.approx(1.20)
    assert cost.idle_accelerator_usd == pytest.approx(0.25)
    assert cost.usd_per_epoch == pytest.approx(0.60)


def test_ranks_beyond_one_vm_pay_for_more_vms(golden_sheet, make_record) -> None:
    # 6 ranks on 4-accelerator VMs -> 2 VMs -> $4.00/h -> 1800 s = $2.00
    record = _with(make_record(), world_size=6, requests=0, remote_bytes=0)
    assert instances_needed(6, golden_sheet.instance("test-vm")) == 2
    assert estimate(record, golden_sheet).compute_usd == pytest.approx(2.00)


def test_shipped_list_prices(make_record) -> None:
    sheet = default_sheet()
    base = make_record()
    s3 = estimate(_with(base, wall_s=0.0, requests=1_000_000, remote_bytes=10 * GIB), sheet, egress_class="internet")
    assert s3.requests_usd == pytest.approx(0.40)  # S3 Standard GET $0.0004 / 1,000
    assert s3.egress_usd == pytest.approx(0.90)  # AWS internet egress $0.09 / GB
    gcs = estimate(_with(base, wall_s=0.0, requests=1_000_000, remote_bytes=10 * GIB, url="gs://b/imgs"), sheet, egress_class="internet")
    assert gcs.requests_usd == pytest.approx(0.40)  # GCS Class B $0.0004 / 1,000
    assert gcs.egress_usd == pytest.approx(1.20)  # GCS internet egress $0.12 / GB
    p4d = estimate(_with(base, wall_s=3600.0, requests=0, remote_bytes=0), sheet, instance="p4d.24xlarge")
    assert p4d.compute_usd == pytest.approx(sheet.instance("p4d.24xlarge").usd_per_hour)
    assert price_inputs(base, sheet).instance.key == sheet.defaults["instance"]["aws"]
    assert price_inputs(_with(base, url="gs://b/x"), sheet).provider == "gcp"


def test_unknown_instance_and_egress_class(golden_sheet, make_record) -> None:
    with pytest.raises(UsageError, match="unknown instance type 'test-v'") as info:
        estimate(make_record(), golden_sheet, instance="test-v")
    assert "test-vm" in (info.value.hint or "")
    with pytest.raises(UsageError, match="unknown egress class 'moon'"):
        estimate(make_record(), golden_sheet, egress_class="moon")
    assert golden_sheet.instance("TEST-VM").key == "test-vm"


def test_projection(golden_sheet, make_record) -> None:
    record = _with(make_record(), requests=30_000, remote_bytes=20_000 * 100_000)
    record = dataclasses.replace(record, metrics=dataclasses.replace(record.metrics, throughput_samples_per_s=100.0))
    p = project(record, 10, 36_000, sheet=golden_sheet)
    # 360,000 samples at 100/s = 1 h -> $2.00; 1.5 GET/sample -> 540,000 GETs -> $0.216;
    # 100,000 B/sample -> 36e9 B / 2^30 x $0.02
    assert p.hours == pytest.approx(1.0)
    assert p.compute_usd == pytest.approx(2.0)
    assert p.requests_usd == pytest.approx(0.216)
    assert p.egress_usd == pytest.approx(36e9 / GIB * 0.02)
    assert p.idle_accelerator_usd == pytest.approx(0.5)
    assert p.total_usd == pytest.approx(p.compute_usd + p.requests_usd + p.egress_usd)
    with pytest.raises(UsageError):
        project(record, 0, sheet=golden_sheet)


def test_savings_against_bucket(golden_sheet, loader_trio) -> None:
    bucket, deli, disk = loader_trio
    costs = [estimate(r, golden_sheet) for r in loader_trio]
    result = savings(loader_trio, costs)
    assert result is not None
    assert (result.baseline_label, result.best_label) == ("bucket", "deli")  # disk is a bound, not a contender
    assert result.usd_saved_per_epoch == pytest.approx(costs[0].usd_per_epoch - costs[1].usd_per_epoch)
    assert result.usd_saved_per_epoch > 0  # less wait and fewer GETs must cost less here
    assert result.wait_reduction == pytest.approx(bucket.metrics.data_wait_fraction / deli.metrics.data_wait_fraction)
    assert savings([deli, disk], costs[1:]) is None
    only_disk = savings([bucket, disk], [costs[0], costs[2]])
    assert only_disk is not None and only_disk.best_label == "disk"
    zero = dataclasses.replace(deli, metrics=dataclasses.replace(deli.metrics, data_wait_fraction=0.0))
    assert math.isinf(savings([bucket, zero], costs[:2]).wait_reduction)
