"""Storage and encoder configurations: create, get, list, delete, defaults,
validation, and the storage configuration's use by stages."""

import pytest

from helpers import arn_re, call, assert_error, client_error


# --- storage configurations ------------------------------------------------------------
def test_storage_configuration_lifecycle(fresh_account):
    c, acct = fresh_account.client, fresh_account.creds.account_id
    assert c.list_storage_configurations()["storageConfigurations"] == []
    sc = c.create_storage_configuration(name="recordings", s3={"bucketName": "my.bucket-1"},
                                        tags={"t": "1"})["storageConfiguration"]
    assert arn_re("storage-configuration", account=acct).fullmatch(sc["arn"]), sc["arn"]
    assert sc["name"] == "recordings"
    assert sc["s3"] == {"bucketName": "my.bucket-1"}
    assert sc["tags"] == {"t": "1"}
    got = c.get_storage_configuration(arn=sc["arn"])["storageConfiguration"]
    assert got == sc
    listed = c.list_storage_configurations()["storageConfigurations"]
    assert [(x["arn"], x["name"], x["s3"], x["tags"]) for x in listed] == [
        (sc["arn"], "recordings", {"bucketName": "my.bucket-1"}, {"t": "1"})]
    c.delete_storage_configuration(arn=sc["arn"])
    with client_error("ResourceNotFoundException"):
        c.get_storage_configuration(arn=sc["arn"])
    with client_error("ResourceNotFoundException"):
        c.delete_storage_configuration(arn=sc["arn"])
    assert c.list_storage_configurations()["storageConfigurations"] == []


@pytest.mark.parametrize("s3,field", [
    (None, "s3"),
    ({}, "bucketName"),
    ({"bucketName": "ab"}, "bucketName"),
    ({"bucketName": "b" * 64}, "bucketName"),
    ({"bucketName": "Upper-Case"}, "bucketName"),
    ({"bucketName": "under_score"}, "bucketName"),
])
def test_storage_configuration_validation(fresh_account, s3, field):
    c = fresh_account.client
    kwargs = {} if s3 is None else {"s3": s3}
    with client_error("ValidationException", field):
        c.create_storage_configuration(**kwargs)
    assert c.list_storage_configurations()["storageConfigurations"] == []


def test_storage_configuration_name_pattern(fresh_account):
    with client_error("ValidationException", "name"):
        fresh_account.client.create_storage_configuration(name="has space", s3={"bucketName": "abc"})


def test_delete_storage_configuration_in_use_conflicts(fresh_account):
    c = fresh_account.client
    sc = c.create_storage_configuration(s3={"bucketName": "in-use"})["storageConfiguration"]
    stage = c.create_stage(name="recorded",
                           autoParticipantRecordingConfiguration={"storageConfigurationArn": sc["arn"]})["stage"]
    with client_error("ConflictException", sc["arn"].rsplit("/", 1)[1]):
        c.delete_storage_configuration(arn=sc["arn"])
    assert c.get_storage_configuration(arn=sc["arn"])["storageConfiguration"]["arn"] == sc["arn"]
    c.delete_stage(arn=stage["arn"])
    c.delete_storage_configuration(arn=sc["arn"])


def test_delete_storage_configuration_in_use_via_update(fresh_account):
    c = fresh_account.client
    sc = c.create_storage_configuration(s3={"bucketName": "in-use-2"})["storageConfiguration"]
    stage = c.create_stage(name="later")["stage"]
    c.update_stage(arn=stage["arn"], autoParticipantRecordingConfiguration={"storageConfigurationArn": sc["arn"]})
    with client_error("ConflictException"):
        c.delete_storage_configuration(arn=sc["arn"])
    # turning recording off frees it
    c.update_stage(arn=stage["arn"], autoParticipantRecordingConfiguration={"storageConfigurationArn": ""})
    c.delete_storage_configuration(arn=sc["arn"])


def test_storage_configuration_malformed_arn(ivs):
    with client_error("ValidationException", "arn"):
        ivs.get_storage_configuration(arn="arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef")
    with client_error("ResourceNotFoundException", "Zz0000000004"):
        ivs.get_storage_configuration(arn="arn:aws:ivs:us-east-1:000000000000:storage-configuration/Zz0000000004")


# --- encoder configurations ------------------------------------------------------------
def test_encoder_configuration_defaults(fresh_account):
    c, acct = fresh_account.client, fresh_account.creds.account_id
    ec = c.create_encoder_configuration()["encoderConfiguration"]
    assert arn_re("encoder-configuration", account=acct).fullmatch(ec["arn"]), ec["arn"]
    v = ec["video"]
    assert (v["width"], v["height"], v["bitrate"]) == (1280, 720, 2500000)
    assert v["framerate"] == 30
    got = c.get_encoder_configuration(arn=ec["arn"])["encoderConfiguration"]
    assert got["video"] == v


