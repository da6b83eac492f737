"""Participant-data operations on stages without any media: input validation,
honest empty lists, ResourceNotFound for Get*/Disconnect, and the replication
preconditions that can be triggered without a publisher. Also the operations
that are not built yet (501)."""

import pytest

from helpers import (DEV, SESSION_ID, assert_error, call, client_error, resource_id)

UNKNOWN_STAGE = f"arn:aws:ivs:us-east-1:{DEV.account_id}:stage/Zz0000000005"


@pytest.fixture
def two_stages(ivs):
    a = ivs.create_stage(name="src")["stage"]
    b = ivs.create_stage(name="dst")["stage"]
    yield a, b
    for s in (a, b):
        try:
            ivs.delete_stage(arn=s["arn"])
        except ivs.exceptions.ResourceNotFoundException:
            pass


# --- sessions ---------------------------------------------------------------------------
def test_list_stage_sessions_empty(ivs, stage):
    resp = ivs.list_stage_sessions(stageArn=stage["arn"])
    assert resp["stageSessions"] == []
    assert "nextToken" not in resp


def test_list_stage_sessions_unknown_stage_is_empty(ivs):
    assert ivs.list_stage_sessions(stageArn=UNKNOWN_STAGE)["stageSessions"] == []


def test_list_stage_sessions_validation(ivs, stage):
    with client_error("ValidationException", "stageArn"):
        ivs.list_stage_sessions()
    with client_error("ValidationException", "stageArn"):
        ivs.list_stage_sessions(stageArn="arn:aws:ivs:us-east-1:000000000000:stage")
    with client_error("ValidationException", "maxResults"):
        ivs.list_stage_sessions(stageArn=stage["arn"], maxResults=0)
    with client_error("ValidationException", "maxResults"):
        ivs.list_stage_sessions(stageArn=stage["arn"], maxResults=101)


def test_get_stage_session_not_found(ivs, stage):
    with client_error("ResourceNotFoundException", SESSION_ID):
        ivs.get_stage_session(stageArn=stage["arn"], sessionId=SESSION_ID)
    with client_error("ResourceNotFoundException"):
        ivs.get_stage_session(stageArn=UNKNOWN_STAGE, sessionId=SESSION_ID)


@pytest.mark.parametrize("sid", ["st-short", "st-AAAAAAAAAAAAAA", "xx-AAAAAAAAAAAAA", "st-AAAAAAAAAAAA!", ""])
def test_session_id_validation(ivs, stage, sid):
    with client_error("ValidationException", "sessionId"):
        ivs.get_stage_session(stageArn=stage["arn"], sessionId=sid)
    with client_error("ValidationException", "sessionId"):
        ivs.list_participants(stageArn=stage["arn"], sessionId=sid)


# --- participants -----------------------------------------------------------------------
def test_get_participant_not_found(ivs, stage):
    with client_error("ResourceNotFoundException"):
        ivs.get_participant(stageArn=stage["arn"], sessionId=SESSION_ID, participantId="abcdefabcdef")


def test_get_participant_validation(ivs, stage):
    with client_error("ValidationException", "participantId"):
        ivs.get_participant(stageArn=stage["arn"], sessionId=SESSION_ID, participantId="not valid!")
    with client_error("ValidationException", "participantId"):
        ivs.get_participant(stageArn=stage["arn"], sessionId=SESSION_ID, participantId="p" * 65)
    with client_error("ValidationException", "participantId"):
        ivs.get_participant(stageArn=stage["arn"], sessionId=SESSION_ID)


def test_list_participants_empty(ivs, stage):
    resp = ivs.list_participants(stageArn=stage["arn"], sessionId=SESSION_ID)
    assert resp["participants"] == []
    assert ivs.list_participants(stageArn=UNKNOWN_STAGE, sessionId=SESSION_ID)["participants"] == []
    for f in [{"filterByUserId": "u"}, {"filterByPublished": True}, {"filterByState": "CONNECTED"},
              {"filterByRecordingState": "ACTIVE"}]:
        assert ivs.list_participants(stageArn=stage["arn"], sessionId=SESSION_ID, **f)["participants"] == []


@pytest.mark.parametrize("filters", [
    {"filterByUserId": "u", "filterByPublished": True},
    {"filterByState": "CONNECTED", "filterByPublished": False},
    {"filterByRecordingState": "ACTIVE", "filterByUserId": "u"},
    {"filterByState": "DISCONNECTED", "filterByRecordingState": "STOPPED", "filterByUserId": "x"},
])
def test_list_participants_two_filters_refused(ivs, stage, filters):
    with client_error("ValidationException", "filter"):
        ivs.list_participants(stageArn=stage["arn"], sessionId=SESSION_ID, **filters)


