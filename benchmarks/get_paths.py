"""CPU per GET of the S3 and GCS read paths delibench can take, side by side in one run.

    .venv/bin/python benchmarks/get_paths.py                 # 512 x ~110 KB objects, 32 in flight
    .venv/bin/python benchmarks/get_paths.py --objects 1024 --size 10000 --inflight 64
    .venv/bin/python benchmarks/get_paths.py --store gcs     # gcsfs vs a bare aiohttp GET

Starts an embedded SeaweedFS (no link shaping: the client's own cost is what is measured), writes
random objects and reads all of them through each path twice, interleaved (this machine is shared
and noisy: compare the ratios of one run, not absolute figures across runs):

* ``s3fs``   — ``S3FileSystem._cat_file(path, max_concurrency=1)``, the bucket loader's path;
* ``lean``   — :class:`delibench.loaders.s3http.LeanS3Reader` (presigned by s3fs's own client, read
  by aiohttp), the deli loader's path.

With ``--store gcs`` it starts the GCS emulator (fake-gcs-server) instead and compares:

* ``gcsfs``  — ``GCSFileSystem._cat_file(path)``, what both loaders use on ``gs://``;
* ``bare``   — one aiohttp session GETting the same JSON-API media URL (``alt=media``) with no
  client around it: the floor a lean GCS path could reach (no auth, as the emulator needs none).

Prints objects/s and CPU milliseconds per object of this process (the store's CPU is not in it).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def _cpu_s() -> float:
    t = os.times()
    return t.user + t.system


async def _measure(name: str, get: Any, paths: list[str], inflight: int) -> tuple[str, float, float]:
    sem = asyncio.Semaphore(inflight)

    async def one(path: str) -> int:
        async with sem:
            return len(await get(path))

    await asyncio.gather(*(one(p) for p in paths[:inflight]))  # open the connections first
    cpu0, t0 = _cpu_s(), time.perf_counter()
    await asyncio.gather(*(one(p) for p in paths))
    cpu1, t1 = _cpu_s(), time.perf_counter()
    return name, len(paths) / (t1 - t0), 1000 * (cpu1 - cpu0) / len(paths)


async def _run(options: dict[str, Any], bucket: str, keys: list[str], inflight: int) -> list[tuple[str, float, float]]:
    import s3fs

    from delibench.loaders.s3http import LeanS3Reader

    config = {**options.get("config_kwargs", {}), "max_pool_connections": inflight}
    fs = s3fs.S3FileSystem(**{**options, "config_kwargs": config}, asynchronous=True, skip_instance_cache=True)
    await fs.set_session()
    reader = LeanS3Reader(fs, pool_size=inflight)
    paths = [f"{bucket}/{k}" for k in keys]
    rows = []
    try:
        for _ in range(2):
            rows.append(await _measure("s3fs _cat_file", lambda p: fs._cat_file(p, max_concurrency=1), paths, inflight))
            rows.append(await _measure("lean (presigned + aiohttp)", reader.get, paths, inflight))
    finally:
        await reader.close()
        await fs.s3.close()
    return rows


async def _run_gcs(options: dict[str, Any], bucket: str, keys: list[str], inflight: int) -> list[tuple[str, float, float]]:
    from urllib.parse import quote

    import aiohttp
    import gcsfs

    endpoint = options["endpoint_url"]
    fs = gcsfs.GCSFileSystem(**options, asynchronous=True, skip_instance_cache=True)
    await fs._set_session()
    connector = aiohttp.TCPConnector(limit=inflight)
    session = aiohttp.ClientSession(connector=connector, auto_decompress=False)

    async def bare(path: str) -> bytes:
        b, _, key = path.partition("/")
        url = f"{endpoint}/download/storage/v1/b/{b}/o/{quote(key, safe='')}?alt=media"
        async with session.get(url) as response:
            response.raise_for_status()
            return await response.read()

    paths = [f"{bucket}/{k}" for k in keys]
    rows = []
    try:
        for _ in range(2):
            rows.append(await _measure("gcsfs _cat_file", fs._cat_file, paths, inflight))
            rows.append(await _measure("bare aiohttp GET", bare, paths, inflight))
    finally:
        await session.close()
        if fs.session is not None:
            await fs.session.close()
    return rows


def _rows(store: str, objects: int, size: int, inflight: int, workdir: Path) -> list[tuple[str, float, float]]:
    """Write ``objects`` random objects to a local testbed's ``store`` (no link shaping) and measure each read path."""
    from delibench.storage import skip_gcs_bucket_type_probe

    skip_gcs_bucket_type_probe()  # before gcsfs is imported
    import fsspec

    from delibench.app.lab import Lab

    protocol = "gs" if store == "gcs" else "s3"
    with Lab.start(workdir, profile="local", services=(store,), detached=False) as lab:
        bucket = "get-paths"
        lab.make_bucket(bucket, protocol)
        options = lab.route(protocol, direct=True).storage_options
        fs = fsspec.filesystem(protocol, **options, skip_instance_cache=True)
        keys = [f"obj/{i:06d}.bin" for i in range(objects)]
        fs.pipe({f"{bucket}/{k}": os.urandom(size) for k in keys})
        run = _run_gcs if store == "gcs" else _run
        return asyncio.run(run(options, bucket, keys, inflight))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=512)
    parser.add_argument("--size", type=int, default=110_000, help="bytes per object")
    parser.add_argument("--inflight", type=int, default=32, help="GETs in flight")
    parser.add_argument("--store", choices=("s3", "gcs"), default="s3")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="delibench-get-paths-") as tmp:
        rows = _rows(args.store, args.objects, args.size, args.inflight, Path(tmp))
    _print(args, rows)


def _print(args: argparse.Namespace, rows: list[tuple[str, float, float]]) -> None:
    print(f"{args.store}: {args.objects} objects of {args.size} bytes, {args.inflight} in flight, "
          f"load {os.getloadavg()[0]:.1f}")
    print(f"  {'path':28s} {'objects/s':>10s} {'cpu ms/object':>14s}")
    for name, rate, cpu_ms in rows:
        print(f"  {name:28s} {rate:10.0f} {cpu_ms:14.3f}")


if __name__ == "__main__":
    main()
