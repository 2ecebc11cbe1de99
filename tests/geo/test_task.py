"""geo/task.py: the cnn-jpeg task's data (learnable classes, regional shards), its deli batches, its strategies."""

from __future__ import annotations

import pytest
import torch

from delibench.errors import UsageError
from delibench.geo.task import (
    RUN_STRATEGIES,
    RegionBatches,
    cnn_model,
    evaluate,
    load_held_out,
    make_region_shards,
    matches_reference,
)
from delibench.geo.train import GeoRunSpec
from delibench.manifest import read_manifest

REGIONS = ("us-east", "us-west", "eu-west")
#: The accuracy the test's centralised CNN must reach on the held-out split (10 classes: chance 0.10).
TARGET_ACCURACY = 0.35


@pytest.fixture(scope="module")
def shards(tmp_path_factory: pytest.TempPathFactory):
    return make_region_shards(tmp_path_factory.mktemp("geo-task"), REGIONS, samples_per_region=200, held_out=200, skew=1.0, seed=3)


def test_images_differ_by_class(shards) -> None:
    """Each class has its own colour: the per-class mean colours are far apart, and a nearest-mean rule beats chance by far."""
    held = load_held_out(shards.held_out)
    colour = held.inputs.mean(dim=(2, 3))  # N x 3
    classes = sorted(set(held.labels.tolist()))
    assert classes == list(range(10))
    means = torch.stack([colour[held.labels == c].mean(0) for c in classes])
    gaps = torch.cdist(means, means) + torch.eye(10) * 1e9
    assert float(gaps.min()) > 0.05  # normalised units: no two classes share a colour
    nearest = torch.cdist(colour, means).argmin(1)
    assert float((nearest == held.labels).float().mean()) > 0.3


def test_regional_shards_hold_their_own_classes(shards) -> None:
    for region, path in shards.shards.items():
        labels = {s.label for s in read_manifest(path).samples}
        assert labels <= set(shards.classes_of[region])
    assert sum(shards.samples.values()) == 600
    assert {len(v) for v in shards.classes_of.values()} == {3, 4}


def test_cnn_reaches_the_accuracy_target_through_deli(shards) -> None:
    """Centralised SGD on every shard, read by deli from the shard directories, beats the target on the held-out split."""
    torch.manual_seed(0)
    model = cnn_model(10, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    batches = RegionBatches(list(shards.local_sources()), 0, 1, batch_size=16)
    try:
        for _ in range(360):
            x, y = batches.next()
            loss = torch.nn.functional.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        assert set(batches.bytes_by_pair()) == {f"{r}->{r}" for r in REGIONS}
    finally:
        batches.close()
    val_loss, accuracy = evaluate(model, load_held_out(shards.held_out))
    assert accuracy >= TARGET_ACCURACY, (val_loss, accuracy)


def test_a_region_shard_is_partitioned_over_its_workers(shards) -> None:
    """Two workers of one region see disjoint halves of its shard in an epoch; a remote read is counted home->reader."""
    src = [s for s in shards.local_sources({"eu-west": "us-east"}) if s.home == "eu-west"]
    assert src[0].reader == "us-east"
    seen = []
    for rank in (0, 1):
        b = RegionBatches(src, rank, 2, batch_size=10)
        try:
            xs = [b.next()[0] for _ in range(len(b.loaders[0]))]
            seen.append({tuple(x.flatten()[:8].tolist()) for batch in xs for x in batch})
            assert list(b.bytes_by_pair()) == ["eu-west->us-east"] and b.bytes_by_pair()["eu-west->us-east"] > 0
        finally:
            b.close()
    assert not seen[0] & seen[1]


def test_run_spec_checks_the_task(shards) -> None:
    workers = tuple((r, 1) for r in REGIONS)
    with pytest.raises(UsageError, match="unknown task"):
        GeoRunSpec(strategy="ma", workers=workers, task="resnet")
    with pytest.raises(UsageError, match="reads no shard"):
        GeoRunSpec(strategy="ma", workers=workers, task="cnn-jpeg", data=shards.local_sources()[:2], val_url=shards.held_out)
    with pytest.raises(UsageError, match="own pace"):
        GeoRunSpec(strategy="ma", workers=workers, region_steps=(("us-east", 5),))
    with pytest.raises(UsageError, match="own pace"):
        GeoRunSpec(strategy="allreduce", workers=workers, time_budget_s=5.0)
    spec = GeoRunSpec(strategy="diloco", workers=workers, task="cnn-jpeg", data=shards.local_sources(), val_url=shards.held_out, staleness=None)
    assert spec.staleness is None and "diloco" in RUN_STRATEGIES


def test_matches_reference() -> None:
    assert matches_reference(1.2, 1.0) and not matches_reference(1.3, 1.0)
    assert not matches_reference(float("nan"), 1.0) and not matches_reference(float("inf"), 1.0)


def test_sources_from_regions_reads_each_regions_data_url() -> None:
    from delibench.geo.regions import parse_regions
    from delibench.geo.task import sources_from_regions

    acc = {"count": 1, "type": "x", "usd_per_hour": 1.0, "step_time_s": 0.1}
    config = parse_regions({"regions": {"a": {"accelerators": acc, "data_url": "s3://bucket-a/imgs"}, "b": {"accelerators": acc}},
                             "links": [{"between": ["a", "b"], "rtt_s": 0.07, "bandwidth_bytes_per_s": 1e8, "egress_usd_per_gb": 0.02}]})
    (src,) = sources_from_regions(config, ["a"], {"endpoint_url": "http://x"})
    assert (src.home, src.reader, src.url, src.storage_options) == ("a", "a", "s3://bucket-a/imgs", {"endpoint_url": "http://x"})
    assert "storage_options" not in src.public()
    with pytest.raises(UsageError, match="no data_url"):
        sources_from_regions(config, ["a", "b"])


def test_region_batches_resume_from_a_checkpoint(shards) -> None:
    """The data state in a checkpoint: a restarted rank gets the batches an uninterrupted one would have got."""
    src = list(shards.local_sources())[:2]

    def firsts(b: RegionBatches, n: int) -> list[list[int]]:
        return [b.next()[1].tolist() for _ in range(n)]

    whole = RegionBatches(src, 0, 1, batch_size=8)
    try:
        expected = firsts(whole, 7)
    finally:
        whole.close()
    first = RegionBatches(src, 0, 1, batch_size=8)
    try:
        assert firsts(first, 3) == expected[:3]
        state = first.state_dict()
    finally:
        first.close()
    again = RegionBatches(src, 0, 1, batch_size=8)
    try:
        again.load_state_dict(state)
        assert firsts(again, 4) == expected[3:]
        with pytest.raises(UsageError):
            again.load_state_dict({"version": 1, "next": 0, "loaders": [state["loaders"][0]]})
    finally:
        again.close()
