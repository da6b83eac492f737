"""Fixtures of the participant-replication suite (BEHAVIOUR §6) with real aiortc peers.

Builds on tests/python/conftest.py (the session `server`, `server_factory`, the `ivs`
boto3 client, `aws_cli`) and on the real-peer helpers of
tests/python/media/media_peers.py, imported from there (not its conftest).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

import pytest

MEDIA = Path(__file__).resolve().parents[1] / "media"
if str(MEDIA) not in sys.path:
    sys.path.insert(0, str(MEDIA))

import media_peers  # noqa: E402

_names = itertools.count()


@pytest.fixture(scope="session", autouse=True)
def real_peers_on_loopback(loopback_ice):
    """Every test here uses real peers on loopback (tests/python/conftest.py)."""
    yield


@pytest.fixture
def make_stage(ivs):
    """make_stage(label, client=ivs) -> a new stage (dict), deleted after the test."""
    made = []

    def make(label: str = "replication", client=None):
        client = client or ivs
        stage = client.create_stage(name=f"{label}-{next(_names)}")["stage"]
        made.append((client, stage["arn"]))
        return stage

    yield make
    for client, arn in made:
        try:
            client.delete_stage(arn=arn)
        except Exception:  # already deleted by the test, or the server is gone
            pass


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


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" and report.failed:
        for name in ("server", "own_server"):
            s = getattr(item, "funcargs", {}).get(name)
            if s is not None and hasattr(s, "log"):
                report.sections.append((f"onstage log, {name} (tail)", s.log()))
