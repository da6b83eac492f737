"""Ingest configurations (BEHAVIOUR §10): the five operations, their constraints,
persistence across a restart, account isolation, filters and pagination, and what
DeleteStage does to them. Streams through them: media/test_ingest_media.py."""

import re

import pytest

from helpers import DEV, SECOND, arn_re, assert_error, call, client_error

STREAM_KEY = re.compile(r"rt_[0-9]+_[a-z0-9-]+_[a-zA-Z0-9-]+_.+")


def test_ingest_configuration_lifecycle(fresh_account):
    c, acct = fresh_account.client, fresh_account.creds.account_id
    stage = c.create_stage(name="ingest-target")["stage"]
    assert c.list_ingest_configurations()["ingestConfigurations"] == []
    ic = c.create_ingest_configuration(
        name="studio-obs", stageArn=stage["arn"], userId="studio", attributes={"camera": "a"},
        ingestProtocol="RTMPS", tags={"team": "video"})["ingestConfiguration"]
    assert arn_re("ingest-configuration", account=acct).fullmatch(ic["arn"]), ic["arn"]
    assert ic["name"] == "studio-obs"
    assert ic["ingestProtocol"] == "RTMPS"
    assert ic["stageArn"] == stage["arn"]
    assert ic["userId"] == "studio"
    assert ic["attributes"] == {"camera": "a"}
    assert ic["tags"] == {"team": "video"}
    assert ic["state"] == "INACTIVE"
    assert re.fullmatch(r"[a-zA-Z0-9-]{1,64}", ic["participantId"])
    assert STREAM_KEY.fullmatch(ic["streamKey"]), ic["streamKey"]
    # The key names its own configuration: rt_{account}_{region}_{id}_{secret}.
    assert ic["streamKey"].startswith(f"rt_{acct}_us-east-1_{ic['arn'].rsplit('/', 1)[1]}_")

    assert c.get_ingest_configuration(arn=ic["arn"])["ingestConfiguration"] == ic
    listed = c.list_ingest_configurations()["ingestConfigurations"]
    assert listed == [{k: ic[k] for k in ("arn", "name", "ingestProtocol", "stageArn", "participantId",
                                          "state", "userId", "redundantIngest")}]
    assert "streamKey" not in listed[0]

    # Update moves it between stages, or to none with "".
    other = c.create_stage(name="other")["stage"]
    moved = c.update_ingest_configuration(arn=ic["arn"], stageArn=other["arn"])["ingestConfiguration"]
    assert moved["stageArn"] == other["arn"]
    assert moved["streamKey"] == ic["streamKey"] and moved["participantId"] == ic["participantId"]
    detached = c.update_ingest_configuration(arn=ic["arn"], stageArn="")["ingestConfiguration"]
    assert detached["stageArn"] == ""
    # Without stageArn, Update changes nothing.
    assert c.update_ingest_configuration(arn=ic["arn"])["ingestConfiguration"]["stageArn"] == ""

    c.delete_ingest_configuration(arn=ic["arn"])
    with client_error("ResourceNotFoundException"):
        c.get_ingest_configuration(arn=ic["arn"])
    with client_error("ResourceNotFoundException"):
        c.delete_ingest_configuration(arn=ic["arn"])
    with client_error("ResourceNotFoundException"):
        c.update_ingest_configuration(arn=ic["arn"], stageArn="")
    assert c.list_ingest_configurations()["ingestConfigurations"] == []


def test_defaults_and_distinct_keys(ivs):
    a = ivs.create_ingest_configuration(ingestProtocol="RTMP")["ingestConfiguration"]
    b = ivs.create_ingest_configuration(ingestProtocol="RTMP")["ingestConfiguration"]
    try:
        assert a["name"] == "" and a["stageArn"] == "" and a["state"] == "INACTIVE"
        assert a["attributes"] == {} and a["tags"] == {}
        assert "userId" not in a
        assert a["redundantIngest"] is False
        assert a["streamKey"] != b["streamKey"] and a["participantId"] != b["participantId"]
    finally:
        ivs.delete_ingest_configuration(arn=a["arn"])
        ivs.delete_ingest_configuration(arn=b["arn"])


@pytest.mark.parametrize("payload,field", [
    ({}, "ingestProtocol"),
    ({"ingestProtocol": "SRT"}, "ingestProtocol"),
    ({"ingestProtocol": "RTMP", "name": "has space"}, "name"),
    ({"ingestProtocol": "RTMP", "name": "n" * 129}, "name"),
    ({"ingestProtocol": "RTMP", "userId": "u" * 129}, "userId"),
    ({"ingestProtocol": "RTMP", "stageArn": "arn:aws:ivs:us-east-1:000000000000:channel/abc"}, "stageArn"),
    ({"ingestProtocol": "RTMP", "attributes": {"k": "v" * 1100}}, "attributes"),
    ({"ingestProtocol": "RTMP", "redundantIngest": True}, "redundantIngest"),
    ({"ingestProtocol": "RTMP", "tags": {f"k{i}": "v" for i in range(51)}}, "tags"),
    ({"ingestProtocol": "RTMP", "tags": {"aws:reserved": "v"}}, "tags"),
])
def test_create_validation_names_the_field(server, ivs, payload, field):
    before = len(ivs.list_ingest_configurations(maxResults=100)["ingestConfigurations"])
    r = call(server, "CreateIngestConfiguration", payload)
    assert_error(r, "ValidationException", field, status=400)
    assert len(ivs.list_ingest_configurations(maxResults=100)["ingestConfigurations"]) == before


