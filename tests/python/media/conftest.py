"""Fixtures of the real-peer media suite (aiortc against a running onstage).

Builds on tests/python/conftest.py: its session `server` (an `onstage serve` on a free
TCP port with a free UDP `--media-port`), the `ivs` boto3 client, `stage` (a fresh
stage of the development account, deleted afterwards) and `fresh_account` (a clean
account, for the public-key quota of self-signed tokens).
"""

from __future__ import annotations


import pytest



@pytest.fixture(scope="session", autouse=True)
def real_peers_on_loopback(loopback_ice):
    """Every test here uses real peers on loopback (tests/python/conftest.py)."""
    yield


@pytest.fixture
def token_for(ivs):
    """token_for(stage, user_id, caps=("PUBLISH","SUBSCRIBE"), attributes=None, client=ivs)
    -> the participantToken dict (participantId, token, ...)."""

    def make(stage: dict, user_id: str, caps=("PUBLISH", "SUBSCRIBE"), attributes=None, client=None):
        kw = dict(stageArn=stage["arn"], userId=user_id, capabilities=list(caps))
        if attributes:
            kw["attributes"] = attributes
        return (client or ivs).create_participant_token(**kw)["participantToken"]

    return make


@pytest.fixture
def endpoints(stage):
    return stage["endpoints"]["whip"], stage["endpoints"]["events"]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed and "server" in getattr(item, "fixturenames", ()):
        server = item.funcargs.get("server")
        if server is not None:
            report.sections.append(("onstage log (tail)", server.log()))
