"""The wire protocol by raw HTTP: the seven headers, the error shape, unknown
operations, serialization and constraint errors, CORS preflight, and SigV4 —
including what clients other than botocore send."""

import datetime as dt
import json

import pytest
import requests

from helpers import (DEV, SECOND, SEVEN_HEADERS, Creds, assert_error, assert_seven_headers, call,
                     signed_request, tags_path)

AUTH_ERRORS = {"InvalidSignatureException", "UnrecognizedClientException", "AccessDeniedException",
               "MissingAuthenticationTokenException", "IncompleteSignatureException"}


def assert_auth_refused(r: requests.Response, *allowed: str) -> dict:
    allowed = set(allowed) or AUTH_ERRORS
    assert r.status_code == 403, f"expected 403, got {r.status_code}: {r.text}"
    etype = r.headers.get("x-amzn-ErrorType")
    assert etype in allowed, f"x-amzn-ErrorType {etype!r} not in {sorted(allowed)}"
    return assert_error(r, etype, status=403)


# --- the seven headers ----------------------------------------------------------------------
def test_headers_on_success(server):
    r = call(server, "ListStages", {})
    assert r.status_code == 200, r.text
    assert_seven_headers(r.headers)
    assert r.headers["Content-Type"].startswith("application/json")


def test_headers_on_error(server):
    r = call(server, "GetStage", {"arn": "arn:aws:ivs:us-east-1:000000000000:stage/Zz0000000006"})
    assert_error(r, "ResourceNotFoundException", "Zz0000000006")


def test_headers_on_auth_failure(server):
    r = requests.post(f"{server.url}/ListStages", data=b"{}", timeout=10)
    assert_auth_refused(r)


def test_headers_on_boto3_success(ivs):
    resp = ivs.list_stages()
    assert_seven_headers(resp["ResponseMetadata"]["HTTPHeaders"])


def test_header_values_exact_on_every_kind_of_response(server, stage):
    responses = [
        call(server, "GetStage", {"arn": stage["arn"]}),
        call(server, "Nope", {}),
        call(server, "CreateStage", raw_body=b"{not json"),
        call(server, "CreateStage", {"name": "x y"}),
        call(server, "StartComposition", {"stageArn": stage["arn"],
                                          "destinations": [{"channel": {"channelArn": "arn:aws:ivs:us-east-1:000000000000:channel/abcdefabcdef"}}]}),
        signed_request(server, "GET", tags_path(stage["arn"]), b""),
        requests.options(f"{server.url}/CreateStage", headers={"Origin": "https://app.example",
                                                                "Access-Control-Request-Method": "POST"}, timeout=10),
        call(server, "ListStages", {}, creds=Creds("onstage", "wrong", DEV.account_id)),
    ]
    for r in responses:
        for name, value in SEVEN_HEADERS.items():
            assert r.headers.get(name) == value, (r.request.method, r.request.url, r.status_code, name, r.headers.get(name))
        assert r.headers.get("Access-Control-Expose-Headers"), (r.request.url, r.status_code)


# --- error shapes -------------------------------------------------------------------------------
@pytest.mark.parametrize("op", ["Nope", "liststages", "ListStages2", "tags"])
def test_unknown_operation(server, op):
    r = call(server, op, {})
    assert_error(r, "UnknownOperationException", op)


def test_unknown_path_and_method(server):
    r = signed_request(server, "GET", "/ListStages", b"")
    assert_error(r, "UnknownOperationException")
    r = signed_request(server, "PUT", "/CreateStage", b"{}", headers={"Content-Type": "application/json"})
    assert_error(r, "UnknownOperationException")
    r = signed_request(server, "POST", "/", b"{}", headers={"Content-Type": "application/json"})
    assert_error(r, "UnknownOperationException")


@pytest.mark.parametrize("body", [b"{not json", b'{"name": "x"', b"[]", b'"string"', b"42", b"\xff\xfe"])
def test_malformed_json(server, body):
    r = call(server, "CreateStage", raw_body=body)
    assert_error(r, "SerializationException")


