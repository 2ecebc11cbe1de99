"""The measured loop over a real loader: generated JPEGs on disk, decoded by the workload's decoder in DataLoader workers."""

from __future__ import annotations

import pytest

from delibench.loaders.api import build_loader
from delibench.loaders.base import LoaderContext
from delibench.measure import check_validity
from delibench.records import ComputeSpec, LoaderSpec
from delibench.workloads.datagen import make_dataset
from delibench.workloads.loop import measure_loader
from delibench.workloads.models import get_workload

pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding capabilities:DeprecationWarning")


def test_disk_loader_with_worker_decoding_gives_a_full_valid_read(tmp_path):
    manifest = make_dataset(tmp_path / "cifar", samples=48, classes=4, preset="cifar", workers=1)
    wl = get_workload("cifar-resnet50", num_classes=len(manifest.classes))
    ctx = LoaderContext(
        dataset_url=str(tmp_path / "cifar"),
        manifest=manifest,
        decode=wl.decoder(train=True),  # crosses into a worker process
        batch_size=8,
        num_workers=1,
    )
    loader = build_loader(LoaderSpec("disk"), ctx)
    try:
        compute = wl.build(compute=ComputeSpec(kind="emulated", step_time_s=0.005))
        seen: list[int] = []
        result = measure_loader(loader, compute, epochs=2, on_step=lambda s: seen.append(s.samples))
    finally:
        loader.close()
    assert result.stopped is None and [t.samples for t in result.epochs] == [48, 48]
    assert all(t.complete for t in result.epochs) and sum(seen) == 96
    assert result.time_to_first_batch_s > 0 and all(s.compute_s >= 0.004 for s in result.steps)
    metrics = result.summarize(warmup_steps=2, bytes_per_sample=manifest.mean_sample_bytes)
    issues = check_validity(metrics, expected_samples_per_epoch=48)
    assert not [i for i in issues if i.severity == "invalid"], issues
    assert 0.0 <= metrics.data_wait_fraction < 1.0 and metrics.throughput_bytes_per_s > 0