def test_a_wrongly_typed_member_is_named(server):
    r = call(server, "CreateIngestConfiguration", {"ingestProtocol": "RTMP", "insecureIngest": "yes"})
    assert_error(r, "SerializationException", "insecureIngest", status=400)


def test_stage_must_exist_in_the_callers_account(ivs, ivs2):
    foreign = ivs2.create_stage(name="foreign")["stage"]
    try:
        with client_error("ResourceNotFoundException", "stage"):
            ivs.create_ingest_configuration(ingestProtocol="RTMP", stageArn=foreign["arn"])
        with client_error("ResourceNotFoundException", "stage"):
            ivs.create_ingest_configuration(
                ingestProtocol="RTMP", stageArn="arn:aws:ivs:us-east-1:000000000000:stage/doesnotexist")
    finally:
        ivs2.delete_stage(arn=foreign["arn"])


def test_account_isolation(ivs, ivs2):
    mine = ivs.create_ingest_configuration(ingestProtocol="RTMPS", name="mine")["ingestConfiguration"]
    try:
        assert mine["arn"] not in [x["arn"] for x in ivs2.list_ingest_configurations()["ingestConfigurations"]]
        with client_error("ResourceNotFoundException"):
            ivs2.get_ingest_configuration(arn=mine["arn"])
        with client_error("ResourceNotFoundException"):
            ivs2.update_ingest_configuration(arn=mine["arn"], stageArn="")
        with client_error("ResourceNotFoundException"):
            ivs2.delete_ingest_configuration(arn=mine["arn"])
        assert ivs.get_ingest_configuration(arn=mine["arn"])["ingestConfiguration"]["name"] == "mine"
    finally:
        ivs.delete_ingest_configuration(arn=mine["arn"])


def test_filters_and_pagination(fresh_account):
    c = fresh_account.client
    s1 = c.create_stage(name="s1")["stage"]["arn"]
    s2 = c.create_stage(name="s2")["stage"]["arn"]
    on1 = [c.create_ingest_configuration(ingestProtocol="RTMP", stageArn=s1, name=f"a{i}")
           ["ingestConfiguration"]["arn"] for i in range(3)]
    on2 = c.create_ingest_configuration(ingestProtocol="RTMP", stageArn=s2)["ingestConfiguration"]["arn"]
    loose = c.create_ingest_configuration(ingestProtocol="RTMP")["ingestConfiguration"]["arn"]

    def all_pages(**kw):
        arns, token, pages = [], None, 0
        while True:
            resp = c.list_ingest_configurations(maxResults=2, **kw, **({"nextToken": token} if token else {}))
            assert len(resp["ingestConfigurations"]) <= 2
            arns += [x["arn"] for x in resp["ingestConfigurations"]]
            pages += 1
            token = resp.get("nextToken")
            if not token:
                return arns, pages

    assert all_pages() == (on1 + [on2, loose], 3)
    assert all_pages(filterByStageArn=s1) == (on1, 2)
    assert all_pages(filterByStageArn=s2)[0] == [on2]
    assert all_pages(filterByState="INACTIVE")[0] == on1 + [on2, loose]
    assert all_pages(filterByState="ACTIVE")[0] == []
    assert all_pages(filterByStageArn=s1, filterByState="ACTIVE")[0] == []
    with client_error("ValidationException", "filterByState"):
        c.list_ingest_configurations(filterByState="LIVE")
    with client_error("ValidationException", "filterByStageArn"):
        c.list_ingest_configurations(filterByStageArn="not-an-arn")
    with client_error("ValidationException", "maxResults"):
        c.list_ingest_configurations(maxResults=0)
    paginator = c.get_paginator("list_ingest_configurations")
    got = [x["arn"] for page in paginator.paginate(PaginationConfig={"PageSize": 2})
           for x in page["ingestConfigurations"]]
    assert got == on1 + [on2, loose]


def test_delete_stage_clears_the_stage_of_its_configurations(ivs):
    stage = ivs.create_stage(name="to-delete")["stage"]
    ic = ivs.create_ingest_configuration(ingestProtocol="RTMPS", stageArn=stage["arn"])["ingestConfiguration"]
    try:
        ivs.delete_stage(arn=stage["arn"])
        got = ivs.get_ingest_configuration(arn=ic["arn"])["ingestConfiguration"]
        assert got["stageArn"] == ""
        assert got["streamKey"] == ic["streamKey"]
        with client_error("ResourceNotFoundException"):
            ivs.update_ingest_configuration(arn=ic["arn"], stageArn=stage["arn"])
    finally:
        ivs.delete_ingest_configuration(arn=ic["arn"])


def test_tags_on_an_ingest_configuration(ivs):
    ic = ivs.create_ingest_configuration(ingestProtocol="RTMP", tags={"a": "1"})["ingestConfiguration"]
    try:
        ivs.tag_resource(resourceArn=ic["arn"], tags={"b": "2"})
        ivs.untag_resource(resourceArn=ic["arn"], tagKeys=["a"])
        assert ivs.list_tags_for_resource(resourceArn=ic["arn"])["tags"] == {"b": "2"}
        assert ivs.get_ingest_configuration(arn=ic["arn"])["ingestConfiguration"]["tags"] == {"b": "2"}
    finally:
        ivs.delete_ingest_configuration(arn=ic["arn"])


def test_survives_a_restart(server_factory):
    s = server_factory()
    c = s.client(DEV)
    stage = c.create_stage(name="kept")["stage"]
    ic = c.create_ingest_configuration(ingestProtocol="RTMP", stageArn=stage["arn"], userId="u",
                                       insecureIngest=True)["ingestConfiguration"]
    s.stop()
    s.start()
    assert s.client(DEV).get_ingest_configuration(arn=ic["arn"])["ingestConfiguration"] == ic
