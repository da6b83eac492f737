"""CreateStage, GetStage, UpdateStage, DeleteStage, ListStages through boto3."""

import pytest

from helpers import (DEV, ID, arn_re, client_error, resource_id, verify_token, call, assert_error,
                     assert_seven_headers)


def test_create_stage_minimal(ivs, server):
    resp = ivs.create_stage()
    stage = resp["stage"]
    try:
        assert arn_re("stage").fullmatch(stage["arn"]), stage["arn"]
        assert stage["endpoints"]["whip"] == f"{server.url}/whip"
        assert stage["endpoints"]["events"] == f"ws://{server.host}/events"
        assert "activeSessionId" not in stage, "an idle stage has no active session"
        assert resp.get("participantTokens", []) == []
        assert_seven_headers(resp["ResponseMetadata"]["HTTPHeaders"])
    finally:
        ivs.delete_stage(arn=stage["arn"])


def test_create_stage_full_and_get(ivs, server):
    sc = ivs.create_storage_configuration(name="rec", s3={"bucketName": "my-recordings"})["storageConfiguration"]
    resp = ivs.create_stage(
        name="full-Stage_1",
        tags={"team": "video", "env": ""},
        autoParticipantRecordingConfiguration={"storageConfigurationArn": sc["arn"]},
    )
    stage = resp["stage"]
    try:
        assert stage["name"] == "full-Stage_1"
        assert stage["tags"] == {"team": "video", "env": ""}
        assert stage["autoParticipantRecordingConfiguration"]["storageConfigurationArn"] == sc["arn"]
        got = ivs.get_stage(arn=stage["arn"])["stage"]
        assert got["arn"] == stage["arn"]
        assert got["name"] == "full-Stage_1"
        assert got["tags"] == {"team": "video", "env": ""}
        assert got["endpoints"] == stage["endpoints"]
        assert got["autoParticipantRecordingConfiguration"]["storageConfigurationArn"] == sc["arn"]
        assert "activeSessionId" not in got
    finally:
        ivs.delete_stage(arn=stage["arn"])
        ivs.delete_storage_configuration(arn=sc["arn"])


def test_create_stage_with_token_configurations_in_request_order(ivs, server):
    configs = []
    for i in range(12):
        c = {"userId": f"user-{i}", "duration": 10 + i}
        if i % 3 == 0:
            c["capabilities"] = ["SUBSCRIBE"]
        elif i % 3 == 1:
            c["capabilities"] = []
        if i == 5:
            c["attributes"] = {"seat": "5"}
        configs.append(c)
    resp = ivs.create_stage(name="twelve", participantTokenConfigurations=configs)
    stage = resp["stage"]
    try:
        tokens = resp["participantTokens"]
        assert [t["userId"] for t in tokens] == [f"user-{i}" for i in range(12)]
        assert [t["duration"] for t in tokens] == [10 + i for i in range(12)]
        assert len({t["participantId"] for t in tokens}) == 12
        for i, t in enumerate(tokens):
            want_caps = {0: ["SUBSCRIBE"], 1: [], 2: ["PUBLISH", "SUBSCRIBE"]}[i % 3]
            assert sorted(t["capabilities"]) == want_caps, (i, t["capabilities"])
            claims = verify_token(server, t["token"])
            assert claims["jti"] == t["participantId"]
            assert claims["resource"] == stage["arn"]
            assert claims["user_id"] == f"user-{i}"
            assert claims["exp"] - claims["iat"] == (10 + i) * 60
            if i == 5:
                assert t["attributes"] == {"seat": "5"}
                assert claims["attributes"] == {"seat": "5"}
    finally:
        ivs.delete_stage(arn=stage["arn"])


def test_create_stage_thirteen_token_configurations_refused(ivs, server):
    before = {s["arn"] for s in ivs.list_stages(maxResults=100)["stages"]}
    with client_error("ValidationException", "participantTokenConfigurations"):
        ivs.create_stage(name="thirteen", participantTokenConfigurations=[{"userId": str(i)} for i in range(13)])
    after = {s["arn"] for s in ivs.list_stages(maxResults=100)["stages"]}
    assert after == before, "a refused CreateStage must change nothing"


def test_create_stage_unknown_storage_configuration(ivs):
    missing = f"arn:aws:ivs:us-east-1:{DEV.account_id}:storage-configuration/AbCdEfGhIjKl"
    with client_error("ValidationException", "AbCdEfGhIjKl"):
        ivs.create_stage(name="norec", autoParticipantRecordingConfiguration={"storageConfigurationArn": missing})


