"""Links that move real bytes: namespaces + tbf + a delay line, against the communication-level model.

Skipped with the reason where namespaces cannot be made (not root, no ``ip netns``, no TUN).
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from delibench.errors import UsageError
from delibench.geo.launch import LocalJob, resolve_links
from delibench.geo.links import NamespaceWan, namespace_support
from delibench.geo.regions import parse_regions
from delibench.geo.train import GeoRunSpec

SUPPORTED, WHY = namespace_support()
needs_namespaces = pytest.mark.skipif(not SUPPORTED, reason=f"namespace links unavailable here: {WHY}")

RTT_S, BANDWIDTH = 0.040, 2_000_000
REGIONS = parse_regions(
    {
        "regions": {n: {"accelerators": {"count": 1, "usd_per_hour": 1.0, "step_time_s": "20ms"}} for n in ("a", "b")},
        "links": [{"between": ["a", "b"], "rtt_s": RTT_S, "bandwidth_bytes_per_s": BANDWIDTH, "egress_usd_per_gb": 0.02}],
    }
)

SERVER = """
import socket, sys, time
s = socket.socket(); s.bind((sys.argv[1], 5555)); s.listen(); print("ready", flush=True)
c, _ = s.accept()
c.sendall(b"p")                          # a one-byte ping: the client measures one round trip
n = 0
while True:
    d = c.recv(1 << 20)
    if not d:
        break
    n += len(d)
