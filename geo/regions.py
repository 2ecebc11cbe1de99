"""The regions file: where accelerators, their prices and the local data shards are, and the WAN links between them.

A regions file is YAML::

    regions:
      us-east:
        accelerators: {count: 8, type: a100, usd_per_hour: 4.10, step_time_s: 0.11}
        data_url: s3://my-bucket-us-east/imgs        # optional: where this region's shards live
        store_requests_per_s: 800                     # optional: requests/s its object store serves (default: no limit)
        shards:                                       # optional: the local shards and their sizes
          - {name: part-0, size_bytes: 40GB}
        provider: aws                                 # optional: aws | gcp | azure | any name
      eu-west:
        accelerators: {count: 4, type: v100, usd_per_hour: 3.06, profile: v100, billing: per_second}
        provider: gcp
        storage_usd_per_gb_month: 0.020               # optional: a copied shard's storage here
        internet_egress_usd_per_gb: 0.12              # optional: what this region pays to send to another cloud
    links:
      - {between: [us-east, eu-west], rtt_s: 75ms, bandwidth_bytes_per_s: 100MB, egress_usd_per_gb: 0.02}
      - {between: [us-east, ap-south], rtt_s: 200ms, bandwidth_bytes_per_s: 50MB,
         egress_usd_per_gb: {us-east: 0.02, ap-south: 0.086}}   # per sender: the sender pays

Links are symmetric in bandwidth and RTT (one entry serves both directions) and every pair of
regions needs one. Egress is paid by the sender, per direction (:meth:`RegionsConfig.egress_usd_per_gb`):
a per-sender price on the link wins; otherwise, when both ends name a ``provider`` and they differ
(cross-cloud traffic leaves the sender's cloud for the internet), the sender's
``internet_egress_usd_per_gb`` (default: its provider's internet egress in the shipped price sheet,
``reports/prices.yaml``); otherwise the link's single price. ``billing`` is how an accelerator is
billed (:data:`BILLING_RULES`): ``hourly`` (default; rented: every worker pays for the job's wall
time at ``usd_per_hour``, prorated per second as AWS and GCP bill on-demand VMs) or ``per_second``
(serverless: only the seconds it computes). Files without these fields load as before.
``step_time_s`` is the time of one training step of the reference batch on one accelerator;
``profile`` names a built-in approximate step time instead (see :data:`STEP_TIME_PROFILES`).
Sizes accept ``40GB``/``512MiB``, durations ``75ms``, bandwidths a byte size per second.
``egress_usd_per_gb`` is per billed GB, :data:`delibench.units.BYTES_PER_BILLED_GB` = 2^30 bytes
(how AWS and GCS bill transfer, and how ``reports/prices.yaml`` reads its egress prices); sizes
typed as ``40GB`` are SI (4e10 bytes).
``store_requests_per_s`` is how many requests per second the region's object store serves one job
at the copy's concurrency (:data:`delibench.geo.planner.COPY_CONCURRENCY` in flight), GETs and PUTs
alike; the planner adds the store's time per request to copies and streams
(:func:`delibench.geo.planner.copy_time_s`). Default: no limit (today's model), which is what a
cloud store is to this job: S3 documents at least 5,500 GETs and 3,500 PUTs per second per prefix,
0.2-0.3 ms per object against a WAN round trip of tens of ms. A small self-hosted store is not: the
testbed's SeaweedFS on a 2-core machine serves a few hundred; measure it
(``benchmarks/geo_bench.py`` probes it and plans with what it measured).
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
from delibench.yamlfile import check_keys, read_yaml

__all__ = [
    "BILLING_RULES",
    "DEFAULT_STORAGE_USD_PER_GB_MONTH",
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


#: Accelerator billing rules: ``hourly`` = rented wall time per worker (on-demand VMs, priced per
#: hour, billed per second); ``per_second`` = serverless, only the seconds the accelerator computes.
BILLING_RULES = ("hourly", "per_second")

#: Storage price of a copied shard where the region names no provider the price sheet knows and no
#: ``storage_usd_per_gb_month``: S3 Standard, us-east-1 (reports/prices.yaml, retrieved 2026-11-23).
DEFAULT_STORAGE_USD_PER_GB_MONTH = 0.023


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
        billing: ``hourly`` (rented wall time) or ``per_second`` (busy seconds); see :data:`BILLING_RULES`.
    """

    count: int
    type: str
    usd_per_hour: float
    step_time_s: float
    profile: str | None = None
    billing: str = "hourly"

    def __post_init__(self) -> None:
        if self.billing not in BILLING_RULES:
            raise UsageError(f"accelerators: billing must be one of {', '.join(BILLING_RULES)}, got {self.billing!r}")
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
    """A cloud region: its accelerators and the data stored there.

    Attributes:
        provider: Cloud provider (``aws``, ``gcp``, ``azure`` or any name), if given: traffic
            between regions of different providers is priced at the sender's internet egress.
        internet_egress_usd_per_gb: What this region pays per billed GB sent to another cloud
            (default: its provider's ``internet`` egress in the shipped price sheet).
        storage_usd_per_gb_month: Price of storing a copied shard here (default: the provider's
            object store in the shipped price sheet, else :data:`DEFAULT_STORAGE_USD_PER_GB_MONTH`).
        store_requests_per_s: Requests per second this region's object store serves the job with
            :data:`~delibench.geo.planner.COPY_CONCURRENCY` in flight (None: no limit; see the
            module docstring for why that is the default and when to measure it).
    """

    name: str
    accelerators: Accelerators
    data_url: str | None = None
    shards: tuple[Shard, ...] = ()
    provider: str | None = None
    internet_egress_usd_per_gb: float | None = None
    storage_usd_per_gb_month: float | None = None
    store_requests_per_s: float | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise UsageError("region name must not be empty")
        for key in ("internet_egress_usd_per_gb", "storage_usd_per_gb_month"):
            if getattr(self, key) is not None:
                _positive(f"region {self.name!r}", key, getattr(self, key), allow_zero=True)
        if self.store_requests_per_s is not None:
            _positive(f"region {self.name!r}", "store_requests_per_s", self.store_requests_per_s)

    @property
    def store_request_s(self) -> float:
        """Seconds of the store's capacity one request takes (``1 / store_requests_per_s``; 0 without a limit)."""
        return 0.0 if self.store_requests_per_s is None else 1.0 / self.store_requests_per_s
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
        egress_usd_per_gb: Price per billed GB (2^30 bytes) sent over this link, in either direction
            (unless ``egress_by_sender`` names the sender).
        egress_by_sender: ``(sender, price)`` pairs: per-direction prices (the sender pays).
    """

    a: str
    b: str
    rtt_s: float
    bandwidth_bytes_per_s: float
    egress_usd_per_gb: float
    egress_by_sender: tuple[tuple[str, float], ...] = ()

    def __post_init__(self) -> None:
        where = f"link {self.a}<->{self.b}"
        if self.a == self.b:
            raise UsageError(f"{where}: a link must join two different regions")
        _positive(where, "rtt_s", self.rtt_s, allow_zero=True)
        _positive(where, "bandwidth_bytes_per_s", self.bandwidth_bytes_per_s)
        _positive(where, "egress_usd_per_gb", self.egress_usd_per_gb, allow_zero=True)
        for sender, price in self.egress_by_sender:
            if sender not in (self.a, self.b):
                raise UsageError(f"{where}: egress_usd_per_gb names {sender!r}, which is not an end of this link")
            _positive(where, f"egress_usd_per_gb[{sender}]", price, allow_zero=True)

    def sender_price(self, sender: str) -> float | None:
        """The per-direction price ``sender`` pays on this link, if the file gives one."""
        return dict(self.egress_by_sender).get(sender)

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

    def egress_usd_per_gb(self, src: str, dst: str) -> float:
        """USD per billed GB (2^30 bytes) that ``src`` pays to send to ``dst`` (the sender pays).

        A per-sender price on the link wins; else, across clouds (both ends name a provider and
        they differ), the sender's internet egress; else the link's single price. 0 within a region.
        """
        if src == dst:
            return 0.0
        link = self.link(src, dst)
        explicit = link.sender_price(src)
        if explicit is not None:
            return explicit
        a, b = self.region(src), self.region(dst)
        if a.provider and b.provider and a.provider != b.provider:
            internet = _internet_egress(a)
            if internet is not None:
                return internet
        return link.egress_usd_per_gb

    def storage_usd_per_gb_month(self, name: str) -> float:
        """USD per billed GB-month of storing data in region ``name`` (copied shards)."""
        region = self.region(name)
        if region.storage_usd_per_gb_month is not None:
            return region.storage_usd_per_gb_month
        if region.provider:
            from delibench.reports.prices import default_sheet

            try:
                return default_sheet().object_store(region.provider).storage_usd_per_gb_month
            except UsageError:
                pass
        return DEFAULT_STORAGE_USD_PER_GB_MONTH


def _internet_egress(region: Region) -> float | None:
    if region.internet_egress_usd_per_gb is not None:
        return region.internet_egress_usd_per_gb
    if not region.provider:
        return None
    from delibench.reports.prices import default_sheet

    try:
        return default_sheet().egress_price(region.provider, "internet").usd_per_gb
    except UsageError:
        return None


_OPTIONAL_NUMBERS = ("internet_egress_usd_per_gb", "storage_usd_per_gb_month", "store_requests_per_s")
_REGION_KEYS = ("accelerators", "data_url", "shards", "provider", *_OPTIONAL_NUMBERS)
_ACCEL_KEYS = ("count", "type", "usd_per_hour", "step_time_s", "profile", "billing")
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


def _entries(raw: Any, where: str, name: str, keys: tuple[str, ...], *, within: str = "") -> list[tuple[str, Mapping[str, Any]]]:
    """The mappings of the optional list ``<name>s`` at ``where``, each with where it stands (``<within> <name> #i``).

    Raises:
        UsageError: ``raw`` is not a list, an entry is not a mapping or has a key not in ``keys``.
    """
    entries = raw or []
    if not isinstance(entries, list):
        raise UsageError(f"{where}: {name}s must be a list")
    out = []
    for i, body in enumerate(entries):
        at = f"{within} {name} #{i}".lstrip()
        body = _mapping(at, body)
        check_keys(body, keys, at)
        out.append((at, body))
    return out


def _accelerators(where: str, raw: Any) -> Accelerators:
    data = _mapping(where, raw)
    check_keys(data, _ACCEL_KEYS, where)
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
        billing=str(data.get("billing", "hourly")),
    )


def parse_regions(raw: Any, source: str = "<memory>") -> RegionsConfig:
    """Validate a parsed YAML document into a :class:`RegionsConfig`.

    Raises:
        UsageError: Any problem, in one line that names ``source``.
    """
    try:
        doc = _mapping(source, raw)
        check_keys(doc, ("regions", "links"), source)
        regions_raw = _mapping(f"{source}: regions", _require(source, doc, "regions"))
        regions = []
        for name, body in regions_raw.items():
            where = f"region {name!r}"
            body = _mapping(where, body)
            check_keys(body, _REGION_KEYS, where)
            shards = [
                Shard(name=str(_require(swhere, shard, "name")), size_bytes=parse_bytes(_require(swhere, shard, "size_bytes")))
                for swhere, shard in _entries(body.get("shards"), where, "shard", _SHARD_KEYS, within=where)
            ]
            data_url = body.get("data_url")
            provider = body.get("provider")
            optional = {
                key: _number(f"{where}: {key}", body[key]) for key in _OPTIONAL_NUMBERS if body.get(key) is not None
            }
            regions.append(
                Region(
                    name=str(name),
                    accelerators=_accelerators(f"{where} accelerators", _require(where, body, "accelerators")),
                    data_url=None if data_url is None else str(data_url),
                    shards=tuple(shards),
                    provider=None if provider is None else str(provider).lower(),
                    **optional,
                )
            )
        links = []
        for where, body in _entries(doc.get("links"), source, "link", _LINK_KEYS):
            between = _require(where, body, "between")
            if not isinstance(between, list) or len(between) != 2:
                raise UsageError(f"{where}: between must be a list of two region names")
            bandwidth = _require(where, body, "bandwidth_bytes_per_s")
            egress = _require(where, body, "egress_usd_per_gb")
            by_sender: tuple[tuple[str, float], ...] = ()
            if isinstance(egress, Mapping):
                # Per direction, keyed by the sender; both ends are needed.
                by_sender = tuple((str(k), _number(f"{where}: egress_usd_per_gb[{k}]", v)) for k, v in egress.items())
                missing = [str(e) for e in between if str(e) not in dict(by_sender)]
                if missing:
                    raise UsageError(f"{where}: egress_usd_per_gb by sender lacks {', '.join(missing)}", hint="give a price for each end, or one number for both")
                egress = max(v for _, v in by_sender)
            links.append(
                Link(
                    a=str(between[0]),
                    b=str(between[1]),
                    rtt_s=parse_duration(_require(where, body, "rtt_s")),
                    bandwidth_bytes_per_s=float(parse_bytes(bandwidth) if isinstance(bandwidth, str) else _number(f"{where}: bandwidth_bytes_per_s", bandwidth)),
                    egress_usd_per_gb=_number(f"{where}: egress_usd_per_gb", egress),
                    egress_by_sender=by_sender,
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
    p = Path(path)
    return parse_regions(read_yaml(p, "regions file", hint="see geo/example-regions.yaml"), source=str(p))
