"""Fixtures of the soak suite (long-running checks against one dedicated onstage).

Builds on tests/python/conftest.py (`server_factory`, which starts an `onstage serve`
of the test's own and stops it afterwards) and on the real-peer helpers of
tests/python/media/media_peers.py, imported from there.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[1] / "media"
if str(MEDIA) not in sys.path:
    sys.path.insert(0, str(MEDIA))

import media_peers  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line(
        "markers",
        "soak: long-running leak checks (deselect with -m 'not soak')",
    )


@pytest.fixture(scope="session", autouse=True)
def real_peers_on_loopback(loopback_ice):
    """Every test here uses real peers on loopback (tests/python/conftest.py)."""
    yield