def test_list_participants_enum_and_range(ivs, stage):
    with client_error("ValidationException", "filterByState"):
        ivs.list_participants(stageArn=stage["arn"], sessionId=SESSION_ID, filterByState="ONLINE")
    with client_error("ValidationException", "filterByRecordingState"):
        ivs.list_participants(stageArn=stage["arn"], sessionId=SESSION_ID, filterByRecordingState="DISABLED")
    with client_error("ValidationException", "maxResults"):
        ivs.list_participants(stageArn=stage["arn"], sessionId=SESSION_ID, maxResults=101)


def test_list_participants_wrong_type(server, stage):
    r = call(server, "ListParticipants", {"stageArn": stage["arn"], "sessionId": SESSION_ID, "filterByPublished": "yes"})
    assert_error(r, "SerializationException", "filterByPublished")


def test_list_participant_events_empty(ivs, stage):
    resp = ivs.list_participant_events(stageArn=stage["arn"], sessionId=SESSION_ID, participantId="abcdefabcdef")
    assert resp["events"] == []
    assert ivs.list_participant_events(stageArn=UNKNOWN_STAGE, sessionId=SESSION_ID,
                                       participantId="abcdefabcdef")["events"] == []
    with client_error("ValidationException", "participantId"):
        ivs.list_participant_events(stageArn=stage["arn"], sessionId=SESSION_ID)
    with client_error("ValidationException", "maxResults"):
        ivs.list_participant_events(stageArn=stage["arn"], sessionId=SESSION_ID, participantId="p", maxResults=0)


def test_disconnect_participant_not_found(ivs, stage):
    with client_error("ResourceNotFoundException", "abcdefabcdef"):
        ivs.disconnect_participant(stageArn=stage["arn"], participantId="abcdefabcdef", reason="bye")
    with client_error("ResourceNotFoundException"):
        ivs.disconnect_participant(stageArn=UNKNOWN_STAGE, participantId="abcdefabcdef")


def test_disconnect_participant_with_issued_token_but_never_joined(ivs, stage):
    pid = ivs.create_participant_token(stageArn=stage["arn"])["participantToken"]["participantId"]
    with client_error("ResourceNotFoundException", pid):
        ivs.disconnect_participant(stageArn=stage["arn"], participantId=pid)


def test_disconnect_participant_validation(ivs, stage):
    with client_error("ValidationException", "reason"):
        ivs.disconnect_participant(stageArn=stage["arn"], participantId="abc", reason="r" * 129)
    with client_error("ValidationException", "participantId"):
        ivs.disconnect_participant(stageArn=stage["arn"], participantId="a b")


# --- replication ----------------------------------------------------------------------------
def test_start_replication_source_equals_destination(ivs, stage):
    with client_error("ValidationException"):
        ivs.start_participant_replication(sourceStageArn=stage["arn"], destinationStageArn=stage["arn"],
                                          participantId="abcdefabcdef")


def test_start_replication_unknown_stages(ivs, stage):
    with client_error("ResourceNotFoundException", "Zz0000000005"):
        ivs.start_participant_replication(sourceStageArn=UNKNOWN_STAGE, destinationStageArn=stage["arn"],
                                          participantId="abcdefabcdef")
    with client_error("ResourceNotFoundException", "Zz0000000005"):
        ivs.start_participant_replication(sourceStageArn=stage["arn"], destinationStageArn=UNKNOWN_STAGE,
                                          participantId="abcdefabcdef")


def test_start_replication_not_publishing_conflicts(ivs, two_stages):
    src, dst = two_stages
    pid = ivs.create_participant_token(stageArn=src["arn"])["participantToken"]["participantId"]
    with client_error("ConflictException", pid, resource_id(src["arn"])):
        ivs.start_participant_replication(sourceStageArn=src["arn"], destinationStageArn=dst["arn"], participantId=pid)
    assert ivs.list_participant_replicas(sourceStageArn=src["arn"], participantId=pid)["replicas"] == []


