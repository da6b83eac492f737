"""CreateParticipantToken: defaults, the JWT and its claims, verification with the
published JWKS, expirationTime, and the input constraints."""

import datetime as dt
import os
import re
import time

import jwt
import pytest
import requests
from dateutil.tz import tzutc

from helpers import (ID, TIMESTAMP_Z, assert_error, call, client_error, fetch_jwks, resource_id,
                     verify_token)

CLAIMS = {"exp", "iat", "jti", "resource", "topic", "events_url", "whip_url", "user_id", "capabilities", "version"}


@pytest.fixture
def local_zone_not_utc():
    """botocore reads a timestamp without a zone as local time; on a UTC machine that
    would hide a missing `Z`, so the client side runs in another zone."""
    old = os.environ.get("TZ")
    os.environ["TZ"] = "America/New_York"
    time.tzset()
    yield
    if old is None:
        del os.environ["TZ"]
    else:
        os.environ["TZ"] = old
    time.tzset()


def test_defaults(ivs, server, stage, local_zone_not_utc):
    before = dt.datetime.now(dt.timezone.utc)
    resp = ivs.create_participant_token(stageArn=stage["arn"], userId="alice")
    t = resp["participantToken"]
    assert t["duration"] == 720
    assert t["capabilities"] == ["PUBLISH", "SUBSCRIBE"]
    assert t["userId"] == "alice"
    assert re.fullmatch(ID, t["participantId"]), t["participantId"]
    assert t.get("attributes", {}) == {}
    exp = t["expirationTime"]
    assert isinstance(exp, dt.datetime)
    assert exp.utcoffset() == dt.timedelta(0), f"expirationTime must be read as UTC, got {exp!r}"
    assert isinstance(exp.tzinfo, tzutc), f"expirationTime must be read as UTC, got tzinfo {exp.tzinfo!r}"
    want = before + dt.timedelta(minutes=720)
    assert abs((exp - want).total_seconds()) < 10, (exp, want)


def test_claims(ivs, server, stage):
    t = ivs.create_participant_token(stageArn=stage["arn"], userId="bob", duration=90,
                                     attributes={"role": "host", "seat": "1"})["participantToken"]
    claims = verify_token(server, t["token"])
    assert CLAIMS | {"attributes"} <= set(claims), sorted(claims)
    assert claims["jti"] == t["participantId"]
    assert claims["resource"] == stage["arn"]
    assert claims["topic"] == resource_id(stage["arn"])
    assert claims["events_url"] == stage["endpoints"]["events"]
    assert claims["whip_url"] == stage["endpoints"]["whip"]
    assert claims["user_id"] == "bob"
    assert claims["attributes"] == {"role": "host", "seat": "1"}
    assert claims["capabilities"] == {"allow_publish": True, "allow_subscribe": True}
    assert claims["version"] == "0.0"
    assert claims["exp"] - claims["iat"] == 90 * 60
    assert abs(claims["iat"] - time.time()) < 10
    assert claims["exp"] == int(t["expirationTime"].timestamp())


def test_no_attributes_claim_when_unset(ivs, server, stage):
    t = ivs.create_participant_token(stageArn=stage["arn"], userId="carol")["participantToken"]
    claims = verify_token(server, t["token"])
    assert "attributes" not in claims, claims
    assert CLAIMS <= set(claims), sorted(claims)


@pytest.mark.parametrize("caps,claim", [
    (["PUBLISH"], {"allow_publish": True}),
    (["SUBSCRIBE"], {"allow_subscribe": True}),
    ([], {}),
    (["SUBSCRIBE", "PUBLISH"], {"allow_publish": True, "allow_subscribe": True}),
])
def test_capabilities(ivs, server, stage, caps, claim):
    t = ivs.create_participant_token(stageArn=stage["arn"], capabilities=caps)["participantToken"]
    assert sorted(t["capabilities"]) == sorted(caps)
    claims = verify_token(server, t["token"])
    assert claims["capabilities"] == claim


def test_capabilities_invalid(ivs, stage):
    with client_error("ValidationException", "capabilities"):
        ivs.create_participant_token(stageArn=stage["arn"], capabilities=["BROADCAST"])
    with client_error("ValidationException", "capabilities"):
        ivs.create_participant_token(stageArn=stage["arn"], capabilities=["PUBLISH", "SUBSCRIBE", "PUBLISH"])


@pytest.mark.parametrize("duration", [1, 20160])
def test_duration_bounds_accepted(ivs, server, stage, duration):
    t = ivs.create_participant_token(stageArn=stage["arn"], duration=duration)["participantToken"]
    assert t["duration"] == duration
    claims = verify_token(server, t["token"])
    assert claims["exp"] - claims["iat"] == duration * 60


