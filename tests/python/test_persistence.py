"""A restart on the same data directory loses nothing: stages, keys, tags,
configurations, the token-signing key. Also start-up configuration."""

import os
import subprocess
from pathlib import Path

import pytest
import requests

from helpers import config_toml, DEV, SECOND, Creds, call, client_error, fetch_jwks, p384_pem, same_public_key, verify_token


def test_everything_survives_a_restart(server_factory):
    srv = server_factory(config_text=config_toml([SECOND]))
    c = srv.client(DEV)
    sc = c.create_storage_configuration(name="rec", s3={"bucketName": "persist"}, tags={"s": "1"})["storageConfiguration"]
    created = c.create_stage(name="persistent", tags={"a": "1"},
                             autoParticipantRecordingConfiguration={"storageConfigurationArn": sc["arn"]},
                             participantTokenConfigurations=[{"userId": "early", "duration": 60}])
    stage = created["stage"]
    c.tag_resource(resourceArn=stage["arn"], tags={"b": "2"})
    _, pem = p384_pem()
    key = c.import_public_key(publicKeyMaterial=pem, name="kept", tags={"k": "v"})["publicKey"]
    enc = c.create_encoder_configuration(name="enc", video={"width": 640, "height": 360})["encoderConfiguration"]
    token = c.create_participant_token(stageArn=stage["arn"], userId="u1", attributes={"x": "y"})["participantToken"]
    other = srv.client(SECOND).create_stage(name="second-account")["stage"]
    jwks_before = fetch_jwks(srv)
    claims_before = verify_token(srv, token["token"])
    deleted = c.create_stage(name="deleted")["stage"]
    c.delete_stage(arn=deleted["arn"])

    srv.restart()
    c = srv.client(DEV)

    got = c.get_stage(arn=stage["arn"])["stage"]
    assert got["name"] == "persistent"
    assert got["tags"] == {"a": "1", "b": "2"}
    assert got["endpoints"] == stage["endpoints"]
    assert got["autoParticipantRecordingConfiguration"]["storageConfigurationArn"] == sc["arn"]
    assert c.list_tags_for_resource(resourceArn=stage["arn"])["tags"] == {"a": "1", "b": "2"}
    assert {s["arn"] for s in c.list_stages()["stages"]} == {stage["arn"]}
    with client_error("ResourceNotFoundException"):
        c.get_stage(arn=deleted["arn"])

    k = c.get_public_key(arn=key["arn"])["publicKey"]
    assert k["name"] == "kept" and k["tags"] == {"k": "v"} and k["fingerprint"] == key["fingerprint"]
    assert same_public_key(k["publicKeyMaterial"], pem)
    with client_error("ConflictException"):
        c.import_public_key(publicKeyMaterial=pem)

    assert c.get_storage_configuration(arn=sc["arn"])["storageConfiguration"]["tags"] == {"s": "1"}
    with client_error("ConflictException"):
        c.delete_storage_configuration(arn=sc["arn"])
    e = c.get_encoder_configuration(arn=enc["arn"])["encoderConfiguration"]
    assert (e["video"]["width"], e["video"]["height"]) == (640, 360)

    assert srv.client(SECOND).get_stage(arn=other["arn"])["stage"]["name"] == "second-account"
    with client_error("ResourceNotFoundException"):
        srv.client(SECOND).get_stage(arn=stage["arn"])

    # the signing key survived: old tokens still verify, and new tokens use the same kid
    jwks_after = fetch_jwks(srv)
    assert {k["kid"] for k in jwks_before["keys"]} <= {k["kid"] for k in jwks_after["keys"]}
    assert verify_token(srv, token["token"], jwks_after) == claims_before
    assert verify_token(srv, created["participantTokens"][0]["token"], jwks_after)["user_id"] == "early"
    new = c.create_participant_token(stageArn=stage["arn"])["participantToken"]
    verify_token(srv, new["token"], jwks_after)


