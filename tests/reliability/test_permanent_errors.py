"""Permanent errors (missing object, corrupt bytes, corrupt image) under ``on_error=raise|skip``.

``raise`` stops with an error that names the key and the credential-free URL; ``skip`` goes on
and lists every skipped sample in ``LoaderStats.skipped_keys``, and the epoch then delivers every
*other* sample exactly once. Also measures what checksum verification costs per sample.
"""

from __future__ import annotations

import hashlib
import io
import shutil
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from delibench.errors import FetchError, UsageError
from delibench.loaders.api import ImageDecoder
from delibench.loaders.base import LoaderContext
from delibench.loaders.bucket import BucketLoader
from delibench.loaders.deli import DeliLoader
from delibench.loaders.disk import DiskLoader
from delibench.loaders.pipeline import DecodeError
from delibench.loaders.source import HedgePolicy, SampleSource, is_transient
from delibench.manifest import Manifest, SampleEntry, checksum, write_manifest
from delibench.storage import resolve
from delibench.loaders.testing import Corpus, copy_corpus, make_context
from delibench.testbed.profiles import LinkProfile

from .conftest import Scenario, assert_exact, collect, report

LOADERS = {
    "deli": lambda ctx, **o: DeliLoader(ctx, cache_size=0, prefetch_depth=16, concurrency=4, **o),
    "bucket": lambda ctx, **o: BucketLoader(ctx, concurrency=2, **o),
    "disk": lambda ctx, **o: DiskLoader(ctx, **o),
}


def _copy(corpus: Corpus, root: Path) -> Corpus:
    shutil.copytree(corpus.url, root)
    return Corpus(str(root), corpus.manifest)


def _corrupt(corpus: Corpus, index: int) -> str:
    """Flip bytes of one sample on disk (same size); returns its key."""
    entry = corpus.manifest.samples[index]
    path = Path(corpus.url) / entry.key
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    return entry.key


@pytest.mark.parametrize("kind", ["deli", "disk"])
def test_checksum_mismatch_raise_names_key_and_skip_lists_it(kind: str, rel_local: Corpus, tmp_path: Path) -> None:
    corpus = _copy(rel_local, tmp_path / "ds")
    bad = [_corrupt(corpus, i) for i in (4, 57)]
    ctx = make_context(corpus, batch_size=8, num_workers=1, epochs=1)
    with LOADERS[kind](ctx) as loader:  # verify=True, on_error=raise by default
        with pytest.raises(FetchError) as info:
            collect(loader)
    assert info.value.key in bad and "checksum mismatch" in str(info.value) and info.value.key in str(info.value)
    with LOADERS[kind](ctx, on_error="skip") as loader:
        indices, items, _, _ = collect(loader)
        stats = loader.stats()
    assert sorted(stats.skipped_keys) == sorted(bad)
    lost = assert_exact(corpus, indices, items, stats.skipped_keys)
    assert len(indices) == len(corpus.manifest) - 2
    report(Scenario(f"corrupt bytes x2, verify, on_error=skip ({kind})", {"corrupt": 2}, stats.requests_count,
                    stats.retries_count, stats.hedges_count, len(indices), lost, skipped=len(stats.skipped_keys)))
    if kind == "deli":
        with LOADERS[kind](ctx, verify=False) as loader:  # without verification the damage goes unnoticed
            indices, items, _, _ = collect(loader)
        damaged = {corpus.manifest.samples[i].key for i, item in zip(indices, items) if item != corpus.expected(i)}
        assert damaged == set(bad) and len(items) == len(corpus.manifest)


def test_checksum_mismatch_is_reread_once(rel_local: Corpus, tmp_path: Path) -> None:
    corpus = _copy(rel_local, tmp_path / "ds")
    key = _corrupt(corpus, 0)
    source = SampleSource(corpus.url, corpus.manifest, verify=True)
    with pytest.raises(FetchError, match="checksum mismatch"):
        source.fetch_sync(0)
    assert source.meter.requests_count == 2 and source.meter.retries_count == 1  # bytes can break in transit: one re-read
    assert key


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["deli", "bucket"])
def test_missing_object_404(kind: str, rel_s3: Corpus, monkeypatch: pytest.MonkeyPatch, s3_server: Any,
                            fresh_s3fs: None) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_server.endpoint_url)
    loc = resolve(rel_s3.url)
    missing = rel_s3.manifest.samples[9].key
    data = loc.filesystem().cat_file(loc.child(missing))
    loc.filesystem().rm_file(loc.child(missing))
    try:
        ctx = make_context(rel_s3, batch_size=8, num_workers=1, epochs=1)
        with LOADERS[kind](ctx) as loader:
            with pytest.raises(FetchError) as info:
                collect(loader)
            raised = loader.stats()
        assert info.value.key == missing and info.value.url == f"{rel_s3.url}/{missing}"
        assert "gave up" not in str(info.value)  # a 404 is permanent: not retried
        assert raised.retries_count == 0
        with LOADERS[kind](ctx, on_error="skip") as loader:
            indices, items, _, _ = collect(loader)
            stats = loader.stats()
        assert stats.skipped_keys == (missing,) and stats.retries_count == 0
        lost = assert_exact(rel_s3, indices, items, stats.skipped_keys)
        report(Scenario(f"missing object (404), on_error=skip ({kind})", {"404": 1}, stats.requests_count,
                        stats.retries_count, stats.hedges_count, len(indices), lost, skipped=1))
    finally:
        # NOTE: restore through a client made now, not the cached one made before the workers forked:
        # that one's pooled connection once hung this PUT for minutes (open finding, issue note).
        fresh = resolve(rel_s3.url, {"skip_instance_cache": True}).filesystem()
        fresh.pipe_file(loc.child(missing), data)


