"""Region buckets on the testbed for geo runs: each region's shard in a bucket of its own, behind that region's links.

One SeaweedFS server holds every region's bucket (``geo-<region>``); what differs is the path to
it. A worker reads a bucket of its own region through the ``same-region`` link profile and another
region's through the ``cross-region`` profile (each a link emulator in front of the same server),
so a remote read pays the cross-region latency and bandwidth; which bytes crossed which pair of
regions is counted by the run (:class:`delibench.geo.task.RegionBatches`) and priced with
:func:`delibench.geo.cost.geo_cost_usd`. Geo code gets only data: :class:`~delibench.geo.task.DataSource`
entries with the storage options of the right route (the testbed stays in ``app/``).

    with GeoLab.start(workdir, ("us-east", "us-west", "eu-west")) as lab:
        data = lab.sources()                             # each shard read at home
        spec = GeoRunSpec(..., task="cnn-jpeg", data=data, val_url=lab.shards.held_out)
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from delibench.app.lab import Lab, Route
from delibench.errors import UsageError
from delibench.geo.task import DataSource, RegionShards, copy_dataset, make_region_shards

__all__ = ["GeoLab", "ShardCopy", "bucket_sources"]


@dataclass(frozen=True)
class ShardCopy:
    """A shard copied once into another region's bucket (read across the cross-region link)."""

    shard: str
    home: str
    reader: str
    url: str
    nbytes: int
    seconds: float


class GeoLab:
    """A testbed with one bucket per region and a same-region and a cross-region route to them.

    Use :meth:`GeoLab.start`.
    """

    def __init__(self, lab: Lab, shards: RegionShards, urls: dict[str, str], local: Route, cross: Route) -> None:
        self.lab, self.shards, self.urls, self.local, self.cross = lab, shards, urls, local, cross
        self.copies: list[ShardCopy] = []

    @classmethod
    def start(
        cls,
        workdir: str | Path,
        regions: tuple[str, ...] | list[str],
        *,
        samples_per_region: int = 400,
        held_out: int = 300,
        skew: float = 1.0,
        seed: int = 0,
        local_profile: str = "same-region",
        cross_profile: str = "cross-region",
    ) -> GeoLab:
        """Generate the shards (:func:`~delibench.geo.task.make_region_shards`), start the testbed, push each shard to its region's bucket."""
        from delibench.loaders.publish import push

        root = Path(workdir).resolve()
        shards = make_region_shards(root / "data", regions, samples_per_region=samples_per_region, held_out=held_out, skew=skew, seed=seed)
        lab = Lab.start(root, profile=local_profile, seed=seed)
        try:
            direct = lab.route(direct=True).storage_options
            urls = {}
            for region, path in shards.shards.items():
                url = lab.make_bucket(f"geo-{region}") + "/shard"
                push(path, url, storage_options=direct)
                urls[region] = url
            cross = lab.link(cross_profile)
            return cls(lab, shards, urls, lab.route(), cross)
        except BaseException:
            lab.stop()
            raise

    def storage_options(self, home: str, reader: str) -> dict[str, Any]:
        """fsspec options a worker in ``reader`` uses to reach ``home``'s bucket (through the right link)."""
        return dict((self.local if home == reader else self.cross).storage_options)

    def copy_shard(self, home: str, reader: str) -> ShardCopy:
        """Copy ``home``'s shard into ``reader``'s bucket once: read across the cross-region link, written there; timed and counted."""
        if home == reader:
            raise UsageError("copy_shard: the shard is already in that region")
        dst = self.lab.make_bucket(f"geo-{reader}") + f"/copy-of-{home}"
        t0 = time.perf_counter()
        nbytes = copy_dataset(self.urls[home], self.storage_options(home, reader), dst, self.lab.route(direct=True).storage_options)
        seconds = time.perf_counter() - t0
        copy = ShardCopy(f"{home}-shard", home, reader, dst, nbytes, seconds)
        self.copies.append(copy)
        return copy

    def sources(self, reading: Mapping[str, tuple[str, str]] | None = None, *, copy_up_front: bool = False) -> tuple[DataSource, ...]:
        """The data sources of a run: shard home -> ``(reader, mode)`` (default: every shard read at home).

        A remote shard (``stream`` or ``copy``) is read by the reader's deli loader across the
        cross-region link; deli keeps it in its cache while it fits, so each sample then crosses
        once. ``copy_up_front``: a ``copy``-mode shard is copied into the reader's bucket before the
        run instead (:meth:`copy_shard`, timed) and read there: what ``geo run --plan`` does and
        what the planner's ``copy`` models.
        """
        out = []
        for home, url in self.urls.items():
            reader, mode = (reading or {}).get(home, (home, "local"))
            if reader != home and mode == "copy" and copy_up_front:
                copy = next((c for c in self.copies if c.home == home and c.reader == reader), None) or self.copy_shard(home, reader)
                out.append(DataSource(f"{home}-shard", reader, reader, copy.url, self.storage_options(reader, reader)))
            else:
                out.append(DataSource(f"{home}-shard", home, reader, url, self.storage_options(home, reader)))
        return tuple(out)

    def stop(self) -> None:
        """Stop the testbed and its links."""
        self.lab.stop()

    def __enter__(self) -> GeoLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def bucket_sources(
    config: Any, reading: Mapping[str, tuple[str, str]], options: Mapping[str, Mapping[str, Any]]
) -> tuple[tuple[DataSource, ...], tuple[ShardCopy, ...]]:
    """The data sources of a run on the regions file's own buckets (each region's ``data_url``), and the copies made.

    Args:
        config: The regions file.
        reading: Home region -> ``(reader, mode)``: who reads its data and how (``local``,
            ``stream`` across the link every epoch, or ``copy``: copied once, before the run, to
            ``<reader's data_url>-copy-of-<home>`` in the reader's bucket, then read there).
        options: Region -> fsspec options reaching its ``data_url`` (the CLI builds them from the
            environment), also used to write a copy into that region's bucket.

    Raises:
        UsageError: A region that stores or (for a copy) receives data has no ``data_url``.
    """
    def url_of(region: str, why: str) -> str:
        url = config.region(region).data_url
        if not url:
            raise UsageError(f"--task cnn-jpeg: region {region} has no data_url in {config.source} ({why})", hint="give each region the URL of its shard (a dataset with a delibench manifest)")
        return str(url)

    sources, copies = [], []
    for home, (reader, mode) in reading.items():
        src = url_of(home, "it stores a shard the run reads")
        if mode == "copy" and reader != home:
            dst = url_of(reader, f"the plan copies {home}'s shard into its bucket").rstrip("/") + f"-copy-of-{home}"
            t0 = time.perf_counter()
            nbytes = copy_dataset(src, options.get(home), dst, options.get(reader))
            copies.append(ShardCopy(f"{home}-shard", home, reader, dst, nbytes, time.perf_counter() - t0))
            sources.append(DataSource(f"{home}-shard", reader, reader, dst, dict(options.get(reader) or {})))
        else:
            sources.append(DataSource(f"{home}-shard", home, reader, src, dict(options.get(home) or {})))
    return tuple(sources), tuple(copies)
