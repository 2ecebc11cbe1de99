"""The price catalog: a shipped, dated YAML sheet of list prices, and user sheets merged over it by key.

Every ``*_per_gb`` price here is per billed GB, :data:`delibench.units.BYTES_PER_BILLED_GB` =
2^30 bytes: AWS counts the "GB" of its data-transfer and storage prices as 2^30 bytes, and Google
Cloud Storage publishes those prices per GiB, so that is what the shipped figures mean.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any

from delibench.errors import UsageError
from delibench.yamlfile import expect_mapping, parse_yaml, read_yaml

__all__ = [
    "EGRESS_CLASSES",
    "EgressPrice",
    "InstancePrice",
    "ObjectStorePrice",
    "PriceSheet",
    "StoragePrice",
    "default_sheet",
    "load_sheet",
    "provider_for_url",
]

#: Where the bytes travel from the bucket to the accelerators: same region, another region, the internet.
EGRESS_CLASSES = ("same-region", "cross-region", "internet")
_TOP_KEYS = {"id", "retrieved_on", "note", "defaults", "instances", "object_stores", "egress", "storage"}


@dataclass(frozen=True, slots=True)
class InstancePrice:
    """On-demand price of one VM type (all its accelerators).

    Attributes:
        key: The name users pass to ``--instance`` (e.g. ``p4d.24xlarge``).
        provider: ``aws``, ``gcp``, ``azure`` or your own.
        usd_per_hour: Price of the whole VM per hour.
        accelerator_count: Accelerators in the VM; a run with more ranks pays for more VMs.
        accelerators: Human description (``8x NVIDIA A100 40GB``).
        region: Region the price is for.
        name: Marketing name (``ND A100 v4``), if different from the key.
        source: The public pricing page the figure came from.
        retrieved_on: Date (ISO) the figure was read.
    """

    key: str
    provider: str
    usd_per_hour: float
    accelerator_count: int = 1
    accelerators: str = ""
    region: str = ""
    name: str = ""
    source: str = ""
    retrieved_on: str = ""


@dataclass(frozen=True, slots=True)
class ObjectStorePrice:
    """Request and storage prices of one object-store class.

    Attributes:
        key: ``s3-standard``, ``gcs-standard``, ...
        provider: The cloud it belongs to.
        get_usd_per_1000: Price of 1,000 GET requests (GCS Class B).
        put_usd_per_1000: Price of 1,000 PUT requests (GCS Class A).
        list_usd_per_1000: Price of 1,000 LIST requests.
        storage_usd_per_gb_month: Price of keeping one billed GB (2^30 bytes) for a month.
    """

    key: str
    provider: str
    get_usd_per_1000: float
    put_usd_per_1000: float = 0.0
    list_usd_per_1000: float = 0.0
    storage_usd_per_gb_month: float = 0.0
    source: str = ""
    retrieved_on: str = ""


@dataclass(frozen=True, slots=True)
class EgressPrice:
    """Price of moving one billed GB (2^30 bytes) out of the bucket's region, per provider and egress class."""

    key: str
    provider: str
    egress_class: str
    usd_per_gb: float
    source: str = ""
    retrieved_on: str = ""


@dataclass(frozen=True, slots=True)
class StoragePrice:
    """Price of local disk for a cache tier (billed GB-month, 2^30 bytes)."""

    key: str
    usd_per_gb_month: float
    source: str = ""
    retrieved_on: str = ""


