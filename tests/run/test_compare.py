"""``delibench compare``: bucket, deli and a local disk copy on the same data behind a shaped link."""

from __future__ import annotations

import pytest

from tests.run.conftest import FAST, SAMPLES

from delibench.reports.schema import validate_record

pytestmark = [pytest.mark.s3, pytest.mark.timeout(240)]


def test_compare_bucket_deli_disk_interleaved_full_reads(s3_mnist, mnist_dir, shaped_s3, tmp_path, cli, monkeypatch):
    from delibench.testbed.profiles import LinkProfile
    from delibench.workloads import loop

    link = shaped_s3(LinkProfile("test-link", rtt_s=0.005, connect_rtts=1))
    order: list[tuple[str, int]] = []
    real_measure = loop.measure_loader

    def spy(loader, compute, **kwargs):  # the real loop, with the order of (loader, epoch) calls noted
        order.append((type(loader).__name__, kwargs["start_epoch"]))
        return real_measure(loader, compute, **kwargs)

    monkeypatch.setattr(loop, "measure_loader", spy)
    res = cli(
        "compare", "--data", s3_mnist, "--loader", "bucket", "--loader", "deli:cache_size=64MiB",
        "--loader", f"disk={mnist_dir}", *FAST, "--epochs", "2", "--json", "--results-dir", tmp_path,
    )
    assert res.code == 0, res.err
    assert "Traceback" not in res.err and "exception was never retrieved" not in res.err, res.err
    docs = res.json()
    assert [d["spec"]["loader"]["kind"] for d in docs] == ["bucket", "deli", "disk"]
    for doc in docs:
        validate_record(doc)
        assert doc["status"] == "complete"
        codes = [i["code"] for i in doc["issues"]]
        assert "partial-read" not in codes and not [i for i in doc["issues"] if i["severity"] == "invalid"], doc["issues"]
        # every loader delivered every sample, every epoch
        assert [(e["epoch"], e["samples"]) for e in doc["metrics"]["epochs"]] == [(0, SAMPLES), (1, SAMPLES)]
        assert (tmp_path / f"{doc['run_id']}.json").is_file()
    assert len({d["run_id"] for d in docs}) == 3
    reports = list(tmp_path.glob("report-*.html"))  # compare writes its HTML report by default
    assert len(reports) == 1 and str(reports[0]) in res.err.replace("\n", "")

    # interleaved: epoch 0 of every loader before epoch 1 of any
    names = [name for name, _ in order]
    assert [epoch for _, epoch in order] == [0, 0, 0, 1, 1, 1], order
    assert names[:3] == names[3:] and len(set(names)) == 3, order

    bucket, deli, disk = docs
    # bucket: one GET per sample per epoch; deli with a cache that holds the dataset: epoch 2 made none
    assert bucket["loader_stats"]["requests_count"] == 2 * SAMPLES
    assert deli["loader_stats"]["requests_count"] == SAMPLES
    assert deli["loader_stats"]["cache_hits"] >= SAMPLES
    assert disk["loader_stats"]["cache_hits"] == 0
    # the GETs really crossed the link (disk never did)
    assert link.stats().requests >= 3 * SAMPLES


def test_disk_loader_is_not_charged_for_cloud_requests(mnist_dir, tmp_path, cli):
    res = cli("run", "--data", mnist_dir, "--loader", f"disk={mnist_dir}", *FAST, "--max-steps", "4", "--json", "--results-dir", tmp_path)
    assert res.code == 0, res.err
    doc = res.json()
    assert doc["cost"]["requests_usd"] == 0 and doc["cost"]["egress_usd"] == 0, doc["cost"]
