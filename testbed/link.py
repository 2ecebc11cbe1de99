"""The link emulator: a user-space TCP proxy that puts a WAN between a client and a local server.

``tc netem`` is not available everywhere (nor to users without root), so latency, bandwidth and
faults come from this proxy. It is a *delay line*, not a per-chunk sleep: each chunk that arrives
in either direction is scheduled for delivery at ``arrival + serialisation + rtt/2 (+ jitter)``,
and later chunks never overtake earlier ones. Concurrent connections therefore overlap as on a
real link, a request/response round trip costs one RTT, and a bulk transfer costs
``rtt + bytes / bandwidth``.

Bandwidth is a virtual-time reservation per connection and per direction-aggregate: a chunk of
``n`` bytes occupies its connection for ``n / per_connection_rate`` and the shared link for
``n / rate``, and is delivered when both are done plus the one-way delay. Reading pauses when a
direction holds more than a bandwidth-delay product of undelivered bytes, so memory stays bounded
and the server feels back-pressure, as it would from TCP.

Faults (deterministic under ``seed``: the k-th request gets the k-th draw) act at HTTP request
boundaries, found by a light parser of the client->server stream (request line, headers,
``Content-Length``); nothing else of HTTP is interpreted.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import random
import signal
import socket
import struct
import sys
import threading
from dataclasses import dataclass
from typing import Any

from delibench.errors import DelibenchError, RuntimeFailure, UsageError
from delibench.testbed.profiles import LinkProfile, get_profile, with_overrides

__all__ = ["LinkEmulator", "LinkStats", "main"]

_METHODS = (b"GET ", b"HEAD ", b"PUT ", b"POST ", b"DELETE ", b"OPTIONS ", b"PATCH ")
_MAX_HEADER_BYTES = 64 * 1024
_MIN_HIGH_WATER = 1 << 20
_MAX_HIGH_WATER = 32 << 20
_WRITE_BUFFER_HIGH = 2 << 20

# Control markers travelling through the delay line after the data they follow.
_EOF = object()
_CLOSE = object()
_ABORT = object()


@dataclass(frozen=True, slots=True)
class LinkStats:
    """Counters of one emulator since it started (cumulative)."""

    connections: int
    active_connections: int
    requests: int
    bytes_client_to_server: int
    bytes_server_to_client: int
    faults: dict[str, int]
    #: Half-closes (EOFs) the link passed on, either direction, counted also when the destination
    #: had already gone (its peer reset): each one counts toward closing its connection.
    half_closes: int = 0


@dataclass(slots=True)
class _Plan:
    """The faults drawn for one request."""

    error: bool = False
    reset: bool = False
    stall: bool = False


class _Bucket:
    """A virtual-time bandwidth reservation: when the link is free again."""

    __slots__ = ("busy_until", "rate")

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.busy_until = 0.0

    def reserve(self, now: float, n: int) -> float:
        """Occupy the link for ``n`` bytes from ``now`` (or when it frees); return when done."""
        if self.rate <= 0:
            return now
        start = self.busy_until if self.busy_until > now else now
        self.busy_until = start + n / self.rate
        return self.busy_until


class _RequestTracker:
    """Finds HTTP request starts in a client->server byte stream without buffering it."""

    __slots__ = ("body_remaining", "header", "opaque")

    def __init__(self) -> None:
        self.body_remaining = 0
        self.header: bytearray | None = None  # header bytes of the current request, until complete
        self.opaque = False  # lost track (chunked upload): resync on the next method token

    def feed(self, data: bytes) -> list[tuple[int, bytes]]:
        """Consume ``data``; return ``(offset, request_line)`` of each request starting in it."""
        starts: list[tuple[int, bytes]] = []
        pos, size = 0, len(data)
        while pos < size:
            if self.body_remaining:
                step = min(self.body_remaining, size - pos)
                self.body_remaining -= step
                pos += step
                continue
            if self.header is not None:
                end = self._take_header(data, pos)
                if end < 0:
                    return starts
                pos = end
                continue
            if data.startswith(_METHODS, pos):
                line_end = data.find(b"\r\n", pos, pos + 8192)
                starts.append((pos, bytes(data[pos : line_end if line_end >= 0 else min(size, pos + 256)])))
                self.opaque = False
                self.header = bytearray()
                continue
            # Not at a request start: a chunked body or something we do not follow.
            self.opaque = True
            return starts
        return starts

    def _take_header(self, data: bytes, pos: int) -> int:
        """Accumulate header bytes; at the blank line set the body length. Returns the new pos or -1."""
        assert self.header is not None
        before = len(self.header)
        self.header += data[pos : pos + _MAX_HEADER_BYTES]
        end = self.header.find(b"\r\n\r\n", max(0, before - 3))
        if end < 0:
            if len(self.header) > _MAX_HEADER_BYTES:
                self.header, self.opaque = None, True
            return -1
        head = bytes(self.header[:end]).lower()
        self.header = None
        consumed = end + 4 - before
        length = 0
        for line in head.split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip()
            if name == b"content-length":
                with contextlib.suppress(ValueError):
                    length = int(value.strip())
            elif name == b"transfer-encoding" and b"chunked" in value:
                self.opaque = True
        self.body_remaining = length
        if self.opaque:
            return len(data)  # skip the rest of this chunk; resync at the next request line
        return pos + consumed


class _Direction:
    """One direction of one connection: the delay line from a source to a destination transport."""

    __slots__ = ("conn", "dest", "done", "high_water", "last_at", "pending_bytes", "queue", "source", "timer", "bucket", "agg", "name")

    def __init__(self, conn: _Connection, name: str, bucket: _Bucket, agg: _Bucket, high_water: int) -> None:
        self.conn = conn
        self.name = name
        self.source: asyncio.Transport | None = None
        self.dest: asyncio.Transport | None = None
        self.queue: collections.deque[tuple[float, Any]] = collections.deque()
        self.pending_bytes = 0
        self.last_at = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.bucket = bucket
        self.agg = agg
        self.high_water = high_water
        self.done = False

    def send(self, item: Any, extra_delay_s: float = 0.0) -> None:
        """Schedule ``item`` (bytes or a marker) for delivery after the link's delay."""
        if self.done:
            return
        emu = self.conn.emu
        loop = emu.loop
        now = loop.time()
        at = now
        if isinstance(item, (bytes, bytearray, memoryview)):
            n = len(item)
            at = max(self.bucket.reserve(now, n), self.agg.reserve(now, n))
            self.pending_bytes += n
        at += emu.one_way_delay() + extra_delay_s
        if at < self.last_at:
            at = self.last_at  # never overtake an earlier chunk
        self.last_at = at
        if at <= now and not self.queue:
            self._deliver(item)
            return
        self.queue.append((at, item))
        if self.timer is None:
            self.timer = loop.call_at(at, self._flush)
        if self.pending_bytes > self.high_water:
            self.conn.pause_source(self)

    def _flush(self) -> None:
        self.timer = None
        loop = self.conn.emu.loop
        now = loop.time()
        queue = self.queue
        while queue and queue[0][0] <= now:
            self._deliver(queue.popleft()[1])
            if self.done:
                queue.clear()
                return
        if queue:
            self.timer = loop.call_at(queue[0][0], self._flush)
        if self.pending_bytes <= self.high_water // 2:
            self.conn.resume_source(self)

    def _deliver(self, item: Any) -> None:
        dest = self.dest
        if isinstance(item, (bytes, bytearray, memoryview)):
            self.pending_bytes -= len(item)
            if dest is not None and not dest.is_closing():
                dest.write(item)
                self.conn.emu._count(self.name, len(item))
            return
        if item is _EOF:
            if dest is not None and not dest.is_closing() and dest.can_write_eof():
                try:
                    dest.write_eof()
                except OSError:
                    # NOTE: the peer already reset the socket (ENOTCONN/EPIPE) before the transport read
                    # the RST: there is nothing left to half-close, and its connection_lost follows.
                    pass
            self.conn.eof_delivered(self)
        elif item is _CLOSE:
            self.done = True
            self.conn.close()
        elif item is _ABORT:
            self.done = True
            self.conn.abort()

    def cancel(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self.queue.clear()
        self.done = True


class _Side(asyncio.Protocol):
    """Protocol of one socket (client side or upstream side) of a proxied connection."""

    def __init__(self, conn: _Connection, is_client: bool) -> None:
        self.conn = conn
        self.is_client = is_client

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # Larger write buffers than asyncio's 64 KiB: fewer pause/resume round trips per MB.
        transport.set_write_buffer_limits(high=_WRITE_BUFFER_HIGH)  # type: ignore[attr-defined]
        self.conn.side_made(self, transport)  # type: ignore[arg-type]

    def data_received(self, data: bytes) -> None:
        if self.is_client:
            self.conn.from_client(data)
        else:
            self.conn.from_server(data)

    def eof_received(self) -> bool:
        self.conn.side_eof(self.is_client)
        return True  # keep the other direction open (half-close)

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.side_lost(self.is_client, exc)

    def pause_writing(self) -> None:
        self.conn.dest_pressure(self.is_client, True)

    def resume_writing(self) -> None:
        self.conn.dest_pressure(self.is_client, False)


class _Connection:
    """One proxied TCP connection: client <-> emulator <-> upstream, with two delay lines."""

    def __init__(self, emu: LinkEmulator) -> None:
        self.emu = emu
        profile = emu.profile
        bdp = 2 * profile.one_way_delay_s * (profile.per_connection_bandwidth_bytes_per_s or profile.bandwidth_bytes_per_s or 1e9)
        high_water = int(min(_MAX_HIGH_WATER, max(_MIN_HIGH_WATER, bdp + (256 << 10))))
        self.up = _Direction(self, "up", _Bucket(profile.per_connection_bandwidth_bytes_per_s), emu._agg_up, high_water)
        self.down = _Direction(self, "down", _Bucket(profile.per_connection_bandwidth_bytes_per_s), emu._agg_down, high_water)
        self.client: asyncio.Transport | None = None
        self.server: asyncio.Transport | None = None
        self.tracker = _RequestTracker()
        self.plans: collections.deque[_Plan] = collections.deque()
        self.dropping = False  # an error answer was sent: swallow the rest of the client's bytes
        self.reset_armed = False
        self.first_up = True
        self.paused: set[str] = set()
        self.eofs = 0
        self.closed = False

    # -- setup ---------------------------------------------------------------------------------
    def side_made(self, side: _Side, transport: asyncio.Transport) -> None:
        if side.is_client:
            self.client = transport
            self.up.source, self.down.dest = transport, transport
            transport.pause_reading()  # until the upstream connection exists
            self.emu._open(self)
            self.emu.loop.create_task(self._connect_upstream())
        else:
            self.server = transport
            self.down.source, self.up.dest = transport, transport

    async def _connect_upstream(self) -> None:
        emu = self.emu
        try:
            await emu.loop.create_connection(lambda: _Side(self, False), emu.upstream_host, emu.upstream_port)
        except OSError:
            self.abort()
            return
        if self.closed:
            self.abort()
            return
        if self.client is not None and not self.client.is_closing():
            self.client.resume_reading()

    # -- data ----------------------------------------------------------------------------------
    def from_client(self, data: bytes) -> None:
        if self.dropping:
            return
        emu = self.emu
        extra = 0.0
        if self.first_up:
            self.first_up = False
            extra = emu.profile.connect_rtts * emu.profile.rtt_s
        starts = self.tracker.feed(data)
        for offset, line in starts:
            emu.requests += 1
            plan = emu._draw()
            if plan.error:
                if offset:
                    self.up.send(data[:offset], extra)
                self._answer_error(line, extra)
                return
            self.plans.append(plan)
        self.up.send(data, extra)

    def _answer_error(self, request_line: bytes, extra: float) -> None:
        """Answer the request with a throttling error instead of forwarding it, then close."""
        self.emu._fault("error")
        self.dropping = True
        self.up.cancel()
        if self.server is not None:
            self.server.close()
        # The request travels to the "server" and the answer back: one more one-way delay.
        self.down.send(_error_response(request_line), extra + self.emu.profile.one_way_delay_s)
        self.down.send(_CLOSE)

    def from_server(self, data: bytes) -> None:
        down = self.down
        if down.done:
            return
        extra = 0.0
        if self.plans:
            plan = self.plans.popleft()
            if plan.stall:
                self.emu._fault("stall")
                extra = self.emu.profile.stall_s
            if plan.reset:
                self.reset_armed = True
                head_end = data.find(b"\r\n\r\n")
                if head_end >= 0 and len(data) > head_end + 4:
                    cut = head_end + 4 + max(1, (len(data) - head_end - 4) // 2)
                    self._reset_after(data[:cut], extra)
                    return
        elif self.reset_armed:
            self._reset_after(data[: max(1, len(data) // 2)], extra)
            return
        down.send(data, extra)

    def _reset_after(self, data: bytes, extra: float) -> None:
        self.reset_armed = False
        self.emu._fault("reset")
        self.down.send(data, extra)
        self.down.send(_ABORT)
        self.up.cancel()
        if self.server is not None:
            self.server.pause_reading()

    # -- flow control --------------------------------------------------------------------------
    def pause_source(self, direction: _Direction) -> None:
        self._set_paused(direction.name, True)

    def resume_source(self, direction: _Direction) -> None:
        self._set_paused(direction.name, False)

    def dest_pressure(self, dest_is_client: bool, paused: bool) -> None:
        # The client's socket is the destination of "down"; pause the server side, and vice versa.
        self._set_paused("down-dest" if dest_is_client else "up-dest", paused)

    def _set_paused(self, reason: str, paused: bool) -> None:
        if paused:
            self.paused.add(reason)
        else:
            self.paused.discard(reason)
        for name, transport in (("up", self.client), ("down", self.server)):
            if transport is None or transport.is_closing():
                continue
            blocked = name in self.paused or f"{name}-dest" in self.paused
            with contextlib.suppress(RuntimeError):
                if blocked and transport.is_reading():
                    transport.pause_reading()
                elif not blocked and not transport.is_reading() and not (name == "up" and self.server is None):
                    transport.resume_reading()

    # -- teardown ------------------------------------------------------------------------------
    def side_eof(self, from_client: bool) -> None:
        (self.up if from_client else self.down).send(_EOF)

    def eof_delivered(self, direction: _Direction) -> None:
        self.eofs += 1
        self.emu.half_closes += 1
        if self.eofs >= 2:
            self.close()

    def side_lost(self, from_client: bool, exc: Exception | None) -> None:
        direction = self.up if from_client else self.down
        if self.closed:
            return
        # Pass the loss on after the delay: a reset as a reset, a close as a close.
        direction.send(_ABORT if exc is not None else _CLOSE)

    def close(self) -> None:
        """Close both sockets after flushing what was already written to them."""
        if self.closed:
            return
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for transport in (self.client, self.server):
            if transport is not None:
                transport.close()
        self.emu._close(self)

    def abort(self) -> None:
        """Reset both sockets (RST to the client: SO_LINGER 0)."""
        already = self.closed
        self.closed = True
        self.up.cancel()
        self.down.cancel()
        for transport in (self.client, self.server):
            if transport is None:
                continue
            sock = transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
        if not already:
            self.emu._close(self)


def _error_response(request_line: bytes) -> bytes:
    """A canned throttling answer in the dialect of the API the request was for."""
    method, _, rest = request_line.partition(b" ")
    path = rest.split(b" ", 1)[0]
    if path.startswith((b"/storage/v1", b"/upload/storage", b"/download/storage", b"/batch/storage")):
        body = b'{"error":{"code":503,"message":"Service Unavailable (injected by the delibench link emulator)","errors":[{"reason":"backendError"}]}}'
        ctype = b"application/json; charset=UTF-8"
    else:
        body = (
            b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
            b"<Message>Please reduce your request rate. (injected by the delibench link emulator)</Message>"
            b"<RequestId>delibench-link</RequestId></Error>"
        )
        ctype = b"application/xml"
    head = (
        b"HTTP/1.1 503 Slow Down\r\nContent-Type: " + ctype + b"\r\nContent-Length: " + str(len(body)).encode()
        + b"\r\nConnection: close\r\n\r\n"
    )
    return head if method == b"HEAD" else head + body


class LinkEmulator:
    """A TCP proxy that emulates a network path (delay, bandwidth, faults) to an upstream server.

    Runs its own asyncio loop in a background thread, so it works next to synchronous clients
    (boto3, s3fs's sync API) and forked data-loader workers alike.

    Args:
        upstream_host: The real server's host.
        upstream_port: The real server's port.
        profile: A ``LinkProfile`` or a shipped profile name.
        listen_host: Where to listen (loopback by default).
        listen_port: Port to listen on; 0 picks a free one (see ``endpoint_url``).
        seed: Seed for fault and jitter draws (the k-th request gets the k-th fault draw).

    Example:
        >>> with LinkEmulator("127.0.0.1", 8333, "cross-region") as link:  # doctest: +SKIP
        ...     os.environ["AWS_ENDPOINT_URL"] = link.endpoint_url
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        profile: str | LinkProfile = "local",
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
        *,
        seed: int = 0,
    ) -> None:
        self.upstream_host = upstream_host
        self.upstream_port = int(upstream_port)
        self.profile = get_profile(profile)
        self.listen_host = listen_host
        self.listen_port = int(listen_port)
        self.seed = seed
        self._fault_rng = random.Random(seed)
        self._jitter_rng = random.Random(seed + 1)
        self._agg_up = _Bucket(self.profile.bandwidth_bytes_per_s)
        self._agg_down = _Bucket(self.profile.bandwidth_bytes_per_s)
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._connections: set[_Connection] = set()
        self.connections = 0
        self.requests = 0
        self.bytes_client_to_server = 0
        self.bytes_server_to_client = 0
        self.half_closes = 0
        self.faults: dict[str, int] = {"error": 0, "reset": 0, "stall": 0}

    # -- public API ----------------------------------------------------------------------------
    @property
    def port(self) -> int:
        """The port it listens on (known after ``start``)."""
        return self.listen_port

    @property
    def endpoint_url(self) -> str:
        """``http://host:port`` of the shaped endpoint."""
        return f"http://{self.listen_host}:{self.listen_port}"

    def stats(self) -> LinkStats:
        """A snapshot of the counters."""
        return LinkStats(
            connections=self.connections,
            active_connections=len(self._connections),
            requests=self.requests,
            bytes_client_to_server=self.bytes_client_to_server,
            bytes_server_to_client=self.bytes_server_to_client,
            faults=dict(self.faults),
            half_closes=self.half_closes,
        )

    def start(self) -> LinkEmulator:
        """Start listening (in a background thread); returns ``self``.

        Raises:
            RuntimeFailure: The listen address is taken or invalid.
        """
        if self._thread is not None:
            return self
        self.loop = asyncio.new_event_loop()
        ready: dict[str, BaseException | None] = {"error": None}
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            try:
                self.loop.run_until_complete(self._listen())
            except BaseException as exc:  # reported to start()'s caller
                ready["error"] = exc
                started.set()
                return
            started.set()
            self.loop.run_forever()

        self._thread = threading.Thread(target=run, name=f"delibench-link-{self.profile.name}", daemon=True)
        self._thread.start()
        started.wait()
        if ready["error"] is not None:
            self._thread.join()
            self._thread = None
            self.loop.close()
            raise RuntimeFailure(f"link emulator could not listen on {self.listen_host}:{self.listen_port}: {ready['error']}")
        return self

    def stop(self) -> None:
        """Stop listening, reset open connections, stop the thread. Idempotent."""
        if self._thread is None:
            return
        future = asyncio.run_coroutine_threadsafe(self._shutdown(), self.loop)
        with contextlib.suppress(Exception):
            future.result(timeout=10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=10)
        self._thread = None
        self.loop.close()

    def __enter__(self) -> LinkEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- event-loop side -----------------------------------------------------------------------
    async def _listen(self) -> None:
        self._server = await self.loop.create_server(
            lambda: _Side(_Connection(self), True), self.listen_host, self.listen_port, backlog=1024, reuse_address=True
        )
        self.listen_port = self._server.sockets[0].getsockname()[1]

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.abort()
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 2)
        await asyncio.sleep(0)

    async def serve_forever(self) -> None:
        """Listen and serve in the current loop until cancelled (the detached mode)."""
        self.loop = asyncio.get_running_loop()
        await self._listen()
        try:
            await asyncio.Event().wait()
        finally:
            await self._shutdown()

    def one_way_delay(self) -> float:
        base = self.profile.one_way_delay_s
        if self.profile.jitter_s:
            base += self._jitter_rng.uniform(-self.profile.jitter_s, self.profile.jitter_s)
        return base if base > 0 else 0.0

    def _draw(self) -> _Plan:
        rng = self._fault_rng
        p = self.profile
        # Always three draws, so the sequence does not depend on which faults are enabled.
        e, r, s = rng.random(), rng.random(), rng.random()
        return _Plan(error=e < p.error_rate, reset=r < p.reset_rate, stall=s < p.stall_rate)

    def _fault(self, kind: str) -> None:
        self.faults[kind] = self.faults.get(kind, 0) + 1

    def _count(self, direction: str, n: int) -> None:
        if direction == "up":
            self.bytes_client_to_server += n
        else:
            self.bytes_server_to_client += n

    def _open(self, conn: _Connection) -> None:
        self.connections += 1
        self._connections.add(conn)

    def _close(self, conn: _Connection) -> None:
        self._connections.discard(conn)


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise UsageError(f"not a HOST:PORT address: {text!r}", hint="e.g. --upstream 127.0.0.1:8333")
    return host or "127.0.0.1", int(port)


def main(argv: list[str] | None = None) -> int:
    """``python -m delibench.testbed.link``: run one emulator in the foreground until SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m delibench.testbed.link",
        description="Emulate a WAN link in front of a TCP server. "
        "Example: python -m delibench.testbed.link --upstream 127.0.0.1:8333 --profile cross-region --listen-port 9333",
    )
    parser.add_argument("--upstream", required=True, help="HOST:PORT of the real server")
    parser.add_argument("--profile", default="local", help="link profile name (default: local)")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, default=0)
    parser.add_argument("--rtt", default=None, help="override the round-trip time, e.g. 40ms")
    parser.add_argument("--bandwidth", default=None, help="override the aggregate bandwidth per second, e.g. 50MB")
    parser.add_argument("--profile-json", default=None, help="a full profile as JSON (what 'testbed up' passes)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    try:
        host, port = _host_port(args.upstream)
        base: str | LinkProfile = args.profile
        if args.profile_json:
            try:
                base = LinkProfile(**json.loads(args.profile_json))
            except (ValueError, TypeError) as exc:
                raise UsageError(f"bad --profile-json: {exc}") from exc
        profile = with_overrides(base, rtt=args.rtt, bandwidth=args.bandwidth)
        emulator = LinkEmulator(host, port, profile, args.listen_host, args.listen_port, seed=args.seed)

        async def run() -> None:
            task = asyncio.current_task()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, task.cancel)  # type: ignore[union-attr]
            serving = loop.create_task(emulator.serve_forever())
            while emulator._server is None and not serving.done():
                await asyncio.sleep(0.01)
            if serving.done():
                serving.result()
            print(f"listening on {emulator.endpoint_url} -> {host}:{port} ({profile.name}: {profile.summary()})", flush=True)
            try:
                await serving
            finally:
                serving.cancel()

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(run())
    except DelibenchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except OSError as exc:
        print(f"error: link emulator could not listen: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
