"""A local stand-in for a cloud bucket: real object-store servers behind an emulated network link.

Only for benchmarks and tests: a user with a real bucket never needs it.

Example:
    >>> from delibench.testbed import Testbed
    >>> with Testbed.start("/tmp/tb", profile="cross-region") as tb:  # doctest: +SKIP
    ...     url = tb.make_bucket("data")
"""

from delibench.testbed.link import LinkEmulator, LinkStats
from delibench.testbed.profiles import PROFILES, LinkProfile, get_profile, profile_names, with_overrides
from delibench.testbed.servers import GcsEmulator, SeaweedServer
from delibench.testbed.testbed import LinkProcess, Testbed, TestbedState, read_state, stop_detached, testbed_status

__all__ = [
    "PROFILES",
    "GcsEmulator",
    "LinkEmulator",
    "LinkProcess",
    "LinkProfile",
    "LinkStats",
    "SeaweedServer",
    "Testbed",
    "TestbedState",
    "get_profile",
    "profile_names",
    "read_state",
    "stop_detached",
    "testbed_status",
    "with_overrides",
]
