"""Fixtures of the hostile suite: attacks and crashes against a real `onstage serve`.

Builds on tests/python/conftest.py (`server_factory`) and borrows the real-peer
helpers of tests/python/media (aiortc publishers and subscribers on loopback).
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "media"))

import media_peers  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def loopback_ice():
    """aioice offers no loopback candidate by default; onstage listens on 127.0.0.1."""
    media_peers.use_loopback_ice()
    yield
    media_peers.restore_ice()


@pytest.fixture
def arun():
    """Runs a coroutine in a fresh event loop with an overall time limit."""

    def run(coro, timeout: float = 60.0):
        async def bounded():
            return await asyncio.wait_for(coro, timeout)

        return asyncio.run(bounded())

    return run