def _jpeg(seed: int) -> bytes:
    from PIL import Image

    img = Image.new("RGB", (16, 12), (seed * 40 % 256, 90, 200))
    buf = io.BytesIO()
    img.save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def image_corpus(tmp_path: Path) -> tuple[Corpus, str]:
    """12 tiny JPEGs, one of them garbage whose checksum matches the manifest (decode must fail)."""
    entries = []
    for i in range(12):
        key = f"img/{i:03d}.jpg"
        data = b"not a jpeg at all" * 20 if i == 7 else _jpeg(i)
        path = tmp_path / "imgs" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        entries.append(SampleEntry(key, len(data), i % 2, checksum(data)))
    manifest = Manifest(samples=tuple(entries), classes=("a", "b"))
    write_manifest(manifest, str(tmp_path / "imgs"))
    return Corpus(str(tmp_path / "imgs"), manifest), "img/007.jpg"


@pytest.mark.parametrize("kind", ["deli", "bucket"])
def test_corrupt_image_decode_error_names_key_from_worker(kind: str, image_corpus: tuple[Corpus, str]) -> None:
    corpus, bad = image_corpus
    ImageDecoder()(_jpeg(0), 0)  # import the image stack in the parent, not in every forked worker
    ctx = LoaderContext(dataset_url=corpus.url, manifest=corpus.manifest, decode=ImageDecoder(), batch_size=4, num_workers=2, seed=1)
    with LOADERS[kind](ctx) as loader:
        with pytest.raises(DecodeError) as info:
            for _ in loader.iter_epoch(0):
                pass
    assert info.value.key == bad and bad in str(info.value) and "could not decode" in str(info.value)
    assert "UnidentifiedImageError" in str(info.value)
    with LOADERS[kind](ctx, on_error="skip") as loader:
        seen = [int(i) for batch in loader.iter_epoch(0) for i in batch.indices]
        stats = loader.stats()
    assert stats.skipped_keys == (bad,)
    assert sorted(seen) == [i for i in range(12) if i != 7]


def test_transient_classification() -> None:
    assert not is_transient(FileNotFoundError("nope"))
    assert not is_transient(PermissionError("Access Denied"))
    assert not is_transient(ValueError("bug"))
    assert is_transient(ConnectionResetError(104, "reset"))
    assert is_transient(TimeoutError())
    assert is_transient(OSError(16, "Please reduce your request rate."))
    wrapped = OSError("boom")
    wrapped.__cause__ = type("ClientError", (Exception,), {"response": {"ResponseMetadata": {"HTTPStatusCode": 503}}})()
    assert is_transient(wrapped)
    denied = OSError("denied")
    denied.__cause__ = type("ClientError", (Exception,), {"response": {"ResponseMetadata": {"HTTPStatusCode": 403}}})()
    assert not is_transient(denied)


def test_options_are_validated() -> None:
    from delibench.loaders.deli import DeliOptions

    for bad in ({"on_error": "ignore"}, {"retries": -1}, {"hedge_after": "p10"}, {"hedge_after": "soon"},
                {"retry_deadline_s": "-3s"}, {"verify": "yes"}):
        with pytest.raises(UsageError):
            DeliOptions(**bad)
    assert HedgePolicy.parse("p95") == HedgePolicy(percentile=95.0, floor_s=0.01)
    assert HedgePolicy.parse("250ms") == HedgePolicy(after_s=0.25)
    assert HedgePolicy.parse("off") is None and HedgePolicy.parse(None) is None


def test_verification_cost_per_sample() -> None:
    """sha256 of a 110 KB sample (the ImageNet mean) against a 10 ms same-region GET: report the ratio."""
    import os

    data = os.urandom(110_000)
    expected = hashlib.sha256(data).hexdigest()
    n = 300
    start = time.perf_counter()
    for _ in range(n):
        assert checksum(data) == expected
    per_sample_s = (time.perf_counter() - start) / n
    report(Scenario("checksum verification cost", {}, 0, 0, 0, n, 0, outcome="measured",
                    extra={"sha256_per_110KB_sample_ms": f"{per_sample_s * 1e3:.3f}"}))
    assert per_sample_s > 0


