"""Fixtures of the workload tests."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _isolated_profiles(tmp_path, monkeypatch):
    """Keep the user's real ~/.config (saved GPU profiles) out of every test."""
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    monkeypatch.delenv("DELIBENCH_PROFILES", raising=False)
