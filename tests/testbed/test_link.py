"""The link emulator in front of a real SeaweedFS: delay, overlap, bandwidth, faults, counters.

Timing assertions are lower bounds (a delay line cannot be faster than its delay) or ratios with
generous slack, because the machine is shared.
"""

from __future__ import annotations

import concurrent.futures
import http.client
import os
import time
import uuid
from typing import Any

import pytest

from delibench.testbed.link import LinkEmulator, _RequestTracker
from delibench.testbed.profiles import LinkProfile

pytestmark = pytest.mark.s3

SMALL = b"s" * 1000
BIG_BYTES = 8_000_000


def _client(endpoint_url: str, **kwargs: Any) -> Any:
    """A botocore S3 client for ``endpoint_url`` with dummy keys (SeaweedFS accepts any)."""
    import botocore.session

    return botocore.session.get_session().create_client(
        "s3", endpoint_url=endpoint_url, aws_access_key_id="x", aws_secret_access_key="y", region_name="us-east-1", **kwargs
    )


@pytest.fixture(scope="module")
def objects(s3_server) -> dict[str, bytes]:
    """A bucket with a small and a large object, reachable anonymously at ``/<bucket>/<key>``."""
    bucket = f"link-{uuid.uuid4().hex[:10]}"
    client = _client(s3_server.endpoint_url)
    client.create_bucket(Bucket=bucket)
    big = os.urandom(BIG_BYTES)
    client.put_object(Bucket=bucket, Key="small", Body=SMALL)
    client.put_object(Bucket=bucket, Key="big", Body=big)
    return {f"/{bucket}/small": SMALL, f"/{bucket}/big": big}


def _path(objects: dict[str, bytes], key: str) -> str:
    return next(p for p in objects if p.endswith("/" + key))


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[int, bytes]:
    conn.request("GET", path)
    resp = conn.getresponse()
    return resp.status, resp.read()


def _link(s3_server, profile: LinkProfile, seed: int = 0) -> LinkEmulator:
    return LinkEmulator(s3_server.host, s3_server.port, profile, seed=seed).start()


def test_sequential_requests_each_cost_one_rtt(s3_server, objects) -> None:
    rtt_s = 0.020
    path = _path(objects, "small")
    with _link(s3_server, LinkProfile("t", rtt_s=rtt_s)) as link:
        conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
        assert _get(conn, path) == (200, SMALL)  # connection set up outside the timed part
        start = time.perf_counter()
        for _ in range(50):
            assert _get(conn, path) == (200, SMALL)
        elapsed = time.perf_counter() - start
        conn.close()
        stats = link.stats()
    assert elapsed >= 50 * rtt_s
    assert stats.requests == 51
    assert stats.connections == 1
    assert stats.bytes_server_to_client > 51 * len(SMALL)


def test_concurrent_requests_overlap(s3_server, objects) -> None:
    rtt_s = 0.200
    path = _path(objects, "small")
    with _link(s3_server, LinkProfile("t", rtt_s=rtt_s)) as link:
        conns = [http.client.HTTPConnection("127.0.0.1", link.port, timeout=30) for _ in range(16)]
        with concurrent.futures.ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda c: _get(c, path), conns))  # warm: connections open
            start = time.perf_counter()
            results = list(pool.map(lambda c: _get(c, path), conns))
            elapsed = time.perf_counter() - start
        for conn in conns:
            conn.close()
    assert all(r == (200, SMALL) for r in results)
    assert elapsed >= rtt_s
    assert elapsed < 4 * rtt_s  # serialised they would take 16 x RTT


def test_new_connection_pays_a_handshake_rtt(s3_server, objects) -> None:
    rtt_s = 0.100
    path = _path(objects, "small")
    with _link(s3_server, LinkProfile("t", rtt_s=rtt_s, connect_rtts=1)) as link:
        conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
        start = time.perf_counter()
        assert _get(conn, path) == (200, SMALL)
        first = time.perf_counter() - start
        conn.close()
    assert first >= 2 * rtt_s


def test_aggregate_bandwidth_cap_holds(s3_server, objects) -> None:
    rate = 8e6
    path = _path(objects, "big")
    with _link(s3_server, LinkProfile("bw", bandwidth_bytes_per_s=rate)) as link:
        conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=60)
        start = time.perf_counter()
        status, body = _get(conn, path)
        elapsed = time.perf_counter() - start
        conn.close()
    assert status == 200 and body == objects[path]
    ideal = BIG_BYTES / rate
    assert elapsed >= ideal * 0.85
    assert elapsed <= ideal * 1.5