c.sendall(str(n).encode()); c.close()
"""

CLIENT = """
import socket, sys, time
s = socket.create_connection((sys.argv[1], 5555)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
t0 = time.perf_counter(); s.recv(1)       # SYN, SYN-ACK, ACK, then the server's byte: ~1.5 RTT from connect
nbytes = int(sys.argv[2]); t1 = time.perf_counter()
s.sendall(b"x" * nbytes); s.shutdown(socket.SHUT_WR)
got = int(s.recv(64)); t2 = time.perf_counter()
print(got, t2 - t1)
"""


def _leftovers(tag: str) -> list[str]:
    out = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    return [line for line in out.splitlines() if line.startswith(tag)]


def test_links_mode_resolution() -> None:
    assert resolve_links("model") == ("model", "asked for")
    mode, why = resolve_links("auto")
    assert (mode == "namespace") == SUPPORTED and (why == "") == SUPPORTED
    with pytest.raises(UsageError, match="--links"):
        resolve_links("carrier-pigeon")


@needs_namespaces
def test_namespace_link_moves_real_bytes_at_the_tbf_rate_plus_the_delay() -> None:
    """3 MB one way over 2 MB/s and 40 ms RTT: rtt + bytes/bandwidth = 1.54 s, within 15 %."""
    nbytes = 3_000_000
    wan = NamespaceWan(REGIONS, ("a", "b"))
    try:
        wan.open()
        a, b = wan.hosts["a"], wan.hosts["b"]
        server = subprocess.Popen([*wan.exec_prefix("b"), sys.executable, "-c", SERVER, b.address], stdout=subprocess.PIPE, text=True)
        try:
            assert server.stdout is not None and server.stdout.readline().strip() == "ready"
            out = subprocess.run([*wan.exec_prefix("a"), sys.executable, "-c", CLIENT, b.address, str(nbytes)], capture_output=True, text=True, timeout=30)
            assert out.returncode == 0, out.stderr
            got, seconds = out.stdout.split()
        finally:
            server.kill()
            server.wait(5)
        predicted = RTT_S + nbytes / BANDWIDTH
        print(f"namespace link: {nbytes} B in {float(seconds):.3f} s, model {predicted:.3f} s; router bytes {wan.link_bytes()}")
        assert int(got) == nbytes
        assert float(seconds) == pytest.approx(predicted, rel=0.15)
        assert wan.link_bytes()["a->b"] >= nbytes  # every byte crossed the router (plus IP/TCP headers)
        assert wan.link_bytes()["a->b"] <= nbytes * 1.15
    finally:
        wan.close()
    assert _leftovers(wan.tag) == []


@needs_namespaces
def test_namespaces_are_removed_when_setup_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(UsageError, match="nowhere"):
        NamespaceWan(REGIONS, ("a", "nowhere")).open()  # an unknown region: nothing is created
    shape = NamespaceWan._shape

    def fail_on_b(self: NamespaceWan, i: int, ns: str, dev: str) -> None:
        if i == 1:
            raise RuntimeError("tc broke")
        shape(self, i, ns, dev)

    monkeypatch.setattr(NamespaceWan, "_shape", fail_on_b)
    wan = NamespaceWan(REGIONS, ("a", "b"))
    with pytest.raises(RuntimeError, match="tc broke"):
        wan.open()  # fails with both namespaces made
    assert _leftovers(wan.tag) == []


@pytest.mark.slow
@needs_namespaces
def test_namespace_mode_and_model_mode_agree_on_the_same_job(tmp_path: Path) -> None:
    """The same allreduce job (hidden 384: 0.65 MB of gradient per step, so bytes dominate) through real bytes and through the model."""
    spec = GeoRunSpec(strategy="allreduce", workers=(("a", 1), ("b", 1)), steps=8, hidden=384)
    got = {}
    for mode in ("namespace", "model"):
        t0 = time.perf_counter()
        with LocalJob(REGIONS, spec, links=mode, checkpoint_every=0, job_dir=str(tmp_path / mode)) as job:
            got[mode] = job.wait(120)
        print(f"{mode}: wall {got[mode].result.wall_s:.3f} s, sync {got[mode].result.sync_s_mean:.3f} s, "
              f"bytes {got[mode].result.cross_region_bytes}, wire {got[mode].wire_bytes} (with start-up {time.perf_counter() - t0:.1f} s)")  # fmt: skip
    ns, model = got["namespace"].result, got["model"].result
    assert "namespaces" in ns.emulation and "communication-level" in model.emulation
    assert ns.cross_region_bytes == model.cross_region_bytes  # the payload, counted the same way
    wire = sum(got["namespace"].wire_bytes.values())
    assert wire == pytest.approx(ns.cross_region_bytes, rel=0.15)  # what really crossed (headers, barriers) vs the payload
    assert ns.wall_s == pytest.approx(model.wall_s, rel=0.15)
    assert ns.sync_s_mean == pytest.approx(model.sync_s_mean, rel=0.15)
    assert len({r["params_sha256"] for r in got["namespace"].ranks}) == 1


@needs_namespaces
def test_three_regions_each_destination_at_its_own_rate() -> None:
    """a sends to b (2 MB/s) and to c (1 MB/s) at once: htb classes per destination, ~1 s for 2 MB and 1 MB."""
    config = parse_regions(
        {
            "regions": {n: {"accelerators": {"count": 1, "usd_per_hour": 1.0, "step_time_s": "20ms"}} for n in ("a", "b", "c")},
            "links": [
                {"between": ["a", "b"], "rtt_s": 0.02, "bandwidth_bytes_per_s": 2_000_000, "egress_usd_per_gb": 0.02},
                {"between": ["a", "c"], "rtt_s": 0.02, "bandwidth_bytes_per_s": 1_000_000, "egress_usd_per_gb": 0.02},
                {"between": ["b", "c"], "rtt_s": 0.02, "bandwidth_bytes_per_s": 1_000_000, "egress_usd_per_gb": 0.02},
            ],
        }
    )
    wan = NamespaceWan(config, ("a", "b", "c"))
    servers: list[subprocess.Popen[str]] = []
    try:
        wan.open()
        for dst in ("b", "c"):
            servers.append(subprocess.Popen([*wan.exec_prefix(dst), sys.executable, "-c", SERVER, wan.hosts[dst].address], stdout=subprocess.PIPE, text=True))
            assert servers[-1].stdout is not None and servers[-1].stdout.readline().strip() == "ready"
        sizes = {"b": 2_000_000, "c": 1_000_000}
        clients = {d: subprocess.Popen([*wan.exec_prefix("a"), sys.executable, "-c", CLIENT, wan.hosts[d].address, str(n)], stdout=subprocess.PIPE, text=True) for d, n in sizes.items()}
        took = {}
        for d, proc in clients.items():
            out, _ = proc.communicate(timeout=30)
            got, seconds = out.split()
            assert int(got) == sizes[d]
            took[d] = float(seconds)
        print(f"htb: a->b 2 MB in {took['b']:.3f} s, a->c 1 MB in {took['c']:.3f} s (model 1.02 s each)")
        for d in ("b", "c"):
            assert took[d] == pytest.approx(0.02 + 1.0, rel=0.15)
    finally:
        for server in servers:
            server.kill()
            server.wait(5)
        wan.close()
    assert _leftovers(wan.tag) == []