@dataclass(frozen=True, slots=True)
class PriceSheet:
    """A dated set of prices; never fetched at run time.

    Attributes:
        id: Identifier stored in every CostEstimate (``price_sheet_id``), so a report says which prices it used.
        retrieved_on: Date of the sheet (entries carry their own dates too).
        note: What these prices are and are not (list prices, on-demand, no discounts).
        instances: By ``--instance`` key.
        object_stores: By store key.
        egress: By ``<provider>/<egress_class>``.
        storage: By ``<provider>/<disk kind>``.
        defaults: ``provider``, ``egress_class``, ``instance`` and ``object_store`` per provider.
        sources: The files merged into this sheet, first the shipped one.
    """

    id: str
    retrieved_on: str
    note: str
    instances: Mapping[str, InstancePrice]
    object_stores: Mapping[str, ObjectStorePrice]
    egress: Mapping[str, EgressPrice]
    storage: Mapping[str, StoragePrice]
    defaults: Mapping[str, Any]
    sources: tuple[str, ...] = ()

    def instance(self, key: str) -> InstancePrice:
        """The instance ``key`` (case-insensitive).

        Raises:
            UsageError: Unknown instance, with the closest names as the hint.
        """
        if key in self.instances:
            return self.instances[key]
        folded = {k.lower(): v for k, v in self.instances.items()}
        if key.lower() in folded:
            return folded[key.lower()]
        close = difflib.get_close_matches(key, list(self.instances), n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(close)}?" if close else f"known: {', '.join(sorted(self.instances))}"
        raise UsageError(f"unknown instance type {key!r} in price sheet {self.id}", hint=f"{hint} (add it with --prices my.yaml)")

    def default_instance(self, provider: str) -> InstancePrice:
        """The sheet's default VM for ``provider`` (a one-accelerator type)."""
        per_provider = self.defaults.get("instance", {})
        key = per_provider.get(provider) or per_provider.get(self.defaults.get("provider", "aws"))
        if not key:
            raise UsageError(f"price sheet {self.id} has no default instance for {provider!r}", hint="pass --instance")
        return self.instance(key)

    def object_store(self, provider: str) -> ObjectStorePrice:
        """The default object-store class of ``provider``."""
        key = self.defaults.get("object_store", {}).get(provider)
        if key not in self.object_stores:
            raise UsageError(f"price sheet {self.id} has no object-store prices for {provider!r}", hint="add them with --prices my.yaml")
        return self.object_stores[key]

    def egress_price(self, provider: str, egress_class: str) -> EgressPrice:
        """Egress price of ``provider`` for ``egress_class`` (one of :data:`EGRESS_CLASSES` or a custom class)."""
        key = f"{provider}/{egress_class}"
        if key not in self.egress:
            known = sorted({e.egress_class for e in self.egress.values() if e.provider == provider})
            raise UsageError(f"no egress price {egress_class!r} for {provider!r} in price sheet {self.id}", hint=f"use one of {', '.join(known) or EGRESS_CLASSES}")
        return self.egress[key]


def provider_for_url(url: str, default: str = "aws") -> str:
    """The cloud whose request/egress prices apply to a dataset URL (``s3://`` -> aws, ``gs://`` -> gcp)."""
    scheme = url.split("://", 1)[0].lower() if "://" in url else ""
    return {"s3": "aws", "s3a": "aws", "gs": "gcp", "gcs": "gcp", "az": "azure", "abfs": "azure", "abfss": "azure"}.get(scheme, default)


def _entry(cls: type, key: str, raw: Any, *, where: str, extra: dict[str, Any]) -> Any:
    if not isinstance(raw, Mapping):
        raise UsageError(f"{where}: entry {key!r} must be a mapping, got {type(raw).__name__}")
    fields = {f.name for f in dataclasses.fields(cls)}
    values = {**extra, **{k: v for k, v in raw.items()}, "key": key}
    unknown = set(values) - fields
    if unknown:
        close = difflib.get_close_matches(sorted(unknown)[0], sorted(fields), n=1)
        raise UsageError(f"{where}: entry {key!r} has unknown field(s) {sorted(unknown)}", hint=f"did you mean {close[0]!r}?" if close else None)
    for name, value in values.items():
        if name.startswith(("usd", "get_", "put_", "list_", "storage_")) or name.endswith(("_usd", "_per_1000", "_per_gb", "_per_hour", "_month")):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise UsageError(f"{where}: {key}.{name} must be a non-negative number, got {value!r}")
            values[name] = float(value)
        elif name == "accelerator_count":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"{where}: {key}.accelerator_count must be a positive integer, got {value!r}")
        elif value is not None and not isinstance(value, str):
            values[name] = str(value)
    try:
        return cls(**values)
    except TypeError as exc:
        raise UsageError(f"{where}: entry {key!r} is incomplete: {exc}") from None