@pytest.mark.parametrize("op,payload,field", [
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef", "duration": "abc"}, "duration"),
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef", "duration": 1.5}, "duration"),
    ("CreateParticipantToken", {"stageArn": 12}, "stageArn"),
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef", "capabilities": "PUBLISH"}, "capabilities"),
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef", "attributes": {"k": 1}}, "attributes"),
    ("CreateStage", {"name": 5}, "name"),
    ("CreateStage", {"tags": ["a", "b"]}, "tags"),
    ("CreateStage", {"participantTokenConfigurations": {"userId": "x"}}, "participantTokenConfigurations"),
    ("ListStages", {"maxResults": "10"}, "maxResults"),
    ("ListParticipants", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef",
                          "sessionId": "st-AAAAAAAAAAAAA", "filterByPublished": "true"}, "filterByPublished"),
])
def test_wrong_json_type(server, op, payload, field):
    r = call(server, op, payload)
    assert_error(r, "SerializationException", field)


@pytest.mark.parametrize("op,payload,field", [
    ("CreateStage", {"name": "a" * 129}, "name"),
    ("CreateStage", {"name": "ok name"}, "name"),
    ("CreateStage", {"name": "ok\n"}, "name"),
    ("CreateStage", {"name": "ünïcode"}, "name"),
    ("CreateStage", {"participantTokenConfigurations": [{}] * 13}, "participantTokenConfigurations"),
    ("CreateStage", {"participantTokenConfigurations": [{"duration": 0}]}, "duration"),
    ("CreateStage", {"participantTokenConfigurations": [{"capabilities": ["X"]}]}, "capabilities"),
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef", "duration": 0}, "duration"),
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef", "duration": 20161}, "duration"),
    ("CreateParticipantToken", {}, "stageArn"),
    ("CreateParticipantToken", {"stageArn": "xarn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef"}, "stageArn"),
    ("CreateParticipantToken", {"stageArn": "arn:aws:ivs:us-east-1:000000000000:stage/abcdefabcdef/extra"}, "stageArn"),
    ("ListStages", {"maxResults": 0}, "maxResults"),
    ("ListStages", {"maxResults": 101}, "maxResults"),
    ("ListStages", {"nextToken": "not a token!"}, "nextToken"),
    ("ListStages", {"nextToken": "a" * 1025}, "nextToken"),
    ("ListPublicKeys", {"maxResults": 101}, "maxResults"),
    ("ListStorageConfigurations", {"maxResults": 0}, "maxResults"),
    ("ListEncoderConfigurations", {"maxResults": 101}, "maxResults"),
    ("GetStage", {}, "arn"),
    ("ImportPublicKey", {}, "publicKeyMaterial"),
])
def test_constraint_violation(server, op, payload, field):
    r = call(server, op, payload)
    assert_error(r, "ValidationException", field)


def test_nothing_changes_on_validation_error(server):
    before = call(server, "ListStages", {"maxResults": 100}).json()["stages"]
    r = call(server, "CreateStage", {"name": "fine", "tags": {"aws:x": "y"}})
    assert_error(r, "ValidationException")
    after = call(server, "ListStages", {"maxResults": 100}).json()["stages"]
    assert sorted(s["arn"] for s in after) == sorted(s["arn"] for s in before)


def test_error_body_is_json_with_both_fields(server):
    r = call(server, "GetStage", {"arn": "arn:aws:ivs:us-east-1:000000000000:stage/Zz0000000007"})
    assert r.headers["Content-Type"].startswith("application/json")
    body = r.json()
    assert set(body) >= {"message", "exceptionMessage"}
    assert body["message"] == body["exceptionMessage"]


def test_boto3_shows_the_message(ivs):
    from botocore.exceptions import ClientError
    with pytest.raises(ClientError) as e:
        ivs.get_stage(arn="arn:aws:ivs:us-east-1:000000000000:stage/Zz0000000008")
    assert "Zz0000000008" in str(e.value)


# --- CORS preflight --------------------------------------------------------------------------------
SDK_HEADERS = ["authorization", "content-type", "x-amz-date", "x-amz-user-agent", "x-amz-content-sha256",
               "x-amz-security-token", "amz-sdk-invocation-id", "amz-sdk-request"]


