"""Handing each batch's bytes to the decode worker that asks for it, so the DataLoader never waits on a fetch.

Why this exists: a DataLoader pulls its sampler's next item in its main thread, inside
``__next__``, *before* it returns the batch it already has (``_process_data`` tops the workers up
first), and it primes ``prefetch_factor x num_workers`` items before the first batch. When the
sampler items carry the fetched bytes, every pull blocks until a later batch has crossed the link:
the training loop sees batch ``k`` only once batch ``k + prefetch_factor x num_workers`` has
arrived. Measured on a 25 MB/s link with 1 MB samples (4 batches in flight): 6.8 s to the first
batch where one batch's bytes need 1.3 s, and an epoch that ends four steps behind the link.

Here the sampler items are only ``(epoch token, batch number)``, which never block. The worker
that receives one asks the loader process for that batch over a local socket; a server thread
there assembles the batches strictly in order (the prefetcher hands positions out in order) and
replies with ``[(index, bytes), ...]``. So the loader process's main thread only waits for batches
that are decoded, and a worker waits for exactly the bytes it is about to decode.
"""

from __future__ import annotations

import os
import secrets
import socket
import sys
import threading
from collections.abc import Callable, Iterator
from multiprocessing.connection import Client, Connection, Listener
from typing import Any

from delibench.errors import FetchError, RuntimeFailure
from delibench.loaders.pipeline import BytesBatchDataset, WorkerResult
from delibench.loaders.source import FetchMeter

__all__ = ["BatchFeed", "FeedDataset"]

#: How often a server thread blocked on a socket looks whether the feed was closed.
_POLL_S = 0.2

#: Reply kinds.
_OK, _FETCH_ERROR, _FAILURE, _STALE = "ok", "fetch-error", "failure", "stale"

Assemble = Callable[[int], list[tuple[int, bytes]]]