def _parse(raw: Any, *, where: str) -> dict[str, Any]:
    """Validate one sheet document into ``{section: {key: record}}`` plus top-level values."""
    raw = expect_mapping(raw, where, "price sheet")
    unknown = set(raw) - _TOP_KEYS
    if unknown:
        raise UsageError(f"{where}: unknown section(s) {sorted(unknown)}", hint=f"sections are {', '.join(sorted(_TOP_KEYS))}")
    dated = {"retrieved_on": str(raw["retrieved_on"])} if "retrieved_on" in raw else {}
    default_source = {"source": f"user price sheet {Path(where).name}"}
    out: dict[str, Any] = {k: raw[k] for k in ("id", "retrieved_on", "note") if k in raw}
    out["defaults"] = raw.get("defaults") or {}
    if not isinstance(out["defaults"], Mapping):
        raise UsageError(f"{where}: 'defaults' must be a mapping")

    def section(name: str) -> Mapping[str, Any]:
        value = raw.get(name) or {}
        if not isinstance(value, Mapping):
            raise UsageError(f"{where}: section {name!r} must be a mapping of entries")
        return value

    out["instances"] = {k: _entry(InstancePrice, str(k), v, where=where, extra={**default_source, **dated}) for k, v in section("instances").items()}
    out["object_stores"] = {k: _entry(ObjectStorePrice, str(k), v, where=where, extra={**default_source, **dated}) for k, v in section("object_stores").items()}
    out["storage"] = {k: _entry(StoragePrice, str(k), v, where=where, extra={**default_source, **dated}) for k, v in section("storage").items()}
    egress: dict[str, EgressPrice] = {}
    for provider, classes in section("egress").items():
        if not isinstance(classes, Mapping):
            raise UsageError(f"{where}: egress.{provider} must map egress classes to prices")
        for cls_name, v in classes.items():
            key = f"{provider}/{cls_name}"
            extra = {**default_source, **dated, "provider": str(provider), "egress_class": str(cls_name)}
            egress[key] = _entry(EgressPrice, key, v, where=where, extra=extra)
    out["egress"] = egress
    return out


def _build(parts: list[tuple[str, dict[str, Any]]]) -> PriceSheet:
    merged: dict[str, Any] = {"instances": {}, "object_stores": {}, "egress": {}, "storage": {}, "defaults": {}}
    ids: list[str] = []
    for _, part in parts:
        for section in ("instances", "object_stores", "egress", "storage"):
            merged[section].update(part[section])  # NOTE: merge by key; a later sheet's entry replaces the whole entry
        for k, v in part["defaults"].items():
            if isinstance(v, Mapping) and isinstance(merged["defaults"].get(k), Mapping):
                merged["defaults"][k] = {**merged["defaults"][k], **v}
            else:
                merged["defaults"][k] = v
        for k in ("retrieved_on", "note"):
            if k in part:
                merged[k] = part[k]
        if "id" in part:
            ids.append(str(part["id"]))
    return PriceSheet(
        id="+".join(ids) or "unnamed",
        retrieved_on=str(merged.get("retrieved_on", "")),
        note=str(merged.get("note", "")).strip(),
        instances=MappingProxyType(merged["instances"]),
        object_stores=MappingProxyType(merged["object_stores"]),
        egress=MappingProxyType(merged["egress"]),
        storage=MappingProxyType(merged["storage"]),
        defaults=MappingProxyType(merged["defaults"]),
        sources=tuple(name for name, _ in parts),
    )


def _shipped() -> tuple[str, dict[str, Any]]:
    text = resources.files("delibench.reports").joinpath("prices.yaml").read_text(encoding="utf-8")
    where = "delibench/reports/prices.yaml"
    return where, _parse(parse_yaml(text, where), where=where)


def default_sheet() -> PriceSheet:
    """The shipped, dated list-price sheet."""
    return _build([_shipped()])


def load_sheet(*paths: str | Path, base: bool = True) -> PriceSheet:
    """The shipped sheet with user sheets merged over it, in order (entries merge by key; later wins).

    Args:
        paths: User YAML files (same layout as the shipped ``prices.yaml``; every section optional).
        base: Start from the shipped sheet (``False``: use only the given files).

    Raises:
        UsageError: A file is missing, not YAML, or has a bad entry; the message names the file.
    """
    parts = [_shipped()] if base else []
    for raw_path in paths:
        path = Path(raw_path)
        parsed = _parse(read_yaml(path, "price sheet"), where=str(path))
        parsed.setdefault("id", path.stem)
        parts.append((str(path), parsed))
    return _build(parts)