@pytest.mark.parametrize("path", ["/CreateStage", "/ListStages", "/tags/arn%3Aaws%3Aivs%3Aus-east-1%3A000000000000%3Astage%2FabcdefABCDEF"])
def test_cors_preflight(server, path):
    r = requests.options(server.url + path, timeout=10, headers={
        "Origin": "https://app.example.com",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": ",".join(SDK_HEADERS),
    })
    assert 200 <= r.status_code < 300, (r.status_code, r.text)
    assert r.headers.get("Access-Control-Allow-Origin") in ("*", "https://app.example.com")
    methods = {m.strip().upper() for m in r.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert {"POST", "GET", "DELETE"} <= methods or "*" in methods, methods
    allowed = {h.strip().lower() for h in r.headers.get("Access-Control-Allow-Headers", "").split(",")}
    assert "*" in allowed or set(SDK_HEADERS) <= allowed, f"missing {set(SDK_HEADERS) - allowed}"
    assert_seven_headers(r.headers)


def test_cors_preflight_for_delete(server):
    r = requests.options(server.url + "/tags/x", timeout=10, headers={
        "Origin": "http://localhost:3000", "Access-Control-Request-Method": "DELETE",
        "Access-Control-Request-Headers": "authorization,x-amz-date"})
    assert 200 <= r.status_code < 300
    methods = {m.strip().upper() for m in r.headers.get("Access-Control-Allow-Methods", "").split(",")}
    assert "DELETE" in methods or "*" in methods


def test_expose_headers_lets_browsers_read_the_error_type(server):
    r = call(server, "ListStages", {})
    exposed = {h.strip().lower() for h in r.headers["Access-Control-Expose-Headers"].split(",")}
    assert "x-amzn-errortype" in exposed or "*" in exposed, exposed
    assert "x-amzn-requestid" in exposed or "*" in exposed, exposed


# --- SigV4 ---------------------------------------------------------------------------------------
def test_signed_request_accepted(server):
    r = call(server, "ListStages", {})
    assert r.status_code == 200, r.text
    assert "stages" in r.json()


def test_wrong_secret(server):
    r = call(server, "ListStages", {}, creds=Creds(DEV.access_key, "not-the-secret", DEV.account_id))
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")


def test_unknown_access_key(server):
    r = call(server, "ListStages", {}, creds=Creds("AKIDUNKNOWN", "whatever", "000000000000"))
    assert_auth_refused(r, "UnrecognizedClientException")


def test_second_key_with_first_keys_secret(server):
    r = call(server, "ListStages", {}, creds=Creds(SECOND.access_key, DEV.secret_key, SECOND.account_id))
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")


@pytest.mark.parametrize("minutes", [-20, 20, -60 * 24])
def test_clock_skew_refused(server, minutes):
    r = call(server, "ListStages", {}, skew=dt.timedelta(minutes=minutes))
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")


@pytest.mark.parametrize("minutes", [-5, 5])
def test_small_clock_skew_accepted(server, minutes):
    r = call(server, "ListStages", {}, skew=dt.timedelta(minutes=minutes))
    assert r.status_code == 200, r.text


def test_unsigned(server):
    r = requests.post(f"{server.url}/ListStages", data=b"{}", headers={"Content-Type": "application/json"}, timeout=10)
    assert_auth_refused(r)
    r = requests.get(f"{server.url}/tags/" + "arn%3Aaws%3Aivs%3Aus-east-1%3A000000000000%3Astage%2FabcdefABCDEF", timeout=10)
    assert_auth_refused(r)


def test_garbage_authorization_header(server):
    r = requests.post(f"{server.url}/ListStages", data=b"{}", timeout=10,
                      headers={"Authorization": "AWS4-HMAC-SHA256 nonsense", "X-Amz-Date": "20200101T000000Z"})
    assert_auth_refused(r)
    r = requests.post(f"{server.url}/ListStages", data=b"{}", timeout=10, headers={"Authorization": "Bearer abc"})
    assert_auth_refused(r)


def test_body_tampered_after_signing(server):
    r = call(server, "CreateStage", {"name": "honest"}, tamper=lambda b: b.replace(b"honest", b"forged"))
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")
    names = [s["name"] for s in call(server, "ListStages", {"maxResults": 100}).json()["stages"]]
    assert "forged" not in names


def test_signed_header_changed_after_signing(server):
    body = json.dumps({"name": "hdr"}).encode()
    # sign with one x-amz-date, send another: the date is a signed header
    r = signed_request(server, "POST", "/CreateStage", body, headers={"Content-Type": "application/json"},
                       tamper=None)
    assert r.status_code == 200
    call(server, "DeleteStage", {"arn": r.json()["stage"]["arn"]})
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    req = AWSRequest(method="POST", url=f"{server.url}/ListStages", data=b"{}", headers={"Content-Type": "application/json"})
    SigV4Auth(Credentials(DEV.access_key, DEV.secret_key), "ivs", "us-east-1").add_auth(req)
    headers = dict(req.headers.items())
    headers["Content-Type"] = "text/plain"  # content-type was signed
    r = requests.post(f"{server.url}/ListStages", data=b"{}", headers=headers, timeout=10)
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")


@pytest.mark.parametrize("service", ["ivsrealtime", "ivs-realtime", "s3"])
def test_wrong_service_in_scope(server, service):
    r = call(server, "ListStages", {}, service=service)
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException", "IncompleteSignatureException")


def test_wrong_region_in_scope(server):
    r = call(server, "ListStages", {}, region="eu-west-1")
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException", "IncompleteSignatureException")


def test_paws_style_request_accepted(server):
    """paws (R): no Content-Type, no x-amz-content-sha256, empty body, only host and
    x-amz-date signed."""
    r = signed_request(server, "POST", "/ListStages", b"", headers={})
    sent = r.request.headers
    assert "Content-Type" not in sent and "X-Amz-Content-SHA256" not in sent
    assert "SignedHeaders=host;x-amz-date," in sent["Authorization"], sent["Authorization"]
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["stages"], list)
    assert_seven_headers(r.headers)


