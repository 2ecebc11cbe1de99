"""The regions file: where accelerators, their prices and the local data shards are, and the WAN links between them.

A regions file is YAML::

    regions:
      us-east:
        accelerators: {count: 8, type: a100, usd_per_hour: 4.10, step_time_s: 0.11}
        data_url: s3://my-bucket-us-east/imgs        # optional: where this region's shards live
        shards:                                       # optional: the local shards and their sizes
          - {name: part-0, size_bytes: 40GB}
      eu-west:
        accelerators: {count: 4, type: v100, usd_per_hour: 3.06, profile: v100}
    links:
      - {between: [us-east, eu-west], rtt_s: 75ms, bandwidth_bytes_per_s: 100MB, egress_usd_per_gb: 0.02}

Links are symmetric (one entry serves both directions) and every pair of regions needs one.
``step_time_s`` is the time of one training step of the reference batch on one accelerator;
``profile`` names a built-in approximate step time instead (see :data:`STEP_TIME_PROFILES`).
Sizes accept ``40GB``/``512MiB``, durations ``75ms``, bandwidths a byte size per second.
``egress_usd_per_gb`` is per billed GB, :data:`delibench.units.BYTES_PER_BILLED_GB` = 2^30 bytes
(how AWS and GCS bill transfer, and how ``reports/prices.yaml`` reads its egress prices); sizes
typed as ``40GB`` are SI (4e10 bytes).
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.units import parse_bytes, parse_duration

__all__ = [
    "STEP_TIME_PROFILES",
    "Accelerators",
    "Link",
    "Region",
    "RegionsConfig",
    "Shard",
    "load_regions",
    "parse_regions",
]

#: Approximate seconds per training step of the reference batch (ResNet-50, batch 256, mixed
#: precision) per accelerator type, rounded from public MLPerf-style throughput figures. They are
#: placeholders for planning; measure your own with ``delibench calibrate`` and use ``step_time_s``.
STEP_TIME_PROFILES: dict[str, float] = {
    "a100": 0.10,
    "h100": 0.05,
    "l4": 0.45,
    "t4": 0.95,
    "v100": 0.22,
}


def _check_keys(where: str, data: Mapping[str, Any], allowed: tuple[str, ...]) -> None:
    for key in data:
        if key not in allowed:
            close = difflib.get_close_matches(str(key), allowed, n=1)
            hint = f"did you mean {close[0]!r}?" if close else f"known keys: {', '.join(allowed)}"
            raise UsageError(f"unknown key {key!r} in {where}", hint=hint)


def _positive(where: str, name: str, value: float, *, allow_zero: bool = False) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        raise UsageError(f"{where}: {name} must be a number, got {value!r}")
    if value < 0 or (value == 0 and not allow_zero):
        raise UsageError(f"{where}: {name} must be {'>= 0' if allow_zero else '> 0'}, got {value!r}")


@dataclass(frozen=True, slots=True)
class Accelerators:
    """The accelerators a region can lend to the job.

    Attributes:
        count: How many are available (the planner's cap; ``geo run`` may use fewer).
        type: Accelerator model, e.g. ``a100`` (informational unless ``profile`` uses it).
        usd_per_hour: On-demand list price of ONE accelerator (with its share of the host).
        step_time_s: Seconds per training step of the reference batch on one accelerator.
        profile: Name in :data:`STEP_TIME_PROFILES` that supplied ``step_time_s``, if any.
    """

    count: int
    type: str
    usd_per_hour: float
    step_time_s: float
    profile: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.count, int) or isinstance(self.count, bool) or self.count < 0:
            raise UsageError(f"accelerators: count must be a whole number >= 0, got {self.count!r}")
        _positive("accelerators", "usd_per_hour", self.usd_per_hour, allow_zero=True)
        _positive("accelerators", "step_time_s", self.step_time_s)


@dataclass(frozen=True, slots=True)
class Shard:
    """One piece of the training data stored in a region."""

    name: str
    size_bytes: int

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("shard: name must not be empty")
        if self.size_bytes <= 0:
            raise UsageError(f"shard {self.name!r}: size_bytes must be > 0")


@dataclass(frozen=True, slots=True)
class Region:
    """A cloud region: its accelerators and the data stored there."""

    name: str
    accelerators: Accelerators
    data_url: str | None = None
    shards: tuple[Shard, ...] = ()

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("region name must not be empty")
        names = [s.name for s in self.shards]
        if len(set(names)) != len(names):
            raise UsageError(f"region {self.name!r}: shard names must be unique")

    @property
    def data_bytes(self) -> int:
        """Bytes of training data stored in this region."""
        return sum(s.size_bytes for s in self.shards)


@dataclass(frozen=True, slots=True)
class Link:
    """A symmetric WAN link between two regions.

    Attributes:
        a: One end (region name).
        b: The other end.
        rtt_s: Round-trip time.
        bandwidth_bytes_per_s: Usable bandwidth in each direction.
        egress_usd_per_gb: Price per billed GB (2^30 bytes) sent over this link, in either direction.
    """

    a: str
    b: str
    rtt_s: float
    bandwidth_bytes_per_s: float
    egress_usd_per_gb: float

    def __post_init__(self) -> None:
        where = f"link {self.a}<->{self.b}"
        if self.a == self.b:
            raise UsageError(f"{where}: a link must join two different regions")
        _positive(where, "rtt_s", self.rtt_s, allow_zero=True)
        _positive(where, "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)
        _positive(where, "egress_usd_per_gb", self.egress_usd_per_gb, allow_zero=True)

    def transfer_s(self, nbytes: float) -> float:
        """One message of ``nbytes`` over this link: one-way latency plus serialisation."""
        return self.rtt_s / 2 + nbytes / self.bandwidth_bytes_per_s


@dataclass(frozen=True, slots=True)
class RegionsConfig:
    """A validated regions file."""

    regions: tuple[Region, ...]
    links: tuple[Link, ...]
    source: str = "<memory>"
    _by_pair: dict[frozenset[str], Link] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not self.regions:
            raise UsageError(f"{self.source}: at least one region is needed")
        names = [r.name for r in self.regions]
        if len(set(names)) != len(names):
            raise UsageError(f"{self.source}: region names must be unique")
        for link in self.links:
            for end in (link.a, link.b):
                if end not in names:
                    close = difflib.get_close_matches(end, names, n=1)
                    raise UsageError(
                        f"{self.source}: link names unknown region {end!r}",
                        hint=f"did you mean {close[0]!r}?" if close else f"regions: {', '.join(names)}",
                    )
            pair = frozenset((link.a, link.b))
            if pair in self._by_pair:
                raise UsageError(f"{self.source}: two links between {link.a} and {link.b}")
            self._by_pair[pair] = link
        for i, a in enumerate(names):
            for b in names[i + 1 :]:
                if frozenset((a, b)) not in self._by_pair:
                    raise UsageError(
                        f"{self.source}: no link between {a} and {b}",
                        hint="add an entry under 'links' with rtt_s, bandwidth_bytes_per_s and egress_usd_per_gb",
                    )

    def region(self, name: str) -> Region:
        """The region called ``name`` (UsageError with a suggestion if unknown)."""
        for r in self.regions:
            if r.name == name:
                return r
        names = [r.name for r in self.regions]
        close = difflib.get_close_matches(name, names, n=1)
        raise UsageError(f"unknown region {name!r}", hint=f"did you mean {close[0]!r}?" if close else f"regions: {', '.join(names)}")

    def link(self, a: str, b: str) -> Link:
        """The link between two different regions."""
        return self._by_pair[frozenset((a, b))]

    @property
    def names(self) -> tuple[str, ...]:
        """Region names in file order."""
        return tuple(r.name for r in self.regions)


_REGION_KEYS = ("accelerators", "data_url", "shards")
_ACCEL_KEYS = ("count", "type", "usd_per_hour", "step_time_s", "profile")
_SHARD_KEYS = ("name", "size_bytes")
_LINK_KEYS = ("between", "rtt_s", "bandwidth_bytes_per_s", "egress_usd_per_gb")


def _mapping(where: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise UsageError(f"{where} must be a mapping, got {type(value).__name__}")
    return value


def _require(where: str, data: Mapping[str, Any], key: str) -> Any:
    if key not in data:
        raise UsageError(f"{where}: missing required key {key!r}")
    return data[key]


def _number(where: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise UsageError(f"{where} must be a number, got {value!r}")
    return float(value)


def _accelerators(where: str, raw: Any) -> Accelerators:
    data = _mapping(where, raw)
    _check_keys(where, data, _ACCEL_KEYS)
    profile = data.get("profile")
    if "step_time_s" in data and profile is not None:
        raise UsageError(f"{where}: give step_time_s or profile, not both")
    if profile is not None:
        if profile not in STEP_TIME_PROFILES:
            close = difflib.get_close_matches(str(profile), list(STEP_TIME_PROFILES), n=1)
            raise UsageError(
                f"{where}: unknown profile {profile!r}",
                hint=f"did you mean {close[0]!r}?" if close else f"known: {', '.join(sorted(STEP_TIME_PROFILES))}",
            )
        step_time_s = STEP_TIME_PROFILES[profile]
    else:
        step_time_s = parse_duration(_require(where, data, "step_time_s"))
    count = _require(where, data, "count")
    if isinstance(count, bool) or not isinstance(count, int):
        raise UsageError(f"{where}: count must be a whole number, got {count!r}")
    return Accelerators(
        count=count,
        type=str(data.get("type", profile or "unknown")),
        usd_per_hour=_number(f"{where}: usd_per_hour", _require(where, data, "usd_per_hour")),
        step_time_s=step_time_s,
        profile=profile,
    )


def parse_regions(raw: Any, source: str = "<memory>") -> RegionsConfig:
    """Validate a parsed YAML document into a :class:`RegionsConfig`.

    Raises:
        UsageError: Any problem, in one line that names ``source``.
    """
    try:
        doc = _mapping(source, raw)
        _check_keys(source, doc, ("regions", "links"))
        regions_raw = _mapping(f"{source}: regions", _require(source, doc, "regions"))
        regions = []
        for name, body in regions_raw.items():
            where = f"region {name!r}"
            body = _mapping(where, body)
            _check_keys(where, body, _REGION_KEYS)
            shards = []
            shards_raw = body.get("shards") or []
            if not isinstance(shards_raw, list):
                raise UsageError(f"{where}: shards must be a list")
            for i, shard in enumerate(shards_raw):
                swhere = f"{where} shard #{i}"
                shard = _mapping(swhere, shard)
                _check_keys(swhere, shard, _SHARD_KEYS)
                shards.append(Shard(name=str(_require(swhere, shard, "name")), size_bytes=parse_bytes(_require(swhere, shard, "size_bytes"))))
            data_url = body.get("data_url")
            regions.append(
                Region(
                    name=str(name),
                    accelerators=_accelerators(f"{where} accelerators", _require(where, body, "accelerators")),
                    data_url=None if data_url is None else str(data_url),
                    shards=tuple(shards),
                )
            )
        links = []
        links_raw = doc.get("links") or []
        if not isinstance(links_raw, list):
            raise UsageError(f"{source}: links must be a list")
        for i, body in enumerate(links_raw):
            where = f"link #{i}"
            body = _mapping(where, body)
            _check_keys(where, body, _LINK_KEYS)
            between = _require(where, body, "between")
            if not isinstance(between, list) or len(between) != 2:
                raise UsageError(f"{where}: between must be a list of two region names")
            bandwidth = _require(where, body, "bandwidth_bytes_per_s")
            links.append(
                Link(
                    a=str(between[0]),
                    b=str(between[1]),
                    rtt_s=parse_duration(_require(where, body, "rtt_s")),
                    bandwidth_bytes_per_s=float(parse_bytes(bandwidth) if isinstance(bandwidth, str) else _number(f"{where}: bandwidth_bytes_per_s", bandwidth)),
                    egress_usd_per_gb=_number(f"{where}: egress_usd_per_gb", _require(where, body, "egress_usd_per_gb")),
                )
            )
        return RegionsConfig(regions=tuple(regions), links=tuple(links), source=source)
    except UsageError as exc:
        if exc.message.startswith(source):
            raise
        raise UsageError(f"{source}: {exc.message}", hint=exc.hint) from None


def load_regions(path: str | Path) -> RegionsConfig:
    """Read and validate a regions YAML file.

    Raises:
        UsageError: The file is missing, not YAML, or not a valid regions file (one line naming it).
    """
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise UsageError(f"cannot read regions file {p}: {exc.strerror or exc}", hint="see geo/example-regions.yaml") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise UsageError(f"regions file {p} is not valid YAML{where}") from None
    return parse_regions(raw, source=str(p))
