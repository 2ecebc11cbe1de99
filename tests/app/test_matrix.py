"""The bench matrix's loaders: deli over the dataset's tar shards runs beside deli over objects and the peers."""

from __future__ import annotations

from pathlib import Path

from delibench.app.bench.matrix import DELI_VARIANTS, BenchOptions, expand_loaders, loader_of, peer_family


def test_the_bench_runs_deli_over_tar_shards_by_default_as_labelled_deli_runs():
    options = BenchOptions()
    assert {"deli", "deli-members", "deli-shards"} <= set(options.loaders)
    assert expand_loaders(["deli-shards", "peers", "deli-shards"]).count("deli-shards") == 1
    for name, source in (("deli-members", "members"), ("deli-shards", "shards")):
        spec = loader_of(name, cache_bytes=2**20, deli_options=options.deli_options, local=Path("/data"))
        assert spec.kind == "deli" and spec.display_name == name
        assert spec.options == {"cache_size": 2**20, **options.deli_options, "source": source}
        assert peer_family(name) is None  # delibench's own, not in the peer table
    plain = loader_of("deli", cache_bytes=2**20, deli_options={"concurrency": 8}, local=Path("/data"))
    assert plain.options == {"cache_size": 2**20, "concurrency": 8} and plain.display_name == "deli"
    assert loader_of("disk", cache_bytes=0, deli_options={}, local=Path("/data")).options == {"path": "/data"}
    assert loader_of("webdataset@plain", cache_bytes=0, deli_options={}, local=Path("/data")).options == {"shuffle": 0}


def test_deli_accepts_every_variant_source():
    """The variants' options are deli's own: its option parser takes them (a renamed option fails here)."""
    from delibench.loaders.deli import DeliOptions
    from delibench.loaders.pipeline import parse_options

    options = BenchOptions()
    for name, extra in DELI_VARIANTS.items():
        spec = loader_of(name, cache_bytes=2**20, deli_options=options.deli_options, local=Path("/data"))
        assert parse_options(DeliOptions, "deli", dict(spec.options)).source == extra["source"]
