"""Run configuration files (YAML) and their merge with command-line flags into a RunSpec.

A config file is a mapping with these keys (all optional; command-line flags override them)::

    data: s3://bucket/imgs          # dataset root (fsspec URL)
    workload: resnet50
    compute: emulated:120ms         # cpu | cuda | auto | emulated:<time> | emulated:<profile>
    batch_size: 64
    num_workers: 4
    epochs: 2
    warmup_steps: 10
    warmup_epochs: 0                 # whole epochs left out of the steady state (1: warm caches only)
    max_steps_per_epoch: 200
    seed: 0
    order: shuffle                   # or locality
    loader:                          # one loader ...
      kind: deli
      cache_size: 8GiB
      prefetch_depth: 512
      concurrency: 64
      eviction: lru

``loaders:`` (a list of such mappings) may replace ``loader:`` for ``delibench compare``.
``delibench tune --export best.yaml`` writes exactly this format.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from delibench.errors import UsageError
from delibench.records import LoaderSpec
from delibench.yamlfile import check_keys, read_yaml

__all__ = ["CONFIG_KEYS", "load_config", "parse_loader_arg"]

CONFIG_KEYS = (
    "batch_size",
    "compute",
    "data",
    "epochs",
    "exchange_fraction",
    "loader",
    "loaders",
    "max_steps_per_epoch",
    "num_workers",
    "order",
    "seed",
    "warmup_epochs",
    "warmup_steps",
    "workload",
)


def loader_spec_from_mapping(doc: Mapping[str, Any], origin: str) -> LoaderSpec:
    """Build a LoaderSpec from ``{kind: deli, label: ..., <options>...}``."""
    if not isinstance(doc, Mapping) or "kind" not in doc:
        raise UsageError(f"{origin}: a loader needs a 'kind' (e.g. kind: deli)")
    options = {k: v for k, v in doc.items() if k not in ("kind", "label")}
    return LoaderSpec(kind=str(doc["kind"]), options=options, label=doc.get("label"))


def load_config(path: str | Path) -> dict[str, Any]:
    """Read a YAML run config; returns its mapping with ``loader``/``loaders`` as LoaderSpecs.

    Raises:
        UsageError: Missing or unreadable file, invalid YAML, unknown keys.
    """
    p = Path(path)
    doc = read_yaml(p, "config", invalid="invalid YAML")
    check_keys(doc, CONFIG_KEYS, str(p))
    if "loader" in doc:
        doc["loader"] = loader_spec_from_mapping(doc["loader"], f"{p}: loader")
    if "loaders" in doc:
        if not isinstance(doc["loaders"], list):
            raise UsageError(f"{p}: 'loaders' must be a list of loader mappings")
        doc["loaders"] = [loader_spec_from_mapping(d, f"{p}: loaders[{i}]") for i, d in enumerate(doc["loaders"])]
    return doc


def _parse_value(text: str) -> Any:
    import yaml

    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def parse_loader_arg(text: str) -> LoaderSpec:
    """Parse a ``--loader`` argument.

    Forms: ``bucket``, ``deli:cache_size=2GiB,prefetch_depth=256``, ``disk=./imgs`` (the local copy
    the disk loader reads), ``deli@big:cache_size=8GiB`` (``@label`` names the column).

    Raises:
        UsageError: Empty kind or a malformed ``key=value`` option.
    """
    text = text.strip()
    head, _, opts = text.partition(":")
    options: dict[str, Any] = {}
    if "=" in head:  # disk=./imgs
        head, _, path = head.partition("=")
        options["path"] = path
    kind, _, label = head.partition("@")
    if not kind:
        raise UsageError(f"bad --loader {text!r}", hint="e.g. --loader deli:cache_size=2GiB,prefetch_depth=256")
    for item in filter(None, (s.strip() for s in opts.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key:
            raise UsageError(f"bad loader option {item!r} in {text!r}", hint="options are key=value, comma-separated")
        options[key.strip().replace("-", "_")] = _parse_value(value.strip())
    return LoaderSpec(kind=kind.strip(), options=options, label=label or None)