@pytest.mark.parametrize("duration", [0, 20161, -5])
def test_duration_out_of_range(ivs, stage, duration):
    with client_error("ValidationException", "duration"):
        ivs.create_participant_token(stageArn=stage["arn"], duration=duration)


def test_user_id_length(ivs, stage):
    ok = ivs.create_participant_token(stageArn=stage["arn"], userId="u" * 128)["participantToken"]
    assert ok["userId"] == "u" * 128
    with client_error("ValidationException", "userId"):
        ivs.create_participant_token(stageArn=stage["arn"], userId="u" * 129)


def test_attributes_limit_counts_utf8_bytes(ivs, server, stage):
    # 1 + 1022 + 1 = 1024 bytes: exactly the limit
    at_limit = {"k": "é" * 511 + "a"}
    t = ivs.create_participant_token(stageArn=stage["arn"], attributes=at_limit)["participantToken"]
    assert t["attributes"] == at_limit
    assert verify_token(server, t["token"])["attributes"] == at_limit
    # 1 + 1024 = 1025 bytes, but only 513 characters
    with client_error("ValidationException", "attributes"):
        ivs.create_participant_token(stageArn=stage["arn"], attributes={"k": "é" * 512})
    # keys count too: 20 entries of 10-byte key + 42-byte value = 1040 bytes
    with client_error("ValidationException", "attributes"):
        ivs.create_participant_token(stageArn=stage["arn"],
                                     attributes={f"key-{i:06d}": "v" * 42 for i in range(20)})


def test_attributes_limit_in_create_stage(ivs):
    with client_error("ValidationException", "attributes"):
        ivs.create_stage(name="bigattrs", participantTokenConfigurations=[{"attributes": {"k": "x" * 1024}}])


def test_unknown_stage(ivs):
    with client_error("ResourceNotFoundException", "Zz0000000002"):
        ivs.create_participant_token(stageArn="arn:aws:ivs:us-east-1:000000000000:stage/Zz0000000002")


def test_stage_arn_required_and_valid(ivs):
    with client_error("ValidationException", "stageArn"):
        ivs.create_participant_token()
    with client_error("ValidationException", "stageArn"):
        ivs.create_participant_token(stageArn="arn:aws:ivs:us-east-1:000000000000:stage/has space")


def test_participant_ids_unique(ivs, stage):
    ids = {ivs.create_participant_token(stageArn=stage["arn"])["participantToken"]["participantId"] for _ in range(20)}
    assert len(ids) == 20


def test_jwks_shape(server):
    jwks = fetch_jwks(server)
    assert jwks["keys"], jwks
    for k in jwks["keys"]:
        assert k["kty"] == "EC"
        assert k["crv"] == "P-384"
        assert k.get("kid")
        assert "d" not in k, "the JWKS must not publish the private key"
        jwt.PyJWK.from_dict(k)  # loads as a valid key


def test_jwks_needs_no_signature(server):
    r = requests.get(f"{server.url}/.well-known/jwks.json", timeout=10)
    assert r.status_code == 200
    assert r.headers["Content-Type"].startswith("application/json")


def test_forged_token_fails_verification(ivs, server, stage):
    t = ivs.create_participant_token(stageArn=stage["arn"])["participantToken"]["token"]
    head, payload, sig = t.split(".")
    other = ivs.create_participant_token(stageArn=stage["arn"], userId="mallory")["participantToken"]["token"]
    forged = ".".join([head, other.split(".")[1], sig])
    with pytest.raises(jwt.InvalidSignatureError):
        verify_token(server, forged)


def test_expiration_time_raw_json_uses_z(server, stage):
    r = call(server, "CreateParticipantToken", {"stageArn": stage["arn"], "duration": 5})
    assert r.status_code == 200, r.text
    raw = r.json()["participantToken"]["expirationTime"]
    assert isinstance(raw, str) and TIMESTAMP_Z.fullmatch(raw), raw
    parsed = dt.datetime.fromisoformat(raw.replace("Z", "+00:00"))
    assert abs((parsed - dt.datetime.now(dt.timezone.utc)).total_seconds() - 300) < 10


def test_create_stage_tokens_raw_json_use_z(server):
    r = call(server, "CreateStage", {"name": "rawz", "participantTokenConfigurations": [{"duration": 3}]})
    assert r.status_code == 200, r.text
    try:
        raw = r.json()["participantTokens"][0]["expirationTime"]
        assert TIMESTAMP_Z.fullmatch(raw), raw
    finally:
        call(server, "DeleteStage", {"arn": r.json()["stage"]["arn"]})


def test_wrong_json_type_for_duration(server, stage):
    r = call(server, "CreateParticipantToken", {"stageArn": stage["arn"], "duration": "abc"})
    assert_error(r, "SerializationException", "duration")
