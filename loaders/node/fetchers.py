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
(then kills) its fetch processes on the way out, replacements and ones still starting included.

A fetch process that dies (OOM killer, segfault, SIGKILL) is replaced: GETs are idempotent and the
blocks of its work in flight are still allocated (their entries stay ``FETCHING``, which nothing
frees), so its reader thread reaps it first (a dead process writes nothing more, so no late partial
write of it can land in blocks its successor fills), starts a new fetch process at the same index
off the service's loop, and the loop re-sends the dead one's work items, the same samples into the
same blocks. Counting: each re-sent item is a **retry** in the node's meter (``retries``, on local
rank 0 as with any retry), the per-rank GET counts (one per miss, at the walk) do not change, and the
dead process's own unreported attempts and bytes died with it uncounted; the node's stats carry
``fetch_restarts`` and ``fetch_resent``. Bounded: after :data:`~delibench.loaders.node.config.FETCH_RESTART_LIMIT`
restarts within :data:`~delibench.loaders.node.config.FETCH_RESTART_WINDOW_S` (3 in 60 s, all
processes together), the next death, or a replacement that does not start, makes every later batch
fail with an error naming the process (index, pid, signal or exit code) and the restarts, never a
hang or a loop on a sample that kills whatever fetches it. ``auto`` takes a
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
from delibench.loaders.node.config import FETCH_RESTART_LIMIT, FETCH_RESTART_WINDOW_S, NodeConfig, start_deadline_s
from delibench.loaders.source import FetchMeter

__all__ = ["FetchProcesses", "fetch_main"]


class _Fetcher:
    """The service's side of one fetch process (a replacement gets a new one, at the same index)."""

    __slots__ = ("conn", "done", "gone", "index", "pending", "proc")

    def __init__(self, index: int, proc: subprocess.Popen[bytes], conn: Connection) -> None:
        self.index = index
        self.proc = proc
        self.conn = conn
        #: request id -> (its future, the sample, its block runs): all a replacement needs to redo it
        self.pending: dict[int, tuple[asyncio.Future[tuple[str, str, str] | None], int, list[tuple[int, int]]]] = {}
        self.done = 0  # work items answered at this index (carried over to a replacement)
        self.gone = False  # its socket reached EOF: no new work goes to it


