"""Link profiles: validation, lookup with suggestions, command-line overrides."""

from __future__ import annotations

import pytest

from delibench.errors import UsageError
from delibench.testbed.profiles import PROFILES, LinkProfile, get_profile, with_overrides


def test_shipped_profiles_are_ordered_by_distance_and_cite_sources() -> None:
    assert {"local", "same-region", "cross-region", "cross-continent"} <= set(PROFILES)
    rtts = [PROFILES[n].rtt_s for n in ("local", "same-region", "cross-region", "cross-continent")]
    assert rtts == sorted(rtts) and rtts[0] == 0
    assert not PROFILES["local"].shaped
    for name in ("same-region", "cross-region", "cross-continent"):
        profile = PROFILES[name]
        assert profile.shaped and "approximate" in profile.source
        assert 0 < profile.per_connection_bandwidth_bytes_per_s <= profile.bandwidth_bytes_per_s


@pytest.mark.parametrize(
    "kwargs",
    [{"rtt_s": -0.01}, {"error_rate": 1.5}, {"bandwidth_bytes_per_s": float("inf")}, {"stall_rate": 0.1, "stall_s": 0}],
)
def test_invalid_profiles_are_usage_errors(kwargs: dict) -> None:
    with pytest.raises(UsageError):
        LinkProfile(name="bad", **kwargs)


def test_unknown_profile_suggests_the_closest_name() -> None:
    with pytest.raises(UsageError) as info:
        get_profile("cross-regoin")
    assert "cross-region" in str(info.value)


def test_overrides_parse_units_and_rename() -> None:
    custom = with_overrides("cross-region", rtt="40ms", bandwidth="50MB/s", per_connection_bandwidth="10MB")
    assert custom.rtt_s == pytest.approx(0.040)
    assert custom.bandwidth_bytes_per_s == 50e6
    assert custom.per_connection_bandwidth_bytes_per_s == 10e6
    assert custom.name == "cross-region+custom"
    assert with_overrides("local", rtt="20ms").connect_rtts == 1  # a delay implies a handshake
    assert with_overrides("same-region") is PROFILES["same-region"]
    with pytest.raises(UsageError):
        with_overrides("local", bandwidth="fast")
