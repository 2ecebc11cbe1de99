"""Fetch processes (``fetch_processes``, issue 15): the node service's GETs sent from other processes.

One event loop saturates one core at ~0.24 GB/s of 110 KB samples (~0.47 CPU-s per 1,000 GETs +
2.5 CPU-s per GB, most of it on the loop: ``benchmarks/results/node-fetch-cpu.txt``); an 8-GPU ImageNet node wants ~2.2 GB/s. Threads would
share the loop's GIL, so with ``fetch_processes=N > 1`` the service starts N fetch processes
(``python -m delibench.loaders.node --fetch``), each with its own event loop and
:class:`~delibench.loaders.source.SampleSource` (client, retries, hedging, sha256 check), and sends
no GET itself. What stays in the service, and why:

* the one table, cache, Belady policy and block allocation: one source of truth, no table shared
  between processes and so no cross-process lock. Sizes are in the manifest, so the service
  allocates a sample's blocks *before* its GET, exactly as with one loop, and hands the fetch
  process a work item ``(request id, sample, block runs)`` over its own socket pair;
* the accounting: a GET is counted at the rank whose walk sent it when the walk allocates it
  (unchanged, so per-rank GET counts are exact whichever process sends it); the fetch processes'
  own meters (attempts, retries, hedges, latencies) come back as deltas with each reply and are
  added to the service's.

A fetch process GETs (checking length and sha256 as the one loop does), writes the bytes straight
into the mapped arena (``O_RDWR`` mapping of the service's segment: it creates and unlinks nothing)
and replies ``done`` with the error, if any; the service then treats the sample as arrived (one reader
thread per fetch process hands replies to the loop in batches). Work goes to the process with the
fewest items in flight, within the same ``concurrency x local ranks`` bound. ``source=shards`` keeps
its whole-shard path in the service (the shard buffer is the service's own memory, and slicing
a buffered shard is a copy, not a GET): ``fetch_processes`` is ignored there. Lifecycle: a fetch
process's only link is its socket to the service; when the service ends (close, SIGTERM, its starter
gone, even SIGKILL) the socket reaches EOF and the fetch process exits, and the service also waits for
(then kills) its fetch processes on the way out. A fetch process that dies makes every later batch
fail with an error naming it (index, pid, signal or exit code), never a hang. ``auto`` takes a
quarter of the node's CPUs (the ranks' decode workers need the rest: on the 2-core measurement the
ranks held more CPU than the service) and at most two per local rank (8-GPU ImageNet is ~0.28 GB/s
per rank, a bit more than one loop's measured ceiling), at least 1.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import signal
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any

from delibench.errors import FetchError, RuntimeFailure
from delibench.loaders.node.arena import Arena
from delibench.loaders.node.config import NodeConfig, start_deadline_s
from delibench.loaders.source import FetchMeter

__all__ = ["FetchProcesses", "fetch_main"]


class _Fetcher:
    """The service's side of one fetch process."""

    __slots__ = ("conn", "done", "index", "pending", "proc")

    def __init__(self, index: int, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.index = index
        self.proc = proc
        self.conn = conn
        #: request id -> (its future, the sample)
        self.pending: dict[int, tuple[asyncio.Future[tuple[str, str, str] | None], int]] = {}
        self.done = 0  # work items it answered


class FetchProcesses:
    """The node service's fetch processes (``fetch_processes > 1``): work items out, replies in.

    :meth:`fetch` runs on the service's loop; one reader thread per process hands its replies back to
    the loop in batches. See the module docstring for the design."""

    def __init__(self, config: NodeConfig, count: int, loop: asyncio.AbstractEventLoop, on_death: Any) -> None:
        self.config = config
        self.count = count
        self.loop = loop
        self.on_death = on_death
        self.meter = FetchMeter()
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.fetchers: list[_Fetcher] = []
        self.dead: str | None = None
        self.closing = False
        payload = pickle.dumps(config)
        try:
            for i in range(count):
                mine, theirs = socket.socketpair()
                try:
                    proc = subprocess.Popen([sys.executable, "-m", "delibench.loaders.node", "--fetch", str(i), str(theirs.fileno())],
                                            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))  # stdout is the rank's "ready" pipe
                finally:
                    theirs.close()
                self.fetchers.append(_Fetcher(i, proc, Connection(mine.detach())))
            for f in self.fetchers:  # all started first: they import in parallel
                assert f.proc.stdin is not None
                f.proc.stdin.write(payload)
                f.proc.stdin.close()
            wait_s = start_deadline_s(config.deadline_s)
            deadline = time.monotonic() + wait_s
            for f in self.fetchers:
                try:
                    if not f.conn.poll(max(0.0, deadline - time.monotonic())):
                        raise RuntimeFailure(f"{self._name(f)} did not start within {wait_s:g} s")
                    kind, detail = f.conn.recv()
                except (EOFError, OSError) as exc:
                    raise RuntimeFailure(f"{self._name(f)} did not start ({self._how(f)})") from exc
                if kind != "ready":
                    raise RuntimeFailure(f"{self._name(f)} did not start: {detail}")
        except BaseException:
            self.close()
            raise
        for f in self.fetchers:
            threading.Thread(target=self._read, args=(f,), daemon=True, name=f"delibench-node-fetch-{f.index}").start()

    def _name(self, f: _Fetcher) -> str:
        return f"node service: fetch process {f.index + 1} of {self.count} (pid {f.proc.pid})"

    @staticmethod
    def _how(f: _Fetcher) -> str:
        try:
            code = f.proc.wait(2)
        except subprocess.TimeoutExpired:  # alive with its socket broken: it must not write into the arena again
            f.proc.kill()
            f.proc.wait()
            return "its socket broke; killed"
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _error(self, key: int, message: str) -> tuple[str, str, str]:
        return self.config.manifest.samples[key].key, self.config.dataset_url, message

    async def fetch(self, key: int, runs: list[tuple[int, int]]) -> tuple[str, str, str] | None:
        """GET sample ``key`` into the arena's ``runs`` in a fetch process; None, or its ``(key, url, cause)``."""
        if self.dead is not None:
            return self._error(key, self.dead)
        f = min(self.fetchers, key=lambda x: len(x.pending))
        rid = next(self.ids)
        fut: asyncio.Future[tuple[str, str, str] | None] = self.loop.create_future()
        f.pending[rid] = (fut, key)
        try:
            f.conn.send(("get", rid, key, runs))
        except OSError:
            f.pending.pop(rid, None)
            return self._error(key, self.dead or f"{self._name(f)} is gone")
        return await fut

    def _read(self, f: _Fetcher) -> None:
        try:
            while True:
                replies = [f.conn.recv()]
                while f.conn.poll(0):
                    replies.append(f.conn.recv())
                with self.lock:
                    f.done += len(replies)
                    for _, _, _, (requests, nbytes, errors, retries, hedges, latencies) in replies:
                        m = self.meter
                        m.requests_count += requests
                        m.bytes_read += nbytes
                        m.errors_count += errors
                        m.retries_count += retries
                        m.hedges_count += hedges
                        m.latencies_s.extend(latencies)
                self.loop.call_soon_threadsafe(self._done, f, replies)
        except (EOFError, OSError):
            pass
        if not self.closing:
            message = f"{self._name(f)} died ({self._how(f)}): its GETs are lost, this node can serve no more samples"
            self.loop.call_soon_threadsafe(self._died, f, message)

    def _done(self, f: _Fetcher, replies: list[Any]) -> None:
        for _, rid, error, _ in replies:
            fut, _ = f.pending.pop(rid, (None, 0))
            if fut is not None and not fut.done():
                fut.set_result(None if error is None else tuple(error))

    def _died(self, f: _Fetcher, message: str) -> None:
        if self.dead is None:
            self.dead = message
            self.on_death(message)
        pending, f.pending = f.pending, {}
        for fut, key in pending.values():
            if not fut.done():
                fut.set_result(self._error(key, message))

    def answered(self) -> list[int]:
        """Work items each fetch process answered so far."""
        with self.lock:
            return [f.done for f in self.fetchers]

    def meter_with(self, own: FetchMeter) -> FetchMeter:
        """The service's own meter plus what the fetch processes counted."""
        total = FetchMeter()
        total.merge(own)
        with self.lock:
            total.merge(self.meter)
        return total

    def close(self) -> None:
        """Stop every fetch process (each also leaves on its own when its socket closes)."""
        self.closing = True
        for f in self.fetchers:
            try:
                f.conn.send(("stop",))
            except OSError:
                pass
        for f in self.fetchers:
            try:
                f.proc.wait(5)
            except subprocess.TimeoutExpired:
                f.proc.kill()
                f.proc.wait()
            try:
                f.conn.close()
            except OSError:
                pass


