"""Print epoch times of bucket, fsspec-cache and deli through an emulated cross-region link (not a test).

Run: ``.venv/bin/python tests/loaders/bench_deli_vs_bucket.py [--samples 300] [--profile cross-region]``.
Starts its own SeaweedFS and link emulator; decode is a checksum, so the figures are fetch-bound.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time

from delibench.loaders import build_loader
from delibench.records import LoaderSpec
from delibench.testbed.link import LinkEmulator
from delibench.testbed.servers import SeaweedServer
from delibench.loaders.testing import copy_corpus, make_context, make_corpus


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--profile", default="cross-region")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=2)
    args = parser.parse_args()
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_REGION="us-east-1")
    tmp = tempfile.mkdtemp(prefix="delibench-bench-")
    server = SeaweedServer(os.path.join(tmp, "weed"))
    server.start(timeout_s=90)
    try:
        import s3fs

        options = {"client_kwargs": {"endpoint_url": server.endpoint_url}}
        s3fs.S3FileSystem(**options).mkdir("bench")
        local = make_corpus(os.path.join(tmp, "data"), samples=args.samples, min_bytes=60_000, max_bytes=160_000)
        corpus = copy_corpus(local, "s3://bench/ds", options)
        link = LinkEmulator("127.0.0.1", int(server.endpoint_url.rsplit(":", 1)[1]), args.profile).start()
        os.environ["AWS_ENDPOINT_URL"] = link.endpoint_url
        mib = corpus.manifest.total_bytes / 2**20
        print(f"{args.samples} samples, {mib:.1f} MiB, link {args.profile}, {args.workers} workers, batch 16")
        print(f"{'loader':38s} " + " ".join(f"epoch{e} s" for e in range(args.epochs)) + "   GETs  link-requests")
        configs = [
            ("bucket", {}),
            ("bucket", {"concurrency": 8}),
            ("fsspec-cache", {"mode": "simplecache"}),
            ("deli", {"cache_size": 0, "concurrency": 32, "prefetch_depth": 64}),
            ("deli", {"cache_size": "1GiB", "concurrency": 32, "prefetch_depth": 64}),
        ]
        for kind, opts in configs:
            s3fs.S3FileSystem.clear_instance_cache()
            before = link.stats().requests
            loader = build_loader(LoaderSpec(kind, opts), make_context(corpus, num_workers=args.workers, batch_size=16))
            times = []
            for epoch in range(args.epochs):
                start = time.perf_counter()
                count = sum(len(b.indices) for b in loader.iter_epoch(epoch))
                times.append(time.perf_counter() - start)
                assert count == args.samples
            stats = loader.stats()
            loader.close()
            label = f"{kind} {opts}"
            cols = " ".join(f"{t:9.2f}" for t in times)
            print(f"{label:38.38s} {cols} {stats.requests_count:6d} {link.stats().requests - before:14d}")
        link.stop()
    finally:
        server.stop()


if __name__ == "__main__":
    main()
