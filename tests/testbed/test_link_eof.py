"""The link's delay line delivers a half-close quietly when the destination's peer has already reset.

Driven through the public emulator only: the upstream server floods the link until the link stops
reading it (back-pressure), then resets its socket, so the link's upstream transport has an unread
RST and still looks open; the client's half-close then reaches it through the delay line's timer.
"""

from __future__ import annotations

import logging
import socket
import struct
import time

from delibench.testbed.link import LinkEmulator
from delibench.testbed.profiles import LinkProfile

#: 50 ms one way and 250 kB/s: the link holds at most 1 MiB undelivered before it stops reading
#: the server, and takes about 2 s to drain to half that and read again (the test's window).
PROFILE = LinkProfile(name="eof-test", rtt_s=0.1, bandwidth_bytes_per_s=250_000)
FLOOD_BYTES = 4 << 20


def _wait(predicate, timeout_s: float = 5.0) -> bool:  # noqa: ANN001 - a zero-argument check
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_eof_to_a_reset_peer_is_quiet(caplog) -> None:
    upstream = socket.socket()
    upstream.bind(("127.0.0.1", 0))
    upstream.listen(1)
    with caplog.at_level(logging.ERROR, logger="asyncio"), LinkEmulator("127.0.0.1", upstream.getsockname()[1], PROFILE) as link:
        client = socket.create_connection(("127.0.0.1", link.port))
        upstream.settimeout(5)
        peer, _ = upstream.accept()
        # Flood the link from the server side until the kernel buffers are full: the link, holding
        # more undelivered bytes than its bound, has stopped reading the upstream socket.
        peer.setblocking(False)
        sent, deadline = 0, time.monotonic() + 1.0
        while sent < FLOOD_BYTES and time.monotonic() < deadline:
            try:
                sent += peer.send(b"x" * (256 << 10))
            except BlockingIOError:
                time.sleep(0.01)
        assert sent >= 2 << 20  # more than the link holds undelivered: it has stopped reading the server
        assert _wait(lambda: link.stats().bytes_server_to_client > 0)
        time.sleep(0.1)
        # Reset (SO_LINGER 0): the link's paused upstream transport does not read the RST.
        peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        time.sleep(0.05)
        client.shutdown(socket.SHUT_WR)  # the half-close travels up the delay line to the reset peer
        counted = _wait(lambda: link.stats().half_closes >= 1)
        client.close()
    upstream.close()
    assert counted  # the half-close still counts toward closing the connection
    assert link.stats().half_closes == 1
    assert not [r for r in caplog.records if "Errno" in r.getMessage() or r.exc_info], caplog.text
