"""CPU per GET of the S3 read paths delibench can take, side by side in one run.

    .venv/bin/python benchmarks/get_paths.py                 # 512 x ~110 KB objects, 32 in flight
    .venv/bin/python benchmarks/get_paths.py --objects 1024 --size 10000 --inflight 64

Starts an embedded SeaweedFS (no link shaping: the client's own cost is what is measured), writes
random objects and reads all of them through each path twice, interleaved (this machine is shared
and noisy: compare the ratios of one run, not absolute figures across runs):

* ``s3fs``   — ``S3FileSystem._cat_file(path, max_concurrency=1)``, the bucket loader's path;
* ``lean``   — :class:`delibench.loaders.s3http.LeanS3Reader` (presigned by s3fs's own client, read
  by aiohttp), the deli loader's path.

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


async def _run(endpoint: str, bucket: str, keys: list[str], inflight: int) -> list[tuple[str, float, float]]:
    import s3fs

    from delibench.loaders.s3http import LeanS3Reader

    fs = s3fs.S3FileSystem(endpoint_url=endpoint, asynchronous=True, skip_instance_cache=True,
                           config_kwargs={"max_pool_connections": inflight})
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--objects", type=int, default=512)
    parser.add_argument("--size", type=int, default=110_000, help="bytes per object")
    parser.add_argument("--inflight", type=int, default=32, help="GETs in flight")
    args = parser.parse_args()

    from delibench.testbed.testbed import Testbed

    with tempfile.TemporaryDirectory(prefix="delibench-get-paths-") as tmp:
        bed = Testbed.start(Path(tmp) / "testbed", profile="local", services=("s3",))
        try:
            env = bed.env
            os.environ.update({k: v for k, v in env.items() if k.startswith("AWS_")})
            endpoint = bed.s3_direct_url or env["AWS_ENDPOINT_URL"]
            import s3fs

            fs = s3fs.S3FileSystem(endpoint_url=endpoint, skip_instance_cache=True)
            bucket = "get-paths"
            fs.mkdir(bucket)
            keys = [f"obj/{i:06d}.bin" for i in range(args.objects)]
            fs.pipe({f"{bucket}/{k}": os.urandom(args.size) for k in keys})
            rows = asyncio.run(_run(endpoint, bucket, keys, args.inflight))
        finally:
            bed.stop()
    print(f"{args.objects} objects of {args.size} bytes, {args.inflight} in flight, load {os.getloadavg()[0]:.1f}")
    print(f"  {'path':28s} {'objects/s':>10s} {'cpu ms/object':>14s}")
    for name, rate, cpu_ms in rows:
        print(f"  {name:28s} {rate:10.0f} {cpu_ms:14.3f}")


if __name__ == "__main__":
    main()
