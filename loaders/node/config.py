"""What node scope is configured by: when it applies, how far the service looks ahead, how many
fetch processes it runs, and the :class:`NodeConfig` a rank hands to the service it starts.

These rules sit apart from the service so that the rank side (``deli``'s choice of scope), the
service and :mod:`delibench.tuning.scale` (which replays the service's window) read the same ones.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from typing import Any

from delibench.loaders.base import LoaderContext
from delibench.manifest import Manifest

__all__ = ["DEFAULT_DEADLINE_S", "FETCH_RESTART_LIMIT", "FETCH_RESTART_WINDOW_S", "START_FLOOR_S", "start_deadline_s", "NodeConfig",
           "fetch_process_count", "node_disk_dir", "remove_disk_dir", "service_window", "wants_node_scope"]

#: Seconds a rank waits for its node service to answer (start-up, a batch) before a clear error
#: (``DeliOptions.node_deadline_s``'s default).
DEFAULT_DEADLINE_S = 120.0

#: The least time a service or fetch process gets to start (an interpreter plus its imports), whatever
#: ``node_deadline_s`` says: that deadline is about a batch that never comes; a loaded machine
#: (CI: a 2-core box at load 8) starts a process in seconds.
START_FLOOR_S = 60.0


#: The node service replaces a fetch process that dies (OOM killer, segfault, SIGKILL) at most this
#: many times within :data:`FETCH_RESTART_WINDOW_S`, over all its fetch processes; the next death in
#: the window fails the node with a clear error. A sample whose GET kills every process it is sent to
#: (a poison sample: its work items are re-sent to each replacement) so ends after this many
#: restarts, not in a loop; an OOM kill now and then over a long job is survived each time.
FETCH_RESTART_LIMIT = 3

#: The window of :data:`FETCH_RESTART_LIMIT`, in seconds: several times what a replacement takes to
#: start (an interpreter and its imports, ~1-3 s on a loaded 2-core CI box): a process that dies on its
#: work dies again about one start after the last death, so a poison sample exceeds the limit in seconds.
FETCH_RESTART_WINDOW_S = 60.0


def start_deadline_s(deadline_s: float) -> float:
    """Seconds to wait for a node process's "ready": the batch deadline, at least :data:`START_FLOOR_S`."""
    return max(deadline_s, START_FLOOR_S)


def wants_node_scope(options: Any, ctx: LoaderContext) -> bool:
    """Whether a deli loader with ``options`` uses the node service: ``scope=node``, or no scope given
    and more than one rank on this node (with either cache tier: the node keeps one disk tier too)."""
    if options.scope == "node":
        return True
    if options.scope is None:
        return ctx.local_world_size > 1
    return False


def node_disk_dir(prefix: str, cache_dir: str | None) -> str:
    """The directory of the node service's disk tier (``cache_tier=disk``): a folder named by the
    service's per-job prefix, inside ``cache_dir`` or, without one, the temporary directory. Two jobs
    (or two loaders of one job) never share one; the service removes it when it ends, and the
    starter's ``close`` again (a SIGKILLed service)."""
    return os.path.join(cache_dir or tempfile.gettempdir(), prefix + "-disk")


def remove_disk_dir(config: NodeConfig) -> None:
    """Remove the service's disk tier folder, if it has one (the service on its way out; its starter)."""
    if config.disk_dir is not None:
        shutil.rmtree(config.disk_dir, ignore_errors=True)


def service_window(options: Any, batch_size: int) -> int:
    """Samples the node service looks up ahead of each local rank's next batch: the prefetch bound
    (``prefetch_depth``, default 256), at least two batches."""
    return max(options.prefetch_bound, 2 * batch_size)


def fetch_process_count(value: int | str, local_world_size: int, cpus: int | None = None) -> int:
    """How many fetch processes ``fetch_processes=value`` means on a node of ``cpus`` CPUs (default: this
    process's) with ``local_world_size`` ranks: the number, or for ``auto`` a quarter of the CPUs, at
    most two per local rank, at least 1 (see :mod:`delibench.loaders.node.fetchers`)."""
    if value != "auto":
        return max(1, int(value))
    if cpus is None:
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, min(cpus // 4, 2 * local_world_size))


@dataclass(frozen=True)
class NodeConfig:
    """What the node service needs (pickled to it on stdin, and to its fetch processes)."""

    prefix: str
    authkey: bytes
    dataset_url: str
    manifest: Manifest
    storage_options: dict[str, Any] | None
    options: Any  # DeliOptions
    members: bool
    seed: int
    world_size: int
    first_rank: int
    local_world_size: int
    order: str
    exchange_fraction: float
    drop_last: bool
    batch_size: int
    num_workers: int
    epochs: int | None
    parent_pid: int
    deadline_s: float = DEFAULT_DEADLINE_S
    #: ``source=shards``: read whole shards (one GET per shard while buffered) and slice samples out.
    whole_shards: bool = False
    #: ``cache_tier=disk``: the disk tier's directory (:func:`node_disk_dir`), made by the service.
    disk_dir: str | None = None

    @property
    def address(self) -> str:
        return "\0" + self.prefix

    @property
    def arena_name(self) -> str:
        return self.prefix + "-arena"
