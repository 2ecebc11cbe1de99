"""``deli`` with ``scope=node``, the rank side: start the node service (local rank 0), open each
epoch with every local rank's order, and decode the batches the service hands out.

The loader has :class:`~delibench.loaders.deli.DeliLoader`'s contract and resumes from its states
(:class:`~delibench.loaders.resume.ResumableEpochs`); its decode workers reach the service through
:class:`~delibench.loaders.node.link.NodeFeedDataset`. The service runs in its own session, so a
killpg of the rank's group leaves it time to unlink its arena; it leaves when its starter is gone.
"""

from __future__ import annotations

import hashlib
import itertools
import os
import pickle
import select
import subprocess
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

from delibench.errors import RuntimeFailure, UsageError
from delibench.loaders.base import Batch, LoaderContext
from delibench.loaders.node.arena import node_prefix, unlink_segment
from delibench.loaders.cache import check_disk_dir
from delibench.loaders.node.config import NodeConfig, node_disk_dir, remove_disk_dir, start_deadline_s
from delibench.loaders.node.link import NodeFeedDataset, NodeLink
from delibench.loaders.node.protocol import OK
from delibench.loaders.pipeline import BytesBatchDataset, batches_of
from delibench.loaders.prefetch import DecodePipeline
from delibench.loaders.resume import ResumableEpochs
from delibench.loaders.sampler import epoch_order
from delibench.records import LoaderStats

__all__ = ["NodeDeliLoader"]

#: Node-scope loaders built so far per (job, local rank): the n-th loader of a job (``compare`` builds
#: several) meets the n-th service of its node.
_SEQ: dict[tuple[str, int, int], itertools.count[int]] = {}


