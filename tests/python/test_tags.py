"""TagResource, UntagResource, ListTagsForResource on every taggable resource."""

import pytest

from helpers import (DEV, assert_error, client_error, p384_pem, signed_request, tags_path)


@pytest.fixture(params=["stage", "public-key", "storage-configuration", "encoder-configuration"])
def resource(request, fresh_account):
    """(client, arn, tags given at creation) for each kind of taggable resource."""
    c = fresh_account.client
    kind = request.param
    if kind == "stage":
        arn = c.create_stage(name="tagged", tags={"created": "yes"})["stage"]["arn"]
    elif kind == "public-key":
        arn = c.import_public_key(publicKeyMaterial=p384_pem()[1], tags={"created": "yes"})["publicKey"]["arn"]
    elif kind == "storage-configuration":
        arn = c.create_storage_configuration(s3={"bucketName": "tag-bucket"},
                                             tags={"created": "yes"})["storageConfiguration"]["arn"]
    else:
        arn = c.create_encoder_configuration(tags={"created": "yes"})["encoderConfiguration"]["arn"]
    assert f":{kind}/" in arn
    return c, arn


def test_tag_list_untag(resource):
    c, arn = resource
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"created": "yes"}
    c.tag_resource(resourceArn=arn, tags={"team": "video", "cost center": "a/b:c=d", "empty": "", "café+&": "ü"})
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {
        "created": "yes", "team": "video", "cost center": "a/b:c=d", "empty": "", "café+&": "ü"}
    # overwrite a value
    c.tag_resource(resourceArn=arn, tags={"team": "audio"})
    assert c.list_tags_for_resource(resourceArn=arn)["tags"]["team"] == "audio"
    # keys with spaces and reserved URL characters survive the query string
    c.untag_resource(resourceArn=arn, tagKeys=["cost center", "empty", "café+&"])
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"created": "yes", "team": "audio"}
    # untagging a key that is not there is not an error
    c.untag_resource(resourceArn=arn, tagKeys=["never-set"])
    c.untag_resource(resourceArn=arn, tagKeys=["created", "team"])
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {}


def test_tags_show_on_the_resource(fresh_account):
    c = fresh_account.client
    s = c.create_stage(name="shows")["stage"]
    c.tag_resource(resourceArn=s["arn"], tags={"k": "v"})
    assert c.get_stage(arn=s["arn"])["stage"]["tags"] == {"k": "v"}
    assert [x["tags"] for x in c.list_stages()["stages"] if x["arn"] == s["arn"]] == [{"k": "v"}]
    k = c.import_public_key(publicKeyMaterial=p384_pem()[1])["publicKey"]
    c.tag_resource(resourceArn=k["arn"], tags={"kk": "vv"})
    assert c.get_public_key(arn=k["arn"])["publicKey"]["tags"] == {"kk": "vv"}
    assert [x["tags"] for x in c.list_public_keys()["publicKeys"]] == [{"kk": "vv"}]


def test_aws_prefix_refused(resource):
    c, arn = resource
    with client_error("ValidationException", "aws:"):
        c.tag_resource(resourceArn=arn, tags={"aws:cloudformation:stack": "x"})
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"created": "yes"}


def test_more_than_fifty_refused(resource):
    c, arn = resource
    with client_error("ValidationException", "tags"):
        c.tag_resource(resourceArn=arn, tags={f"k{i}": "v" for i in range(51)})
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"created": "yes"}


def test_total_over_fifty_refused(fresh_account):
    c = fresh_account.client
    arn = c.create_stage(name="fifty", tags={f"a{i}": "v" for i in range(30)})["stage"]["arn"]
    c.tag_resource(resourceArn=arn, tags={f"b{i}": "v" for i in range(20)})  # exactly 50
    assert len(c.list_tags_for_resource(resourceArn=arn)["tags"]) == 50
    c.tag_resource(resourceArn=arn, tags={"a0": "changed"})  # overwriting keeps it at 50
    with client_error("ValidationException", "tags"):
        c.tag_resource(resourceArn=arn, tags={"c0": "one too many"})
    tags = c.list_tags_for_resource(resourceArn=arn)["tags"]
    assert len(tags) == 50 and "c0" not in tags and tags["a0"] == "changed"


def test_key_and_value_lengths(fresh_account):
    c = fresh_account.client
    arn = c.create_stage(name="lengths")["stage"]["arn"]
    c.tag_resource(resourceArn=arn, tags={"k" * 128: "v" * 256})
    with client_error("ValidationException", "tags"):
        c.tag_resource(resourceArn=arn, tags={"k" * 129: "v"})
    with client_error("ValidationException", "tags"):
        c.tag_resource(resourceArn=arn, tags={"k": "v" * 257})
    with client_error("ValidationException", "tags"):
        c.tag_resource(resourceArn=arn, tags={"": "v"})
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"k" * 128: "v" * 256}