def fetch_main(index: int, fd: int) -> None:
    """A fetch process: GET the service's work items on its own loop, write the bytes into the arena, reply."""
    from delibench.loaders.source import SampleSource

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # like the service: the ranks stop it
    conn = Connection(fd)
    try:
        config: NodeConfig = pickle.load(sys.stdin.buffer)
        opts = config.options
        source = SampleSource(config.dataset_url, config.manifest, config.storage_options,
                              io_threads=opts.concurrency * config.local_world_size, lean_http=opts.lean_http,
                              members=config.members, **opts.source_kwargs())
        arena = Arena(config.arena_name, writable=True)
        loop = source.loop
    except Exception as exc:  # noqa: BLE001 - told to the service, which raises it
        try:
            conn.send(("error", repr(exc)))
        except OSError:
            pass
        os._exit(1)
    conn.send(("ready", os.getpid()))
    samples = config.manifest.samples
    meter = source.meter
    sent = [0, 0, 0, 0, 0, 0]  # what the replies so far carried (on the loop only)

    async def one(rid: int, key: int, runs: list[tuple[int, int]]) -> None:
        error: tuple[str, str, str] | None = None
        try:
            arena.write(runs, await source.fetch(key))
        except FetchError as exc:
            error = (exc.key, exc.url, str(exc.cause))
        except Exception as exc:  # noqa: BLE001 - handed to the ranks as a fetch error of this sample
            error = (samples[key].key, config.dataset_url, repr(exc))
        now = (meter.requests_count, meter.bytes_read, meter.errors_count, meter.retries_count, meter.hedges_count, len(meter.latencies_s))
        counts = (*(a - b for a, b in zip(now[:5], sent[:5])), meter.latencies_s[sent[5]:])
        sent[:] = now
        try:
            conn.send(("done", rid, error, counts))
        except OSError:
            pass  # the service is gone: the main thread reads EOF and leaves

    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            break
        if msg[0] != "get":
            break
        asyncio.run_coroutine_threadsafe(one(msg[1], msg[2], msg[3]), loop)
    os._exit(0)  # no waiting on the IO loop's threads