def test_paws_style_empty_body_on_other_operations(server, stage):
    r = signed_request(server, "GET", tags_path(stage["arn"]), b"", headers={})
    assert r.status_code == 200, r.text
    assert r.json() == {"tags": {}}
    r = signed_request(server, "POST", "/ListPublicKeys", b"", headers={})
    assert r.status_code == 200, r.text
    assert isinstance(r.json()["publicKeys"], list)
    # an empty body is {}: required members are then missing
    r = signed_request(server, "POST", "/GetStage", b"", headers={})
    assert_error(r, "ValidationException", "arn")


def test_payload_hash_header_is_honoured(server):
    """SDKs that send x-amz-content-sha256 (aws-sdk-rust, JS) sign it; a mismatch is refused."""
    import hashlib
    body = b'{"maxResults": 5}'
    good = hashlib.sha256(body).hexdigest()
    r = signed_request(server, "POST", "/ListStages", body,
                       headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": good})
    assert r.status_code == 200, r.text
    bad = hashlib.sha256(b"other").hexdigest()
    r = signed_request(server, "POST", "/ListStages", body,
                       headers={"Content-Type": "application/json", "X-Amz-Content-SHA256": bad})
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")


def test_date_header_instead_of_x_amz_date(server):
    """SigV4 allows the Date header in place of X-Amz-Date (botocore uses it when present)."""
    from email.utils import formatdate
    r = signed_request(server, "POST", "/ListStages", b"{}",
                       headers={"Content-Type": "application/json", "Date": formatdate(usegmt=True)})
    assert "X-Amz-Date" not in r.request.headers
    assert r.status_code == 200, r.text


def test_configured_second_key_works_alongside_dev_key(server):
    assert call(server, "ListStages", {}, creds=SECOND).status_code == 200
    assert call(server, "ListStages", {}, creds=DEV).status_code == 200


def test_signed_header_values_are_canonicalised(server):
    """SigV4 trims header values and collapses inner runs of spaces before signing."""
    r = signed_request(server, "POST", "/ListStages", b"{}",
                       headers={"Content-Type": "application/json", "X-Amz-Meta-Note": "hello    big   world",
                                "X-Amz-User-Agent": "aws-sdk-js/3.0  ua/2.1"})
    assert r.status_code == 200, r.text


def test_query_string_is_signed(server, stage):
    r = signed_request(server, "DELETE", tags_path(stage["arn"]), b"", query="tagKeys=a")
    assert r.status_code == 200, r.text
    # sign one query, send another
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials
    url = server.url + tags_path(stage["arn"])
    req = AWSRequest(method="DELETE", url=url + "?tagKeys=a", data=b"")
    SigV4Auth(Credentials(DEV.access_key, DEV.secret_key), "ivs", "us-east-1").add_auth(req)
    r = requests.delete(url + "?tagKeys=b", headers=dict(req.headers.items()), timeout=10)
    assert_auth_refused(r, "InvalidSignatureException", "AccessDeniedException")
