"""Building loaders by name, option errors, the three-line deli_loader API, the memory and disk loaders."""

from __future__ import annotations

from pathlib import Path

import pytest

from delibench.errors import UsageError
from delibench.loaders import build_loader, deli_loader
from delibench.records import LoaderSpec
from delibench.loaders.testing import Corpus, make_context


def test_unknown_loader_suggests_a_name(local_corpus: Corpus) -> None:
    with pytest.raises(UsageError, match="did you mean 'deli'"):
        build_loader(LoaderSpec("delli"), make_context(local_corpus))


@pytest.mark.parametrize("kind", ["bucket", "disk", "fsspec-cache", "memory", "deli"])
def test_unknown_option_is_a_usage_error(local_corpus: Corpus, kind: str) -> None:
    with pytest.raises(UsageError, match=f"unknown option 'concurrancy' for loader {kind!r}"):
        build_loader(LoaderSpec(kind, {"concurrancy": 2}), make_context(local_corpus))


@pytest.mark.parametrize(
    "kind,module,cls",
    [("s3torchconnector", "s3torchconnector", "S3TorchConnectorLoader"), ("webdataset", "webdataset", "WebDatasetLoader")],
)
def test_missing_peer_names_the_install_command(
    kind: str, module: str, cls: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whether or not the peer is installed here, hide it and check the user gets the install command."""
    import sys

    from delibench.plugins import loaders
    from delibench.registry import Registry

    import delibench.loaders as package
    import delibench.loaders.peers  # noqa: F401 - the real module, loaded first so monkeypatch restores it after

    monkeypatch.setitem(sys.modules, module, None)  # 'import <module>' now raises ImportError
    monkeypatch.delitem(sys.modules, "delibench.loaders.peers", raising=False)  # re-imported without it
    monkeypatch.setattr(package, "peers", package.peers)  # restored after the probe re-import
    fresh = Registry("delibench.loaders.probe")
    fresh.register(kind, f"delibench.loaders.peers:{cls}", err=loaders.install_hint(kind))
    with pytest.raises(UsageError) as info:
        fresh.get(kind)
    assert "delibench[peers]" in str(info.value)


def test_disk_loader_refuses_bucket_urls(local_corpus: Corpus) -> None:
    ctx = make_context(Corpus("s3://some-bucket/ds", local_corpus.manifest))
    with pytest.raises(UsageError, match="local directories"):
        build_loader(LoaderSpec("disk"), ctx)
    loader = build_loader(LoaderSpec("disk", {"path": local_corpus.url}), ctx)
    assert sorted(int(i) for b in loader.iter_epoch(0) for i in b.indices) == list(range(len(local_corpus.manifest)))
    loader.close()


def test_memory_loader_serves_a_subset_from_ram(local_corpus: Corpus) -> None:
    loader = build_loader(LoaderSpec("memory", {"sample_count": 7}), make_context(local_corpus, num_workers=0))
    first = [int(i) for b in loader.iter_epoch(0) for i in b.indices]
    second = [int(i) for b in loader.iter_epoch(1) for i in b.indices]
    assert len(first) == 7 and set(first) == set(second)
    assert loader.stats().requests_count == 7  # loaded once, served twice
    loader.close()


def test_deli_loader_three_line_api_on_jpegs(tmp_path: Path) -> None:
    from torchvision.transforms import v2

    from delibench.workloads.datagen import make_dataset

    make_dataset(tmp_path / "imgs", samples=20, classes=4, preset="cifar", seed=1)
    transform = v2.Compose([v2.PILToTensor(), v2.Resize((16, 16), antialias=True)])
    with deli_loader(str(tmp_path / "imgs"), transform=transform, batch_size=8, cache_size="1MiB", num_workers=1) as loader:
        assert len(loader) == 3
        for _ in range(2):
            shapes, labels = [], []
            for inputs, y in loader:
                shapes.append(tuple(inputs.shape[1:]))
                labels.extend(y.tolist())
            assert shapes == [(3, 16, 16)] * 3 and len(labels) == 20 and set(labels) <= set(range(4))
        stats = loader.stats()
    assert stats.requests_count == 20 and stats.cache_hits == 20  # epoch 2 came from the cache


def test_deli_loader_without_manifest_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="no dataset manifest"):
        deli_loader(str(tmp_path))
