"""How ASGD-GA's region leaders exchange updates without waiting: a sender and a receiver thread per peer.

Each region's leader runs, per other region, one sender thread and one receiver thread, each on a
process group of its own (one gloo group per directed pair of leaders), with blocking
``send``/``recv``: a message is a 4-number header (round, flags, emulated arrival time) then the
update. Why this: ``isend``/``irecv`` issued from the training thread would leave receives that the
training loop must post ahead and poll; ``torch.distributed.rpc`` would add a second runtime (its
TensorPipe agent, with its own initialisation) beside the process group; the c10d ``TCPStore``
would route every update through the one store host (a star through one region, values held in its
memory). Dedicated groups keep the background traffic out of the training thread's collectives
(each gloo group has its own TCP pairs), a receiver always has a receive posted so a sender never
waits for the peer's training loop, and a slow link only delays delivery: the groups get a long
timeout (``timeout_s``) so that a peer minutes behind is not an error.
"""

from __future__ import annotations

import queue
import threading
import time
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from delibench.errors import RuntimeFailure
from delibench.geo.sync import GeoComm

__all__ = ["PeerLinks"]

#: A message's header: 4 float64 (round, flags, arrival time by time.time(), reserved), then the update.
_HEADER = 4
#: The header flag of the last message: no update follows its round.
_DONE = 1.0


