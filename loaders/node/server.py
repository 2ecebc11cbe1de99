"""The node service process: its control socket, its lifecycle, and its command line.

Started by local rank 0 as ``python -m delibench.loaders.node`` (:mod:`~delibench.loaders.node.__main__`,
the :class:`~delibench.loaders.node.config.NodeConfig` pickled on stdin, one ``ready`` line back on
stdout), it answers each connection on a thread of its own (the words: :mod:`~delibench.loaders.node.protocol`).
Lifecycle: the service ignores Ctrl-C (the ranks stop it), leaves when its starter is gone (polled),
when every rank has left after the starter's ``close``, or on SIGTERM, and unlinks its arena on the
way out (and removes its disk tier's folder, ``cache_tier=disk``); the starter's ``close`` does both
again, so a service killed with SIGKILL leaves nothing in ``/dev/shm`` or on disk either.
``--fetch I FD`` makes the process fetch process ``I`` instead (:func:`~delibench.loaders.node.fetchers.fetch_main`).
"""

from __future__ import annotations

import os
import pickle
import signal
import sys
import threading
from multiprocessing.connection import Connection, Listener
from typing import Any

from delibench.loaders.node.arena import unlink_segment
from delibench.loaders.node.config import NodeConfig, remove_disk_dir
from delibench.loaders.node.fetchers import fetch_main
from delibench.loaders.node.protocol import FAILURE
from delibench.loaders.node.service import NodeService

__all__ = ["main", "serve"]

#: How often the service looks whether its starter is still alive.
WATCH_S = 0.25


def serve(config: NodeConfig, ready: Any) -> None:
    """Run the node service until the job ends; ``ready`` gets one line once ranks may connect."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's Ctrl-C: the ranks stop the service
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    service: NodeService | None = None
    listener: Listener | None = None
    try:
        service = NodeService(config)
        listener = Listener(config.address, family="AF_UNIX", authkey=config.authkey)
        svc = service

        def handle(conn: Connection) -> None:
            rank_of_conn: int | None = None
            try:
                while not stop.is_set():
                    if not conn.poll(0.2):
                        continue
                    msg = conn.recv()
                    kind = msg[0]
                    if kind == "batch":
                        conn.send(svc.batch(msg[1], msg[2], msg[3]))
                    elif kind == "release":
                        svc.release(msg[1], msg[2])
                    elif kind == "hello":
                        if msg[2] == "control":
                            rank_of_conn = msg[1]
                            with svc.cond:
                                svc.ranks[rank_of_conn].connected = True
                        conn.send(("ok", {"arena": config.arena_name, "block": svc.block}))
                    elif kind == "open":
                        try:
                            conn.send(("ok", svc.open(msg[1], msg[2], msg[3], msg[4])))
                        except Exception as exc:  # noqa: BLE001 - the rank raises it
                            conn.send((FAILURE, repr(exc)))
                    elif kind == "close-epoch":
                        svc.close_epoch(msg[1], msg[2])
                        conn.send(("ok", None))
                    elif kind == "pause":
                        svc.pause(msg[1])
                        conn.send(("ok", None))
                    elif kind == "stats":
                        conn.send(("ok", svc.stats(msg[1])))
                    elif kind == "leave":
                        svc.leave(msg[1])
                        rank_of_conn = None
                        if msg[1] == 0:
                            svc.owner_left = True
                        conn.send(("ok", None))
                        if svc.everyone_left():
                            stop.set()
                    elif kind == "ping":
                        conn.send(("ok", None))
            except (EOFError, OSError):
                pass
            finally:
                if rank_of_conn is not None:  # a rank's control connection died with it
                    svc.leave(rank_of_conn)
                    if svc.owner_left and svc.everyone_left():
                        stop.set()
                conn.close()

        def accept() -> None:
            while not stop.is_set():
                try:
                    conn = listener.accept()  # type: ignore[union-attr]
                except Exception:  # noqa: BLE001 - a failed handshake, or the listener closed
                    if stop.is_set():
                        return
                    continue
                threading.Thread(target=handle, args=(conn,), daemon=True, name="delibench-node-conn").start()

        threading.Thread(target=accept, daemon=True, name="delibench-node-accept").start()
        ready.write(b"ready\n")
        ready.flush()
        while not stop.wait(WATCH_S):
            if os.getppid() != config.parent_pid:  # the starter is gone (killed, crashed)
                break
    except Exception as exc:  # noqa: BLE001 - told to the starter, which raises it
        try:
            ready.write(f"error {exc!r}\n".encode())
            ready.flush()
        except OSError:
            pass
    finally:
        stop.set()
        if service is not None:
            service.shutdown()
        if listener is not None:
            try:
                listener.close()
            except OSError:
                pass
        if service is not None:
            try:
                service.buf.release()
                service.shm.close()
            except Exception:  # noqa: BLE001 - exported views may remain; unlink regardless
                pass
            try:
                service.shm.unlink()
            except Exception:  # noqa: BLE001
                unlink_segment(config.arena_name)
        else:
            unlink_segment(config.arena_name)
        remove_disk_dir(config)


def main() -> None:
    """The process's entry: fetch process ``I`` with ``--fetch I FD`` (it never returns), else the service."""
    if sys.argv[1:2] == ["--fetch"]:
        fetch_main(int(sys.argv[2]), int(sys.argv[3]))
    config = pickle.load(sys.stdin.buffer)
    out = os.fdopen(os.dup(sys.stdout.fileno()), "wb")
    serve(config, out)
    os._exit(0)  # no waiting on the IO loop's threads
