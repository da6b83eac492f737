"""Account isolation: another account's resources answer as if they did not exist."""

import pytest

from helpers import SECOND, SESSION_ID, call, client_error, p384_pem, tags_path, signed_request, assert_error


@pytest.fixture
def owned(fresh_account):
    """A stage, a public key, and storage/encoder configurations of a fresh account."""
    c = fresh_account.client
    stage = c.create_stage(name="private", tags={"secret": "yes"})["stage"]
    key = c.import_public_key(publicKeyMaterial=p384_pem()[1], name="private-key")["publicKey"]
    sc = c.create_storage_configuration(s3={"bucketName": "private-bucket"})["storageConfiguration"]
    enc = c.create_encoder_configuration()["encoderConfiguration"]
    return c, stage, key, sc, enc


def test_other_account_cannot_see_stage(owned, ivs2):
    c, stage, *_ = owned
    arn = stage["arn"]
    with client_error("ResourceNotFoundException"):
        ivs2.get_stage(arn=arn)
    with client_error("ResourceNotFoundException"):
        ivs2.update_stage(arn=arn, name="hijacked")
    with client_error("ResourceNotFoundException"):
        ivs2.delete_stage(arn=arn)
    with client_error("ResourceNotFoundException"):
        ivs2.tag_resource(resourceArn=arn, tags={"owned": "by-me"})
    with client_error("ResourceNotFoundException"):
        ivs2.untag_resource(resourceArn=arn, tagKeys=["secret"])
    with client_error("ResourceNotFoundException"):
        ivs2.list_tags_for_resource(resourceArn=arn)
    with client_error("ResourceNotFoundException"):
        ivs2.create_participant_token(stageArn=arn)
    assert arn not in {s["arn"] for s in ivs2.list_stages(maxResults=100)["stages"]}
    # still intact for the owner
    got = c.get_stage(arn=arn)["stage"]
    assert got["name"] == "private" and got["tags"] == {"secret": "yes"}


def test_other_account_cannot_see_public_key(owned, ivs2):
    c, _, key, *_ = owned
    with client_error("ResourceNotFoundException"):
        ivs2.get_public_key(arn=key["arn"])
    with client_error("ResourceNotFoundException"):
        ivs2.delete_public_key(arn=key["arn"])
    with client_error("ResourceNotFoundException"):
        ivs2.tag_resource(resourceArn=key["arn"], tags={"a": "b"})
    with client_error("ResourceNotFoundException"):
        ivs2.list_tags_for_resource(resourceArn=key["arn"])
    assert key["arn"] not in {k["arn"] for k in ivs2.list_public_keys()["publicKeys"]}
    assert c.get_public_key(arn=key["arn"])["publicKey"]["name"] == "private-key"


def test_other_account_cannot_see_configurations(owned, ivs2):
    c, _, _, sc, enc = owned
    with client_error("ResourceNotFoundException"):
        ivs2.get_storage_configuration(arn=sc["arn"])
    with client_error("ResourceNotFoundException"):
        ivs2.delete_storage_configuration(arn=sc["arn"])
    with client_error("ResourceNotFoundException"):
        ivs2.get_encoder_configuration(arn=enc["arn"])
    with client_error("ResourceNotFoundException"):
        ivs2.delete_encoder_configuration(arn=enc["arn"])
    with client_error("ResourceNotFoundException"):
        ivs2.list_tags_for_resource(resourceArn=sc["arn"])
    assert sc["arn"] not in {x["arn"] for x in ivs2.list_storage_configurations()["storageConfigurations"]}
    assert enc["arn"] not in {x["arn"] for x in ivs2.list_encoder_configurations()["encoderConfigurations"]}
    # naming another account's storage configuration is naming one that does not exist
    with client_error("ValidationException"):
        ivs2.create_stage(autoParticipantRecordingConfiguration={"storageConfigurationArn": sc["arn"]})
    c.get_storage_configuration(arn=sc["arn"])
    c.get_encoder_configuration(arn=enc["arn"])


def test_other_account_participant_data_is_empty_or_not_found(owned, ivs2):
    _, stage, *_ = owned
    arn = stage["arn"]
    assert ivs2.list_stage_sessions(stageArn=arn)["stageSessions"] == []
    assert ivs2.list_participants(stageArn=arn, sessionId=SESSION_ID)["participants"] == []
    assert ivs2.list_participant_events(stageArn=arn, sessionId=SESSION_ID, participantId="p")["events"] == []
    assert ivs2.list_participant_replicas(sourceStageArn=arn, participantId="p")["replicas"] == []
    with client_error("ResourceNotFoundException"):
        ivs2.get_stage_session(stageArn=arn, sessionId=SESSION_ID)
    with client_error("ResourceNotFoundException"):
        ivs2.disconnect_participant(stageArn=arn, participantId="p")
    mine = ivs2.create_stage(name="mine")["stage"]
    try:
        with client_error("ResourceNotFoundException"):
            ivs2.start_participant_replication(sourceStageArn=arn, destinationStageArn=mine["arn"], participantId="p")
        with client_error("ResourceNotFoundException"):
            ivs2.start_participant_replication(sourceStageArn=mine["arn"], destinationStageArn=arn, participantId="p")
    finally:
        ivs2.delete_stage(arn=mine["arn"])


def test_same_id_in_another_account_or_region_is_another_resource(owned):
    c, stage, *_ = owned
    sid = stage["arn"].rsplit("/", 1)[1]
    acct = stage["arn"].split(":")[4]
    with client_error("ResourceNotFoundException"):
        c.get_stage(arn=f"arn:aws:ivs:us-east-1:{SECOND.account_id}:stage/{sid}")
    with client_error("ResourceNotFoundException"):
        c.get_stage(arn=f"arn:aws:ivs:eu-west-1:{acct}:stage/{sid}")


def test_raw_error_shape_for_foreign_arn(owned, server):
    _, stage, *_ = owned
    r = signed_request(server, "GET", tags_path(stage["arn"]), b"", creds=SECOND)
    assert_error(r, "ResourceNotFoundException")
    r = call(server, "GetStage", {"arn": stage["arn"]}, creds=SECOND)
    assert_error(r, "ResourceNotFoundException")
