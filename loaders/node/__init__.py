"""Node scope: one service per node fetches for every local rank into one cache in shared memory.

A GPU VM runs several ranks. With ``deli:scope=rank`` each rank has its own fetcher and cache, so a
sample one rank fetched is fetched again by another rank of the same machine in a later epoch, and
the machine holds one cache per rank. With ``scope=node`` (the default when a node has more than
one rank) local rank 0 starts one **node service** process (``python -m delibench.loaders.node``),
which:

* knows every local rank's order (the orders are pure functions of seed, epoch, rank and world
  size: :func:`~delibench.loaders.sampler.epoch_order`), walks each rank's order ahead within a
  window of ``prefetch_depth`` samples, with the ``concurrency`` GETs *per local rank* in flight
  on one event loop (the existing async :class:`~delibench.loaders.source.SampleSource`);
* keeps one table of the samples it holds, so a sample is fetched at most once per node while it
  is held (in flight, waiting for a rank, or cached), whichever rank asks for it;
* caches them within ``cache_size`` bytes *per node*, evicting with Belady over the union of the
  local ranks' future accesses (the node's ranks interleaved in lockstep, the clock
  ``tuning/scale.py`` replays; LRU and FIFO still available);
* counts a **hit** for every lookup that needs no GET: the sample was cached, or another rank's
  window holds it (in flight, or fetched and not handed out yet). A rank looks a sample up when it
  enters its window (:func:`service_window` samples ahead of its next batch), and a sample held by a
  window is outside the cache's budget until its batch is handed out (then it is offered to the
  cache): the node holds the cache plus the windows, and the arena has room for both. So the hit
  rate a user sees is that of the cache *and* the windows, and the figure to check it against is
  :func:`delibench.tuning.scale.replay_node_cache` with ``window=service_window(...)``, which replays
  exactly this (with ``window=0`` it is the cache alone, a few points lower);
* with ``cache_tier=disk``, keeps one disk tier for the node under the arena's cache (a
  :class:`~delibench.loaders.cache.DiskTier` of ``disk_cache_size``): a sample leaving the cache that
  is needed again is written once, and a lookup that misses the arena but finds its file reads it
  into the sample's blocks on a disk thread instead of a GET (see :mod:`~delibench.loaders.node.service`);
* reads whatever deli's ``source`` says: sample objects, tar-shard members (one ranged GET each)
  or whole shards (``source=shards``: :class:`~delibench.loaders.shards.WholeShardSource` in the
  service, the first sample wanted from a shard GETs all of it, and a buffer of recent shards of
  ``cache_size`` bytes in the service's own memory, beside the arena, serves the shard's other
  samples; so each shard is read at most once per node while buffered, and its GET is counted at
  the rank whose walk sent it);
* keeps every byte in one shared-memory arena (``/dev/shm/<prefix>-arena``) cut into fixed-size
  blocks, so a sample of any size fits wherever blocks are free (no fragmentation), and answers
  each decode worker's request for its batch with the blocks' offsets. The worker copies the bytes
  straight out of the mapped arena and then releases its lease; no sample byte crosses the socket.

The control channel is an abstract Unix socket (``multiprocessing.connection`` with a random key),
named, like the arena, by a per-job prefix ``delibench-node-<hash of job id>-n<node>-<n>``: two jobs on
one node never meet. Lifecycle: the service ignores Ctrl-C (the ranks stop it), leaves when its
starter is gone (polled), when every rank has left after the starter's ``close``, or on SIGTERM, and
unlinks its arena (and removes its disk tier's folder) on the way out; the starter's ``close`` does
both again, so a service killed with SIGKILL leaves nothing in ``/dev/shm`` or on disk either. A rank whose service vanished gets a clear error.


With ``fetch_processes=N > 1`` the GETs leave the service's loop for N fetch processes that write
straight into the arena, while the table, the cache and the accounting stay in the service
(:mod:`~delibench.loaders.node.fetchers` says what measurement asked for them and why). One that dies
is reaped and replaced at the same index, its work in flight re-sent (same samples, same blocks,
counted as retries; ``fetch_restarts`` in the node's stats), at most 3 times in 60 s: then, or when a
replacement does not start, every later batch fails naming it, how it died and the restarts.

The modules, each with one job:

* :mod:`~delibench.loaders.node.config`: when node scope applies, the service's window, how many
  fetch processes, and the :class:`NodeConfig` a rank hands to the service;
* :mod:`~delibench.loaders.node.protocol`: the messages between ranks, service and fetch processes;
* :mod:`~delibench.loaders.node.arena`: the shared-memory arena (segment names, block runs, views, clean-up);
* :mod:`~delibench.loaders.node.table`: the held samples, the cache within them, the union's next uses;
* :mod:`~delibench.loaders.node.fetchers`: the fetch processes, the service's side and their own;
* :mod:`~delibench.loaders.node.service`: the ranks' walks, batches, leases and counters;
* :mod:`~delibench.loaders.node.server`: the service process (control socket, lifecycle, command line);
* :mod:`~delibench.loaders.node.link`: the rank side of the socket and the decode workers' dataset;
* :mod:`~delibench.loaders.node.loader`: :class:`NodeDeliLoader`, the loader a rank iterates.
"""

from __future__ import annotations

from delibench.loaders.node.arena import SEGMENT_PREFIX, leftover_segments, node_prefix
from delibench.loaders.node.config import DEFAULT_DEADLINE_S, NodeConfig, fetch_process_count, service_window, wants_node_scope
from delibench.loaders.node.link import NodeFeedDataset, NodeLink
from delibench.loaders.node.loader import NodeDeliLoader
from delibench.loaders.node.server import serve
from delibench.loaders.node.service import NodeService

__all__ = [
    "DEFAULT_DEADLINE_S", "NodeConfig", "NodeDeliLoader", "NodeFeedDataset", "NodeLink", "NodeService", "SEGMENT_PREFIX",
    "fetch_process_count", "leftover_segments", "node_prefix", "serve", "service_window", "wants_node_scope",
]
