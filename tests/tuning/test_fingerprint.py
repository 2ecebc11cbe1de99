"""Fingerprint and probe: stable study names, tolerance matching, no credentials."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from delibench.records import ComputeSpec
from delibench.storage import s3_endpoint_options
from delibench.tuning.fingerprint import endpoint_host, fingerprint, octave
from delibench.tuning.probe import ProbeResult, probe_environment


def probe(rtt_s: float = 0.024, bw: float = 40e6, resolved: bool = True) -> ProbeResult:
    return ProbeResult(rtt_s=rtt_s, rtt_min_s=rtt_s, bandwidth_bytes_per_s=bw, bandwidth_resolved=resolved, objects_per_s=100.0,
                       server_objects_per_s=None, mean_sample_bytes=110_000, decode_samples_per_s=300.0, cpu_count=2,
                       requests_count=10, probe_s=0.5)


def fp(p: ProbeResult, **kw: object):
    base = dict(dataset_id="abc123", dataset_url="s3://bucket/imgs", workload="resnet50", compute=ComputeSpec("emulated", 0.05),
                batch_size=32, world_size=1, mean_sample_bytes=110_000, probe=p)
    base.update(kw)
    return fingerprint(**base)  # type: ignore[arg-type]


def test_octaves() -> None:
    assert octave(20) == 4 and octave(31.9) == 4 and octave(32) == 5
    assert octave(None) is None and octave(0) is None


def test_study_name_is_stable_within_a_bucket_and_changes_across() -> None:
    endpoint = {"storage_options": s3_endpoint_options("http://user:secret@10.0.0.5:9000")}
    a, b = fp(probe(0.021), **endpoint), fp(probe(0.029), **endpoint)
    assert a.study_name() == b.study_name() and a.study_name().startswith("deli-abc123-")
    assert fp(probe(0.070), **endpoint).study_name() != a.study_name()
    assert fp(probe(), compute=ComputeSpec("emulated", 0.1), **endpoint).study_name() != a.study_name()
    assert a.study_name({"objective": "cost"}) != a.study_name({"objective": "wait"})
    assert a.endpoint == "10.0.0.5:9000" and "secret" not in str(a.as_dict())


def test_matching_tolerates_noise_across_an_octave_edge() -> None:
    a = fp(probe(0.0305))
    b = fp(probe(0.0330))  # other side of the 32 ms edge: another hash ...
    assert a.study_name() != b.study_name()
    assert b.matches(a.as_dict())  # ... but the same environment
    assert not fp(probe(0.070)).matches(a.as_dict())
    assert not fp(probe(bw=40e6, resolved=False)).matches(a.as_dict())
    assert not replace(b, workload="resnet18").matches(a.as_dict())


def test_endpoint_hosts(monkeypatch) -> None:
    monkeypatch.delenv("AWS_ENDPOINT_URL", raising=False)
    monkeypatch.delenv("AWS_ENDPOINT_URL_S3", raising=False)
    assert endpoint_host("s3://bucket/p") == "s3.amazonaws.com"
    assert endpoint_host("/tmp/x") == "file"


def test_probe_reads_a_local_dataset(tmp_path: Path) -> None:
    from delibench.workloads.datagen import make_dataset
    from delibench.workloads.models import get_workload

    manifest = make_dataset(tmp_path / "d", samples=24, classes=2, preset="cifar", seed=1)
    p = probe_environment(str(tmp_path / "d"), manifest, decode=get_workload("cifar-resnet50").decoder(), ceiling_requests=8)
    assert p.requests_count == 1 + 5 + 8 + 2 * 8
    assert p.rtt_s > 0 and p.bandwidth_bytes_per_s > 0 and p.decode_samples_per_s and p.decode_samples_per_s > 0
    assert p.mean_sample_bytes == pytest.approx(manifest.mean_sample_bytes)
    link = p.link_estimate()
    assert link.rtt_s == p.rtt_s and link.cpu_count == p.cpu_count
