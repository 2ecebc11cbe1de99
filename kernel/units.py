"""Parsing and formatting of human sizes (``512MiB``, ``8GB``) and durations (``20ms``), and the billed GB.

The billed GB (:data:`BYTES_PER_BILLED_GB`) is the one byte convention for every price in
delibench (the price sheet in ``reports/prices.yaml``, the regions files of ``geo/``): a price
"per GB" is a price per 2^30 bytes (a GiB). That is what the shipped figures mean: AWS bills data
transfer and storage per "GB" and counts that GB as 2^30 bytes in its billing; Google Cloud
Storage publishes its storage and network prices per GiB (binary). The Azure entries are read the
same way, so one sheet never mixes two GBs. Sizes people type (``40GB`` in a regions file) still
parse as SI (10^9 bytes): only prices use the billed GB.
"""

from __future__ import annotations

import math
import re

from delibench.errors import UsageError

__all__ = ["BYTES_PER_BILLED_GB", "format_bytes", "format_duration", "parse_bytes", "parse_duration"]

# NOTE: IEC (powers of 1024) and SI (powers of 1000) are kept apart on purpose; a bare
# lower-case "kb" is rejected because tools disagree on what it means.
_BYTE_UNITS: dict[str, int] = {
    "B": 1,
    "KB": 1000,
    "MB": 1000**2,
    "GB": 1000**3,
    "TB": 1000**4,
    "KiB": 1024,
    "MiB": 1024**2,
    "GiB": 1024**3,
    "TiB": 1024**4,
}
#: Bytes in the GB that cloud prices are quoted per (2^30: a GiB; see the module docstring). Every
#: ``usd_per_gb`` figure in delibench is dollars per this many bytes.
BYTES_PER_BILLED_GB = 2**30

_DURATION_UNITS: dict[str, float] = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "min": 60.0, "h": 3600.0}
_NUMBER = r"(?P<num>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)"


def parse_bytes(text: str | int) -> int:
    """Parse ``"4GiB"``, ``"512MB"``, ``"1000"`` into a byte count.

    Args:
        text: A non-negative number with an optional IEC (``KiB``) or SI (``KB``) unit.

    Returns:
        The size in bytes (rounded down to a whole byte).

    Raises:
        UsageError: The text is not a size, is negative, or uses an ambiguous unit.
    """
    if isinstance(text, int):
        if text < 0:
            raise UsageError(f"size must not be negative: {text}")
        return text
    match = re.fullmatch(_NUMBER + r"\s*(?P<unit>[A-Za-z]*)", text.strip())
    if not match:
        raise UsageError(f"not a size: {text!r}", hint="use e.g. 512MiB, 8GiB, 100MB or a byte count")
    unit = match["unit"] or "B"
    if unit not in _BYTE_UNITS:
        raise UsageError(
            f"unknown size unit {unit!r} in {text!r}",
            hint="use B, KB/MB/GB/TB (powers of 1000) or KiB/MiB/GiB/TiB (powers of 1024)",
        )
    value = float(match["num"]) * _BYTE_UNITS[unit]
    if not math.isfinite(value):
        raise UsageError(f"size out of range: {text!r}")
    return int(value)


def parse_duration(text: str | float | int) -> float:
    """Parse ``"20ms"``, ``"1.5s"``, ``"2min"`` (a bare number is seconds) into seconds.

    Raises:
        UsageError: The text is not a duration or is negative.
    """
    if isinstance(text, (int, float)):
        if text < 0 or not math.isfinite(text):
            raise UsageError(f"duration must be a finite non-negative number: {text}")
        return float(text)
    match = re.fullmatch(_NUMBER + r"\s*(?P<unit>[a-zµ]*)", text.strip())
    if not match:
        raise UsageError(f"not a duration: {text!r}", hint="use e.g. 20ms, 1.5s, 2min")
    unit = match["unit"] or "s"
    if unit not in _DURATION_UNITS:
        raise UsageError(f"unknown duration unit {unit!r} in {text!r}", hint="use us, ms, s, min or h")
    return float(match["num"]) * _DURATION_UNITS[unit]


def format_bytes(n: float) -> str:
    """Format a byte count with IEC units, e.g. ``1.5 MiB``."""
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def format_duration(seconds: float) -> str:
    """Format seconds for people: ``850 ms``, ``12.3 s``, ``4 min 05 s``."""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes} min {rest:02d} s"
