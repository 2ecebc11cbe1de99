"""Inter-region links that move real bytes: one network namespace per region, kernel rate limits, a user-space delay line.

Each region gets a network namespace of its own with one interface, a TUN device named
``<tag>t<i>`` holding the region's address ``10.213.<i+1>.1/24`` and a route to every other region
through it. The TUN devices' other ends are file descriptors held by one *router* thread in the
launcher's (root) namespace, which reads each IP packet a region sends, finds the destination
region from the packet's destination address and writes the packet into that region's TUN device
no earlier than ``arrival + rtt/2 (+ uniform jitter)``, never overtaking an earlier packet on the
same directed link. Bandwidth is the kernel's: a ``tbf`` qdisc on the region's TUN device (``htb``
with one class per destination region when a region has more than one peer) holds the link's
rate, shared by everything in flight from that region. So a cross-region transfer costs
``rtt + bytes / bandwidth`` on real TCP (slow start, acknowledgements and all), and the router
counts every byte per directed link.

There is no ``netem`` on every machine (there is none here), hence the user-space delay line. The
mode needs root, ``ip`` (iproute2) with ``tc`` and ``/dev/net/tun``; :func:`namespace_support` says
why it cannot run otherwise, and ``geo run`` then falls back to the communication-level model of
:mod:`delibench.geo.sync` (labelled in the result). Traffic inside a region (one namespace) uses the
namespace's loopback: it is neither shaped nor delayed, like a LAN.

Everything created is named with a per-run tag and removed by :meth:`NamespaceWan.close` (deleting a
namespace deletes its devices and their qdiscs), also when setting up fails half-way.
"""

from __future__ import annotations

import contextlib
import fcntl
import heapq
import os
import random
import select
import shutil
import struct
import subprocess
import threading
import time
import uuid
from dataclasses import dataclass, field

from delibench.errors import RuntimeFailure
from delibench.geo.regions import RegionsConfig

__all__ = ["LINK_MODES", "NAMESPACE_EMULATION", "NamespaceWan", "RegionHost", "namespace_support"]

#: ``geo run --links``: ``auto`` (namespaces where possible, else the model), ``namespace``, ``model``.
LINK_MODES = ("auto", "namespace", "model")

#: The label stored in results of the namespace mode.
NAMESPACE_EMULATION = (
    "network namespaces: one per region over TUN devices, kernel tbf/htb rate limit per region (shared by all flows), "
    "user-space delay line rtt/2 (+ jitter) per packet; real TCP bytes"
)

_TUNSETIFF = 0x400454CA
_IFF_TUN = 0x0001
_IFF_NO_PI = 0x1000
_MTU = 9000
_SUBNET = "10.213"


@dataclass(frozen=True, slots=True)
class RegionHost:
    """Where one region's node group runs: its address, the interface gloo binds to, its namespace (if any).

    Attributes:
        region: Region name.
        address: The address the region's agent and workers bind to (``--local-addr``).
        ifname: The interface holding ``address`` (``GLOO_SOCKET_IFNAME``).
        netns: The network namespace to run in (``ip netns exec``), or ``None`` for this one.
    """

    region: str
    address: str
    ifname: str
    netns: str | None = None


def namespace_support() -> tuple[bool, str]:
    """Whether the namespace mode can run here, and why not when it cannot."""
    if os.geteuid() != 0:
        return False, "not root: network namespaces and tc need root"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return False, f"'{tool}' (iproute2) is not installed"
    if not os.path.exists("/dev/net/tun"):
        return False, "/dev/net/tun is missing"
    probe = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return False, f"'ip netns' does not work: {probe.stderr.strip()[:200]}"
    return True, ""


def _sh(*argv: str) -> None:
    out = subprocess.run(list(argv), capture_output=True, text=True, timeout=20)
    if out.returncode != 0:
        raise RuntimeFailure(f"{' '.join(argv)} failed: {out.stderr.strip()[:300]}")