def test_page_token_survives_restart(server_factory):
    srv = server_factory()
    c = srv.client(DEV)
    made = {c.create_stage()["stage"]["arn"] for _ in range(4)}
    first = c.list_stages(maxResults=2)
    srv.restart()
    c = srv.client(DEV)
    rest = c.list_stages(maxResults=2, nextToken=first["nextToken"])
    seen = [s["arn"] for s in first["stages"] + rest["stages"]]
    tok = rest.get("nextToken")
    while tok:
        more = c.list_stages(maxResults=2, nextToken=tok)
        seen += [s["arn"] for s in more["stages"]]
        tok = more.get("nextToken")
    assert sorted(seen) == sorted(made)


def test_fresh_data_dir_has_its_own_signing_key(server_factory):
    a, b = server_factory(), server_factory()
    ka = {k["kid"] for k in fetch_jwks(a)["keys"]}
    kb = {k["kid"] for k in fetch_jwks(b)["keys"]}
    assert ka and kb and ka.isdisjoint(kb)


def test_primary_key_override_disables_dev_key(server_factory):
    srv = server_factory(extra_args=["--access-key-id", "AKIDPRIMARY", "--secret-access-key", "primary-secret"])
    r = call(srv, "ListStages", {}, creds=DEV)
    assert r.status_code == 403
    assert r.headers["x-amzn-ErrorType"] == "UnrecognizedClientException"
    r = call(srv, "ListStages", {}, creds=Creds("AKIDPRIMARY", "primary-secret", DEV.account_id))
    assert r.status_code == 200, r.text


def test_environment_configuration(server_factory, tmp_path):
    srv = server_factory(start=False, env={"ONSTAGE_ACCOUNT_ID": "123456789012",
                                           "ONSTAGE_PUBLIC_URL": "https://stage.example.com"})
    srv.start()
    stage = srv.client(DEV).create_stage()["stage"]
    assert stage["arn"].startswith("arn:aws:ivs:us-east-1:123456789012:stage/")
    assert stage["endpoints"]["whip"] == "https://stage.example.com/whip"
    assert stage["endpoints"]["events"] == "wss://stage.example.com/events"
    claims = verify_token(srv, srv.client(DEV).create_participant_token(stageArn=stage["arn"])["participantToken"]["token"])
    assert claims["whip_url"] == "https://stage.example.com/whip"
    assert claims["events_url"] == "wss://stage.example.com/events"


def test_config_file_accounts(server_factory):
    srv = server_factory(config_text=config_toml([Creds("AKIDCFG", "cfg-secret", "333333333333")]))
    c = srv.client(Creds("AKIDCFG", "cfg-secret", "333333333333"))
    assert c.create_stage()["stage"]["arn"].startswith("arn:aws:ivs:us-east-1:333333333333:stage/")
    assert srv.client(DEV).list_stages()["stages"] == []


def test_configured_keys_turn_the_development_key_off(server_factory):
    srv = server_factory(config_text=config_toml([Creds("AKIDONLY", "only-secret", "333333333333")],
                                                 with_dev=False))
    assert srv.client(Creds("AKIDONLY", "only-secret", "333333333333")).list_stages()["stages"] == []
    with client_error("UnrecognizedClientException", status=403):
        srv.client(DEV).list_stages()


def test_duplicate_access_key_id_is_a_startup_error(server_factory):
    keys = [Creds("AKIDTWICE", "one-secret", "333333333333"), Creds("AKIDTWICE", "two", "444444444444")]
    srv = server_factory(config_text=config_toml(keys), start=False)
    with pytest.raises(RuntimeError) as failed:
        srv.start()
    assert "AKIDTWICE" in str(failed.value)


def test_development_key_refused_off_loopback(tmp_path):
    binary = os.environ.get("ONSTAGE_BIN") or str(Path(__file__).resolve().parents[2] / "target/debug/onstage")
    run = lambda *extra: subprocess.run(  # noqa: E731
        [binary, "serve", "--listen", "0.0.0.0:0", "--data-dir", str(tmp_path / "d"), *extra],
        capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL,
        env={k: v for k, v in os.environ.items() if not k.startswith("ONSTAGE_")})
    refused = run()
    assert refused.returncode != 0
    assert "--allow-dev-credentials" in refused.stderr
    assert not (tmp_path / "d").exists(), "refused before touching the data directory"
