"""Named network link profiles: how far away the emulated bucket is (latency, bandwidth, faults).

The figures are approximate, rounded public numbers, each with its source, so that a result
labelled ``cross-region`` means the same thing on every machine. They describe the path between a
training host and its bucket, not any one provider's guarantee.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass

from delibench.errors import UsageError
from delibench.units import parse_bytes, parse_duration

__all__ = ["PROFILES", "LinkProfile", "get_profile", "profile_names", "with_overrides"]


@dataclass(frozen=True, slots=True)
class LinkProfile:
    """One emulated network path between the client and the object store.

    Attributes:
        name: Profile name as used on the command line.
        rtt_s: Round-trip time; every chunk is delayed ``rtt_s / 2`` in each direction.
        jitter_s: Spread of the one-way delay (uniform in +-``jitter_s``, order preserved).
        bandwidth_bytes_per_s: Aggregate cap for all connections, per direction; 0 = unlimited.
        per_connection_bandwidth_bytes_per_s: Cap for one TCP connection (a single flow's
            window-limited rate on a long path); 0 = unlimited.
        error_rate: Probability that a request is answered with ``503 Slow Down`` instead of
            being forwarded (as S3 does when throttling).
        reset_rate: Probability that a response is cut off by a TCP reset mid-body.
        stall_rate: Probability that a response is held back for ``stall_s`` before its first byte.
        stall_s: Length of a stall.
        connect_rtts: Round trips a new connection costs before its first request goes out
            (1 for the TCP handshake; TLS would add 1-2 more).
        description: What the profile stands for.
        source: Where the figures come from.
    """

    name: str
    rtt_s: float = 0.0
    jitter_s: float = 0.0
    bandwidth_bytes_per_s: float = 0.0
    per_connection_bandwidth_bytes_per_s: float = 0.0
    error_rate: float = 0.0
    reset_rate: float = 0.0
    stall_rate: float = 0.0
    stall_s: float = 0.0
    connect_rtts: float = 0.0
    description: str = ""
    source: str = ""

    def __post_init__(self) -> None:
        if not self.name or not self.name.strip():
            raise UsageError("a link profile needs a name")
        for field in ("rtt_s", "jitter_s", "bandwidth_bytes_per_s", "per_connection_bandwidth_bytes_per_s", "stall_s", "connect_rtts"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                raise UsageError(f"link profile {self.name!r}: {field} must be a finite number >= 0, got {value!r}")
        for field in ("error_rate", "reset_rate", "stall_rate"):
            value = getattr(self, field)
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
                raise UsageError(f"link profile {self.name!r}: {field} must be between 0 and 1, got {value!r}")
        if self.stall_rate > 0 and self.stall_s <= 0:
            raise UsageError(f"link profile {self.name!r}: stall_rate > 0 needs stall_s > 0")

    @property
    def one_way_delay_s(self) -> float:
        """Half the round-trip time."""
        return self.rtt_s / 2

    @property
    def shaped(self) -> bool:
        """Whether the profile changes anything at all (``local`` does not)."""
        return any(
            (
                self.rtt_s,
                self.jitter_s,
                self.bandwidth_bytes_per_s,
                self.per_connection_bandwidth_bytes_per_s,
                self.error_rate,
                self.reset_rate,
                self.stall_rate,
                self.connect_rtts,
            )
        )

    @property
    def has_faults(self) -> bool:
        """Whether any fault is injected."""
        return bool(self.error_rate or self.reset_rate or self.stall_rate)

    def summary(self) -> str:
        """One line for people: ``rtt 70 ms, 100 MB/s (40 MB/s per connection)``."""
        if not self.shaped:
            return "no shaping"
        parts = [f"rtt {self.rtt_s * 1000:g} ms"]
        if self.jitter_s:
            parts.append(f"jitter +-{self.jitter_s * 1000:g} ms")
        if self.bandwidth_bytes_per_s:
            parts.append(f"{self.bandwidth_bytes_per_s / 1e6:g} MB/s")
        if self.per_connection_bandwidth_bytes_per_s:
            parts.append(f"{self.per_connection_bandwidth_bytes_per_s / 1e6:g} MB/s per connection")
        for label, rate in (("errors", self.error_rate), ("resets", self.reset_rate), ("stalls", self.stall_rate)):
            if rate:
                parts.append(f"{label} {rate:.2%}")
        return ", ".join(parts)


_MB = 1e6

#: The shipped profiles, by name.
PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile(
            name="local",
            description="No shaping: the object store as fast as this machine serves it.",
            source="n/a",
        ),
        LinkProfile(
            name="same-region",
            rtt_s=0.015,
            jitter_s=0.002,
            bandwidth_bytes_per_s=1000 * _MB,
            per_connection_bandwidth_bytes_per_s=90 * _MB,
            connect_rtts=1,
            description="Bucket in the same cloud region as the training host.",
            source=(
                "approximate: S3 small-object first-byte latency of 10-20 ms within a region and about "
                "85-90 MB/s per connection (AWS 'Best practices design patterns: optimizing Amazon S3 "
                "performance' and S3 performance guidelines); ~8 Gbit/s aggregate for a mid-size instance"
            ),
        ),
        LinkProfile(
            name="cross-region",
            rtt_s=0.070,
            jitter_s=0.003,
            bandwidth_bytes_per_s=100 * _MB,
            per_connection_bandwidth_bytes_per_s=40 * _MB,
            connect_rtts=1,
            description="Bucket in another region of the same continent (e.g. us-east-1 -> us-west-2).",
            source=(
                "approximate: AWS inter-region round-trip latency us-east-1 <-> us-west-2 of 60-80 ms "
                "(public inter-region latency tables such as cloudping.co); ~100 MB/s aggregate and a "
                "window-limited 25-50 MB/s per TCP flow at that RTT"
            ),
        ),
        LinkProfile(
            name="cross-continent",
            rtt_s=0.150,
            jitter_s=0.005,
            bandwidth_bytes_per_s=50 * _MB,
            per_connection_bandwidth_bytes_per_s=15 * _MB,
            connect_rtts=1,
            description="Bucket on another continent (e.g. us-east-1 -> ap-southeast-2 or eu-central-1 -> us-west-2).",
            source=(
                "approximate: AWS inter-region round-trip latency between continents of 140-200 ms "
                "(public inter-region latency tables such as cloudping.co); ~50 MB/s aggregate, "
                "~15 MB/s per TCP flow"
            ),
        ),
        LinkProfile(
            name="flaky-cross-region",
            rtt_s=0.070,
            jitter_s=0.010,
            bandwidth_bytes_per_s=100 * _MB,
            per_connection_bandwidth_bytes_per_s=40 * _MB,
            error_rate=0.01,
            reset_rate=0.002,
            stall_rate=0.005,
            stall_s=1.0,
            connect_rtts=1,
            description="cross-region with throttling (503 Slow Down), resets and stalls, to test retries.",
            source="approximate: cross-region figures; fault rates are illustrative, not measured",
        ),
    )
}


def profile_names() -> list[str]:
    """The shipped profile names, in order of distance."""
    return list(PROFILES)


def get_profile(name: str | LinkProfile) -> LinkProfile:
    """Look up a shipped profile by name (a ``LinkProfile`` is returned as is).

    Raises:
        UsageError: Unknown name; the hint suggests the closest names.
    """
    if isinstance(name, LinkProfile):
        return name
    key = str(name).strip().lower()
    if key in PROFILES:
        return PROFILES[key]
    close = difflib.get_close_matches(key, PROFILES, n=2)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise UsageError(f"unknown link profile {name!r}", hint=f"{hint}known profiles: {', '.join(PROFILES)}")


def _rate(value: str | float) -> float:
    """A bandwidth: ``"50MB"``, ``"50MB/s"`` or a number of bytes per second."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if value < 0 or not math.isfinite(value):
            raise UsageError(f"bandwidth must be a finite number >= 0, got {value!r}")
        return float(value)
    text = str(value).strip()
    if text.lower().endswith("/s"):
        text = text[:-2]
    return float(parse_bytes(text))


