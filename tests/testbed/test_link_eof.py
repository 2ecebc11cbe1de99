"""The link's delay line delivers a half-close quietly when the destination's peer has already reset."""

from __future__ import annotations

import asyncio
import logging
import socket
import struct

from delibench.testbed.link import _EOF, _Direction


class _Conn:
    """The part of a proxied connection a delay line reports to (eof counting only)."""

    def __init__(self) -> None:
        self.eofs = 0

    def eof_delivered(self, direction: _Direction) -> None:
        self.eofs += 1


async def _reset_transport() -> tuple[asyncio.Transport, socket.socket]:
    """A real TCP transport whose peer closed with RST while the transport was not reading."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_connection(asyncio.Protocol, *srv.getsockname())
    transport.pause_reading()  # the RST stays unread, as when the link applies back-pressure
    peer, _ = srv.accept()
    peer.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()
    await asyncio.sleep(0.05)
    return transport, srv


def test_eof_to_a_reset_peer_is_quiet(caplog) -> None:
    async def scenario() -> int:
        transport, srv = await _reset_transport()
        assert not transport.is_closing() and transport.can_write_eof()  # the guard alone does not catch it
        conn = _Conn()
        direction = _Direction(conn, "up", None, None, 1 << 20)  # type: ignore[arg-type]
        direction.dest = transport
        # Delivered from a loop callback, as the delay line's timer does: an exception would be logged.
        asyncio.get_running_loop().call_soon(direction._deliver, _EOF)
        await asyncio.sleep(0.05)
        transport.abort()
        srv.close()
        return conn.eofs

    with caplog.at_level(logging.ERROR, logger="asyncio"):
        eofs = asyncio.run(scenario())
    assert eofs == 1  # the half-close still counts toward closing the connection
    assert not [r for r in caplog.records if "Errno" in r.getMessage() or r.exc_info], caplog.text