class PeerLinks:
    """A region leader's point-to-point exchange with every other region's leader (background threads).

    Every rank constructs it (process groups are created collectively); only leaders start threads.
    """

    def __init__(self, comm: GeoComm, numel: int, wire_dtype: torch.dtype, timeout_s: float) -> None:
        self.comm, self.numel, self.wire_dtype, self.timeout_s = comm, numel, wire_dtype, timeout_s
        topo = comm.topology
        leaders = topo.leaders
        me = comm.region_index
        self.peers = [i for i in range(len(topo.regions)) if i != me]
        self._send_groups: dict[int, Any] = {}
        self._recv_groups: dict[int, Any] = {}
        for i in range(len(topo.regions)):
            for j in range(len(topo.regions)):
                if i != j:
                    g = dist.new_group([leaders[i], leaders[j]], timeout=timedelta(seconds=timeout_s))
                    if i == me:
                        self._send_groups[j] = g
                    if j == me:
                        self._recv_groups[i] = g
        self._cond = threading.Condition()
        self._inbox: dict[int, list[tuple[int, torch.Tensor]]] = {i: [] for i in self.peers}
        self._taken = {i: 0 for i in self.peers}
        self._skip = {i: 0 for i in self.peers}  # rounds <= this are dropped on arrival (see restore)
        self._done: dict[int, int | None] = {i: None for i in self.peers}
        self._error: BaseException | None = None
        self._queues: dict[int, queue.Queue[tuple[torch.Tensor, torch.Tensor | None]]] = {i: queue.Queue() for i in self.peers}
        self._busy_until = {i: 0.0 for i in self.peers}
        self._threads: list[threading.Thread] = []
        if comm.is_leader:
            for i in self.peers:
                for target, kind in ((self._sender, "send"), (self._receiver, "recv")):
                    t = threading.Thread(target=target, args=(i,), name=f"geo-{kind}-{topo.regions[i]}", daemon=True)
                    t.start()
                    self._threads.append(t)

    def _fail(self, exc: BaseException) -> None:
        with self._cond:
            if self._error is None:
                self._error = exc
            self._cond.notify_all()

    def _sender(self, peer: int) -> None:
        dst, group = self.comm.topology.leaders[peer], self._send_groups[peer]
        try:
            while True:
                header, payload = self._queues[peer].get()
                dist.send(header, dst=dst, group=group, tag=1)
                if payload is None:
                    return
                dist.send(payload, dst=dst, group=group, tag=2)
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._fail(exc)

    def _receiver(self, peer: int) -> None:
        src, group = self.comm.topology.leaders[peer], self._recv_groups[peer]
        try:
            while True:
                header = torch.empty(_HEADER, dtype=torch.float64)
                dist.recv(header, src=src, group=group, tag=1)
                round_, flags, arrive_at, _ = header.tolist()
                if flags == _DONE:
                    with self._cond:
                        self._done[peer] = int(round_)
                        self._cond.notify_all()
                    return
                payload = torch.empty(self.numel, dtype=self.wire_dtype)
                dist.recv(payload, src=src, group=group, tag=2)
                delay = arrive_at - time.time()
                if delay > 0:  # the emulated WAN: not before departure + rtt/2 + bytes/bandwidth
                    time.sleep(delay)
                with self._cond:
                    if int(round_) > self._skip[peer]:  # else: re-sent after a restore, already applied
                        self._inbox[peer].append((int(round_), payload))
                        self._cond.notify_all()
        except BaseException as exc:  # noqa: BLE001 - handed to the training thread
            self._fail(exc)

    def send(self, round_: int, update: torch.Tensor) -> None:
        """Queue ``update`` (made in round ``round_``) to every other region; returns at once."""
        comm = self.comm
        nbytes = update.numel() * update.element_size() + _HEADER * 8
        for peer in self.peers:
            name = comm.topology.regions[peer]
            arrive_at = 0.0
            if comm.config is not None:
                link = comm.config.link(comm.region, name)
                depart = max(time.time(), self._busy_until[peer])
                self._busy_until[peer] = depart + nbytes / link.bandwidth_bytes_per_s
                arrive_at = self._busy_until[peer] + link.rtt_s / 2
            header = torch.tensor([float(round_), 0.0, arrive_at, 0.0], dtype=torch.float64)
            self._queues[peer].put((header, update))
            comm.meter_link_(name, nbytes)
        comm.ledger.cross_region_collectives += 1

    def _ready(self, need: int | None) -> bool:
        for peer in self.peers:
            have = self._taken[peer] + len(self._inbox[peer])
            done = self._done[peer]
            if need is None:  # drain: everything the peer will ever send
                if done is None or have < done:
                    return False
            elif have < (need if done is None else min(need, done)):
                return False
        return True

    def take(self, need: int | None, upto: int | None) -> tuple[list[tuple[int, int, torch.Tensor]], float]:
        """The updates that have arrived from rounds up to ``upto``, waiting first until each peer's rounds up to ``need`` are in.

        ``need=None``: wait for everything every peer sends before it closes; ``upto=None``: no
        limit. Returns ``[(peer, round, update)]`` and the seconds waited.
        """
        t0 = time.perf_counter()
        with self._cond:
            self._wait_locked(need)
            out = []
            for peer in self.peers:
                inbox = self._inbox[peer]  # in round order: one FIFO link per peer
                n = len(inbox) if upto is None else sum(1 for round_, _ in inbox if round_ <= upto)
                out.extend((peer, round_, payload) for round_, payload in inbox[:n])
                self._taken[peer] += n
                self._inbox[peer] = inbox[n:]
        return out, time.perf_counter() - t0

    def _wait_locked(self, need: int | None) -> None:
        """Wait (holding ``_cond``) until every peer's rounds up to ``need`` are in (see :meth:`take`)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            if self._error is not None:
                raise RuntimeFailure(f"geo update exchange failed: {self._error}") from self._error
            if self._ready(need):
                return
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeFailure(f"no update from another region within {self.timeout_s:.0f} s", hint="a region stopped or its link is down")
            self._cond.wait(timeout=min(left, 1.0))

    def snapshot(self, upto: int) -> tuple[dict[int, int], dict[int, list[tuple[int, torch.Tensor]]], float]:
        """Wait until every peer's rounds up to ``upto`` are in; then, without taking anything, return
        per peer the rounds taken so far, the arrived rounds ``<= upto`` not taken yet, and the seconds waited."""
        t0 = time.perf_counter()
        with self._cond:
            self._wait_locked(upto)
            taken = dict(self._taken)
            pending = {peer: [(round_, payload.clone()) for round_, payload in self._inbox[peer] if round_ <= upto] for peer in self.peers}
        return taken, pending, time.perf_counter() - t0

    def restore(self, taken: dict[int, int], pending: dict[int, list[tuple[int, torch.Tensor]]], own_round: int) -> None:
        """Resume from a :meth:`snapshot` taken at round ``own_round`` (every peer resumes at that round too).

        A peer sends its rounds after ``own_round`` again: the ones already taken before the snapshot
        are dropped on arrival (also any that arrived before this call), so none is applied twice.
        """
        with self._cond:
            for peer in self.peers:
                self._taken[peer] = taken[peer]
                self._skip[peer] = max(taken[peer], own_round)
                early = [(round_, payload) for round_, payload in self._inbox[peer] if round_ > self._skip[peer]]
                self._inbox[peer] = list(pending[peer]) + early
            self._cond.notify_all()

    def close(self, final_round: int) -> None:
        """Tell every peer that no update follows round ``final_round``."""
        for peer in self.peers:
            self._queues[peer].put((torch.tensor([float(final_round), _DONE, 0.0, 0.0], dtype=torch.float64), None))

    def join(self) -> None:
        for t in self._threads:
            t.join(timeout=self.timeout_s)