def _open_tun(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR)
    try:
        fcntl.ioctl(fd, _TUNSETIFF, struct.pack("16sH", name.encode(), _IFF_TUN | _IFF_NO_PI))
    except OSError:
        os.close(fd)
        raise
    return fd


@dataclass(slots=True)
class _Line:
    """One directed link's delay line: when its last packet leaves (packets never overtake)."""

    delay_s: float
    jitter_s: float
    last_out: float = 0.0
    bytes: int = 0
    packets: int = 0


@dataclass(slots=True)
class NamespaceWan:
    """The regions' namespaces, TUN devices, qdiscs and the router thread (a context manager).

    Args:
        config: The regions file: each link's ``rtt_s``, ``bandwidth_bytes_per_s`` and ``jitter_s``
            (when it has one) set the emulated path between two regions.
        regions: The regions that take part, in order (region ``i`` gets ``10.213.<i+1>.1``).
        jitter_s: Uniform jitter added to every link's one-way delay (``[-j, +j]``, clipped at 0).
        seed: Seed of the jitter draws.
    """

    config: RegionsConfig
    regions: tuple[str, ...]
    jitter_s: float = 0.0
    seed: int = 0
    tag: str = field(default_factory=lambda: "dlb" + uuid.uuid4().hex[:6])
    hosts: dict[str, RegionHost] = field(default_factory=dict)
    _fds: list[int] = field(default_factory=list)
    _namespaces: list[str] = field(default_factory=list)
    _lines: dict[tuple[int, int], _Line] = field(default_factory=dict)
    _thread: threading.Thread | None = None
    _stop: threading.Event = field(default_factory=threading.Event)
    _error: list[BaseException] = field(default_factory=list)

    def __enter__(self) -> NamespaceWan:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def address(self, index: int) -> str:
        """Region ``index``'s address."""
        return f"{_SUBNET}.{index + 1}.1"

    def open(self) -> NamespaceWan:
        """Create the namespaces, devices, routes and qdiscs; start the router. Cleans up on failure."""
        ok, why = namespace_support()
        if not ok:
            raise RuntimeFailure(f"namespace links unavailable: {why}")
        for name in self.regions:
            self.config.region(name)
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        self._thread = threading.Thread(target=self._route, name=f"{self.tag}-router", daemon=True)
        self._thread.start()
        return self

    def _build(self) -> None:
        n = len(self.regions)
        for i, name in enumerate(self.regions):
            ns, dev = f"{self.tag}-r{i}", f"{self.tag}t{i}"
            fd = _open_tun(dev)
            self._fds.append(fd)
            _sh("ip", "netns", "add", ns)
            self._namespaces.append(ns)
            _sh("ip", "link", "set", dev, "netns", ns)
            _sh("ip", "-n", ns, "link", "set", "lo", "up")
            _sh("ip", "-n", ns, "addr", "add", f"{self.address(i)}/24", "dev", dev)
            _sh("ip", "-n", ns, "link", "set", dev, "mtu", str(_MTU), "up")
            for j in range(n):
                if j != i:
                    _sh("ip", "-n", ns, "route", "add", f"{_SUBNET}.{j + 1}.0/24", "dev", dev)
            self._shape(i, ns, dev)
            self.hosts[name] = RegionHost(region=name, address=self.address(i), ifname=dev, netns=ns)
        for i in range(n):
            for j in range(n):
                if i != j:
                    link = self.config.link(self.regions[i], self.regions[j])
                    jitter = max(self.jitter_s, float(getattr(link, "jitter_s", 0.0) or 0.0))
                    self._lines[(i, j)] = _Line(delay_s=link.rtt_s / 2, jitter_s=jitter)

    def _shape(self, i: int, ns: str, dev: str) -> None:
        """Rate-limit region ``i``'s egress in the kernel: tbf for one peer, htb per destination for more."""
        peers = [j for j in range(len(self.regions)) if j != i]
        tc = ("ip", "netns", "exec", ns, "tc")

        def rate(j: int) -> tuple[str, str]:
            bps = self.config.link(self.regions[i], self.regions[j]).bandwidth_bytes_per_s
            burst = max(2 * _MTU + 2048, int(bps * 0.002))
            return f"{int(bps * 8)}bit", str(burst)

        if len(peers) == 1:
            r, burst = rate(peers[0])
            _sh(*tc, "qdisc", "add", "dev", dev, "root", "tbf", "rate", r, "burst", burst, "latency", "2s")
            return
        _sh(*tc, "qdisc", "add", "dev", dev, "root", "handle", "1:", "htb")
        for k, j in enumerate(peers, start=1):
            r, burst = rate(j)
            _sh(*tc, "class", "add", "dev", dev, "parent", "1:", "classid", f"1:{k}", "htb", "rate", r, "ceil", r, "burst", burst, "cburst", burst)
            _sh(*tc, "filter", "add", "dev", dev, "parent", "1:", "protocol", "ip", "prio", "1", "u32", "match", "ip", "dst", f"{_SUBNET}.{j + 1}.0/24", "flowid", f"1:{k}")

    def _route(self) -> None:
        """The delay line: read packets, hold each for its link's one-way delay, write it to its destination."""
        rng = random.Random(self.seed)
        index = {fd: i for i, fd in enumerate(self._fds)}
        queue: list[tuple[float, int, int, bytes]] = []
        seq = 0
        try:
            while not self._stop.is_set():
                timeout = min(0.05, max(0.0, queue[0][0] - time.monotonic())) if queue else 0.05
                ready, _, _ = select.select(self._fds, [], [], timeout)
                now = time.monotonic()
                for fd in ready:
                    for _ in range(64):  # drain a burst, bounded
                        try:
                            packet = os.read(fd, 65536)
                        except BlockingIOError:
                            break
                        src = index[fd]
                        dst = self._destination(packet)
                        line = self._lines.get((src, dst)) if dst is not None else None
                        if line is None:
                            break  # not for another region (e.g. IPv6 router solicitations): dropped
                        delay = line.delay_s + (rng.uniform(-line.jitter_s, line.jitter_s) if line.jitter_s else 0.0)
                        out_at = max(now + max(delay, 0.0), line.last_out)
                        line.last_out = out_at
                        line.bytes += len(packet)
                        line.packets += 1
                        seq += 1
                        heapq.heappush(queue, (out_at, seq, dst, packet))
                        if not select.select([fd], [], [], 0)[0]:
                            break
                now = time.monotonic()
                while queue and queue[0][0] <= now:
                    _, _, dst, packet = heapq.heappop(queue)
                    with contextlib.suppress(OSError):
                        os.write(self._fds[dst], packet)
        except BaseException as exc:  # reported by close() and stats()
            self._error.append(exc)

    def _destination(self, packet: bytes) -> int | None:
        if len(packet) < 20 or packet[0] >> 4 != 4:
            return None
        a, b, c, _ = packet[16:20]
        if f"{a}.{b}" != _SUBNET:
            return None
        j = c - 1
        return j if 0 <= j < len(self.regions) else None

    def link_bytes(self) -> dict[str, int]:
        """IP bytes the router carried per directed link ``"src->dst"`` (headers included)."""
        return {f"{self.regions[i]}->{self.regions[j]}": line.bytes for (i, j), line in self._lines.items()}

    def exec_prefix(self, region: str) -> list[str]:
        """The argv prefix that runs a command inside ``region``'s namespace."""
        return ["ip", "netns", "exec", self.hosts[region].netns or ""]

    def close(self) -> None:
        """Stop the router, delete every namespace (and with it its device and qdiscs), close the TUN fds. Idempotent."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        for ns in reversed(self._namespaces):
            subprocess.run(["ip", "netns", "delete", ns], capture_output=True, timeout=20)
        self._namespaces.clear()
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds.clear()