class FetchProcesses:
    """The node service's fetch processes (``fetch_processes > 1``): work items out, replies in.

    :meth:`fetch` runs on the service's loop; one reader thread per process hands its replies back to
    the loop in batches, and when its process dies, reaps it and starts its replacement (see the
    module docstring for the design). ``pending`` of every fetcher is touched on the loop only."""

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
        self.payload = pickle.dumps(config)
        #: Replacements started, and when (the last ones within FETCH_RESTART_WINDOW_S bound the next).
        self.restarts = 0
        self.restart_times: list[float] = []
        #: Work items re-sent to a replacement (each counted a retry in ``meter``).
        self.resent = 0
        #: Replacements started but not ready yet (under ``lock``): ``close`` stops them too.
        self.starting: list[_Fetcher] = []
        try:
            for i in range(count):
                self.fetchers.append(self._spawn(i))
            for f in self.fetchers:
                self._hand_config(f)
            deadline = time.monotonic() + start_deadline_s(config.deadline_s)  # all started first: they import in parallel
            for f in self.fetchers:
                self._await_ready(f, deadline)
        except BaseException:
            self.close()
            raise
        for f in self.fetchers:
            self._start_reader(f)

    def _spawn(self, index: int) -> _Fetcher:
        """Start fetch process ``index`` (then :meth:`_hand_config`: it imports, maps the arena, says ready)."""
        mine, theirs = socket.socketpair()
        try:
            proc = subprocess.Popen([sys.executable, "-m", "delibench.loaders.node", "--fetch", str(index), str(theirs.fileno())],
                                    stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, pass_fds=(theirs.fileno(),))  # stdout is the rank's "ready" pipe
        except BaseException:
            mine.close()
            raise
        finally:
            theirs.close()
        return _Fetcher(index, proc, Connection(mine.detach()))

    def _hand_config(self, f: _Fetcher) -> None:
        """Write the config to ``f``'s stdin (it blocks until the process reads it, after its imports:
        never under ``lock``)."""
        assert f.proc.stdin is not None
        try:
            f.proc.stdin.write(self.payload)
            f.proc.stdin.close()
        except OSError:
            pass  # it died at once (or close() stopped it): _await_ready says how

    def _await_ready(self, f: _Fetcher, deadline: float) -> None:
        """Wait until ``f`` says ready (by ``deadline``, monotonic); raise RuntimeFailure naming it if not."""
        wait_s = start_deadline_s(self.config.deadline_s)
        try:
            if not f.conn.poll(max(0.0, deadline - time.monotonic())):
                raise RuntimeFailure(f"{self._name(f)} did not start within {wait_s:g} s")
            kind, detail = f.conn.recv()
        except (EOFError, OSError) as exc:
            raise RuntimeFailure(f"{self._name(f)} did not start ({self._how(f)})") from exc
        if kind != "ready":
            raise RuntimeFailure(f"{self._name(f)} did not start: {detail}")

    def _start_reader(self, f: _Fetcher) -> None:
        threading.Thread(target=self._read, args=(f,), daemon=True, name=f"delibench-node-fetch-{f.index}").start()

    def _name(self, f: _Fetcher) -> str:
        return f"node service: fetch process {f.index + 1} of {self.count} (pid {f.proc.pid})"

    @staticmethod
    def _how(f: _Fetcher) -> str:
        """How ``f``'s process ended, once it is reaped (killed first if it is alive with its socket broken)."""
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
        f = min([x for x in self.fetchers if not x.gone] or self.fetchers, key=lambda x: len(x.pending))
        rid = next(self.ids)
        fut: asyncio.Future[tuple[str, str, str] | None] = self.loop.create_future()
        f.pending[rid] = (fut, key, runs)
        try:
            f.conn.send(("get", rid, key, runs))
        except OSError:
            pass  # it died: the item stays pending, for its replacement (or the node's error)
        return await fut

    def _read(self, f: _Fetcher) -> None:
        """``f``'s reader thread: its replies to the loop; at its end (EOF), its replacement or the node's error."""
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
        except Exception:  # noqa: BLE001 - EOF, a broken socket, or a reply torn by the process's death
            pass
        if self.closing:
            return
        f.gone = True
        # NOTE: _how reaps the process (killing it if it lingers) BEFORE its work is re-sent: a dead
        # process writes nothing more, so no late write of it can land in blocks its replacement fills.
        how = self._how(f)
        failure = self._restart(f, how)
        if failure is not None and not self.closing:
            self._call(self._died, f, failure)

    def _restart(self, f: _Fetcher, how: str) -> str | None:
        """Start ``f``'s replacement (on ``f``'s reader thread, off the loop) and hand it ``f``'s work;
        None, or why the node cannot go on (the bound reached, or the replacement did not start)."""
        name, now = self._name(f), time.monotonic()
        with self.lock:
            if self.closing:
                return None
            if self.dead is not None:
                return self.dead
            self.restart_times = [t for t in self.restart_times if now - t < FETCH_RESTART_WINDOW_S]
            if len(self.restart_times) >= FETCH_RESTART_LIMIT:
                return (f"{name} died ({how}) after {self.restarts} restarts of fetch processes, {len(self.restart_times)} of them in "
                        f"the last {FETCH_RESTART_WINDOW_S:g} s (at most {FETCH_RESTART_LIMIT}): its GETs are lost, this node can serve no more samples")
            try:
                new = self._spawn(f.index)
            except OSError as exc:
                return (f"{name} died ({how}) after {self.restarts} restarts of fetch processes and its replacement could not start "
                        f"({exc}): its GETs are lost, this node can serve no more samples")
            self.starting.append(new)
        try:
            self._hand_config(new)
            self._await_ready(new, time.monotonic() + start_deadline_s(self.config.deadline_s))
        except RuntimeFailure as exc:
            with self.lock:
                self.starting.remove(new)
            self._stop(new)
            return (f"{name} died ({how}) after {self.restarts} restarts of fetch processes and its replacement failed: {exc}: "
                    "its GETs are lost, this node can serve no more samples")
        with self.lock:
            self.starting.remove(new)
            if self.closing:
                self._stop(new)
                return None
            self.restart_times.append(now)
            self.restarts += 1
            restarts = self.restarts
            new.done = f.done
            self.fetchers[f.index] = new
        self._call(self._replaced, f, new)  # queued before anything the new reader hands to the loop
        self._start_reader(new)
        print(f"delibench: {name} died ({how}); restarted as pid {new.proc.pid} (restart {restarts}, at most "
              f"{FETCH_RESTART_LIMIT} in {FETCH_RESTART_WINDOW_S:g} s); its work in flight is re-sent", file=sys.stderr, flush=True)
        return None

    def _call(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the loop (nothing, when the loop is closed: the service is ending)."""
        try:
            self.loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:
            pass

    def _replaced(self, old: _Fetcher, new: _Fetcher) -> None:
        """On the loop: ``old``'s work in flight goes to ``new``, the same samples into the same blocks
        (still allocated: their entries stay FETCHING, so nothing frees them). Each is counted a retry:
        a GET sent again; the dead process's own attempt at it, sent or not, died uncounted with it."""
        pending, old.pending = old.pending, {}
        try:
            old.conn.close()
        except OSError:
            pass
        resent = 0
        for rid, (fut, key, runs) in pending.items():
            if fut.done():
                continue
            if self.dead is not None:
                fut.set_result(self._error(key, self.dead))
                continue
            new.pending[rid] = (fut, key, runs)
            resent += 1
            try:
                new.conn.send(("get", rid, key, runs))
            except OSError:
                pass  # the replacement died too: its reader re-sends (or fails) the item
        with self.lock:
            self.resent += resent
            self.meter.retries_count += resent

    def _done(self, f: _Fetcher, replies: list[Any]) -> None:
        for _, rid, error, _ in replies:
            fut, _, _ = f.pending.pop(rid, (None, 0, []))
            if fut is not None and not fut.done():
                fut.set_result(None if error is None else tuple(error))

    def _died(self, f: _Fetcher, message: str) -> None:
        with self.lock:
            first = self.dead is None
            if first:
                self.dead = message
        if first:
            self.on_death(message)
        pending, f.pending = f.pending, {}
        for fut, key, _ in pending.values():
            if not fut.done():
                fut.set_result(self._error(key, message))

    def answered(self) -> list[int]:
        """Work items each fetch process (index) answered so far, its replacements' included."""
        with self.lock:
            return [f.done for f in self.fetchers]

    def counts(self) -> dict[str, Any]:
        """Restart counters and work in flight per process, for the service's stats."""
        with self.lock:
            return {"fetch_restarts": self.restarts, "fetch_resent": self.resent,
                    "fetch_in_flight": [len(f.pending) for f in self.fetchers]}

    def meter_with(self, own: FetchMeter) -> FetchMeter:
        """The service's own meter plus what the fetch processes counted."""
        total = FetchMeter()
        total.merge(own)
        with self.lock:
            total.merge(self.meter)
        return total

    @staticmethod
    def _stop(f: _Fetcher, grace_s: float = 0.0) -> None:
        """Reap ``f``'s process (given ``grace_s`` to leave on its own, then killed), close its socket."""
        try:
            f.proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            f.proc.kill()
            f.proc.wait()
        try:
            f.conn.close()
        except OSError:
            pass

    def close(self) -> None:
        """Stop every fetch process, replacements being started included (each also leaves on its own
        when its socket closes)."""
        with self.lock:  # no replacement is installed or started after this
            self.closing = True
            fetchers, starting = list(self.fetchers), list(self.starting)
        for f in starting:
            self._stop(f)
        for f in fetchers:
            try:
                f.conn.send(("stop",))
            except OSError:
                pass
        for f in fetchers:
            self._stop(f, 5.0)


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