class BatchFeed:
    """Serves one epoch's batches, in order, to the decode workers that request them.

    Loader-process side: :meth:`open_epoch` with a function that assembles batch ``b`` (it is
    called for ``b = 0, 1, 2, ...`` in order, one call at a time), :meth:`items` as the
    DataLoader's sampler items, :meth:`close_epoch` when the epoch ends or is abandoned (requests
    still in flight then get a "stale" reply at once, so persistent workers drain quickly).

    Worker side: :meth:`get` with a sampler item. In a worker process it asks over a Unix socket
    (``multiprocessing.connection``, authenticated with a random key; connected lazily, once per
    process); in the loader process itself (``num_workers=0``) it assembles directly.

    A failure other than a :class:`FetchError` reaches the worker as a message only; the loader
    process re-raises the original exception (:meth:`take_error`), type and traceback intact.

    Pickling (``spawn`` workers) keeps only the address, the key and the owner's pid.

    Args:
        remote: Serve worker processes over a socket (False with ``num_workers=0``: no socket, no thread).
    """

    def __init__(self, remote: bool = True) -> None:
        self._remote = remote
        self._errors: dict[int, BaseException] = {}
        self._owner_pid = os.getpid()
        self._authkey = os.urandom(32)
        self._listener: Listener | None = None
        self.address: str | None = None
        self._cond = threading.Condition()
        self._token = 0
        self._active = False
        self._next = 0
        self._assemble: Assemble | None = None
        self._closed = False
        self._threads: list[threading.Thread] = []
        self._client: Connection | None = None
        self._client_pid = 0

    # -- loader process ---------------------------------------------------------------------------

    def _start_server(self) -> None:
        if self._listener is not None or not self._remote:
            return
        # Linux: an abstract socket (no file, no path length limit from a long TMPDIR).
        address = f"\0delibench-feed-{os.getpid()}-{secrets.token_hex(8)}" if sys.platform.startswith("linux") else None
        self._listener = Listener(address, family="AF_UNIX", authkey=self._authkey)
        self.address = self._listener.address
        accept = threading.Thread(target=self._accept_loop, name="delibench-feed-accept", daemon=True)
        accept.start()
        self._threads.append(accept)

    def open_epoch(self, assemble: Assemble) -> int:
        """Start serving a new epoch; returns its token (requests of older tokens are stale)."""
        if self._closed:
            raise RuntimeFailure("the batch feed is closed")
        self._start_server()
        with self._cond:
            self._token += 1
            self._active = True
            self._next = 0
            self._assemble = assemble
            self._cond.notify_all()
            return self._token

    def items(self, token: int, batches: int) -> Iterator[tuple[int, int]]:
        """The DataLoader's sampler items of epoch ``token``: ``(token, b)`` for each batch."""
        return ((token, b) for b in range(batches))

    def end_current(self) -> None:
        """Stop serving whatever epoch is open (before the next one is set up)."""
        self.close_epoch(self._token)

    def take_error(self, token: int) -> BaseException | None:
        """The exception behind epoch ``token``'s first "failure" reply (removed once taken)."""
        with self._cond:
            return self._errors.pop(token, None)

    def is_active(self, token: int) -> bool:
        """Whether epoch ``token`` is still being served."""
        with self._cond:
            return self._active and self._token == token

    def close_epoch(self, token: int) -> None:
        """Stop serving epoch ``token``: waiting and later requests of it are answered "stale"."""
        with self._cond:
            if self._token == token:
                self._active = False
                self._assemble = None
            self._errors.pop(token, None)
            self._cond.notify_all()

    def close(self) -> None:
        """Stop the server threads (after the workers are gone); idempotent."""
        if self._closed:
            return
        self._closed = True
        with self._cond:
            self._active = False
            self._assemble = None
            self._cond.notify_all()
        listener, self._listener = self._listener, None
        if listener is not None and self.address is not None:
            # Wake the accept() call with a bare connection (no handshake to wait for): accept
            # fails on it, the thread sees the flag and ends.
            try:
                with socket.socket(socket.AF_UNIX) as poke:
                    poke.connect(self.address)
            except OSError:
                pass
            listener.close()
        for thread in self._threads:
            thread.join(timeout=2 * _POLL_S + 1)
        self._threads.clear()

    def _accept_loop(self) -> None:
        listener = self._listener
        while not self._closed and listener is not None:
            try:
                conn = listener.accept()
            except Exception:  # noqa: BLE001 - a failed handshake (AuthenticationError, EOF): not our worker
                if self._closed:
                    return
                continue
            if self._closed:
                conn.close()
                return
            handler = threading.Thread(target=self._handle, args=(conn,), name="delibench-feed", daemon=True)
            handler.start()
            self._threads = [t for t in self._threads if t.is_alive()] + [handler]

    def _handle(self, conn: Connection) -> None:
        try:
            while not self._closed:
                if not conn.poll(_POLL_S):
                    continue
                token, batch = conn.recv()
                conn.send(self.serve(token, batch))
        except (EOFError, OSError):
            pass  # the worker went away (epoch end without persistent workers, or shutdown)
        finally:
            conn.close()

    def serve(self, token: int, batch: int) -> tuple[str, Any]:
        """Assemble batch ``batch`` of epoch ``token`` once every batch before it is assembled."""
        with self._cond:
            while True:
                if not (self._active and self._token == token):
                    return _STALE, None
                if self._next == batch:
                    assemble = self._assemble
                    break
                if self._next > batch:
                    return _FAILURE, f"batch {batch} of the epoch was requested twice"
                self._cond.wait()
        try:
            assert assemble is not None
            reply: tuple[str, Any] = (_OK, assemble(batch))
        except FetchError as exc:
            reply = (_FETCH_ERROR, (exc.key, exc.url, exc.cause))
        except Exception as exc:  # noqa: BLE001 - the worker gets a message; take_error() has the exception
            if self.is_active(token):
                with self._cond:
                    self._errors.setdefault(token, exc)
                reply = (_FAILURE, str(exc))
            else:
                reply = (_STALE, None)
        with self._cond:
            if self._token == token:
                self._next = batch + 1
            self._cond.notify_all()
        return reply

    # -- worker side ------------------------------------------------------------------------------

    def get(self, item: tuple[int, int]) -> tuple[str, Any]:
        """The reply for one sampler item: ``(kind, payload)``."""
        token, batch = item
        if os.getpid() == self._owner_pid:
            return self.serve(token, batch)
        if self._client is None or self._client_pid != os.getpid():
            if self.address is None:
                raise RuntimeFailure("the batch feed was never opened")
            self._client = Client(self.address, authkey=self._authkey)
            self._client_pid = os.getpid()
        self._client.send((token, batch))
        return self._client.recv()

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address, "authkey": self._authkey, "owner": self._owner_pid}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(remote=False)  # type: ignore[misc]
        self.address = state["address"]
        self._authkey = state["authkey"]
        self._owner_pid = state["owner"]
        self._closed = True  # never serves: this copy lives in a worker


class FeedDataset:
    """The decode workers' dataset: asks the feed for a batch's bytes, then decodes them.

    Args:
        feed: Where the bytes come from.
        decode_bytes: Decodes ``[(index, bytes), ...]`` (labels, keys for error messages, ``on_error``).
    """

    def __init__(self, feed: BatchFeed, decode_bytes: BytesBatchDataset) -> None:
        self.feed = feed
        self.decode_bytes = decode_bytes

    def __getitem__(self, item: tuple[int, int]) -> WorkerResult:
        kind, payload = self.feed.get(item)
        if kind == _OK:
            return self.decode_bytes[payload]
        if kind == _FETCH_ERROR:
            return WorkerResult(None, FetchMeter(), tuple(payload))  # counted where it was fetched
        if kind == _FAILURE:
            return WorkerResult(None, failure=payload)
        return WorkerResult(None)  # stale: a batch of an abandoned epoch, discarded by the DataLoader