class NodeDeliLoader(ResumableEpochs):
    """``deli`` with ``scope=node``: this rank's side of the node service (see :mod:`delibench.loaders.node`).

    Same contract as :class:`~delibench.loaders.deli.DeliLoader` (``iter_epoch``, ``stats``,
    ``state_dict``/``load_state_dict``, ``pause_background``, ``close``); ``cache_size`` is the
    node's. Local rank 0 starts the service and, at ``close``, waits (up to the deadline) for the
    other local ranks to leave before stopping it.
    """

    name: ClassVar[str] = "deli"

    def __init__(self, ctx: LoaderContext, options: Any) -> None:
        if ctx.local_world_size > 1 and not ctx.job_id:
            raise UsageError("deli scope=node needs a job id shared by the node's ranks (LoaderContext.job_id)",
                             hint="run under torchrun or delibench run --nproc, or use scope=rank")
        self.ctx = ctx
        self.options = options
        self.deadline_s = deadline_s = float(options.node_deadline_s)
        self.prefix = node_prefix(ctx, next(_SEQ.setdefault((ctx.job_id, ctx.node_rank, ctx.local_rank), itertools.count())))
        authkey = hashlib.sha256(f"{self.prefix}|{ctx.job_id}|{os.getuid()}".encode()).digest()
        self._proc: subprocess.Popen[bytes] | None = None
        self._closed = False
        members = options.source in ("members", "shards") or (options.source is None and not ctx.manifest.sample_objects)
        manifest = ctx.manifest
        if members:
            from delibench.loaders.shards import add_member_index

            manifest = add_member_index(ctx.manifest, ctx.dataset_url, ctx.storage_options)
        self._config = NodeConfig(
            prefix=self.prefix, authkey=authkey, dataset_url=ctx.dataset_url, manifest=manifest,
            storage_options=ctx.storage_options, options=options, members=members, seed=ctx.seed,
            world_size=ctx.world_size, first_rank=ctx.rank - ctx.local_rank, local_world_size=ctx.local_world_size,
            order=ctx.order, exchange_fraction=ctx.exchange_fraction, drop_last=ctx.drop_last, batch_size=ctx.batch_size,
            num_workers=ctx.num_workers, epochs=ctx.epochs, parent_pid=os.getpid(), deadline_s=deadline_s,
            whole_shards=options.source == "shards",
            disk_dir=self._disk_dir(options, manifest) if options.cache_tier == "disk" else None,
        )
        if ctx.local_rank == 0:
            self._start_service()
        self._link = NodeLink(self._config.address, authkey, ctx.local_rank, deadline_s, role="control")
        labels = [s.label for s in ctx.manifest.samples]
        keys = [s.key for s in ctx.manifest.samples]
        decode = BytesBatchDataset(ctx.decode, labels, keys, ctx.dataset_url, options.on_error)
        self._pipeline = DecodePipeline(NodeFeedDataset(NodeLink(self._config.address, authkey, ctx.local_rank, deadline_s), decode),
                                        ctx.num_workers, persistent=options.persistent_workers)
        self._skipped_decode: list[str] = []
        self._token: int | None = None
        self._position: tuple[int, int, int] = (0, 0, 0)
        self._resume: tuple[int, int, int] | None = None
        self._last_stats: dict[str, Any] | None = None

    def _disk_dir(self, options: Any, manifest: Any) -> str:
        """The service's disk tier folder, once the options are known to make a tier that can work:
        a budget that holds a sample, a ``cache_dir`` this user can write (else a one-line error)."""
        smallest = min((s.size_bytes for s in manifest.samples), default=0)
        if options.disk_cache_size < smallest:
            raise UsageError(f"disk_cache_size={options.disk_cache_size} bytes holds no sample: the smallest is {smallest} bytes",
                             hint="give the disk tier room for the samples it should keep, e.g. disk_cache_size=8GiB")
        if options.cache_dir is not None:
            check_disk_dir(options.cache_dir)
        return node_disk_dir(self.prefix, options.cache_dir)

    # -- the service --------------------------------------------------------------------------------

    def _start_service(self) -> None:
        # Its own session: a killpg of this rank's group (the launcher's way to stop a crashed job)
        # must leave it alive long enough to unlink its arena; it leaves when this process is gone.
        proc = subprocess.Popen([sys.executable, "-m", "delibench.loaders.node"], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                start_new_session=True)
        self._proc = proc
        assert proc.stdin is not None and proc.stdout is not None
        try:
            proc.stdin.write(pickle.dumps(self._config))
            proc.stdin.close()
        except OSError:
            pass
        wait_s = start_deadline_s(self.deadline_s)
        ready, _, _ = select.select([proc.stdout], [], [], wait_s)
        line = proc.stdout.readline().decode().strip() if ready else ""
        if line != "ready":
            self._stop_service()
            raise RuntimeFailure(f"the node service did not start: {line or 'no answer within ' + format(wait_s, 'g') + ' s'}")

    def _stop_service(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
        unlink_segment(self._config.arena_name)  # also after a SIGKILLed service
        remove_disk_dir(self._config)

    # -- epochs --------------------------------------------------------------------------------------

    def iter_epoch(self, epoch: int) -> Iterator[Batch]:
        """Yield this rank's batches of ``epoch``, served by the node service."""
        if self._closed:
            raise UsageError("the deli loader is closed")
        start, done_batches = self._take_resume(epoch)
        c = self._config
        orders = {e: [epoch_order(len(c.manifest), e, c.seed, c.first_rank + i, c.world_size, c.order, c.exchange_fraction, c.drop_last)
                      for i in range(c.local_world_size)] for e in (epoch, epoch + 1, epoch + 2)}
        kind, token = self._link.call("open", self.ctx.local_rank, epoch, start, orders)
        if kind != OK:
            raise RuntimeFailure(f"the node service could not open epoch {epoch}: {token}")
        self._token = token
        order = orders[epoch][self.ctx.local_rank]
        bs = self.ctx.batch_size
        first = start // bs
        if start % bs:
            raise UsageError(f"deli scope=node resumes at a batch boundary; the state is at sample {start} with batch size {bs}")
        batches = batches_of(order, bs)
        self._position = (epoch, start, done_batches)

        def end_epoch() -> None:
            try:
                self._link.call("close-epoch", self.ctx.local_rank, token)
            except RuntimeFailure:
                pass

        items = ((token, b) for b in range(first, len(batches)))
        try:
            # No original_error: a failure came over the service's socket as a message, raised as it is.
            yield from self._hand_on(lambda: zip(range(first, len(batches)), self._pipeline.run(items, on_abort=end_epoch)),
                                     batches, epoch, start, done_batches, self._skipped_decode)
        finally:
            end_epoch()

    def pause_background(self) -> None:
        """Stop this rank's walk into the next epoch (``compare`` measures another loader now)."""
        try:
            self._link.call("pause", self.ctx.local_rank)
        except RuntimeFailure:
            pass

    # -- state: state_dict / load_state_dict come from ResumableEpochs (as DeliLoader's) -------------

    # -- metrics -------------------------------------------------------------------------------------

    def node_stats(self) -> dict[str, Any]:
        """The service's counters for this rank (``rank``) and the node (``node``)."""
        if not self._closed:
            try:
                _, self._last_stats = self._link.call("stats", self.ctx.local_rank)
            except RuntimeFailure:
                pass
        return self._last_stats or {"rank": {}, "node": {}}

    def stats(self) -> LoaderStats:
        """This rank's share of the node's counters (GETs counted at the rank whose walk sent them,
        so a sum over the job's ranks counts each GET once); local rank 0 also reports the node's
        cache occupancy, evictions, retries and disk-tier errors."""
        s = self.node_stats()
        own, node = s.get("rank", {}), s.get("node", {})
        if not own:
            return LoaderStats()
        main = self.ctx.local_rank == 0
        p50, p95, p99 = node.get("latencies", (None, None, None))
        extra_requests = node["node_requests"] - node["fetches"] if main else 0
        return LoaderStats(
            requests_count=own["requests"] + max(0, extra_requests),
            bytes_read_remote=own["bytes"] + (max(0, node["node_bytes"] - node["fetched_bytes"]) if main else 0),
            cache_hits=own["hits"],
            cache_misses=own["misses"],
            cache_evictions=node["evictions"] if main else 0,
            cache_peak_bytes=node["cache_peak"],
            cache_bytes=node["cache_bytes"] if main else 0,
            prefetch_peak_bytes=node["arena_peak_bytes"],
            fetch_latency_s_p50=p50,
            fetch_latency_s_p95=p95,
            fetch_latency_s_p99=p99,
            prefetch_lead_mean=own["lead_sum"] / own["lead_count"] if own["lead_count"] else None,
            retries_count=node["retries"] if main else 0,
            hedges_count=node["hedges"] if main else 0,
            errors_count=node["errors"] if main else 0,
            skipped_keys=tuple(own["skipped"]) + tuple(self._skipped_decode),
            samples_requested=own["requested"],
            late_samples=own["late"],
            # NOTE: the disk tier is the node's: each rank counts its own disk hits; its peak is
            # reported at every rank (as cache_peak_bytes, merged with max), its errors at local rank 0.
            disk_hits=own["disk_hits"],
            disk_peak_bytes=node["disk_peak_bytes"],
            disk_write_errors=node["disk_write_errors"] if main else 0,
            disk_corrupt_count=node["corrupt_count"] if main else 0,
            fetch_restarts=node["fetch_restarts"] if main else 0,  # the node's, reported once
        )

    def close(self) -> None:
        """Leave the node service; local rank 0 then waits for the others to leave and stops it."""
        if self._closed:
            return
        alive = self._proc is None or self._proc.poll() is None
        self._link.deadline_s = min(self.deadline_s, 10.0)  # the service may be gone already
        if alive:
            self.node_stats()
        self._closed = True
        try:
            self._pipeline.close()
        finally:
            if alive:
                try:
                    self._link.call("leave", self.ctx.local_rank)
                except RuntimeFailure:
                    pass
            self._link.close()
            if self._proc is not None:
                try:
                    self._proc.wait(self.deadline_s)  # until every local rank has left
                except subprocess.TimeoutExpired:
                    pass
                self._stop_service()

    def __enter__(self) -> NodeDeliLoader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
