"""The peers at their best (issue 17 item 5): every configuration delivers each sample exactly once.

Map-style peers (``s3torchconnector``, its ``workers`` variant, ``litdata-raw``) follow
``epoch_order`` and run the conformance kit. Streaming peers read shards/chunks in their own order
by design: for them each epoch must deliver every sample of the rank's share once, bytes intact,
shards split across ranks without overlap, and nothing may outlive ``close()``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from delibench.loaders.testing import LoaderConformance, checksum_decode, copy_corpus, leftovers, make_corpus, resource_snapshot


def _build(kind: str, ctx: Any, **options: Any) -> Any:
    from delibench.loaders import build_loader
    from delibench.records import LoaderSpec

    return build_loader(LoaderSpec(kind, options), ctx)


@pytest.mark.s3
class TestS3TorchConnectorMoreWorkers(LoaderConformance):
    """``s3torchconnector`` with its own worker count (the map-style configuration users raise)."""

    @pytest.fixture
    def corpus(self, s3_bucket: str, tmp_path: Path) -> Any:
        pytest.importorskip("s3torchconnector")
        return copy_corpus(make_corpus(tmp_path / "data", samples=22), f"{s3_bucket}/c")

    @pytest.fixture
    def loader_factory(self) -> Any:
        return lambda ctx: _build("s3torchconnector", ctx, workers=3)


@pytest.mark.s3
class TestLitDataRaw(LoaderConformance):
    """``litdata-raw``: StreamingRawDataset's own concurrent batch GETs under the context's order."""

    @pytest.fixture
    def corpus(self, s3_bucket: str, tmp_path: Path) -> Any:
        pytest.importorskip("litdata")
        return copy_corpus(make_corpus(tmp_path / "data", samples=22), f"{s3_bucket}/c")

    @pytest.fixture
    def loader_factory(self) -> Any:
        return lambda ctx: _build("litdata-raw", ctx)

    @pytest.fixture(autouse=True)
    def _endpoint_as_data(self, s3_server: Any) -> None:
        # The endpoint as data: LitData's obstore path needs to know it is plain http (see peers.py).
        self.storage_options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url}}

    def context(self, corpus: Any, **overrides: Any) -> Any:
        return super().context(corpus, **{"storage_options": self.storage_options, **overrides})


@pytest.fixture(scope="module")
def image_dataset(s3_server: Any, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Any, dict[str, Any]]:
    """24 JPEGs in 3 tar shards, pushed with their LitData and MDS copies; (url, manifest, storage options)."""
    import botocore.session

    from delibench.loaders.peers import convert_for_peers
    from delibench.loaders.publish import push
    from delibench.workloads.datagen import make_dataset

    options = {"client_kwargs": {"endpoint_url": s3_server.endpoint_url, "region_name": "us-east-1"},
               "key": "delibench-test", "secret": "delibench-test-secret"}
    client = botocore.session.get_session().create_client(
        "s3", endpoint_url=s3_server.endpoint_url, aws_access_key_id="k", aws_secret_access_key="s", region_name="us-east-1")
    client.create_bucket(Bucket="peers-best")
    local = tmp_path_factory.mktemp("peers") / "imgs"
    make_dataset(local, samples=24, preset="cifar", layout="both", shard_samples=8, seed=3)
    url = "s3://peers-best/imgs"
    manifest = push(local, url, storage_options=options)
    convert_for_peers(manifest, local, url, options)
    return url, manifest, options


STREAMING = [
    ("webdataset", {}, "webdataset"),
    ("webdataset", {"shuffle": 0}, "webdataset"),
    ("s3torchconnector-shards", {}, "s3torchconnector"),
    ("litdata", {}, "litdata"),
    ("mosaic-streaming", {}, "streaming"),
]


@pytest.mark.s3
@pytest.mark.slow
@pytest.mark.parametrize(("kind", "options", "package"), STREAMING, ids=[f"{k}{o or ''}" for k, o, _ in STREAMING])
def test_streaming_peers_deliver_every_sample_once_per_epoch(
    kind: str, options: dict[str, Any], package: str, image_dataset: tuple[str, Any, dict[str, Any]]
) -> None:
    pytest.importorskip(package)
    from delibench.loaders.base import LoaderContext

    url, manifest, storage_options = image_dataset
    expected = [f"{s.sha256}:{s.label}" for s in manifest.samples]
    before = resource_snapshot()
    ctx = LoaderContext(dataset_url=url, manifest=manifest, decode=checksum_decode, batch_size=5, num_workers=2,
                        seed=1, storage_options={**storage_options, "anon": kind.startswith("s3torch")})
    loader = _build(kind, ctx, **options)
    orders = []
    try:
        for epoch in range(2):
            seen, items = [], []
            for batch in loader.iter_epoch(epoch):
                seen.extend(int(i) for i in batch.indices)
                items.extend(batch.inputs)
            assert sorted(seen) == list(range(len(manifest))), f"epoch {epoch}: not every sample exactly once"
            assert items == [expected[i] for i in seen], "delivered bytes or labels differ from the manifest"
            orders.append(seen)
        for _ in loader.iter_epoch(2):  # an early stop leaves the loader ready for a complete epoch
            break
        assert sorted(int(i) for b in loader.iter_epoch(3) for i in b.indices) == list(range(len(manifest)))
        assert loader.stats().requests_count >= 1 and loader.stats().bytes_read_remote > 0
    finally:
        loader.close()
    if options.get("shuffle", 1) and kind != "mosaic-streaming":
        assert orders[0] != orders[1], "the peer's own shuffle should change the order between epochs"
    _threads, children = leftovers(before)
    assert not [pid for pid in children if not _resource_tracker(pid)], f"processes left after close: {children}"


def _resource_tracker(pid: int) -> bool:
    """Python's multiprocessing resource tracker: one per interpreter, started by the first shared
    memory segment (Mosaic's), alive until the interpreter exits; not a process of the loader."""
    import psutil

    try:
        return "multiprocessing.resource_tracker" in " ".join(psutil.Process(pid).cmdline())
    except psutil.Error:
        return True


@pytest.mark.s3
@pytest.mark.parametrize("kind", ["webdataset", "s3torchconnector-shards"])
def test_shard_streams_split_shards_across_ranks_without_overlap(kind: str, image_dataset: tuple[str, Any, dict[str, Any]]) -> None:
    pytest.importorskip(kind.split("-")[0])
    from delibench.loaders.base import LoaderContext

    url, manifest, storage_options = image_dataset
    seen = []
    for rank in range(3):
        ctx = LoaderContext(dataset_url=url, manifest=manifest, decode=checksum_decode, batch_size=4, num_workers=1, seed=0,
                            rank=rank, world_size=3, storage_options={**storage_options, "anon": kind.startswith("s3torch")})
        loader = _build(kind, ctx)
        try:
            mine = [int(i) for b in loader.iter_epoch(0) for i in b.indices]
        finally:
            loader.close()
        assert len(mine) == 8  # one 8-sample shard per rank
        seen.extend(mine)
    assert sorted(seen) == list(range(len(manifest)))


@pytest.mark.s3
def test_converted_peers_without_their_copy_are_a_usage_error(s3_bucket: str, tmp_path: Path) -> None:
    from delibench.errors import UsageError
    from delibench.loaders.testing import make_context

    corpus = copy_corpus(make_corpus(tmp_path / "data", samples=6), f"{s3_bucket}/c")
    for kind, package in (("litdata", "litdata"), ("mosaic-streaming", "streaming")):
        pytest.importorskip(package)
        with pytest.raises(UsageError, match="convert_for_peers"):
            _build(kind, make_context(corpus))


def test_peer_variants_expand_and_group_by_project() -> None:
    from delibench.app.bench.matrix import PEER_VARIANTS, expand_loaders, peer_family
    from delibench.plugins import loaders

    names = expand_loaders(["deli", "peers", "bucket", "webdataset"])
    assert names[0] == "deli" and names[-1] == "bucket" and names.count("webdataset") == 1
    assert set(PEER_VARIANTS) <= set(names)
    assert {v.kind for v in PEER_VARIANTS.values()} <= set(loaders.names())
    assert peer_family("s3torchconnector@8w") == "s3torchconnector" == peer_family("s3torchconnector-shards")
    assert peer_family("litdata-raw") == "litdata" and peer_family("fsspec-cache") == "fsspec-cache"
    assert peer_family("deli") is None and peer_family("bucket") is None


def test_peer_table_puts_each_projects_best_first_with_delis_ratios() -> None:
    from delibench.app.bench.format import format_peer_table

    def fig(name: str, rate: float, wait: float) -> dict[str, Any]:
        return {"loader": name, "throughput_per_s": rate, "wait_fraction": wait, "wait_s_per_sample": wait / rate,
                "sliced": False, "warmup_s": 1.0}

    data = {"figures": [fig("deli", 100.0, 0.05), fig("bucket", 10.0, 0.9), fig("s3torchconnector", 20.0, 0.8),
                        fig("s3torchconnector-shards", 50.0, 0.5), fig("litdata", 80.0, 0.2)]}
    lines = format_peer_table(data)
    rows = [line.split() for line in lines[2:]]
    assert [r[:2] for r in rows[:3]] == [["best", "litdata"], ["best", "s3torchconnector-shards"], ["s3torchconnector", "20.0"]]
    litdata = rows[0]
    assert litdata[6] == "1.25x" and litdata[7] == "5.00x"  # 100/80; (0.2/80)/(0.05/100)
    assert rows[-1][0] == "deli" and not any(r[1] == "bucket" for r in rows)
    assert format_peer_table({"figures": [fig("bucket", 1.0, 0.9)]}) == []
