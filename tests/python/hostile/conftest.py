"""Fixtures of the hostile suite: attacks and crashes against a real `onstage serve`.

Builds on tests/python/conftest.py (`server_factory`) and borrows the real-peer
helpers of tests/python/media (aiortc publishers and subscribers on loopback). Tests
of the HTTP port get a server of their own (`target`), so that its memory is measured
from a clean start; this process gets enough file descriptors for the attacks'
connections.
"""

from __future__ import annotations

import resource
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "media"))

from attacks import media_round_trip, rss_kib  # noqa: E402

# ~1,100 attacking sockets plus the test's own: lift this process's soft limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


@pytest.fixture(scope="module", autouse=True)
def real_peers_on_loopback(loopback_ice):
    """Every test here uses real peers on loopback (tests/python/conftest.py)."""
    yield


@pytest.fixture
def target(server_factory):
    """A fresh server, warmed up by a few signed calls and one real publish and
    subscribe (first-use allocations out of the way), and its resident memory after
    that."""
    srv = server_factory()
    c = srv.client()
    for _ in range(20):
        c.list_stages()
    c.delete_stage(arn=c.create_stage(name="warm-up")["stage"]["arn"])
    media_round_trip(srv, c)
    srv.baseline_rss_kib = rss_kib(srv.proc.pid)
    return srv