def test_encoder_configuration_partial_video_gets_defaults(fresh_account):
    c = fresh_account.client
    ec = c.create_encoder_configuration(name="wide", video={"width": 1920})["encoderConfiguration"]
    v = ec["video"]
    assert (v["width"], v["height"], v["framerate"], v["bitrate"]) == (1920, 720, 30, 2500000)


def test_encoder_configuration_lifecycle(fresh_account):
    c = fresh_account.client
    ec = c.create_encoder_configuration(name="hd", video={"width": 1920, "height": 1080, "framerate": 59.94,
                                                          "bitrate": 8500000},
                                        tags={"q": "hi"})["encoderConfiguration"]
    assert ec["name"] == "hd"
    assert ec["tags"] == {"q": "hi"}
    v = ec["video"]
    assert (v["width"], v["height"], v["bitrate"]) == (1920, 1080, 8500000)
    assert v["framerate"] == pytest.approx(59.94)
    got = c.get_encoder_configuration(arn=ec["arn"])["encoderConfiguration"]
    assert got["name"] == "hd" and got["tags"] == {"q": "hi"}
    assert got["video"]["framerate"] == pytest.approx(59.94)
    listed = c.list_encoder_configurations()["encoderConfigurations"]
    assert [(x["arn"], x["name"], x["tags"]) for x in listed] == [(ec["arn"], "hd", {"q": "hi"})]
    c.delete_encoder_configuration(arn=ec["arn"])
    with client_error("ResourceNotFoundException"):
        c.get_encoder_configuration(arn=ec["arn"])
    with client_error("ResourceNotFoundException"):
        c.delete_encoder_configuration(arn=ec["arn"])
    assert c.list_encoder_configurations()["encoderConfigurations"] == []


@pytest.mark.parametrize("video,field", [
    ({"width": 1}, "width"),
    ({"width": 1921}, "width"),
    ({"height": 1}, "height"),
    ({"height": 1921}, "height"),
    ({"framerate": 0.5}, "framerate"),
    ({"framerate": 61}, "framerate"),
    ({"bitrate": 0}, "bitrate"),
    ({"bitrate": 8500001}, "bitrate"),
])
def test_encoder_configuration_validation(fresh_account, video, field):
    c = fresh_account.client
    with client_error("ValidationException", field):
        c.create_encoder_configuration(video=video)
    assert c.list_encoder_configurations()["encoderConfigurations"] == []


def test_encoder_configuration_wrong_types(server):
    r = call(server, "CreateEncoderConfiguration", {"video": {"framerate": "fast"}})
    assert_error(r, "SerializationException", "framerate")
    r = call(server, "CreateEncoderConfiguration", {"video": {"width": 12.5}})
    assert_error(r, "SerializationException", "width")


def test_list_encoder_configurations_default_page_is_100(fresh_account):
    c = fresh_account.client
    for _ in range(101):
        c.create_encoder_configuration()
    first = c.list_encoder_configurations()
    assert len(first["encoderConfigurations"]) == 100
    assert first.get("nextToken")
    second = c.list_encoder_configurations(nextToken=first["nextToken"])
    assert len(second["encoderConfigurations"]) == 1
    assert "nextToken" not in second
    arns = [x["arn"] for x in first["encoderConfigurations"] + second["encoderConfigurations"]]
    assert len(set(arns)) == 101


def test_storage_configuration_in_use_never_disappears_under_races(fresh_account):
    """CreateStage naming a storage configuration racing DeleteStorageConfiguration:
    afterwards no stage may refer to a storage configuration that is gone."""
    import concurrent.futures as cf
    from botocore.exceptions import ClientError
    c = fresh_account.client

    def create(arn):
        try:
            return c.create_stage(autoParticipantRecordingConfiguration={"storageConfigurationArn": arn})["stage"]["arn"]
        except ClientError as e:
            assert e.response["Error"]["Code"] == "ValidationException", e.response
            return None

    def delete(arn):
        try:
            c.delete_storage_configuration(arn=arn)
            return True
        except ClientError as e:
            assert e.response["Error"]["Code"] == "ConflictException", e.response
            return False

    with cf.ThreadPoolExecutor(max_workers=8) as pool:
        for round_ in range(10):
            sc = c.create_storage_configuration(s3={"bucketName": f"race-{round_}"})["storageConfiguration"]["arn"]
            futures = [pool.submit(create, sc) for _ in range(3)] + [pool.submit(delete, sc)]
            stages = [f.result() for f in futures[:3]]
            deleted = futures[3].result()
            alive = [s for s in stages if s]
            if deleted:
                assert not alive, f"round {round_}: stages {alive} refer to deleted {sc}"
            else:
                assert alive, f"round {round_}: delete refused with no stage using {sc}"
                c.get_storage_configuration(arn=sc)
            for s in alive:
                c.delete_stage(arn=s)