def test_create_stage_name_constraints(ivs):
    ok = ivs.create_stage(name="a" * 128)["stage"]
    ivs.delete_stage(arn=ok["arn"])
    for good in ("a-b_c", "-", "_", "0123", ""):
        made = ivs.create_stage(name=good)["stage"]
        assert made["name"] == good
        ivs.delete_stage(arn=made["arn"])
    with client_error("ValidationException", "name"):
        ivs.create_stage(name="a" * 129)
    with client_error("ValidationException", "name"):
        ivs.create_stage(name="ok name")
    with client_error("ValidationException", "name"):
        ivs.create_stage(name="trailing-newline\n")
    with client_error("ValidationException", "name"):
        ivs.create_stage(name="dot.not.allowed")


def test_create_stage_tag_constraints(ivs):
    with client_error("ValidationException", "tags"):
        ivs.create_stage(name="toomanytags", tags={f"k{i}": "v" for i in range(51)})
    with client_error("ValidationException", "aws:"):
        ivs.create_stage(name="awstag", tags={"aws:reserved": "x"})
    with client_error("ValidationException", "tags"):
        ivs.create_stage(name="longkey", tags={"k" * 129: "v"})
    with client_error("ValidationException", "tags"):
        ivs.create_stage(name="longvalue", tags={"k": "v" * 257})
    s = ivs.create_stage(name="fiftytags", tags={f"k{i}": "v" * 256 for i in range(50)})["stage"]
    assert len(s["tags"]) == 50
    ivs.delete_stage(arn=s["arn"])


def test_get_stage_unknown(ivs):
    arn = f"arn:aws:ivs:us-east-1:{DEV.account_id}:stage/Zz0000000000"
    with client_error("ResourceNotFoundException", "Zz0000000000"):
        ivs.get_stage(arn=arn)


def test_get_stage_malformed_arn(ivs):
    with client_error("ValidationException", "arn"):
        ivs.get_stage(arn="arn:aws:ivs:us-east-1:000000000000:channel/abcdefabcdef")
    with client_error("ValidationException", "arn"):
        ivs.get_stage(arn="not-an-arn")
    with client_error("ValidationException", "arn"):
        ivs.get_stage(arn="")


def test_update_stage(ivs, stage):
    got = ivs.update_stage(arn=stage["arn"], name="renamed")["stage"]
    assert got["name"] == "renamed"
    assert got["arn"] == stage["arn"]
    assert got["endpoints"] == stage["endpoints"]
    assert ivs.get_stage(arn=stage["arn"])["stage"]["name"] == "renamed"
    listed = [s for s in ivs.list_stages(maxResults=100)["stages"] if s["arn"] == stage["arn"]]
    assert listed and listed[0]["name"] == "renamed"


def test_update_stage_keeps_tags_and_unset_fields(ivs):
    s = ivs.create_stage(name="keep", tags={"a": "1"})["stage"]
    try:
        got = ivs.update_stage(arn=s["arn"])["stage"]
        assert got["name"] == "keep", "an UpdateStage without name must not clear it"
        assert got["tags"] == {"a": "1"}
    finally:
        ivs.delete_stage(arn=s["arn"])


def test_update_stage_recording_configuration(ivs, stage):
    sc = ivs.create_storage_configuration(s3={"bucketName": "bucket-upd"})["storageConfiguration"]
    try:
        got = ivs.update_stage(arn=stage["arn"],
                               autoParticipantRecordingConfiguration={"storageConfigurationArn": sc["arn"]})["stage"]
        assert got["autoParticipantRecordingConfiguration"]["storageConfigurationArn"] == sc["arn"]
        missing = f"arn:aws:ivs:us-east-1:{DEV.account_id}:storage-configuration/MissingMissi"
        with client_error("ValidationException", "MissingMissi"):
            ivs.update_stage(arn=stage["arn"], autoParticipantRecordingConfiguration={"storageConfigurationArn": missing})
        # the refused update changed nothing
        still = ivs.get_stage(arn=stage["arn"])["stage"]
        assert still["autoParticipantRecordingConfiguration"]["storageConfigurationArn"] == sc["arn"]
        # "" turns participant recording off (the model's documented way)
        off = ivs.update_stage(arn=stage["arn"], autoParticipantRecordingConfiguration={"storageConfigurationArn": ""})
        assert off["stage"].get("autoParticipantRecordingConfiguration", {}).get("storageConfigurationArn", "") == ""
        ivs.delete_storage_configuration(arn=sc["arn"])
        sc = None
    finally:
        if sc:
            ivs.update_stage(arn=stage["arn"], autoParticipantRecordingConfiguration={"storageConfigurationArn": ""})
            ivs.delete_storage_configuration(arn=sc["arn"])


def test_update_stage_unknown_and_invalid(ivs):
    with client_error("ResourceNotFoundException", "Zz0000000001"):
        ivs.update_stage(arn=f"arn:aws:ivs:us-east-1:{DEV.account_id}:stage/Zz0000000001", name="x")
    with client_error("ValidationException", "arn"):
        ivs.update_stage(name="x")
    s = ivs.create_stage(name="valid")["stage"]
    try:
        with client_error("ValidationException", "name"):
            ivs.update_stage(arn=s["arn"], name="bad name!")
        assert ivs.get_stage(arn=s["arn"])["stage"]["name"] == "valid"
    finally:
        ivs.delete_stage(arn=s["arn"])