def test_tags_required(fresh_account):
    c = fresh_account.client
    arn = c.create_stage(name="req")["stage"]["arn"]
    with client_error("ValidationException", "tags"):
        c.tag_resource(resourceArn=arn)


@pytest.mark.parametrize("kind", ["stage", "public-key", "storage-configuration", "encoder-configuration"])
def test_unknown_arn_not_found(ivs, kind):
    arn = f"arn:aws:ivs:us-east-1:{DEV.account_id}:{kind}/Zz0000000009"
    with client_error("ResourceNotFoundException", "Zz0000000009"):
        ivs.list_tags_for_resource(resourceArn=arn)
    with client_error("ResourceNotFoundException", "Zz0000000009"):
        ivs.tag_resource(resourceArn=arn, tags={"a": "b"})
    with client_error("ResourceNotFoundException", "Zz0000000009"):
        ivs.untag_resource(resourceArn=arn, tagKeys=["a"])


@pytest.mark.parametrize("arn", [
    "arn:aws:ivs:us-east-1:000000000000:stage",
    "arn:aws:ivs:us-east-1:000000000000:stage/",
    "arn:aws:ivs:us-east-1:000000000000:Stage/abcdefabcdef",
    "arn:aws:s3:::bucket",
    "arn:aws:ivs:us-east-1:acct:stage/abcdefabcdef",
    "arn:aws:ivs:us-east-1:000000000000:stage/abc_def",
    "not an arn",
])
def test_malformed_arn_validation(ivs, arn):
    with client_error("ValidationException", "resourceArn"):
        ivs.list_tags_for_resource(resourceArn=arn)
    with client_error("ValidationException", "resourceArn"):
        ivs.tag_resource(resourceArn=arn, tags={"a": "b"})


def test_raw_tag_paths(server):
    """The ARN is URL-encoded in the path; GET/DELETE with an empty body work."""
    r = signed_request(server, "POST", "/CreateStage", b'{"name":"rawtags"}', headers={"Content-Type": "application/json"})
    arn = r.json()["stage"]["arn"]
    r = signed_request(server, "POST", tags_path(arn), b'{"tags":{"x":"1","y":"2"}}',
                       headers={"Content-Type": "application/json"})
    assert r.status_code == 200, r.text
    r = signed_request(server, "GET", tags_path(arn), b"")
    assert r.status_code == 200, r.text
    assert r.json() == {"tags": {"x": "1", "y": "2"}}
    r = signed_request(server, "DELETE", tags_path(arn), b"", query="tagKeys=x&tagKeys=zzz")
    assert r.status_code == 200, r.text
    r = signed_request(server, "GET", tags_path(arn), b"")
    assert r.json() == {"tags": {"y": "2"}}
    r = signed_request(server, "GET", tags_path(arn.replace(arn[-12:], "Zz0000000010")), b"")
    assert_error(r, "ResourceNotFoundException", "Zz0000000010")


def test_untag_more_than_fifty_keys_refused(fresh_account):
    c = fresh_account.client
    arn = c.create_stage(name="untag51", tags={"keep": "me"})["stage"]["arn"]
    with client_error("ValidationException", "tagKeys"):
        c.untag_resource(resourceArn=arn, tagKeys=[f"k{i}" for i in range(51)])
    assert c.list_tags_for_resource(resourceArn=arn)["tags"] == {"keep": "me"}


def test_tags_of_deleted_resource_are_gone(fresh_account):
    c = fresh_account.client
    arn = c.create_stage(name="gone", tags={"a": "b"})["stage"]["arn"]
    c.delete_stage(arn=arn)
    with client_error("ResourceNotFoundException"):
        c.list_tags_for_resource(resourceArn=arn)
    with client_error("ResourceNotFoundException"):
        c.tag_resource(resourceArn=arn, tags={"c": "d"})


def test_parallel_tagging_respects_the_limit(fresh_account, server):
    """60 concurrent TagResource calls, each adding one new key: exactly 50 may win."""
    import concurrent.futures as cf
    from botocore.exceptions import ClientError
    c = fresh_account.client
    arn = c.create_stage(name="race")["stage"]["arn"]

    def one(i):
        try:
            c.tag_resource(resourceArn=arn, tags={f"key{i}": "v"})
            return "ok"
        except ClientError as e:
            return e.response["Error"]["Code"]

    with cf.ThreadPoolExecutor(max_workers=30) as pool:
        results = list(pool.map(one, range(60)))
    assert results.count("ok") == 50, results
    assert set(results) <= {"ok", "ValidationException"}, set(results)
    assert len(c.list_tags_for_resource(resourceArn=arn)["tags"]) == 50
