"""The AWS CLI (`aws ivs-realtime ... --endpoint-url`) against onstage."""

import json
import os
import subprocess

import pytest

from helpers import DEV, arn_re, same_public_key, p384_pem, verify_token


@pytest.fixture(scope="module")
def cli(aws_cli, server, tmp_root):
    home = tmp_root / "cli-home"
    home.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({
        "AWS_ACCESS_KEY_ID": DEV.access_key,
        "AWS_SECRET_ACCESS_KEY": DEV.secret_key,
        "AWS_DEFAULT_REGION": "us-east-1",
        "AWS_CONFIG_FILE": str(home / "config"),
        "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
        "AWS_MAX_ATTEMPTS": "1",
        "AWS_PAGER": "",
        "HOME": str(home),
    })

    def run(*args, expect_ok=True):
        cmd = [str(aws_cli), "ivs-realtime", *args, "--endpoint-url", server.url, "--output", "json"]
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
        if expect_ok:
            assert p.returncode == 0, f"{' '.join(args)} exited {p.returncode}:\n{p.stderr}"
            return json.loads(p.stdout) if p.stdout.strip() else {}
        return p

    return run


def test_stage_lifecycle(cli, server):
    out = cli("create-stage", "--name", "cli-stage", "--tags", "team=video,env=dev",
              "--participant-token-configurations", json.dumps([{"userId": "first", "duration": 30},
                                                                 {"userId": "second", "capabilities": ["SUBSCRIBE"]}]))
    stage = out["stage"]
    assert arn_re("stage").fullmatch(stage["arn"])
    assert stage["name"] == "cli-stage"
    assert stage["tags"] == {"team": "video", "env": "dev"}
    assert stage["endpoints"]["whip"] == f"{server.url}/whip"
    assert [t["userId"] for t in out["participantTokens"]] == ["first", "second"]
    assert out["participantTokens"][1]["capabilities"] == ["SUBSCRIBE"]
    assert out["participantTokens"][0]["expirationTime"].endswith("Z")

    got = cli("get-stage", "--arn", stage["arn"])["stage"]
    assert got["name"] == "cli-stage" and got["arn"] == stage["arn"]

    listed = cli("list-stages", "--max-results", "100")["stages"]
    assert stage["arn"] in {s["arn"] for s in listed}

    tok = cli("create-participant-token", "--stage-arn", stage["arn"], "--user-id", "cli-user",
              "--duration", "5", "--capabilities", "PUBLISH", "--attributes", "role=host")["participantToken"]
    assert tok["userId"] == "cli-user" and tok["duration"] == 5 and tok["capabilities"] == ["PUBLISH"]
    assert tok["attributes"] == {"role": "host"}
    claims = verify_token(server, tok["token"])
    assert claims["jti"] == tok["participantId"]
    assert claims["capabilities"] == {"allow_publish": True}
    assert claims["exp"] - claims["iat"] == 300

    cli("tag-resource", "--resource-arn", stage["arn"], "--tags", "owner=cli")
    assert cli("list-tags-for-resource", "--resource-arn", stage["arn"])["tags"] == {
        "team": "video", "env": "dev", "owner": "cli"}

    cli("delete-stage", "--arn", stage["arn"])
    p = cli("get-stage", "--arn", stage["arn"], expect_ok=False)
    assert p.returncode in (254, 255), (p.returncode, p.stderr)
    assert "ResourceNotFoundException" in p.stderr
    assert stage["arn"].rsplit("/", 1)[1] in p.stderr, p.stderr


def test_import_public_key_from_file(cli, tmp_path):
    _, pem = p384_pem()
    path = tmp_path / "key.pem"
    path.write_text(pem)
    key = cli("import-public-key", "--public-key-material", f"file://{path}", "--name", "cli-key",
              "--tags", "k=v")["publicKey"]
    try:
        assert key["name"] == "cli-key" and key["tags"] == {"k": "v"} and key["fingerprint"]
        assert same_public_key(key["publicKeyMaterial"], pem)
        got = cli("get-public-key", "--arn", key["arn"])["publicKey"]
        assert got["fingerprint"] == key["fingerprint"]
        p = cli("import-public-key", "--public-key-material", f"file://{path}", expect_ok=False)
        assert p.returncode in (254, 255)
        assert "ConflictException" in p.stderr
    finally:
        cli("delete-public-key", "--arn", key["arn"])


def test_validation_error_is_printed(cli):
    p = cli("create-stage", "--name", "ok name", expect_ok=False)
    assert p.returncode in (254, 255), (p.returncode, p.stdout, p.stderr)
    assert "ValidationException" in p.stderr
    assert "name" in p.stderr.split("ValidationException", 1)[1], p.stderr


def test_list_replicas_of_unknown_participant_is_empty(cli, ivs, stage):
    assert cli("list-participant-replicas", "--source-stage-arn", stage["arn"],
               "--participant-id", "abcdefabcdef")["replicas"] == []


def test_bad_credentials_are_reported(cli, aws_cli, server):
    cmd = [str(aws_cli), "ivs-realtime", "list-stages", "--endpoint-url", server.url, "--output", "json"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({"AWS_ACCESS_KEY_ID": "AKIDNOPE", "AWS_SECRET_ACCESS_KEY": "x", "AWS_DEFAULT_REGION": "us-east-1",
                "AWS_MAX_ATTEMPTS": "1", "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull})
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert p.returncode in (254, 255)
    assert "UnrecognizedClientException" in p.stderr


def test_ingest_configuration_lifecycle(cli):
    stage = cli("create-stage", "--name", "cli-ingest")["stage"]
    ic = cli("create-ingest-configuration", "--ingest-protocol", "RTMPS", "--stage-arn", stage["arn"],
             "--name", "cli-encoder", "--user-id", "obs", "--attributes", "role=host",
             "--tags", "team=video")["ingestConfiguration"]
    assert arn_re("ingest-configuration").fullmatch(ic["arn"])
    assert (ic["ingestProtocol"], ic["stageArn"], ic["userId"], ic["state"]) == ("RTMPS", stage["arn"], "obs", "INACTIVE")
    assert ic["attributes"] == {"role": "host"} and ic["tags"] == {"team": "video"}
    assert cli("get-ingest-configuration", "--arn", ic["arn"])["ingestConfiguration"] == ic
    listed = cli("list-ingest-configurations", "--filter-by-stage-arn", stage["arn"],
                 "--filter-by-state", "INACTIVE")["ingestConfigurations"]
    assert [x["arn"] for x in listed] == [ic["arn"]]
    updated = cli("update-ingest-configuration", "--arn", ic["arn"], "--stage-arn", "")["ingestConfiguration"]
    assert updated["stageArn"] == ""
    p = cli("create-ingest-configuration", "--ingest-protocol", "SRT", expect_ok=False)
    assert p.returncode != 0 and ("ingestProtocol" in p.stderr or "ingest-protocol" in p.stderr)
    cli("delete-ingest-configuration", "--arn", ic["arn"], "--force")
    p = cli("get-ingest-configuration", "--arn", ic["arn"], expect_ok=False)
    assert p.returncode != 0 and "ResourceNotFoundException" in p.stderr
    cli("delete-stage", "--arn", stage["arn"])