@pytest.fixture(scope="module")
def mnist_local(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """96 real 28x28 JPEGs in 4 classes, so a real workload decodes them."""
    from delibench.workloads.datagen import make_dataset

    root = tmp_path_factory.mktemp("perm-mnist") / "ds"
    make_dataset(root, samples=96, classes=4, preset="mnist", seed=5, workers=1)
    return root


@pytest.mark.s3
@pytest.mark.timeout(240)
@pytest.mark.parametrize("loader", ["bucket", "deli:prefetch_depth=16,concurrency=4"])
def test_a_run_that_fails_for_good_mid_epoch_writes_a_failed_record_of_what_it_measured(
    loader: str, mnist_local: Path, s3_bucket: str, shaped_s3: Any, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``delibench run`` behind the link emulator, one object gone (404: permanent) late in the epoch.

    The run exits 1 with the one-line error naming the key, and still writes its record: status
    ``failed``, the error (naming the key), and the steps measured before it.
    """
    import json

    from delibench.cli.app import main
    from delibench.loaders.publish import push
    from delibench.loaders.sampler import epoch_order

    url = f"{s3_bucket}/mnist"
    manifest = push(mnist_local, url, concurrency=8)
    missing = manifest.samples[epoch_order(len(manifest), 0, 0, 0, 1)[-1]].key  # in the epoch's last batch
    resolve(url).filesystem().rm_file(resolve(url).child(missing))
    link = shaped_s3(LinkProfile(name="near", rtt_s=0.004), seed=0)
    results = tmp_path / "results"
    capsys.readouterr()
    code = main(["run", "--data", url, "--loader", loader, "--workload", "mnist-cnn", "--compute", "emulated:5ms",
                 "--batch-size", "16", "--num-workers", "1", "--warmup-steps", "1", "--no-diagnose", "--no-progress",
                 "--results-dir", str(results)])
    err = capsys.readouterr().err
    assert code == 1, err
    (path,) = results.glob("*.json")
    doc = json.loads(path.read_text())
    assert doc["status"] == "failed"
    assert missing in doc["error"] and "delibench-test-secret" not in path.read_text()
    steps = Path(str(path.with_suffix("")) + ".steps.csv").read_text().strip().splitlines()[1:]
    assert len(steps) >= 1 and doc["metrics"]["total_samples"] >= 16  # the batches before the failure
    assert doc["metrics"]["total_samples"] < len(manifest)
    assert doc["issues"][0]["code"] == "failed"
    error_lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and missing in error_lines[0]
    assert str(path) in err.replace("\n", "")
    report(Scenario(f"object gone (404) late in the epoch, CLI run ({loader.split(':')[0]})", {"404": 1},
                    doc["loader_stats"]["requests_count"], doc["loader_stats"]["retries_count"], 0,
                    doc["metrics"]["total_samples"], 0, outcome="exit 1, failed record written",
                    extra={"link_requests": link.stats().requests}))


@pytest.mark.timeout(120)
def test_run_api_failure_keeps_the_measured_epochs_and_says_where_the_record_went(mnist_local: Path, tmp_path: Path) -> None:
    """Through the API: epoch 0 completes, epoch 1 fails on a missing file; the record keeps both."""
    from delibench.app.session import run
    from delibench.loaders.sampler import epoch_order
    from delibench.records import ComputeSpec, LoaderSpec, RunSpec

    root = tmp_path / "ds"
    shutil.copytree(mnist_local, root)
    manifest = Manifest.from_json((root / "_delibench_manifest.json").read_text())
    steps: list[Any] = []

    def on_step(step: Any) -> None:
        steps.append(step)
        if len(steps) == 6:  # the end of epoch 0 (96 samples / 16): the file goes before epoch 1 starts
            (root / manifest.samples[epoch_order(len(manifest), 1, 0, 0, 1)[-1]].key).unlink()

    spec = RunSpec(dataset_url=str(root), workload="mnist-cnn", loader=LoaderSpec("bucket"),
                   compute=ComputeSpec("emulated", 0.002), batch_size=16, num_workers=0, epochs=2, warmup_steps=1)
    with pytest.raises(FetchError) as info:
        run(spec, results_dir=str(tmp_path / "results"), on_step=on_step, price=False)
    (path,) = info.value.record_paths  # type: ignore[attr-defined]
    from delibench.reports.store import load_record

    record = load_record(path)
    assert record.status == "failed" and info.value.key in (record.error or "") and not record.valid
    assert record.metrics.total_samples == len(steps) * 16 and len(steps) > 6
    assert {s.epoch for s in record.timeline} == {0, 1} and len(record.timeline) == len(steps)
    starts = [s.start_s for s in record.timeline]
    assert starts == sorted(starts)  # the failed epoch's steps follow the first epoch's on one timeline
