"""The rank side of the control channel: a connection to the node service, and the decode workers'
dataset that asks it for each batch and reads the batch's bytes out of the mapped arena.

A decode worker's request for its batch is answered with the blocks' offsets (a lease); the worker
copies the bytes straight out of the arena, releases the lease, and decodes: no sample byte
crosses the socket. A rank whose service vanished gets a clear error, never a hang.
"""

from __future__ import annotations

import os
import threading
import time
from multiprocessing.connection import Client, Connection
from typing import Any

from delibench.errors import RuntimeFailure
from delibench.loaders.node.arena import Arena
from delibench.loaders.node.config import start_deadline_s
from delibench.loaders.node.protocol import ANSWER_MARGIN_S, FAILURE, FETCH_ERROR, OK
from delibench.loaders.pipeline import BytesBatchDataset, WorkerResult
from delibench.loaders.source import FetchMeter

__all__ = ["NodeFeedDataset", "NodeLink"]


class NodeLink:
    """A connection to the node service (one per process and purpose), and the arena mapped.

    Pickled into the decode workers as its address, key and rank alone.
    """

    def __init__(self, address: str, authkey: bytes, index: int, deadline_s: float, role: str = "worker") -> None:
        self.role = role
        self.address = address
        self.authkey = authkey
        self.index = index
        self.deadline_s = deadline_s
        self._conn: Connection | None = None
        self._pid = 0
        self._arena: Arena | None = None
        self._arena_name: str | None = None
        self._lock = threading.Lock()
        self._lost = False  # the connection of this process broke: the service is gone, no reconnecting

    def _connect(self) -> Connection:
        if self._conn is None or self._pid != os.getpid():
            if self._lost and self._pid == os.getpid():
                raise RuntimeFailure("the node service of this node is gone: no more samples can be served",
                                     hint="it ends when local rank 0 ends; see the first rank's error")
            wait_s = start_deadline_s(self.deadline_s)  # local rank 0 may still be starting it
            deadline = time.monotonic() + wait_s
            while True:
                try:
                    conn = Client(self.address, family="AF_UNIX", authkey=self.authkey)
                    break
                except (FileNotFoundError, ConnectionRefusedError, OSError) as exc:
                    if time.monotonic() > deadline:
                        raise RuntimeFailure(f"no node service answered at {self.address.lstrip(chr(0))!r} within {wait_s:g} s: {exc}",
                                             hint="local rank 0 starts it; did it fail or exit early?") from exc
                    time.sleep(0.05)
            self._conn, self._pid = conn, os.getpid()
            conn.send(("hello", self.index, self.role))
            _, info = self._recv(conn)
            self._arena_name = info["arena"]
        return self._conn

    def _recv(self, conn: Connection) -> Any:
        if not conn.poll(self.deadline_s + ANSWER_MARGIN_S):
            raise RuntimeFailure(f"the node service did not answer within {self.deadline_s + ANSWER_MARGIN_S:g} s")
        return conn.recv()

    def call(self, *msg: Any) -> Any:
        """Send ``msg`` and return the reply's payload (raising when the service is gone)."""
        with self._lock:
            try:
                conn = self._connect()
                conn.send(msg)
                kind, payload = self._recv(conn)
            except (EOFError, OSError, BrokenPipeError) as exc:
                self._conn, self._lost = None, self._conn is not None
                raise RuntimeFailure(f"the node service of this node stopped ({type(exc).__name__}): no more samples can be served",
                                     hint="it ends when local rank 0 ends; see the first rank's error") from exc
            return kind, payload

    def send(self, *msg: Any) -> None:
        with self._lock:
            try:
                self._connect().send(msg)
            except (EOFError, OSError):
                self._conn, self._lost = None, True
            except RuntimeFailure:
                pass

    def arena(self) -> Arena:
        self._connect()
        if self._arena is None:
            assert self._arena_name is not None
            self._arena = Arena(self._arena_name)
        return self._arena

    def close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            try:
                conn.close()
            except OSError:
                pass
        self._arena = None

    def __getstate__(self) -> dict[str, Any]:
        return {"address": self.address, "authkey": self.authkey, "index": self.index, "deadline_s": self.deadline_s, "role": self.role}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["address"], state["authkey"], state["index"], state["deadline_s"], state["role"])  # type: ignore[misc]


class NodeFeedDataset:
    """The decode workers' dataset: asks the node service for a batch, reads it from shared memory, decodes."""

    def __init__(self, link: NodeLink, decode_bytes: BytesBatchDataset) -> None:
        self.link = link
        self.decode_bytes = decode_bytes

    def __getitem__(self, item: tuple[int, int]) -> WorkerResult:
        token, b = item
        try:
            kind, payload = self.link.call("batch", self.link.index, token, b)
        except RuntimeFailure as exc:
            return WorkerResult(None, failure=str(exc))
        if kind == OK:
            lease, items = payload
            arena = self.link.arena()
            data = [(idx, arena.read(runs)) for idx, runs in items]
            self.link.send("release", self.link.index, lease)
            return self.decode_bytes[data]
        if kind == FETCH_ERROR:
            return WorkerResult(None, FetchMeter(), tuple(payload))
        if kind == FAILURE:
            return WorkerResult(None, failure=payload)
        return WorkerResult(None)