def with_overrides(
    profile: str | LinkProfile,
    *,
    rtt: str | float | None = None,
    bandwidth: str | float | None = None,
    per_connection_bandwidth: str | float | None = None,
    jitter: str | float | None = None,
    error_rate: float | None = None,
    reset_rate: float | None = None,
) -> LinkProfile:
    """A profile adjusted from the command line (``--rtt 40ms --bandwidth 50MB``).

    Bandwidths are sizes per second (``50MB`` = 50e6 bytes/s; ``0`` = unlimited). An adjusted
    profile is renamed ``<name>+custom`` so results never pass it off as the shipped one.

    Raises:
        UsageError: A value does not parse or is out of range.
    """
    base = get_profile(profile)
    changes: dict[str, float] = {}
    if rtt is not None:
        changes["rtt_s"] = parse_duration(rtt)
    if jitter is not None:
        changes["jitter_s"] = parse_duration(jitter)
    if bandwidth is not None:
        changes["bandwidth_bytes_per_s"] = _rate(bandwidth)
    if per_connection_bandwidth is not None:
        changes["per_connection_bandwidth_bytes_per_s"] = _rate(per_connection_bandwidth)
    if error_rate is not None:
        changes["error_rate"] = error_rate
    if reset_rate is not None:
        changes["reset_rate"] = reset_rate
    if not changes:
        return base
    if changes.get("rtt_s") and not base.connect_rtts:
        changes["connect_rtts"] = 1.0
    name = base.name if base.name.endswith("+custom") else f"{base.name}+custom"
    return dataclasses.replace(base, name=name, **changes)