def test_per_connection_cap_lets_connections_add_up(s3_server, objects) -> None:
    per_conn, aggregate = 4e6, 100e6
    path = _path(objects, "big")
    profile = LinkProfile("bw", bandwidth_bytes_per_s=aggregate, per_connection_bandwidth_bytes_per_s=per_conn)
    with _link(s3_server, profile) as link:
        conns = [http.client.HTTPConnection("127.0.0.1", link.port, timeout=60) for _ in range(2)]
        start = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            results = list(pool.map(lambda c: _get(c, path), conns))
        elapsed = time.perf_counter() - start
        for conn in conns:
            conn.close()
    assert all(body == objects[path] for _, body in results)
    ideal = BIG_BYTES / per_conn  # both in parallel, each at its own cap
    assert elapsed >= ideal * 0.85
    assert elapsed <= ideal * 1.5  # serialised they would take 2x


def test_error_rate_answers_503_without_forwarding(s3_server, objects) -> None:
    path = _path(objects, "small")
    with _link(s3_server, LinkProfile("err", error_rate=1.0)) as link:
        for _ in range(3):
            conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
            conn.request("GET", path)
            resp = conn.getresponse()
            body = resp.read()
            assert resp.status == 503
            assert resp.getheader("Connection") == "close"
            assert b"<Code>SlowDown</Code>" in body
            conn.close()
        stats = link.stats()
    assert stats.faults["error"] == 3
    assert stats.bytes_client_to_server == 0  # nothing reached the server


def test_error_through_botocore_is_a_slowdown(s3_server, objects) -> None:
    import botocore.config
    import botocore.exceptions

    bucket, key = _path(objects, "small").strip("/").split("/")
    with _link(s3_server, LinkProfile("err", error_rate=1.0)) as link:
        client = _client(link.endpoint_url, config=botocore.config.Config(retries={"max_attempts": 1, "mode": "standard"}))
        with pytest.raises(botocore.exceptions.ClientError) as info:
            client.get_object(Bucket=bucket, Key=key)
        assert info.value.response["Error"]["Code"] == "SlowDown"
        assert link.stats().faults["error"] >= 1


def test_reset_rate_breaks_a_transfer(s3_server, objects) -> None:
    path = _path(objects, "big")
    with _link(s3_server, LinkProfile("rst", reset_rate=1.0)) as link:
        conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
        with pytest.raises((ConnectionError, http.client.HTTPException)):
            _get(conn, path)
        conn.close()
        stats = link.stats()
    assert stats.faults["reset"] == 1
    assert 0 < stats.bytes_server_to_client < BIG_BYTES


def test_stall_delays_the_response(s3_server, objects) -> None:
    path = _path(objects, "small")
    with _link(s3_server, LinkProfile("stall", stall_rate=1.0, stall_s=0.5)) as link:
        conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
        start = time.perf_counter()
        assert _get(conn, path) == (200, SMALL)
        elapsed = time.perf_counter() - start
        conn.close()
        assert link.stats().faults["stall"] == 1
    assert elapsed >= 0.5


def _outcomes(s3_server, path: str, seed: int, n: int = 24) -> list[int]:
    statuses = []
    with _link(s3_server, LinkProfile("half", error_rate=0.5), seed=seed) as link:
        for _ in range(n):
            conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=30)
            statuses.append(_get(conn, path)[0])
            conn.close()
        assert link.stats().faults["error"] == statuses.count(503)
    return statuses


def test_faults_are_deterministic_under_a_seed(s3_server, objects) -> None:
    path = _path(objects, "small")
    first = _outcomes(s3_server, path, seed=7)
    assert set(first) == {200, 503}
    assert _outcomes(s3_server, path, seed=7) == first
    assert _outcomes(s3_server, path, seed=8) != first


def test_request_tracker_skips_bodies_and_finds_split_headers() -> None:
    tracker = _RequestTracker()
    body = b"GET / HTTP/1.1\r\n" * 10  # a body that looks like requests must not count
    head = f"PUT /b/k HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\n\r\n".encode()
    stream = head + body + b"GET /b/k HTTP/1.1\r\nHost: x\r\n\r\n"
    starts = []
    offset = 0
    for size in (5, 17, 40, 3, 100, 1000):  # arbitrary chunking
        chunk = stream[offset : offset + size]
        starts += [(offset + o, line) for o, line in tracker.feed(chunk)]
        offset += size
    assert [line.split(b" ")[0] for _, line in starts] == [b"PUT", b"GET"]
    assert starts[1][0] == len(head) + len(body)


def test_stop_closes_open_connections(s3_server, objects) -> None:
    path = _path(objects, "small")
    link = _link(s3_server, LinkProfile("t", rtt_s=0.01))
    conn = http.client.HTTPConnection("127.0.0.1", link.port, timeout=5)
    assert _get(conn, path)[0] == 200
    assert link.stats().active_connections == 1
    link.stop()
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        _get(conn, path)
    link.stop()  # idempotent