def test_delete_stage(ivs):
    s = ivs.create_stage(name="doomed")["stage"]
    resp = ivs.delete_stage(arn=s["arn"])
    assert resp["ResponseMetadata"]["HTTPStatusCode"] == 200
    with client_error("ResourceNotFoundException"):
        ivs.get_stage(arn=s["arn"])
    with client_error("ResourceNotFoundException"):
        ivs.delete_stage(arn=s["arn"])
    with client_error("ResourceNotFoundException"):
        ivs.create_participant_token(stageArn=s["arn"])
    assert s["arn"] not in {x["arn"] for x in ivs.list_stages(maxResults=100)["stages"]}


def test_list_stages(fresh_account):
    c = fresh_account.client
    assert c.list_stages()["stages"] == []
    made = [c.create_stage(name=f"ls-{i}", tags={"i": str(i)})["stage"] for i in range(3)]
    listed = c.list_stages()["stages"]
    assert "nextToken" not in c.list_stages()
    by_arn = {s["arn"]: s for s in listed}
    assert set(by_arn) == {s["arn"] for s in made}
    for s in made:
        assert by_arn[s["arn"]]["name"] == s["name"]
        assert by_arn[s["arn"]]["tags"] == s["tags"]
        assert "activeSessionId" not in by_arn[s["arn"]]


def test_stage_ids_are_twelve_alphanumerics_and_unique(ivs):
    arns = [ivs.create_stage()["stage"]["arn"] for _ in range(10)]
    try:
        ids = [resource_id(a) for a in arns]
        assert len(set(ids)) == 10
        for i in ids:
            assert __import__("re").fullmatch(ID, i), i
    finally:
        for a in arns:
            ivs.delete_stage(arn=a)


def test_unknown_members_are_ignored(server):
    r = call(server, "CreateStage", {"name": "extra-members", "somethingNew": {"x": 1}, "another": [1, 2]})
    assert r.status_code == 200, r.text
    arn = r.json()["stage"]["arn"]
    r = call(server, "DeleteStage", {"arn": arn})
    assert r.status_code == 200, r.text


def test_delete_stage_missing_arn(server):
    r = call(server, "DeleteStage", {})
    assert_error(r, "ValidationException", "arn")


def test_parallel_creates(fresh_account, server):
    import concurrent.futures as cf
    c = fresh_account.client
    with cf.ThreadPoolExecutor(max_workers=25) as pool:
        arns = list(pool.map(lambda i: c.create_stage(name=f"par-{i}")["stage"]["arn"], range(50)))
    assert len(set(arns)) == 50
    listed = {s["arn"]: s["name"] for s in c.list_stages(maxResults=100)["stages"]}
    assert set(listed) == set(arns)
    assert sorted(listed.values()) == sorted(f"par-{i}" for i in range(50))


@pytest.mark.parametrize("config,field", [
    ({}, "storageConfigurationArn"),
    ({"storageConfigurationArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef"}, "storageConfigurationArn"),
    ({"storageConfigurationArn": "", "mediaTypes": ["AUDIO_VIDEO", "AUDIO_ONLY"]}, "mediaTypes"),
    ({"storageConfigurationArn": "", "mediaTypes": ["VIDEO_ONLY"]}, "mediaTypes"),
    ({"storageConfigurationArn": "", "hlsConfiguration": {"targetSegmentDurationSeconds": 11}}, "targetSegmentDurationSeconds"),
    ({"storageConfigurationArn": "", "recordingReconnectWindowSeconds": 301}, "recordingReconnectWindowSeconds"),
    ({"storageConfigurationArn": "", "thumbnailConfiguration": {"recordingMode": "SOMETIMES"}}, "recordingMode"),
])
def test_recording_configuration_validation(ivs, config, field):
    with client_error("ValidationException", field):
        ivs.create_stage(name="badrec", autoParticipantRecordingConfiguration=config)


def test_endpoints_do_not_follow_the_host_header(server):
    """Endpoints derive from the configured public URL, never from the request's Host."""
    from helpers import signed_request
    r = signed_request(server, "POST", "/CreateStage", b'{"name":"hosty"}',
                       headers={"Content-Type": "application/json", "Host": "attacker.example:8443"})
    assert r.status_code == 200, r.text
    stage = r.json()["stage"]
    try:
        assert stage["endpoints"]["whip"] == f"{server.url}/whip"
        assert stage["endpoints"]["events"] == f"ws://{server.host}/events"
    finally:
        call(server, "DeleteStage", {"arn": stage["arn"]})
