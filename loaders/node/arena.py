"""The node's shared-memory arena: segment names, blocks as byte runs, mapped views, clean-up.

Every byte the node service holds lives in one segment, ``/dev/shm/<prefix>-arena``, cut into
fixed-size blocks (:mod:`~delibench.loaders.node.table` hands them out). A sample occupies a list of
blocks, which this module turns into ``[(offset, length), ...]`` runs, contiguous blocks merged:
those runs are what travels over the control socket, so no sample byte crosses it. The decode
workers map the arena read-only; fetch processes map it writable and write the bytes they GET
straight into it. Only the service creates the segment; the service, and the starter's ``close``
after it, unlink it (so a service killed with SIGKILL leaves nothing either).
"""

from __future__ import annotations

import hashlib
import mmap
import os
from typing import Any

from delibench.loaders.base import LoaderContext

__all__ = ["Arena", "SEGMENT_PREFIX", "SHM_DIR", "block_runs", "copy_into", "leftover_segments", "node_prefix", "unlink_segment"]

#: Every name the node service gives a shared-memory segment or socket starts with this.
SEGMENT_PREFIX = "delibench-node-"
SHM_DIR = "/dev/shm"


def node_prefix(ctx: LoaderContext, seq: int) -> str:
    """The per-job, per-node, per-loader name prefix of the service's socket and arena."""
    job = ctx.job_id or f"pid-{os.getpid()}"
    digest = hashlib.sha1(f"{job}|{os.getuid()}".encode()).hexdigest()[:12]
    return f"{SEGMENT_PREFIX}{digest}-n{ctx.node_rank}-{seq}"


def leftover_segments() -> list[str]:
    """The node-service segments in ``/dev/shm`` now (a test checks none survive a job)."""
    try:
        return sorted(n for n in os.listdir(SHM_DIR) if n.startswith(SEGMENT_PREFIX))
    except OSError:
        return []


def unlink_segment(name: str) -> None:
    """Remove the segment ``name`` from ``/dev/shm`` if it is there (its creator may be gone)."""
    try:
        os.unlink(os.path.join(SHM_DIR, name))
    except OSError:
        pass


def block_runs(blocks: list[int], block: int, size: int) -> list[tuple[int, int]]:
    """Blocks -> ``[(offset, length), ...]`` covering ``size`` bytes, contiguous blocks merged."""
    runs: list[tuple[int, int]] = []
    left = size
    for b in blocks:
        take = min(block, left)
        if take <= 0:
            break
        off = b * block
        if runs and runs[-1][0] + runs[-1][1] == off:
            runs[-1] = (runs[-1][0], runs[-1][1] + take)
        else:
            runs.append((off, take))
        left -= take
    return runs


def copy_into(arena: Any, runs: list[tuple[int, int]], data: bytes) -> None:
    """Copy a sample's bytes into the arena's ``runs`` (``[(offset, length), ...]``)."""
    mv = memoryview(data)
    at = 0
    for off, ln in runs:
        arena[off : off + ln] = mv[at : at + ln]
        at += ln


class Arena:
    """A worker's read-only view of the node's arena (mapped once per process); a fetch process's writable one."""

    def __init__(self, name: str, writable: bool = False) -> None:
        fd = os.open(os.path.join(SHM_DIR, name), os.O_RDWR if writable else os.O_RDONLY)
        try:
            self.map = mmap.mmap(fd, 0, prot=mmap.PROT_READ | (mmap.PROT_WRITE if writable else 0))
        finally:
            os.close(fd)

    def write(self, runs: list[tuple[int, int]], data: bytes) -> None:
        copy_into(self.map, runs, data)

    def read(self, runs: list[tuple[int, int]]) -> bytes:
        if len(runs) == 1:
            off, ln = runs[0]
            return self.map[off : off + ln]
        return b"".join(self.map[off : off + ln] for off, ln in runs)
