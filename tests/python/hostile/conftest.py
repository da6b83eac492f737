"""Fixtures for the attack suite: a server of its own per test (so that its memory
is measured from a clean start), the process's resident memory, and enough file
descriptors in this process to open the attacks' connections."""

from __future__ import annotations

import resource

import pytest

from attacks import rss_kib

# ~1,100 attacking sockets plus the test's own: lift this process's soft limit.
_soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
if _hard == resource.RLIM_INFINITY or _soft < _hard:
    resource.setrlimit(resource.RLIMIT_NOFILE, (_hard, _hard))


@pytest.fixture
def target(server_factory):
    """A fresh server, warmed up by a few signed calls (first-use allocations out of
    the way), and its resident memory after that."""
    srv = server_factory()
    c = srv.client()
    for _ in range(20):
        c.list_stages()
    c.delete_stage(arn=c.create_stage(name="warm-up")["stage"]["arn"])
    srv.baseline_rss_kib = rss_kib(srv.proc.pid)
    return srv