def test_start_replication_validation(ivs, two_stages):
    src, dst = two_stages
    with client_error("ValidationException", "reconnectWindowSeconds"):
        ivs.start_participant_replication(sourceStageArn=src["arn"], destinationStageArn=dst["arn"],
                                          participantId="abcdefabcdef", reconnectWindowSeconds=301)
    with client_error("ValidationException", "reconnectWindowSeconds"):
        ivs.start_participant_replication(sourceStageArn=src["arn"], destinationStageArn=dst["arn"],
                                          participantId="abcdefabcdef", reconnectWindowSeconds=-1)
    with client_error("ValidationException", "destinationStageArn"):
        ivs.start_participant_replication(sourceStageArn=src["arn"], participantId="abcdefabcdef")
    with client_error("ValidationException", "attributes"):
        ivs.start_participant_replication(sourceStageArn=src["arn"], destinationStageArn=dst["arn"],
                                          participantId="abcdefabcdef", attributes={"k": "v" * 1024})


def test_validation_comes_before_existence(ivs):
    # source == destination is checked before whether the stage exists
    with client_error("ValidationException"):
        ivs.start_participant_replication(sourceStageArn=UNKNOWN_STAGE, destinationStageArn=UNKNOWN_STAGE,
                                          participantId="abcdefabcdef")


def test_stop_replication_unknown_triple(ivs, two_stages):
    src, dst = two_stages
    with client_error("ResourceNotFoundException"):
        ivs.stop_participant_replication(sourceStageArn=src["arn"], destinationStageArn=dst["arn"],
                                         participantId="abcdefabcdef")
    with client_error("ResourceNotFoundException"):
        ivs.stop_participant_replication(sourceStageArn=UNKNOWN_STAGE, destinationStageArn=dst["arn"],
                                         participantId="abcdefabcdef")


def test_list_participant_replicas_empty(ivs, stage):
    resp = ivs.list_participant_replicas(sourceStageArn=stage["arn"], participantId="abcdefabcdef")
    assert resp["replicas"] == []
    assert ivs.list_participant_replicas(sourceStageArn=UNKNOWN_STAGE, participantId="x")["replicas"] == []
    pages = list(ivs.get_paginator("list_participant_replicas").paginate(sourceStageArn=stage["arn"],
                                                                         participantId="abcdefabcdef"))
    assert [p["replicas"] for p in pages] == [[]]


def test_list_participant_replicas_validation(ivs, stage):
    ivs.list_participant_replicas(sourceStageArn=stage["arn"], participantId="p", maxResults=50)
    with client_error("ValidationException", "maxResults"):
        ivs.list_participant_replicas(sourceStageArn=stage["arn"], participantId="p", maxResults=51)
    with client_error("ValidationException", "sourceStageArn"):
        ivs.list_participant_replicas(participantId="p")


def test_replication_response_headers_on_error(server, stage):
    r = call(server, "StartParticipantReplication", {"sourceStageArn": stage["arn"], "destinationStageArn": stage["arn"],
                                                     "participantId": "abcdefabcdef"})
    assert_error(r, "ValidationException")


# --- not built yet -------------------------------------------------------------------------------
NOT_IMPLEMENTED = [
    ("StartComposition", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef",
                          "destinations": [{"channel": {"channelArn": "arn:aws:ivs:us-east-1:000000000000:channel/abcdefabcdef"}}]}),
    ("ListCompositions", {}),
    ("GetComposition", {"arn": "arn:aws:ivs:us-east-1:000000000000:composition/abcdefabcdef"}),
    ("StopComposition", {"arn": "arn:aws:ivs:us-east-1:000000000000:composition/abcdefabcdef"}),
]


@pytest.mark.parametrize("op,payload", NOT_IMPLEMENTED, ids=[o for o, _ in NOT_IMPLEMENTED])
def test_not_implemented_raw(server, op, payload):
    r = call(server, op, payload)
    body = assert_error(r, "NotImplementedException", status=501)
    assert "not implemented" in body["message"].lower(), body


def test_not_implemented_boto3(ivs):
    with client_error("NotImplementedException", status=501):
        ivs.list_compositions()


# --- RevokeConnectionToken (BEHAVIOUR §5.7; its effect on live connections: media/test_ivs_client_forms.py)
def test_revoke_connection_token_validates_token_id_and_succeeds_for_any_id(ivs):
    assert ivs.revoke_connection_token(tokenId="never-issued_1")["ResponseMetadata"]["HTTPStatusCode"] == 200
    for bad in ("has space", "x" * 65):
        with client_error("ValidationException", "tokenId", status=400):
            ivs.revoke_connection_token(tokenId=bad)
